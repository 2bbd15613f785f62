#!/usr/bin/env bash
# The fast paths on one NVIDIA GPU in under 8 minutes, on a machine with
# PyTorch, Triton and timm but no internet and no OpenMMLab packages:
#   bash tools/gpu_check.sh [OUT_DIR]        (default work_dirs/gpu_check)
# It needs the pure-Python files tools/gpu_e2e/prepare.sh downloads into
# .gpu_e2e/ (bring that folder along with the checkout); mmcv is installed
# from its sdist without its compiled ops (MMCV_WITH_OPS=0, seconds): the
# backbones need its Python layers only. Then, each in a process of its own
# under a time limit, so that a hang loses that part alone
# (poolformer_mm/apis/gpu_check.py):
#   tests       the CUDA tests of every fast path (TRITON_INTERPRET=0);
#   bench       train step, eval and deploy of S12, M36, PoolFormerV2-S12 and
#               ConvFormer-S18 at 2x3x800x1216 and 4x3x512x512, fp16 autocast
#               then fp32 (then bf16): timm, reference, 'auto', Triton,
#               compiled (S12), paired by round, with the 1x1-convolution
#               floor;
#   train       S12 with a small head, fp16 autocast and GradScaler, AdamW at
#               the configs' learning rate, 'auto' and Triton: every loss
#               must be finite;
#   recompiles  impl='compile' over 50 detection-like batch sizes;
# and prints one table last (also OUT_DIR/table.md and summary.json). The
# exit status is 0 when every part finished and passed.
# Environment: PYTHON (python3, the interpreter that has torch), FILES
# (.gpu_e2e), and each part's seconds: TESTS_S (100), BENCH_S (190),
# TRAIN_S (60), RECOMPILES_S (60).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT=${1:-$ROOT/work_dirs/gpu_check}
PYTHON=${PYTHON:-python3}
FILES=${FILES:-$ROOT/.gpu_e2e}
SITE="$OUT/site"
WORK="$OUT/parts"
log() { printf '[gpu_check] %s\n' "$*" >&2; }

"$PYTHON" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit('[gpu_check] torch sees no CUDA device: this script needs a GPU')
print(f'[gpu_check] {torch.cuda.get_device_name()}, torch {torch.__version__}, '
      f'CUDA {torch.version.cuda}', file=sys.stderr)
PY
[[ -f "$FILES/SHA256SUMS" ]] || {
    log "no $FILES/SHA256SUMS: run tools/gpu_e2e/prepare.sh where pip can download"
    exit 1
}
(cd "$FILES" && sha256sum --quiet -c SHA256SUMS)
rm -rf "$SITE" "$WORK"
mkdir -p "$SITE" "$WORK"
START=$(date +%s)
"$PYTHON" -m pip --disable-pip-version-check install -q --no-index --no-deps \
    --no-compile --target "$SITE" "$FILES"/*.whl
# No build isolation: the machine's setuptools and torch; no ops: seconds.
MMCV_WITH_OPS=0 "$PYTHON" -m pip --disable-pip-version-check install -q \
    --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" \
    "$FILES"/mmcv-*.tar.gz
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
log "packages installed in $(($(date +%s) - START)) s"

STATUS=0
part() {  # NAME SECONDS [ARGS...]: the part's own budget, then a hard limit
    local name=$1 seconds=$2
    shift 2
    log "$name: up to $seconds s"
    timeout -k 10 $((seconds + 45)) "$PYTHON" -m poolformer_mm.apis.gpu_check \
        "$name" --work "$WORK" --seconds "$seconds" "$@" \
        >"$OUT/$name.log" 2>&1 || STATUS=1
    tail -n 5 "$OUT/$name.log" >&2 || true
}
part tests "${TESTS_S:-100}"
part bench "${BENCH_S:-190}"
part train "${TRAIN_S:-60}"
part recompiles "${RECOMPILES_S:-60}"
"$PYTHON" -m poolformer_mm.apis.gpu_check table --work "$WORK" --out "$OUT" \
    || STATUS=1
exit "$STATUS"
