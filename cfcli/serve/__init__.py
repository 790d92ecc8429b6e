"""`cf serve`: the engine resident in one process — models loaded, compiled and captured once — taking `cf generate` and
`cf extend` jobs from clients on this machine (`client`), one on the GPU at a time (`queue`), and serving `cf live`'s
page from the same engine (`app`). `registry` is where clients find it."""
