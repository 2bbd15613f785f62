# Semantic FPN with a PoolFormer-S12 backbone on ADE20K, the recipe of the
# PoolFormer paper (Yu et al., CVPR 2022): AdamW lr 2e-4, weight decay 1e-4,
# poly schedule (power 0.9, to 0) over 40k iterations, 4 images per GPU on 8
# GPUs, 512x512 crops. MMSegmentation's configs give the rest: resize to
# 2048x512 with ratio 0.5-2.0, crop with cat_max_ratio 0.75, flip,
# photometric distortion, reduce_zero_label, data/ade/ADEChallengeData2016.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py'
]

custom_imports = dict(imports=['poolformer_mm'], allow_failed_imports=False)
# Safe checkpoint loading and resume, multi-process CPU runs (poolformer_mm).
runner_type = 'SafeRunner'

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='PoolFormer',
        arch='s12',
        drop_path_rate=0.,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/sail-sg/poolformer/releases/'
            'download/v1.0/poolformer_s12.pth.tar')),
    neck=dict(in_channels=[64, 128, 320, 512], out_channels=256, num_outs=4),
    decode_head=dict(channels=128, dropout_ratio=0.1, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=0.9,
        begin=0,
        end=40000,
        by_epoch=False)
]
# IterBasedTrainLoop that resumes without loading the batches done
# (poolformer_mm), loading every sample with random generators seeded from
# (seed, epoch, sample index): a resumed run, and one with another
# num_workers, augments each sample as the uninterrupted run does (False:
# the data-loader workers' generators).
train_cfg = dict(
    type='ResumableIterBasedTrainLoop',
    max_iters=40000,
    val_interval=4000,
    seed_per_sample=True)
# CheckpointHook's options, with atomic writes (poolformer_mm); on SIGTERM or
# SIGUSR1 (a scheduler's preemption) finish the iteration, write iter_N.pth
# and exit with code 75, then --resume continues from there.
default_hooks = dict(
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=4000),
    preemption=dict(type='PreemptionHook'))

train_dataloader = dict(batch_size=4)
# The original resizes test images to a multiple of 32 after the 2048x512
# resize; without it mIoU drops by about 0.3-0.4.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
