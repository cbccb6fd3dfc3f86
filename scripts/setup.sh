#!/usr/bin/env bash
# Create .venv with embedhub and everything its tests and benchmarks need.
# Needs only the package registries (torch 2.14.1 / torchvision 0.29.1 install from this machine's disk).
set -euo pipefail
cd "$(dirname "$0")/.."
# real data and tools the tests and recipes use, from Debian's packages (Fashion-MNIST, espeak-ng)
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist espeak-ng >/dev/null
else
  echo "note: install dataset-fashion-mnist and espeak-ng with apt-get for the training tests" >&2
fi
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e '.[dev]'
echo "embedhub installed in .venv ($(python -c 'import embedhub; print(embedhub.__version__)'))"
# what the tests need beyond the venv: tests that lack it skip, and .ci/run fails on any skip
missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=("Fashion-MNIST (apt-get install dataset-fashion-mnist)")
command -v espeak-ng >/dev/null 2>&1 || missing+=("espeak-ng (apt-get install espeak-ng)")
[ -d ../shared/data/stsbenchmark ] || missing+=("STS Benchmark (../shared/data/stsbenchmark, see ../shared/ASSETS.md)")
for m in ${missing[@]+"${missing[@]}"}; do echo "missing: $m: the tests that need it will skip" >&2; done
