"""`cfcli.pipeline.ahead`: imports made on a thread while the weights load."""

import sys

from cfcli.pipeline import ahead


def test_imports_land_and_a_failed_one_is_forgotten():
    sys.modules.pop("colorsys", None)
    job = ahead.start(("no_such_module_cf", "colorsys"))
    job.wait()
    assert "colorsys" in sys.modules  # the import after the failed one still ran
    assert not job.thread.is_alive()

