"""Short demo runs for the tool tests.

:func:`train_demos` trains demo configs (``configs/demo/*``) for a couple
of iterations through ``tools/train.py``, for tests that need a checkpoint
written by a real training (the ``trained_demo`` fixture of conftest.py).

A tiny, deterministic RetinaNet demo run:

The config inherits ``configs/demo/retinanet_poolformer_s12_demo.py`` and
overrides only what keeps the tests small and repeatable: the ``demo_data``
fixture's 8 training images at 64x64 (by default), 2 images per batch (4
iterations an epoch), no validation, a checkpoint every epoch, no
data-loader workers and (unless ``flip=True``) no random flip. Tests of the
training runtime ask for a smaller network (``small_model=True``).
"""
import glob
import json
import math
import os.path as osp
import sys

from helpers.commands import CONFIGS, TOOLS, run_commands

DEMO_CONFIG = osp.join(CONFIGS, 'demo', 'retinanet_poolformer_s12_demo.py')
DEMO_MODELS = ('retinanet', 'mask_rcnn', 'sem_fpn')

TEMPLATE = '''
_base_ = [{base!r}]
custom_imports = dict(imports={imports!r}, allow_failed_imports=False)
data_root = {data_root!r}
tiny_scale = {scale!r}
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=tiny_scale, keep_ratio=True),{flip}
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=tiny_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root,
                 ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root,
                 ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
val_dataloader = None
val_cfg = None
val_evaluator = None
train_cfg = dict(max_epochs={max_epochs}, val_interval=1000)
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=1, max_keep_ckpts={max_keep_ckpts}))
randomness = dict(seed=0, deterministic=True)
{extra}
'''


# A PoolFormer of one block a stage with narrow FPN and heads, for tests of
# the training runtime, where the network's size only costs time (and
# checkpoint megabytes).
SMALL_MODEL = '''
model = dict(
    backbone=dict(arch=dict(_delete_=True, layers=[1, 1, 1, 1],
                            embed_dims=[16, 32, 64, 128],
                            mlp_ratios=4, layer_scale_init_value=1e-5)),
    neck=dict(in_channels=[32, 64, 128], out_channels=32),
    bbox_head=dict(in_channels=32, feat_channels=32, stacked_convs=2,
                   norm_cfg=dict(num_groups=8)))
'''


# One block a stage, narrow: the real configs' detectors and segmentors
# around a PoolFormer whose depth and width would only cost the tests time.
NARROW_ARCH = dict(_delete_=True, layers=[1, 1, 1, 1],
                   embed_dims=[16, 32, 64, 128], mlp_ratios=4,
                   layer_scale_init_values=1e-5)


def write_narrow_config(path, base, **model):
    """Write a config to ``path`` that inherits ``base`` with the backbone's
    arch :data:`NARROW_ARCH` and the other ``model`` overrides (the neck's
    ``in_channels`` must follow: 16, 32, 64, 128 per stage); return its
    path."""
    model = dict(backbone=dict(arch=NARROW_ARCH), **model)
    with open(path, 'w') as f:
        f.write(f'_base_ = [{str(base)!r}]\nmodel = {model!r}\n')
    return str(path)


def write_tiny_config(path,
                      demo_data,
                      max_epochs=3,
                      max_keep_ckpts=-1,
                      imports=('poolformer_mm', ),
                      extra='',
                      scale=(64, 64),
                      flip=False,
                      small_model=False):
    """Write the tiny demo config to ``path`` and return its path.

    ``flip=True`` adds a random flip (p=0.5) to the training pipeline;
    ``small_model=True`` shrinks the RetinaNet (:data:`SMALL_MODEL`).
    """
    text = TEMPLATE.format(
        scale=tuple(scale),
        base=DEMO_CONFIG,
        imports=list(imports),
        data_root=f'{demo_data}/coco/',
        max_epochs=max_epochs,
        max_keep_ckpts=max_keep_ckpts,
        flip="\n    dict(type='RandomFlip', prob=0.5)," if flip else '',
        extra=(SMALL_MODEL if small_model else '') + extra)
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


