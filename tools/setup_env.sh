#!/usr/bin/env bash
# Create (or reuse) a virtual environment in the checkout with a whole
# supported stack and poolformer_mm itself (editable):
#   STACK=upstream (default): .venv/ with torch 2.14.1, mmengine 0.10.7, mmcv
#     2.1.0 with ops, mmdet 3.3.0, mmsegmentation 1.2.2 (the last upstream
#     OpenMMLab releases);
#   STACK=onedl: .venv-onedl/ with the maintained fork, which installs the
#     same modules under other distribution names: onedl-mmengine 0.10.12,
#     onedl-mmcv 2.3.6 with ops, onedl-mmdetection 3.5.1,
#     onedl-mmsegmentation 1.4.2.
# The package's own requirements (requirements/*.txt) are version ranges;
# TESTED below is the exact set this script installs and the tests run on.
#
# mmcv 2.1.0 has no wheel for current torch, so it is built once from its
# PyPI sdist and the wheel is cached outside the checkout (tools/mmcv_wheel.sh
# says how). On a machine with a GPU and nvcc, the same path builds CUDA ops
# because mmcv's setup.py sees torch.cuda.is_available(); FORCE_CUDA=1 forces
# it on a build host without a GPU (make setup-cuda builds and checks the
# data-centre GPUs' wheel without touching .venv).
#
# Re-running is cheap: a stamp in .venv records the hash of this script and
# setup.py, and the work is skipped while both are unchanged.
#
# Environment:
#   PYTHON               interpreter used to create the venv (python3)
#   STACK                upstream or onedl (see above)
#   POOLFORMER_MM_CACHE  cache folder for built wheels
#   MAX_JOBS             parallel compile jobs for mmcv (nproc)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
STACK="${STACK:-upstream}"

TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
# The same for both stacks; numpy 2 with the opencv and onnx that need it.
COMMON=(timm==1.0.31 safetensors==0.8.0 numpy==2.4.6 opencv-python==4.14.0.94
    onnx==1.23.2 onnxruntime==1.32.0 pytest==8.4.2 pytest-xdist==3.8.0)
case "$STACK" in
upstream)
    VENV="$ROOT/.venv"
    MMCV_DIST=mmcv
    MMCV_VERSION=2.1.0
    TESTED=(mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 "${COMMON[@]}")
    FRAMEWORKS=(-r "$ROOT/requirements/mmdet.txt" -r "$ROOT/requirements/mmseg.txt")
    ;;
onedl)
    VENV="$ROOT/.venv-onedl"
    MMCV_DIST=onedl-mmcv
    MMCV_VERSION=2.3.6
    TESTED=(onedl-mmengine==0.10.12 onedl-mmdetection==3.5.1
        onedl-mmsegmentation==1.4.2 "${COMMON[@]}")
    FRAMEWORKS=(-r "$ROOT/requirements/onedl.txt")
    ;;
*)
    echo "[setup] STACK=$STACK: give upstream or onedl" >&2
    exit 2
    ;;
esac
# `setup_env.sh --mmcv`: the stack's mmcv distribution and version, for
# tools/setup_cuda.sh.
if [[ "${1:-}" == --mmcv ]]; then
    echo "$MMCV_DIST $MMCV_VERSION"
    exit 0
fi
# mmcv's setup.py and mmengine's `mmdet::` config lookup import pkg_resources
# (gone in setuptools 81); torch 2.14 wants >=77.
SETUPTOOLS_SPEC='setuptools>=77,<81'

log() { printf '[setup] %s\n' "$*" >&2; }

stamp_value() {
    cat "$ROOT/tools/setup_env.sh" "$ROOT/tools/build_mmcv.sh" "$ROOT/setup.py" \
        "$ROOT/tools/mmcv_wheel.sh" "$ROOT"/requirements/*.txt \
        | sha256sum | cut -d' ' -f1
}

STAMP="$VENV/.poolformer_mm_setup"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_value)" ]]; then
    log "environment up to date: $VENV"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# pip install, naming the usual cause when it fails on these machines: a full
# disk (torch's CUDA build alone takes about 5.5 GB of the venv's ~6 GB).
pip_install() {
    if ! "${PIP[@]}" install "$@"; then
        local free
        free="$(df -Pk "$VENV" | awk 'NR == 2 { printf "%.1f", $4 / 1048576 }')"
        log "pip install failed ($*); free disk space where $VENV lives:" \
            "$free GB (the environment needs about 6.5 GB)"
        exit 1
    fi
}

pip_install -q --upgrade pip "$SETUPTOOLS_SPEC" wheel ninja
pip_install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

install_mmcv() {
    local wheel
    wheel="$(bash "$ROOT/tools/mmcv_wheel.sh" "$PY" "$MMCV_VERSION" "$MMCV_DIST")"
    pip_install -q --no-deps "$wheel"
}

if "$PY" -c 'import mmcv, sys; sys.exit(mmcv.__version__ != "'$MMCV_VERSION'")' 2>/dev/null &&
    "$PY" -c 'import mmcv.ops' 2>/dev/null; then
    log "mmcv $MMCV_VERSION with ops already installed"
else
    install_mmcv
fi

# mmcv's runtime dependencies (installed --no-deps above), the frameworks,
# test tools and this package.
pip_install -q "${TESTED[@]}" -r "$ROOT/requirements/runtime.txt" \
    "${FRAMEWORKS[@]}" -r "$ROOT/requirements/deploy.txt" \
    -r "$ROOT/requirements/stack.txt" -r "$ROOT/requirements/tests.txt"
pip_install -q --no-deps --no-build-isolation -e "$ROOT"

log "verifying mmcv ops on CPU"
"$PY" - <<'EOF'
import torch
from mmcv.ops import RoIAlign, nms

boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
scores = torch.tensor([0.9, 0.8, 0.7])
_, keep = nms(boxes, scores, iou_threshold=0.5)
assert keep.tolist() == [0, 2], f'nms kept {keep.tolist()}, expected [0, 2]'
feats = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
rois = torch.tensor([[0., 0., 0., 4., 4.]])
out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feats, rois)
assert out.shape == (1, 1, 2, 2) and torch.isfinite(out).all(), out
import mmdet, mmseg, mmengine, poolformer_mm  # noqa: F401,E401
print(f'[setup] ok: torch {torch.__version__}, mmcv ops, mmdet {mmdet.__version__}, '
      f'mmseg {mmseg.__version__}, mmengine {mmengine.__version__}')
EOF

stamp_value >"$STAMP"
log "done: use $VENV/bin/python"
