#!/usr/bin/env bash
# Maintainers (`make setup-cuda`): build mmcv with CUDA ops for the
# data-centre GPUs users train on, on a machine without a GPU, cache it like
# the CPU wheel (tools/mmcv_wheel.sh), install it into a throw-away folder and
# check that it imports and holds the CUDA kernels the configs' heads call
# and device code for every architecture asked for (tools/check_mmcv_cuda.py).
# .venv and its CPU mmcv stay as they are.
#
# Environment:
#   ARCHS      TORCH_CUDA_ARCH_LIST to build ('8.0;9.0': A100, H100/H200)
#   CUDA_HOME  the toolkit (found from nvcc otherwise, see build_mmcv.sh)
#   MAX_JOBS   parallel compile jobs (nproc)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# STACK as in setup_env.sh: upstream (.venv) or onedl (.venv-onedl).
if [[ "${STACK:-upstream}" == onedl ]]; then PY="$ROOT/.venv-onedl/bin/python"; else PY="$ROOT/.venv/bin/python"; fi
ARCHS="${ARCHS:-8.0;9.0}"
read -r MMCV_DIST MMCV_VERSION < <(bash "$ROOT/tools/setup_env.sh" --mmcv)
if ! command -v nvcc >/dev/null && [[ -z "${CUDA_HOME:-}" ]]; then
    echo "[setup_cuda] no nvcc on PATH and no CUDA_HOME: a CUDA toolkit is needed" >&2
    exit 1
fi
bash "$ROOT/tools/setup_env.sh"
wheel="$(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCHS" \
    bash "$ROOT/tools/mmcv_wheel.sh" "$PY" "$MMCV_VERSION" "$MMCV_DIST")"
echo "[setup_cuda] $wheel" >&2
cat "$(dirname "$wheel")/build.txt" >&2 2>/dev/null || true
target="$(mktemp -d)"
trap 'rm -rf "$target"' EXIT
"$PY" -m pip --disable-pip-version-check install -q --no-deps --target "$target" "$wheel"
PYTHONPATH="$target" "$PY" "$ROOT/tools/check_mmcv_cuda.py" --archs "$ARCHS" \
    --inside "$target"
