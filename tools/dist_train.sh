#!/usr/bin/env bash
# Distributed training with torchrun:
#   tools/dist_train.sh CONFIG NUM_PROCS [--max-restarts=N] [train.py options]
# --max-restarts=N (torchrun's option): when a worker dies, torchrun starts
# the worker group again, up to N times, and the new workers resume from the
# newest complete checkpoint in the work dir by themselves.
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and PORT) on every node.
# On machines without CUDA the processes use the gloo backend on the CPU.
set -euo pipefail
CONFIG=$1
NPROC=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python
    [[ -x "$ROOT/.venv/bin/python" ]] && PYTHON="$ROOT/.venv/bin/python"
fi

TORCHRUN_ARGS=()
TRAIN_ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --max-restarts=*|--max_restarts=*)
            TORCHRUN_ARGS+=("--max-restarts=${1#*=}") ;;
        --max-restarts|--max_restarts)
            [[ $# -ge 2 ]] || { echo "error: $1 needs a number" >&2; exit 2; }
            TORCHRUN_ARGS+=("--max-restarts=$2"); shift ;;
        *)
            TRAIN_ARGS+=("$1") ;;
    esac
    shift
done

"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "${TORCHRUN_ARGS[@]}" \
    "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "${TRAIN_ARGS[@]}"
