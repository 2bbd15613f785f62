#!/usr/bin/env bash
# The configs end to end on one NVIDIA GPU, on a machine with CUDA's compiler
# and PyTorch but no internet and no OpenMMLab packages:
#   bash tools/gpu_e2e/run.sh [OUT_DIR]        (default work_dirs/gpu_e2e)
# It needs the files tools/gpu_e2e/prepare.sh downloads into .gpu_e2e/ (bring
# that folder along with the checkout). Steps:
#   1. checks them (SHA256SUMS), installs the wheels into OUT_DIR/site (on
#      PYTHONPATH: the machine's torch stays), builds mmcv 2.1.0 with CUDA ops
#      for this GPU's architecture only, on all cores, and prints the build
#      time; checks mmcv's CUDA ops against their CPU versions;
#   2. writes the demo data and runs tools/gpu_e2e/driver.py: RetinaNet, Mask
#      R-CNN and Semantic FPN with PoolFormer-S12 (this package's configs) and
#      with ResNet-50 (MMDetection's / MMSegmentation's), 40 iterations in
#      float32 and 40 with --amp each, then tools/test.py on a few images;
#   3. prints the table last (also OUT_DIR/summary.json and table.md).
# Environment: PYTHON (python3, the interpreter that has torch), FILES
# (.gpu_e2e), ITERS (40), MAX_JOBS (nproc).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT=${1:-$ROOT/work_dirs/gpu_e2e}
PYTHON=${PYTHON:-python3}
FILES=${FILES:-$ROOT/.gpu_e2e}
ITERS=${ITERS:-40}
SITE="$OUT/site"
log() { printf '[gpu_e2e] %s\n' "$*" >&2; }

"$PYTHON" - <<'EOF'
import shutil, sys, torch
if not torch.cuda.is_available():
    sys.exit('[gpu_e2e] torch sees no CUDA device: this script needs a GPU')
if shutil.which('nvcc') is None:
    sys.exit('[gpu_e2e] nvcc is not on PATH: mmcv\'s CUDA ops need it')
print(f'[gpu_e2e] {torch.cuda.get_device_name()}, torch {torch.__version__}, '
      f'CUDA {torch.version.cuda}', file=sys.stderr)
EOF
[[ -f "$FILES/SHA256SUMS" ]] || {
    log "no $FILES/SHA256SUMS: run tools/gpu_e2e/prepare.sh where pip can download"
    exit 1
}
(cd "$FILES" && sha256sum --quiet -c SHA256SUMS)
mkdir -p "$OUT"

# 1. The stack.
rm -rf "$SITE"
"$PYTHON" -m pip --disable-pip-version-check install -q --no-index --no-deps \
    --no-compile --target "$SITE" "$FILES"/*.whl
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
ARCH="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
START=$(date +%s)
TORCH_CUDA_ARCH_LIST="$ARCH" FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    bash "$ROOT/tools/build_mmcv.sh" "$PYTHON" "$FILES"/mmcv-*.tar.gz "$OUT/mmcv_wheel"
BUILD_S=$(($(date +%s) - START))
log "mmcv built for sm_${ARCH/./} in ${BUILD_S} s on ${MAX_JOBS:-$(nproc)} jobs"
"$PYTHON" -m pip --disable-pip-version-check install -q --no-index --no-deps \
    --no-compile --target "$SITE" "$OUT"/mmcv_wheel/mmcv-*.whl
"$PYTHON" "$ROOT/tools/gpu_e2e/check_ops.py"

# 2. Demo data and the runs.
"$PYTHON" "$ROOT/tools/make_demo_data.py" --out "$OUT/data" --num-train 160 \
    --num-val 16 --size 160 --seed 0 >/dev/null
STATUS=0
"$PYTHON" "$ROOT/tools/gpu_e2e/driver.py" --data "$OUT/data" --out "$OUT" \
    --iters "$ITERS" >"$OUT/driver.log" 2>&1 || STATUS=$?
tail -n 40 "$OUT/driver.log" | grep -v '^|' >&2 || true

# 3. The table, last.
{
    "$PYTHON" - "$OUT" "$BUILD_S" <<'EOF'
import json, subprocess, sys, torch
out, build_s = sys.argv[1], sys.argv[2]
driver = subprocess.run(['nvidia-smi', '--query-gpu=driver_version',
                         '--format=csv,noheader'], capture_output=True,
                        text=True).stdout.strip()
print(f'{torch.cuda.get_device_name()}, driver {driver}, torch '
      f'{torch.__version__}, CUDA {torch.version.cuda}, mmcv 2.1.0 built in '
      f'{build_s} s')
EOF
    sed -n '/^| config /,$p' "$OUT/driver.log"
} | tee "$OUT/table.md"
exit "$STATUS"
