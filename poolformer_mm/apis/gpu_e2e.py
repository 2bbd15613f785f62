"""Train and test the real configs for a few iterations on a GPU and
tabulate what they did: the second half of ``tools/gpu_e2e/run.sh``
(``tools/gpu_e2e/driver.py`` is its command line).

For RetinaNet, Mask R-CNN and Semantic FPN with PoolFormer-S12 (this
package's configs) and with ResNet-50 (MMDetection's / MMSegmentation's own
configs, the reference a user compares with), in float32 and with ``--amp``:
``tools/train.py`` for ``--iters`` iterations on the demo data
(tools/make_demo_data.py), then ``tools/test.py`` on ``--test-images``
validation images. The configs are the real ones (model, optimizer,
schedule, image sizes, batch per GPU); a generated config per run only points
them at the demo data and its classes, turns ImageNet weights off (nothing
can be downloaded offline) and logs every iteration unsmoothed.

The runs share one process (the frameworks are imported once): they call
:func:`poolformer_mm.apis.train` and :func:`poolformer_mm.apis.test`, what
``tools/train.py`` and ``tools/test.py`` run.

Prints one table last: per config and precision, how many losses were
finite, the median iteration time (after the first ``--warmup``), the peak
GPU memory (mmengine's ``memory``: the allocator's peak per iteration), the
ratios to the ResNet-50 model of the same task and precision, and how many
predictions the test step produced. Also writes ``summary.json``.

"""
import functools
import gc
import json
import math
import os
import os.path as osp
import statistics
import sys
import time
import traceback

from ..config_package import config_dir
from .runs import test, train

CONFIGS = config_dir()

DET_CLASSES = ('circle', 'square', 'triangle', 'star')
# ADE20K layout of the demo data: 0 is unlabelled (reduce_zero_label).
SEG_CLASSES = ('background', ) + DET_CLASSES

