"""Options of a job that cannot go together, refused by name before anything loads instead of one silently winning
(the values every run checks are `cfcli.pipeline.limits`'s)."""

from pathlib import Path

from cfcli.errors import CfError


def codec_note(crf_given: bool, codec: str) -> str | None:
    """A note when --crf was given to a codec without a quality setting (the table's options never use it)."""
    from cfcli.pipeline.containers import get

    chosen = get(codec)
    if not crf_given or any("{crf}" in v for v in chosen.options.values()):
        return None
    why = "is lossless" if chosen.lossless else "has no quality setting (a 256-colour palette per frame)"
    return f"{codec} {why} and ignores --crf"


def check_prompt_sources(prompt: str | None, prompt_file: Path | None) -> None:
    """A prompt on the command line and --prompt-file: one of them would be dropped."""
    if prompt is not None and prompt_file is not None:
        raise CfError(f"a prompt and --prompt-file {prompt_file} were both given",
                      "put every prompt in the file, or give the one prompt without --prompt-file")


def check_posters(runs: list[tuple[Path, Path | None]], overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """`--poster` writes `<video>.jpg` beside each video of `runs` ((video, latents) pairs): refuse a poster that is
    another output of the run (`--save-latents x.jpg`), another poster or an input, and an existing file without
    --overwrite. Linear in the number of videos."""
    from cfcli.jobs.files import PathSet, poster_path
    from cfcli.pipeline.outputs import check

    taken = PathSet()
    for video, latents in runs:
        taken.add(video, "a video of this run")
        if latents is not None:
            taken.add(latents, f"--save-latents {latents}")
    for path in inputs:
        taken.add(path, "an input of the run")
    for video, _ in runs:
        poster = poster_path(video)
        if (what := taken.get(poster)) is not None:
            raise CfError(f"--poster would write {poster}, which is {what}",
                          "give the latents (or --out) another name, e.g. latents.safetensors, or leave out --poster")
        check(poster, overwrite, "--poster")
        taken.add(poster, "the poster of another video of this run")
