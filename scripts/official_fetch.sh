#!/usr/bin/env bash
# Lays out what scripts/official_bench.py needs on a machine with no network (docs/official-harness.md):
#   .official/  thu-ml/Causal-Forcing at the commit below, exported from a bare mirror (only the folders the loop
#               imports, plus its configs and licence); ignored by git.
#   .whl/       the py3.12 wheels of the packages the official code imports that the GPU image lacks.
# Run it from the repository root. env: MIRROR (the bare git dir of github:thu-ml/Causal-Forcing).
set -euo pipefail
COMMIT=1fc7bbc19a503c1bce80ecef08158b20e702f386  # "Update README.md", the head the earlier comparisons ran
MIRROR=${MIRROR:-/work/.mirror/thu-ml+Causal-Forcing/repo}
WHEELS=(diffusers==0.31.0 einops==0.8.1)  # CausalWanModel's ModelMixin/ConfigMixin; the VAE's rearrange

exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qxF '/.official/' "$exclude" 2>/dev/null || echo '/.official/' >>"$exclude"

git --git-dir "$MIRROR" cat-file -e "$COMMIT^{commit}" || {
  echo "commit $COMMIT not in $MIRROR: fetch github:thu-ml/Causal-Forcing first (MIRROR=<its bare git dir>)" >&2
  exit 1
}
rm -rf .official.tmp
mkdir .official.tmp
git --git-dir "$MIRROR" archive "$COMMIT" -- pipeline utils wan demo_utils configs LICENSE | tar -x -C .official.tmp
echo "$COMMIT" >.official.tmp/COMMIT
rm -rf .official
mv .official.tmp .official
echo "exported $COMMIT to .official ($(du -sh .official | cut -f1))"

mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
ls -l .whl
