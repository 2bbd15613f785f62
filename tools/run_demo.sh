#!/usr/bin/env bash
# The README's first command (`make demo` runs it after the set-up): write the
# synthetic demo data, train a PoolFormer-S12 model on it with tools/train.py,
# evaluate it with tools/test.py, and draw its predictions on validation images.
#
#   bash tools/run_demo.sh [retinanet|mask_rcnn|sem_fpn]     (default retinanet)
#
# Environment:
#   PRETRAINED=/path/to/poolformer_s12.pth.tar  start from local ImageNet
#       weights (any format the loader reads) instead of from scratch.
#   DEMO_DATA=data/demo   where the demo data set goes.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MODEL=${1:-retinanet}
DATA=${DEMO_DATA:-data/demo}

case "$MODEL" in
    retinanet) METRIC=coco/bbox_mAP; GOAL=0.30 ;;
    mask_rcnn) METRIC=coco/segm_mAP; GOAL=0.25 ;;
    sem_fpn) METRIC=mIoU; GOAL=0.50 ;;
    *)
        echo "error: unknown demo model '$MODEL'; one of retinanet, mask_rcnn, sem_fpn" >&2
        exit 2 ;;
esac
CONFIG=configs/demo/${MODEL}_poolformer_s12_demo.py
WORK_DIR=work_dirs/demo/$MODEL

if [ ! -x "$PYTHON" ]; then
    echo "error: $PYTHON not found; run 'make setup' (or 'make demo') first" >&2
    exit 2
fi

# The configs read data/demo/{coco,ade}; another DEMO_DATA goes in by override.
if [ "$MODEL" = sem_fpn ]; then
    DATA_OPTS=(train_dataloader.dataset.data_root="$DATA/ade/"
               val_dataloader.dataset.data_root="$DATA/ade/"
               test_dataloader.dataset.data_root="$DATA/ade/")
else
    DATA_OPTS=(train_dataloader.dataset.data_root="$DATA/coco/"
               val_dataloader.dataset.data_root="$DATA/coco/"
               test_dataloader.dataset.data_root="$DATA/coco/"
               val_evaluator.ann_file="$DATA/coco/annotations/instances_val.json"
               test_evaluator.ann_file="$DATA/coco/annotations/instances_val.json")
fi
INIT_OPTS=()
if [ -n "${PRETRAINED:-}" ]; then
    if [ ! -f "$PRETRAINED" ]; then
        echo "error: PRETRAINED=$PRETRAINED is no file" >&2
        exit 2
    fi
    INIT_OPTS=(model.backbone.init_cfg.type=Pretrained
               model.backbone.init_cfg.checkpoint="$PRETRAINED")
fi

start=$(date +%s)
echo "== demo data: $DATA"
"$PYTHON" tools/make_demo_data.py --out "$DATA"

echo "== training $CONFIG (work dir $WORK_DIR)"
rm -rf "$WORK_DIR"
"$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" \
    --cfg-options "${DATA_OPTS[@]}" "${INIT_OPTS[@]}"

echo "== evaluating the final checkpoint on the validation images"
CHECKPOINT=$(cat "$WORK_DIR/last_checkpoint")
"$PYTHON" tools/test.py "$CONFIG" "$CHECKPOINT" --work-dir "$WORK_DIR/test" \
    --show-dir predictions --cfg-options "${DATA_OPTS[@]}"

echo "== result ($(( $(date +%s) - start )) s in all)"
"$PYTHON" tools/demo_summary.py "$WORK_DIR/test" --metric "$METRIC" \
    --goal "$GOAL" --out "$WORK_DIR/predictions.png"
