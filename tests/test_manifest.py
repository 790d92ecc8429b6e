"""`cf download --dry-run` without the Hub: sizes from the shipped manifest, approximate ones marked."""


from cfcli import manifest
from cfcli.errors import CfError
from cfcli.presets import load_preset, shipped_presets


def test_manifest_lists_every_hub_file_of_every_shipped_preset():
    files = manifest.load()
    for name in shipped_presets():
        items = manifest.listed(load_preset(name))
        assert len(items) == 4, name
        for item in items:
            assert any(item.label == f"{k.split(':')[0]}/{k.split(':')[1].rstrip('/')}" for k in files), item
    one_step = {i.label: i for i in manifest.listed(load_preset("framewise-1step"))}
    assert one_step["zhuhz22/Causal-Forcing/causal-forcing++/framewise-1step.pt"] == manifest.Listed(
        "zhuhz22/Causal-Forcing/causal-forcing++/framewise-1step.pt", 5676220819, False)


def test_offline_dry_run_shows_manifest_sizes(cf):
    r = cf("download", "--mode", "chunkwise", "--dry-run")
    assert r.exit_code == 0, r.output
    out = " ".join(r.stdout.split())
    assert "zhuhz22/Causal-Forcing/chunkwise/causal_forcing.pt ≈ 5.7 GB chunkwise" in out
    assert "Wan-AI/Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth ≈ 11.4 GB" in out
    assert "to download at most: ≈ 17.6 GB" in out


def test_unreachable_hub_dry_run_falls_back_to_the_manifest(cf, monkeypatch):
    from huggingface_hub import constants

    from cfcli import hub

    def refused(presets):
        raise CfError("could not list zhuhz22/Causal-Forcing on http://127.0.0.1:9: refused") from OSError(111, "x")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "plan", refused)
    r = cf("download", "--mode", "self-forcing", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "sizes below are from the manifest" in r.stderr
    out = " ".join(r.stdout.split())
    assert "gdhe17/Self-Forcing/checkpoints/self_forcing_dmd.pt ? self-forcing" in out
    assert "+ files of unknown size" in out
    r = cf("download", "--mode", "self-forcing")  # a real download still fails with the message
    assert r.exit_code == 1 and "could not list" in r.output
