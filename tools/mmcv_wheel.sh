#!/usr/bin/env bash
# The cached mmcv wheel with ops for an environment; built once if missing:
#   tools/mmcv_wheel.sh PYTHON VERSION [DIST]   (prints the wheel's path)
# DIST: mmcv (default) or the maintained fork's onedl-mmcv, which installs the
# same module. The cache is keyed by the distribution, its, torch's and
# Python's versions, the CPU or CUDA build and, for CUDA, the architecture
# list:
#   ${POOLFORMER_MM_CACHE:-~/.cache/poolformer_mm}/wheels/<key>/mmcv-*.whl
# A CUDA build happens where torch sees a GPU or with FORCE_CUDA=1, for
# TORCH_CUDA_ARCH_LIST (torch's own list when unset). Next to the wheel,
# build.txt records the build's seconds, cores and the wheel's size.
# Used by tools/setup_env.sh and tools/setup_cuda.sh.
set -euo pipefail
if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 PYTHON VERSION [DIST]" >&2
    exit 2
fi
PY=$1
MMCV_VERSION=$2
DIST=${3:-mmcv}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${POOLFORMER_MM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/poolformer_mm}"
log() { printf '[mmcv_wheel] %s\n' "$*" >&2; }

pyver="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
torchver="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
build="cpu"
if [[ "${FORCE_CUDA:-0}" == 1 ]] ||
    "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    build="cuda$("$PY" -c 'import torch; print(torch.version.cuda)')"
    if [[ -n "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
        # "8.0;9.0" -> sm80-90
        build="$build-sm$(echo "$TORCH_CUDA_ARCH_LIST" | tr -d '.' | tr ' ;' '--')"
    fi
fi
out="$CACHE/wheels/$DIST-$MMCV_VERSION-torch$torchver-$pyver-$build-$(uname -m)"
if compgen -G "$out/*.whl" >/dev/null; then
    log "reusing cached mmcv wheel: $out"
else
    src="$(mktemp -d)"
    trap 'rm -rf "$src" "$out.tmp"' EXIT
    log "building $DIST $MMCV_VERSION with ops ($build); 12-20 min on 2 cores for" \
        "the CPU ops, about 45 min per CUDA architecture"
    "$PY" -m pip --disable-pip-version-check download -q --no-deps \
        --no-binary :all: --no-build-isolation -d "$src" "$DIST==$MMCV_VERSION"
    start=$(date +%s)
    bash "$ROOT/tools/build_mmcv.sh" "$PY" "$(compgen -G "$src/*.tar.gz" | head -n 1)" "$out.tmp"
    seconds=$(($(date +%s) - start))
    # CPU time of the build (this script's children), which other jobs on the
    # machine do not inflate: "<user>m<s>s <sys>m<s>s" from bash's `times`.
    # (Not in $(...): a subshell starts with its own counters at zero.)
    times >"$src/times"
    cpu="$(tail -n 1 "$src/times")"
    mkdir -p "$out"
    mv "$out.tmp"/*.whl "$out"/
    wheel="$(compgen -G "$out/*.whl" | head -n 1)"
    printf 'build %s\nseconds %d\ncpu_user_sys %s\ncores %d\nmax_jobs %s\nbytes %d\ndate %s\n' \
        "$build" "$seconds" "$cpu" "$(nproc)" "${MAX_JOBS:-$(nproc)}" \
        "$(stat -c %s "$wheel")" "$(date -u +%Y-%m-%d)" >"$out/build.txt"
    log "built $wheel in ${seconds} s"
fi
compgen -G "$out/*.whl" | head -n 1
