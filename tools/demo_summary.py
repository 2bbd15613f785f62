"""Report a demo run: its test metric against the demo's goal, and one PNG.

``tools/test.py`` leaves the metrics in
``WORK_DIR/<timestamp>/<timestamp>.json`` and, with ``--show-dir``, one drawn
image per validation image (under the run's folder for detection, under the
work dir for segmentation). This tool prints the metric next to the goal the
README promises and tiles the first drawn images into a single picture.

Example:
    python tools/demo_summary.py work_dirs/demo/retinanet/test \
        --metric coco/bbox_mAP --goal 0.30 \
        --out work_dirs/demo/retinanet/predictions.png
"""
import argparse
import glob
import json
import math
import os.path as osp
import sys

from PIL import Image

IMAGE_EXTS = ('.png', '.jpg', '.jpeg')


def latest_run(work_dir):
    """The newest ``<timestamp>`` folder that holds a metrics file."""
    runs = sorted(
        d for d in glob.glob(osp.join(work_dir, '*'))
        if osp.isfile(osp.join(d, osp.basename(d) + '.json')))
    if not runs:
        raise FileNotFoundError(
            f'no test run with metrics under {work_dir!r} (expected '
            '<timestamp>/<timestamp>.json written by tools/test.py)')
    return runs[-1]


def read_metrics(run_dir):
    with open(osp.join(run_dir, osp.basename(run_dir) + '.json')) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    metrics = {}
    for line in lines:
        metrics.update(line)
    return metrics


def tile(paths, out, columns=4):
    images = [Image.open(p).convert('RGB') for p in paths]
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    rows = math.ceil(len(images) / columns)
    canvas = Image.new('RGB', (w * min(columns, len(images)), h * rows),
                       (255, 255, 255))
    for i, im in enumerate(images):
        canvas.paste(im, ((i % columns) * w, (i // columns) * h))
    canvas.save(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir', help='--work-dir given to tools/test.py')
    parser.add_argument('--metric', required=True,
                        help='metric key, e.g. coco/bbox_mAP or mIoU')
    parser.add_argument('--goal', type=float, required=True,
                        help='value the demo must reach (metric in 0..1)')
    parser.add_argument('--out', required=True, help='PNG to write')
    parser.add_argument('--num-images', type=int, default=8,
                        help='drawn validation images to tile')
    parser.add_argument('--strict', action='store_true',
                        help='exit with status 1 when the goal is not reached')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    run_dir = latest_run(args.work_dir)
    metrics = read_metrics(run_dir)
    timing = {'data_time', 'time', 'step', 'iter', 'epoch'}
    if args.metric in metrics:
        value = float(metrics[args.metric])
    elif not set(metrics) - timing:
        # CocoMetric reports nothing when no image got a prediction above
        # the score threshold: that is a score of 0, not a broken run.
        print(f'no metrics in {run_dir}: no predictions above the score '
              'threshold, counted as 0')
        value = 0.
    else:
        sys.exit(f'error: metric {args.metric!r} not in {run_dir}; found '
                 f'{sorted(metrics)}')
    # MMSegmentation reports percentages, MMDetection fractions.
    if value > 1:
        value /= 100
    # MMDetection draws into the run's folder, MMSegmentation (through
    # tools/test.py) into the work dir.
    drawn = []
    for folder in (run_dir, args.work_dir):
        drawn = sorted(
            p for p in glob.glob(osp.join(folder, '**', '*'), recursive=True)
            if p.lower().endswith(IMAGE_EXTS))
        if drawn:
            break
    if not drawn:
        sys.exit(f'error: no drawn images under {run_dir} (was tools/test.py '
                 'run with --show-dir?)')
    tile(drawn[:args.num_images], args.out)
    verdict = 'reached' if value >= args.goal else 'NOT reached'
    print(f'{args.metric} = {value:.3f} (goal {args.goal:.2f}: {verdict})')
    print(f'predictions on {min(len(drawn), args.num_images)} validation '
          f'images: {args.out}')
    return 1 if args.strict and value < args.goal else 0


if __name__ == '__main__':
    sys.exit(main())
