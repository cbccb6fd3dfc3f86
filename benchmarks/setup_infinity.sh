#!/usr/bin/env bash
# Creates the virtual environment with infinity-emb, the serving peer of benchmarks/serve_load.py, outside the
# repository and apart from embedhub's own environment (infinity pins transformers < 5, sentence-transformers < 4
# and numpy < 2, which embedhub's environment must not get).
#
#   bash benchmarks/setup_infinity.sh                       # into /work/venvs/infinity
#   INFINITY_VENV=$HOME/venvs/infinity bash benchmarks/setup_infinity.sh
#   python benchmarks/serve_load.py --infinity-venv "$INFINITY_VENV" ...
#
# INFINITY_VENV: where the environment goes (default /work/venvs/infinity); PYTHON: the interpreter that creates
# it (default python3; infinity-emb 0.0.78 supports Python 3.9-3.12). Running it again reuses the environment and
# only installs what is missing. The versions below are the ones the figures in benchmarks/README.md were measured
# with; torch is the same release as embedhub's (its CUDA libraries come with it, as in embedhub's environment).
set -euo pipefail

VENV="${INFINITY_VENV:-/work/venvs/infinity}"
PY="${PYTHON:-python3}"

case "$VENV" in
  "$(git -C "$(dirname "$0")" rev-parse --show-toplevel 2>/dev/null || echo /nonexistent)"*)
    echo "INFINITY_VENV=$VENV is inside the repository; put it outside (default /work/venvs/infinity)" >&2
    exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV with $("$PY" --version)"
  "$PY" -m venv "$VENV"
fi

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
cat > "$CONSTRAINTS" <<'EOF'
torch==2.14.1
transformers==4.57.6
sentence-transformers==3.4.1
tokenizers==0.22.2
numpy==1.26.4
fastapi==0.165.0
starlette==1.10.0
uvicorn==0.32.1
pydantic==2.14.4
EOF

echo "installing infinity-emb[server,torch]==0.0.78 into $VENV"
"$VENV/bin/python" -m pip install --quiet -c "$CONSTRAINTS" "infinity-emb[server,torch]==0.0.78" "torch==2.14.1"

# The check serve_load.py relies on: the CLI starts and the packages import.
"$VENV/bin/python" -c "import infinity_emb, torch, transformers, sentence_transformers as st; \
print('infinity-emb', infinity_emb.__version__, '| torch', torch.__version__, '| transformers', \
transformers.__version__, '| sentence-transformers', st.__version__)"
test -x "$VENV/bin/infinity_emb" || { echo "no infinity_emb CLI in $VENV/bin" >&2; exit 1; }
echo "ready: python benchmarks/serve_load.py --infinity-venv $VENV"
