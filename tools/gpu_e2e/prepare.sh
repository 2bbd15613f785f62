#!/usr/bin/env bash
# Download what tools/gpu_e2e/run.sh installs on a GPU machine that has no
# internet (tools/gpu_e2e/files.txt: exact versions) into .gpu_e2e/ of the
# checkout (git ignores it), with a SHA256SUMS file:
#   tools/gpu_e2e/prepare.sh [--dry-run]
# --dry-run prints the pip commands instead of running them.
# Environment: PYTHON (.venv/bin/python, else python3; needs pip), PYTHON_VERSION (3.12: the GPU
# machine's), DEST (.gpu_e2e).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The checkout's environment: the mmcv sdist's metadata is made with its setuptools
# and wheel (no build isolation), which a bare python3 may lack.
if [[ -z "${PYTHON:-}" && -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; fi
PYTHON=${PYTHON:-python3}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
DEST=${DEST:-$ROOT/.gpu_e2e}
DRY_RUN=0
case "${1:-}" in
    --dry-run) DRY_RUN=1 ;;
    '') ;;
    *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$tag")
done

run() {
    if [[ $DRY_RUN == 1 ]]; then
        echo "$*"
    else
        "$@"
    fi
}

[[ $DRY_RUN == 1 ]] || mkdir -p "$DEST"
while read -r kind spec; do
    [[ -z "$kind" || "$kind" == \#* ]] && continue
    case "$kind" in
        sdist)
            run "$PYTHON" -m pip download -q --no-deps --no-binary :all: \
                --no-build-isolation -d "$DEST" "$spec" ;;
        wheel)
            run "$PYTHON" -m pip download -q --no-deps --only-binary :all: \
                --python-version "$PYTHON_VERSION" --implementation cp \
                "${PLATFORMS[@]}" -d "$DEST" "$spec" ;;
        image) ;;  # the GPU machine has it
        *)
            echo "tools/gpu_e2e/files.txt: unknown kind '$kind' (sdist, wheel or image)" >&2
            exit 1 ;;
    esac
done <"$ROOT/tools/gpu_e2e/files.txt"

if [[ $DRY_RUN == 0 ]]; then
    (cd "$DEST" && sha256sum -- *.whl *.tar.gz >SHA256SUMS)
    echo "[gpu_e2e] $(ls "$DEST" | grep -c -v SHA256SUMS) files," \
        "$(du -sh "$DEST" | cut -f1) in $DEST"
fi
