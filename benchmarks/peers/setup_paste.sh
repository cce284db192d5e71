#!/usr/bin/env bash
# Build the isolated PASTE venv used by the alignment benchmark (benchmarks/peers/paste.py).
#
#   bash benchmarks/peers/setup_paste.sh            # creates .venv-paste at the repository root
#
# paste-bio 1.4.0 calls POT functions whose signature changed in POT 0.9.5 (it crashes there), and it
# was written against numpy 1.x: the venv pins pot==0.9.4 and numpy<2. PASTE runs on numpy only (its
# torch backend is optional): torch is not installed. The script ends by importing paste.
# Environment: PYTHON (interpreter for the venv, default python3), PASTE_VENV (venv path).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${PASTE_VENV:-$ROOT/.venv-paste}"
PYTHON="${PYTHON:-python3}"
PASTE_SPEC="${PASTE_SPEC:-paste-bio==1.4.0}"
REQS=("pot==0.9.4" "numpy<2" "scipy<1.14" "anndata<0.11" "scanpy<1.11" "pandas<2.3" "scikit-learn" "h5py" "matplotlib" "networkx")

py() { "$VENV/bin/python" "$@"; }

echo "== creating $VENV with $("$PYTHON" --version 2>&1)"
"$PYTHON" -m venv "$VENV"
py -m pip install --quiet --upgrade pip

echo "== installing ${REQS[*]}"
py -m pip install --quiet "${REQS[@]}"
echo "== installing $PASTE_SPEC without its dependencies (they are the pins above)"
py -m pip install --quiet --no-deps "$PASTE_SPEC"

echo "== checking"
if py -c 'import torch' 2>/dev/null; then
    echo "warning: torch is importable in $VENV (not needed by PASTE)" >&2
fi
py -m pip check || echo "warning: pip check reports the conflicts above" >&2
py -c "import paste, ot, numpy, anndata; print('paste imported; POT', ot.__version__, 'numpy', numpy.__version__, 'anndata', anndata.__version__)"
echo "== done: run peers with $VENV/bin/python"
