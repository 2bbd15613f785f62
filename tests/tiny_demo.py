"""A tiny, deterministic RetinaNet demo run for the tool tests.

The config inherits ``configs/demo/retinanet_poolformer_s12_demo.py`` and
overrides only what keeps the tests small and repeatable: the ``demo_data``
fixture's 8 training images at 64x64 (by default), 2 images per batch (4
iterations an epoch), no validation, a checkpoint every epoch, no random flip
and no data-loader workers, so that an epoch sees the same data however the
run got there (the random state of augmentations is not part of a
checkpoint).
"""
import glob
import json
import math
import os.path as osp

from conftest import CONFIGS

DEMO_CONFIG = osp.join(CONFIGS, 'demo', 'retinanet_poolformer_s12_demo.py')

TEMPLATE = '''
_base_ = [{base!r}]
custom_imports = dict(imports={imports!r}, allow_failed_imports=False)
data_root = {data_root!r}
tiny_scale = {scale!r}
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=tiny_scale, keep_ratio=True),
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


def write_tiny_config(path,
                      demo_data,
                      max_epochs=3,
                      max_keep_ckpts=-1,
                      imports=('poolformer_mm', ),
                      extra='',
                      scale=(64, 64)):
    """Write the tiny demo config to ``path`` and return its path."""
    text = TEMPLATE.format(
        scale=tuple(scale),
        base=DEMO_CONFIG,
        imports=list(imports),
        data_root=f'{demo_data}/coco/',
        max_epochs=max_epochs,
        max_keep_ckpts=max_keep_ckpts,
        extra=extra)
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
    from poolformer_mm.engine.safe_loading import load_training_checkpoint
    return load_training_checkpoint(str(path))['state_dict']