# name: (task, base config, reference name)
MODELS = {
    'retinanet_poolformer_s12': (
        'retinanet', osp.join(CONFIGS, 'retinanet_poolformer_s12.py'),
        'retinanet_r50'),
    'mask_rcnn_poolformer_s12': (
        'mask_rcnn', osp.join(CONFIGS, 'mask_rcnn_poolformer_s12.py'),
        'mask_rcnn_r50'),
    'sem_fpn_poolformer_s12': (
        'sem_fpn', osp.join(CONFIGS, 'sem_fpn_poolformer_s12.py'),
        'sem_fpn_r50'),
    'retinanet_r50': (
        'retinanet', 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', None),
    'mask_rcnn_r50': (
        'mask_rcnn', 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', None),
    'sem_fpn_r50': (
        'sem_fpn', 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py', None),
}
PRECISIONS = ('fp32', 'amp')

DETECTION = '''
data_root = {data_root!r}
metainfo = dict(classes={classes!r})
train_dataloader = dict(dataset=dict(
    data_root=data_root, metainfo=metainfo,
    ann_file='annotations/instances_train.json',
    data_prefix=dict(img='train/'),
    # The first {train_images}: {iters} iterations of one epoch.
    indices={train_images}))
val_dataloader = dict(dataset=dict(
    data_root=data_root, metainfo=metainfo,
    ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
    indices={test_images}))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=1000)
'''
SEGMENTATION = '''
data_root = {data_root!r}
metainfo = dict(classes={classes!r})
dataset = dict(
    _delete_=True, type='BaseSegDataset', data_root=data_root,
    metainfo=metainfo, img_suffix='.png', seg_map_suffix='.png',
    reduce_zero_label=True)
train_dataloader = dict(dataset=dict(
    dataset, data_prefix=dict(img_path='images/training',
                              seg_map_path='annotations/training'),
    pipeline=_base_.train_dataloader.dataset.pipeline))
val_dataloader = dict(dataset=dict(
    dataset, data_prefix=dict(img_path='images/validation',
                              seg_map_path='annotations/validation'),
    pipeline=_base_.val_dataloader.dataset.pipeline,
    indices={test_images}))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={iters}, val_interval=1000)
'''
# The heads' class counts; offline, no ImageNet weights (ours: init_cfg;
# ResNet-50: init_cfg, and in MMSegmentation the model's `pretrained`).
MODEL = {
    'retinanet': ("model = dict(backbone=dict(init_cfg=None), "
                  "bbox_head=dict(num_classes={n}))\n"),
    'mask_rcnn': ("model = dict(backbone=dict(init_cfg=None), roi_head=dict("
                  "bbox_head=dict(num_classes={n}), "
                  "mask_head=dict(num_classes={n})))\n"),
    'sem_fpn': ("model = dict(pretrained=None, backbone=dict(init_cfg=None), "
                "decode_head=dict(num_classes={n}))\n"),
}
# Every iteration logged, not smoothed over a window: per-iteration times
# and memory.
LOGGING = '''
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={checkpoint_interval}))
log_processor = dict(window_size=1)
'''


@functools.lru_cache(maxsize=None)
def batch_size(base, out_dir):
    """The base config's images per GPU (read once per base: each precision
    writes its config)."""
    from mmengine.config import Config
    probe = osp.join(out_dir, '_batch_size_probe.py')
    with open(probe, 'w') as f:
        f.write(f'_base_ = [{base!r}]\n')
    try:
        return Config.fromfile(probe).train_dataloader.batch_size
    finally:
        os.remove(probe)


def write_config(name, data, iters, test_images, out_dir):
    """The run's config: the real one, pointed at the demo data."""
    task, base, _ = MODELS[name]
    os.makedirs(out_dir, exist_ok=True)
    if task == 'sem_fpn':
        text = SEGMENTATION.format(
            data_root=osp.join(data, 'ade', ''),
            classes=SEG_CLASSES,
            iters=iters,
            test_images=list(range(test_images)))
        n_classes = len(SEG_CLASSES)
        checkpoint_interval = iters
    else:
        train_images = iters * batch_size(base, out_dir)
        text = DETECTION.format(
            data_root=osp.join(data, 'coco', ''),
            classes=DET_CLASSES,
            iters=iters,
            train_images=list(range(train_images)),
            test_images=list(range(test_images)))
        n_classes = len(DET_CLASSES)
        checkpoint_interval = 1
    text += MODEL[task].format(n=n_classes)
    text += LOGGING.format(checkpoint_interval=checkpoint_interval)
    path = osp.join(out_dir, f'{name}.py')
    with open(path, 'w') as f:
        f.write(f'_base_ = [{base!r}]\n' + text)
    return path


def read_scalars(work_dir):
    """The per-iteration records of the run's ``vis_data/scalars.json``."""
    records = []
    for run in sorted(os.listdir(work_dir)):
        path = osp.join(work_dir, run, 'vis_data', 'scalars.json')
        if osp.isfile(path):
            with open(path) as f:
                records += [json.loads(line) for line in f if line.strip()]
    return [r for r in records if 'loss' in r]


def summarize(records, warmup):
    """Losses finite / logged, median iteration time, peak memory."""
    losses = [r['loss'] for r in records]
    times = [r['time'] for r in records[warmup:] if 'time' in r]
    memory = [r['memory'] for r in records if 'memory' in r]
    return dict(
        iterations=len(records),
        finite_losses=sum(math.isfinite(x) for x in losses),
        all_losses_finite=bool(losses) and all(map(math.isfinite, losses)),
        median_iter_s=statistics.median(times) if times else None,
        peak_memory_mb=max(memory) if memory else None)


def count_predictions(out_path, task):
    if task == 'sem_fpn':
        return len([n for n in os.listdir(out_path) if n.endswith('.png')])
    import pickle
    with open(out_path, 'rb') as f:
        return len(pickle.load(f))


def run_one(name: str, precision: str, data: str, out_dir: str,
            iters: int = 40, warmup: int = 5, test_images: int = 8,
            seed: int = 0) -> dict:
    """Train ``name`` (a key of :data:`MODELS`) for ``iters`` iterations in
    ``precision`` ('fp32' or 'amp') on the demo data ``data``, then test it
    on ``test_images`` images; what :func:`summarize` says, the predictions
    and metrics, or the error (one broken run must not hide the others)."""
    task = MODELS[name][0]
    run = f'{name}_{precision}'
    work_dir = osp.join(out_dir, run)
    config = write_config(name, data, iters, test_images,
                          osp.join(out_dir, 'configs'))
    unique = {'experiment_name': run, 'visualizer.name': run,
              'randomness.seed': seed}
    result = dict(run=run, model=name, task=task, precision=precision,
                  config=config)
    start = time.perf_counter()
    try:
        train(config, work_dir, unique, amp=precision == 'amp')
        result.update(summarize(read_scalars(work_dir), warmup))
        with open(osp.join(work_dir, 'last_checkpoint')) as f:
            checkpoint = f.read().strip()
        out = osp.join(work_dir, 'preds' if task == 'sem_fpn' else
                       'preds.pkl')
        metrics = test(config, checkpoint, work_dir,
                       {'experiment_name': f'{run}_test',
                        'visualizer.name': f'{run}_test'}, out=out)
        result['predictions'] = count_predictions(out, task)
        result['metrics'] = {k: float(v) for k, v in (metrics or {}).items()
                             if isinstance(v, (int, float))}
    except Exception as exc:  # one broken run must not hide the others
        traceback.print_exc()
        result['error'] = f'{type(exc).__name__}: {exc}'
    result['wall_s'] = time.perf_counter() - start
    import torch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    gc.collect()
    return result


def _fmt(value, pattern):
    return '-' if value is None else pattern.format(value)


def table(results):
    """The summary table (markdown), one row per run."""
    by_run = {(r['model'], r['precision']): r for r in results}
    lines = [
        '| config | precision | finite losses | median iter (ms) | '
        'peak memory (MB) | time / R50 | memory / R50 | predictions |',
        '| --- | --- | --- | --- | --- | --- | --- | --- |'
    ]
    for r in results:
        ref_name = MODELS[r['model']][2]
        ref = by_run.get((ref_name, r['precision'])) if ref_name else None
        time_ratio = memory_ratio = None
        if ref and r.get('median_iter_s') and ref.get('median_iter_s'):
            time_ratio = r['median_iter_s'] / ref['median_iter_s']
        if ref and r.get('peak_memory_mb') and ref.get('peak_memory_mb'):
            memory_ratio = r['peak_memory_mb'] / ref['peak_memory_mb']
        if 'error' in r and 'iterations' not in r:
            finite = 'failed: ' + r['error'][:60]
        else:
            finite = f"{r.get('finite_losses', 0)}/{r.get('iterations', 0)}"
        median = r.get('median_iter_s')
        lines.append(
            f"| {r['model']} | {r['precision']} | {finite} | "
            f"{_fmt(median and median * 1e3, '{:.1f}')} | "
            f"{_fmt(r.get('peak_memory_mb'), '{:.0f}')} | "
            f"{_fmt(time_ratio, '{:.2f}')} | {_fmt(memory_ratio, '{:.2f}')} |"
            f" {_fmt(r.get('predictions'), '{}')} |")
    return '\n'.join(lines)


def run_all(data: str, out_dir: str, models=tuple(MODELS),
            precisions=PRECISIONS, **kwargs) -> list:
    """:func:`run_one` for every model and precision; writes
    ``summary.json`` into ``out_dir`` and returns the results."""
    os.makedirs(out_dir, exist_ok=True)
    results = []
    for name in models:
        for precision in precisions:
            print(f'[gpu_e2e] {name} {precision}', file=sys.stderr,
                  flush=True)
            results.append(run_one(name, precision, data, out_dir, **kwargs))
    with open(osp.join(out_dir, 'summary.json'), 'w') as f:
        json.dump(results, f, indent=1)
    return results
