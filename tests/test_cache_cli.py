"""`cf cache`: list cfcli's own cache with sizes (converted checkpoints and which presets use them, prompt
embeddings), and clear it by kind, asking first unless --yes."""

import json
import os

from cfcli import hub
from cfcli.presets import load_preset

from conftest import FIXTURES, PROMPT

TINY = FIXTURES / "tiny-framewise.yaml"


def converted(name: str, size: int):
    path = hub.converted_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


def listing(cf) -> list[dict]:
    r = cf("cache", "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def fill(cf, tmp_path):
    """A conversion the framewise preset uses, an old one, and one cached prompt embedding."""
    p = load_preset("framewise")
    used = converted(hub.converted_name("a" * 64, p.use_ema), 3000)
    hub.record_conversion(p.weights["generator"], p.use_ema, "a" * 64, "0" * 40)
    old = converted(hub.converted_name("b" * 64, True), 2000)
    r = cf("generate", PROMPT, "--preset", TINY, "--device", "cpu", "--frames", 5, "--out", tmp_path / "x.mp4", "-q")
    assert r.exit_code == 0, r.output
    return used, old


def test_lists_kinds_sizes_and_users(cf, tmp_path):
    assert listing(cf) == []
    assert "is empty" in cf("cache").stderr
    used, old = fill(cf, tmp_path)
    rows = {(e["kind"], e["path"]): e for e in listing(cf)}
    assert rows[("converted", str(used))]["bytes"] == 3000 and rows[("converted", str(used))]["old"] is False
    assert "framewise" in rows[("converted", str(used))]["note"].split(", ")
    assert rows[("converted", str(old))]["bytes"] == 2000 and rows[("converted", str(old))]["old"] is True
    prompts = next(e for e in rows.values() if e["kind"] == "prompts")
    assert prompts["bytes"] > 0 and prompts["note"] == "1 file"
    text = cf("cache").stderr
    assert "old: no preset uses it" in text and "3.0 kB" in text and "2.0 kB" in text


def test_clear_by_kind(cf, tmp_path):
    used, old = fill(cf, tmp_path)
    r = cf("cache", "clear", "--old", "--yes")
    assert r.exit_code == 0 and "cleared 1 item(s), 2.0 kB" in r.stderr
    assert used.is_file() and not old.exists()
    r = cf("cache", "clear", "--prompts", "-y")
    assert r.exit_code == 0 and {e["kind"] for e in listing(cf)} == {"converted"}
    assert cf("cache", "clear", "--old", "-y").stderr.strip() == "nothing to clear"
    assert cf("cache", "clear", "--converted", "-y").exit_code == 0 and listing(cf) == []


def test_clear_asks_first_and_needs_a_kind(cf, tmp_path):
    from typer.testing import CliRunner

    from cfcli.cli import app

    used, old = fill(cf, tmp_path)
    r = CliRunner().invoke(app, ["cache", "clear", "--all"], input="n\n")
    assert r.exit_code == 1 and "delete 3 cached item(s)" in r.output
    assert used.is_file() and old.is_file()
    r = CliRunner().invoke(app, ["cache", "clear", "--all"], input="y\n")
    assert r.exit_code == 0 and listing(cf) == []
    r = cf("cache", "clear")
    assert r.exit_code == 1 and "--old, --converted, --prompts, --compiled or --all" in r.output


def test_compiled_code_is_listed_and_cleared_as_a_kind_of_its_own(cf, tmp_path):
    """What `cfcli.pipeline.compile_cache` writes (and a temp file of an interrupted write); a file of the user's
    beside it stays."""
    used, old = fill(cf, tmp_path)
    folder = hub.converted_dir().parent / "compiled"
    folder.mkdir()
    (folder / ("0f" * 12 + ".bin")).write_bytes(b"\0" * 1500)
    (folder / (".%s.bin.123.tmp" % ("a1" * 12))).write_bytes(b"\0" * 500)
    (folder / "notes.txt").write_text("mine")
    compiled = next(e for e in listing(cf) if e["kind"] == "compiled")
    assert compiled["bytes"] == 2000 and compiled["note"] == "2 files" and compiled["path"] == str(folder)
    r = cf("cache", "clear", "--compiled", "-y")
    assert r.exit_code == 0 and "cleared 1 item(s), 2.0 kB" in r.stderr
    assert os.listdir(folder) == ["notes.txt"] and used.is_file() and old.is_file()
    assert {e["kind"] for e in listing(cf)} == {"converted", "prompts", "compiled"}  # the folder, now 0 files


def user_folder(tmp_path, name: str, files: dict[str, int]):
    """A folder of the user's own files (some named as cfcli names its own), to be linked into $CF_HOME."""
    folder = tmp_path / "mine" / name
    folder.mkdir(parents=True)
    for f, size in files.items():
        (folder / f).write_bytes(b"\1" * size)
    return folder


def test_linked_cache_folders_are_left_alone(cf, tmp_path):
    """`$CF_HOME/converted` (and prompts, taehv) linked to a folder of the user's files: nothing in it is deleted, the
    links stay, the output says so, and no kind of clear ends in a traceback."""
    home = hub.converted_dir().parent
    home.mkdir(parents=True)
    mine = {"converted": user_folder(tmp_path, "weights", {"model.safetensors": 100,
                                                           hub.converted_name("c" * 64, True): 200}),
            "prompts": user_folder(tmp_path, "embeds", {"x.safetensors": 50}),
            "taehv": user_folder(tmp_path, "taehv", {"taew2_1.pth": 70})}
    for name, target in mine.items():
        (home / name).symlink_to(target, target_is_directory=True)
    before = {p: p.read_bytes() for folder in mine.values() for p in folder.iterdir()}
    rows = listing(cf)
    assert {(e["kind"], e["link"], e["bytes"]) for e in rows} == {(k, str(v), 0) for k, v in mine.items()}
    for flags in (["--old"], ["--converted"], ["--prompts"], ["--all", "--dry-run"], ["--all"]):
        r = cf("cache", "clear", *flags, "-y")
        assert r.exit_code == 0, r.output
        assert "left alone" in r.stderr and "nothing to clear" in r.stderr
    assert {p: p.read_bytes() for folder in mine.values() for p in folder.iterdir()} == before
    assert all((home / name).is_symlink() for name in mine)


def test_clear_removes_only_what_cf_made(cf, tmp_path):
    """In real cache folders: a linked file and a file cfcli did not make survive, and so does their folder."""
    used, old = fill(cf, tmp_path)
    prompts = hub.converted_dir().parent / "prompts"
    precious = user_folder(tmp_path, "own", {"keep.safetensors": 10}) / "keep.safetensors"
    (prompts / "linked.safetensors").symlink_to(precious)
    (prompts / "notes.txt").write_text("mine")
    (hub.converted_dir() / "mine.safetensors").write_bytes(b"\2" * 30)
    (hub.converted_dir() / ("d" * 64 + "-ema.safetensors")).symlink_to(precious)
    r = cf("cache", "clear", "--all", "-y")
    assert r.exit_code == 0, r.output
    assert not used.exists() and not old.exists()
    assert precious.read_bytes() == b"\1" * 10 and (prompts / "linked.safetensors").is_symlink()
    assert (prompts / "notes.txt").read_text() == "mine" and (hub.converted_dir() / "mine.safetensors").is_file()
    assert not list(prompts.glob("[!l]*.safetensors"))  # the cached embedding itself is gone


def test_dry_run_lists_sizes_and_deletes_nothing(cf, tmp_path):
    used, old = fill(cf, tmp_path)
    r = cf("cache", "clear", "--converted", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "3.0 kB" in r.stderr and "2.0 kB" in r.stderr and str(old) in r.stderr
    assert "would delete 2 cached item(s), 5.0 kB" in r.stderr
    assert used.is_file() and old.is_file()
