"""Jobs: what `cf generate` and `cf extend` do, step by step, on a `Session`, reporting through a `View` — run the
same way in the `cf` process (`cfcli.cli`) and in a resident `cf serve` (`cfcli.serve`)."""
