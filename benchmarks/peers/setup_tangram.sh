#!/usr/bin/env bash
# Build the isolated Tangram venv used by the label-transfer benchmark (benchmarks/peers/tangram.py).
#
#   bash benchmarks/peers/setup_tangram.sh            # creates .venv-tangram at the repository root
#
# torch is installed first, pinned (TORCH_SPEC, default torch==2.14.1, the build this machine serves
# from disk), then tangram-sc and its requirements under a constraint that keeps that torch: pip is
# never allowed to replace it. tangram-sc 1.0.4 declares torch without a version, so a plain install
# normally works; if the resolver still fails, tangram-sc is installed with --no-deps plus the
# requirements it really imports. The script ends by checking the torch version and importing tangram.
# Environment: PYTHON (interpreter for the venv, default python3), TANGRAM_VENV (venv path),
# TORCH_SPEC (e.g. "torch" on a machine that serves no 2.14.1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${TANGRAM_VENV:-$ROOT/.venv-tangram}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
TANGRAM_SPEC="${TANGRAM_SPEC:-tangram-sc==1.0.4}"
# tangram-sc's declared requirements (besides torch and pip), plus anndata/h5py to read the h5ad files.
REQS=(anndata h5py scanpy pandas numpy scipy scikit-learn matplotlib seaborn tqdm)

py() { "$VENV/bin/python" "$@"; }

echo "== creating $VENV with $("$PYTHON" --version 2>&1)"
"$PYTHON" -m venv "$VENV"
py -m pip install --quiet --upgrade pip

echo "== installing $TORCH_SPEC"
py -m pip install --quiet "$TORCH_SPEC"
TORCH_VERSION="$(py -c 'import importlib.metadata as m; print(m.version("torch"))')"

# A constraint file pinning the installed torch: pip may not upgrade, downgrade or reinstall it.
PIN="$VENV/torch-constraint.txt"
echo "torch==$TORCH_VERSION" >"$PIN"

echo "== installing $TANGRAM_SPEC (torch held at $TORCH_VERSION)"
if ! py -m pip install --quiet -c "$PIN" "$TANGRAM_SPEC" "${REQS[@]}"; then
    echo "== resolver failed; retrying with --no-deps $TANGRAM_SPEC plus its real requirements" >&2
    py -m pip install --quiet -c "$PIN" "${REQS[@]}"
    py -m pip install --quiet --no-deps "$TANGRAM_SPEC"
fi

echo "== checking"
py -m pip show torch | sed -n '1,2p'
AFTER="$(py -c 'import importlib.metadata as m; print(m.version("torch"))')"
if [[ "$AFTER" != "$TORCH_VERSION" ]]; then
    echo "error: torch changed from $TORCH_VERSION to $AFTER during the tangram install" >&2
    exit 1
fi
py -m pip check || echo "warning: pip check reports the conflicts above" >&2
py -c 'import tangram as tg, torch, scanpy, anndata; print(f"tangram {tg.__version__}, torch {torch.__version__}, scanpy {scanpy.__version__}, anndata {anndata.__version__}")'
echo "== done: run peers with $VENV/bin/python"
