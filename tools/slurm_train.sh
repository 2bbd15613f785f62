#!/usr/bin/env bash
# Training on a Slurm cluster, continued after a preemption or the time limit:
#   GPUS=16 tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options]
#
# From a login node the script submits itself with sbatch: --requeue, and
# --signal=USR1@GRACE (Slurm sends SIGUSR1 to the training GRACE seconds
# before the time limit; a preemption sends SIGTERM). Inside the job it starts
# one task per GPU with srun. tools/train.py gets --resume, so every start
# (a requeued job, or the same command again) continues from the newest
# complete checkpoint in WORK_DIR, or trains from scratch if there is none.
# On either signal the configs' PreemptionHook finishes the iteration, writes
# WORK_DIR/iter_N.pth and exits with code 75; the job then requeues itself.
#
# Environment: GPUS (8), GPUS_PER_NODE (8 or GPUS), CPUS_PER_TASK (5),
# GRACE (seconds, 180: enough for one iteration and a checkpoint write),
# SBATCH_ARGS (e.g. "--time=24:00:00"), SRUN_ARGS, PYTHON.
set -euo pipefail
if [[ $# -lt 4 ]]; then
    echo "usage: [GPUS=N] $0 PARTITION JOB_NAME CONFIG WORK_DIR [train.py options]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$((GPUS < 8 ? GPUS : 8))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
GRACE=${GRACE:-180}
SBATCH_ARGS=${SBATCH_ARGS:-""}
SRUN_ARGS=${SRUN_ARGS:-""}
PREEMPTED=75  # PreemptionHook's exit code (poolformer_mm.engine)
# sbatch runs a copy of this script from its spool folder: the checkout's
# path travels in the environment.
ROOT=${POOLFORMER_MM_ROOT:-"$(cd "$(dirname "$0")/.." && pwd)"}
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python
    [[ -x "$ROOT/.venv/bin/python" ]] && PYTHON="$ROOT/.venv/bin/python"
fi

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    mkdir -p "$WORK_DIR"
    NODES=$(((GPUS + GPUS_PER_NODE - 1) / GPUS_PER_NODE))
    # shellcheck disable=SC2086
    exec sbatch \
        --partition="$PARTITION" \
        --job-name="$JOB_NAME" \
        --nodes="$NODES" \
        --ntasks="$GPUS" \
        --ntasks-per-node="$GPUS_PER_NODE" \
        --gres=gpu:"$GPUS_PER_NODE" \
        --cpus-per-task="$CPUS_PER_TASK" \
        --requeue \
        --signal=USR1@"$GRACE" \
        --open-mode=append \
        --output="$WORK_DIR/slurm-%j.out" \
        --export=ALL,POOLFORMER_MM_ROOT="$ROOT",PYTHON="$PYTHON" \
        $SBATCH_ARGS \
        "$ROOT/tools/slurm_train.sh" "$PARTITION" "$JOB_NAME" "$CONFIG" "$WORK_DIR" "$@"
fi

# Inside the job. Slurm may signal this shell too: it must not die before the
# training has written its checkpoint. A trapped signal waits until the
# foreground srun has returned (bash runs the trap then).
SIGNALLED=0
trap 'SIGNALLED=1; echo "slurm_train.sh: got a signal while the training ran" >&2' TERM USR1
echo "slurm_train.sh: job ${SLURM_JOB_ID}, start $((${SLURM_RESTART_COUNT:-0} + 1))" >&2
STATUS=0
# shellcheck disable=SC2086
srun --kill-on-bad-exit=1 $SRUN_ARGS \
    "$PYTHON" -u "$ROOT/tools/train.py" "$CONFIG" --work-dir="$WORK_DIR" \
    --launcher=slurm --resume "$@" || STATUS=$?
if [[ $STATUS -eq $PREEMPTED || ( $SIGNALLED -eq 1 && $STATUS -ne 0 ) ]]; then
    echo "slurm_train.sh: training stopped (exit $STATUS); requeueing job $SLURM_JOB_ID" >&2
    # A preemption with PreemptMode=REQUEUE is requeued by Slurm itself.
    scontrol requeue "$SLURM_JOB_ID" || true
fi
exit "$STATUS"
