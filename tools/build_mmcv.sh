#!/usr/bin/env bash
# Build an mmcv wheel with ops from its source distribution:
#   tools/build_mmcv.sh PYTHON SDIST OUT_DIR
# PYTHON must hold torch (and setuptools, wheel, ninja); the wheel lands in
# OUT_DIR. mmcv's setup.py builds CUDA ops when torch sees a GPU or
# FORCE_CUDA=1, for the architectures in TORCH_CUDA_ARCH_LIST (all that torch
# was built for otherwise). MAX_JOBS: parallel compile jobs (nproc).
# Used by tools/setup_env.sh and tools/gpu_e2e/run.sh.
set -euo pipefail
if [[ $# -ne 3 ]]; then
    echo "usage: $0 PYTHON SDIST OUT_DIR" >&2
    exit 2
fi
# Absolute (the build runs inside the unpacked source), links kept: a
# virtual environment's python is a link to the base interpreter.
case "$1" in
*/*) PY="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")" ;;
*) PY="$(command -v "$1")" ;;
esac
SDIST=$2
OUT=$3

# The C++ standard torch's headers demand, read from torch itself rather than
# assumed: torch/all.h refuses compilers below `__cplusplus < NNNNNNL`.
STD="$("$PY" - <<'EOF'
import os, re, torch
header = os.path.join(os.path.dirname(torch.__file__), 'include', 'torch',
                      'csrc', 'api', 'include', 'torch', 'all.h')
years = {'201402': 14, '201703': 17, '202002': 20, '202302': 23}
try:
    with open(header) as f:
        found = re.findall(r'__cplusplus\s*<\s*(\d{6})L', f.read())
except OSError:
    found = []
print(max((years.get(v, 17) for v in found), default=17))
EOF
)"

# A CUDA build compiles torch's ATen/cuda headers, which include the CUDA
# math libraries' headers (cusparse.h, cublas_v2.h, ...). A toolkit installed
# as compiler and runtime only lacks them (these build machines' CUDA 13.0,
# and the GPU machine's image), but torch's own CUDA wheels carry them under
# site-packages/nvidia/cu*/include of the environment: put that folder on
# the compiler's include path when the toolkit has no cusparse.h.
if [[ "${FORCE_CUDA:-0}" == 1 ]] ||
    "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    if [[ -z "${CUDA_HOME:-}" ]]; then
        # torch takes nvcc's grandparent folder, which is wrong for an nvcc on
        # the PATH that is a wrapper script or a link (/usr/local/bin/nvcc).
        if [[ -x /usr/local/cuda/bin/nvcc ]]; then
            CUDA_HOME=/usr/local/cuda
        else
            CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
        fi
        export CUDA_HOME
    fi
    CUDA_INCLUDE="$CUDA_HOME/include"
    if [[ ! -f "$CUDA_INCLUDE/cusparse.h" ]]; then
        WHEEL_INCLUDE="$("$PY" - <<'EOF'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
found = [d for r in roots
         for d in sorted(glob.glob(os.path.join(r, 'nvidia', 'cu*', 'include')))
         if os.path.isfile(os.path.join(d, 'cusparse.h'))]
print(found[0] if found else '')
EOF
)"
        if [[ -z "$WHEEL_INCLUDE" ]]; then
            echo "[build_mmcv] $CUDA_INCLUDE has no cusparse.h, and torch's CUDA wheels" \
                "(site-packages/nvidia/cu*/include) carry none either: install the CUDA" \
                "math libraries' headers" >&2
            exit 1
        fi
        echo "[build_mmcv] CUDA math libraries' headers from $WHEEL_INCLUDE" >&2
        export CPATH="$WHEEL_INCLUDE${CPATH:+:$CPATH}"
    fi
fi

SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
tar -xzf "$SDIST" -C "$SRC"
# mmcv-<version>/ or the fork's onedl_mmcv-<version>/
DIR="$(find "$SRC" -mindepth 1 -maxdepth 1 -type d -name '*mmcv-*' | head -n 1)"
# mmcv hard-codes C++17; torch >= 2.10 headers need C++20.
sed -i -e "s/-std=c++17/-std=c++$STD/g" -e "s#/std:c++17#/std:c++$STD#g" \
    "$DIR/setup.py"
echo "[build_mmcv] $(basename "$DIR") with ops, C++$STD," \
    "CUDA arch list '${TORCH_CUDA_ARCH_LIST:-torch default}', ${MAX_JOBS:-$(nproc)} jobs" >&2
mkdir -p "$OUT"
(cd "$DIR" &&
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "$PY" -m pip --disable-pip-version-check wheel -q --no-deps \
        --no-build-isolation --no-index -w "$SRC/wheel" .)
mv "$SRC"/wheel/*.whl "$OUT"/