def read_losses(work_dir):
    """Every logged training ``loss`` of every run in ``work_dir``."""
    losses = []
    for path in sorted(
            glob.glob(
                osp.join(str(work_dir), '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if 'loss' in record:
                    losses.append(record['loss'])
    return losses


def assert_finite_losses(work_dir, at_least=1):
    losses = read_losses(work_dir)
    assert len(losses) >= at_least, (work_dir, losses)
    assert all(math.isfinite(x) for x in losses), losses
    return losses


def state_dict(path):
    """The model weights of an mmengine checkpoint."""
    from poolformer_mm.checkpoint import load_training_checkpoint
    return load_training_checkpoint(str(path))['state_dict']


def data_options(scope, data):
    if scope == 'mmseg':
        root = f'{data}/ade/'
        return [f'{d}.dataset.data_root={root}' for d in
                ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    root = f'{data}/coco/'
    ann = f'{root}annotations/instances_val.json'
    return [f'{d}.dataset.data_root={root}' for d in
            ('train_dataloader', 'val_dataloader', 'test_dataloader')] + [
                f'val_evaluator.ann_file={ann}',
                f'test_evaluator.ann_file={ann}']


# A couple of iterations of every demo config through the real tools: the
# test checks that they run end to end and write what they promise, the
# README's numbers come from the full demo schedule.
# In-process data loading: worker processes only cost start-up here.
IN_PROCESS_LOADING = [
    f'{loader}.{option}' for loader in ('train_dataloader', 'val_dataloader',
                                        'test_dataloader')
    for option in ('num_workers=0', 'persistent_workers=False')
]
ONE_EPOCH = ['train_cfg.max_epochs=1', 'default_hooks.checkpoint.interval=1',
             'train_dataloader.batch_size=4']
# Validation during training on RetinaNet, the README's demo; the other two
# are evaluated by the test tools (test_demo.py, test_entry_points.py).
SHORT = {
    # Score threshold 0: two steps from scratch score below the default, and
    # the metric must still be computed.
    'retinanet': ONE_EPOCH + ['train_cfg.val_interval=1',
                              'model.test_cfg.score_thr=0'],
    'mask_rcnn': ONE_EPOCH + ['train_cfg.val_interval=2',
                              'model.test_cfg.rcnn.score_thr=0'],
    # Training keeps SyncBN of the real config's head: one CPU process
    # must run it (the runner reverts it to BatchNorm).
    'sem_fpn': ['train_cfg.max_iters=2', 'train_cfg.val_interval=100',
                'default_hooks.checkpoint.interval=2',
                'train_dataloader.batch_size=2'],
}


def demo_config(model):
    return osp.join(CONFIGS, 'demo', f'{model}_poolformer_s12_demo.py')


def train_demos(models, demo_data, work_dirs):
    """Train ``configs/demo/<model>_poolformer_s12_demo.py`` for the
    iterations of ``SHORT`` on ``demo_data`` with ``tools/train.py``, the
    models side by side, each into its work dir.

    Returns:
        list[tuple]: Per model, the config path, the checkpoint written, and
        the ``--cfg-options`` that point the config at ``demo_data``.
    """
    runs, commands = [], []
    for model, work_dir in zip(models, work_dirs):
        if model not in DEMO_MODELS:
            raise ValueError(
                f'model must be one of {DEMO_MODELS}, not {model!r}')
        config = demo_config(model)
        scope = 'mmseg' if model == 'sem_fpn' else 'mmdet'
        options = data_options(scope, demo_data) + SHORT[model] + (
            IN_PROCESS_LOADING)
        commands.append([
            sys.executable,
            osp.join(TOOLS, 'train.py'), config, '--work-dir', work_dir,
            '--cfg-options', *options
        ])
        runs.append((config, work_dir, options))
    run_commands(commands)
    done = []
    for config, work_dir, options in runs:
        with open(osp.join(str(work_dir), 'last_checkpoint')) as f:
            done.append((config, f.read().strip(), options))
    return done
