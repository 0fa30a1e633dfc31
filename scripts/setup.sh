#!/usr/bin/env bash
# Create .venv with everything ptjupyter, its tests and notebooks need, pinned by constraints.txt.
# torch==2.13.0 is installed first, alone, so that no requirement can pull a multi-GB CUDA build;
# uv then resolves the rest in seconds (pip's resolver backtracks for many minutes on flytekit's tree).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 uv==0.13.9
.venv/bin/uv pip install -q --python .venv/bin/python -c constraints.txt -e '.[test]'
# the notebooks' kernel ("python3") must be this venv's interpreter
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ptjupyter)" >/dev/null
