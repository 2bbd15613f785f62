# Mask R-CNN with a PoolFormer-S12 backbone on COCO, the recipe of the
# PoolFormer paper (Yu et al., CVPR 2022): AdamW lr 2e-4, weight decay 1e-4,
# 12 epochs, 2 images per GPU on 8 GPUs. Everything else (1333x800 resize,
# flip 0.5, warm-up over 500 iterations from 0.001, lr x0.1 at epochs 8 and
# 11, COCO 2017 under data/coco/) comes from MMDetection's own config.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']

custom_imports = dict(imports=['poolformer_mm'], allow_failed_imports=False)
# Safe checkpoint loading and resume, multi-process CPU runs (poolformer_mm).
runner_type = 'SafeRunner'

model = dict(
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
    neck=dict(
        type='FPN',
        in_channels=[64, 128, 320, 512],
        out_channels=256,
        num_outs=5))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=None)
# CheckpointHook's options, with atomic writes (poolformer_mm); on SIGTERM or
# SIGUSR1 (a scheduler's preemption) finish the iteration, write iter_N.pth
# and exit with code 75, then --resume continues mid-epoch exactly.
default_hooks = dict(
    checkpoint=dict(type='SafeCheckpointHook'),
    preemption=dict(type='PreemptionHook'))
# EpochBasedTrainLoop that resumes mid-epoch (poolformer_mm), loading every
# sample with random generators seeded from (seed, epoch, sample index): a
# resumed run, and one with another num_workers, augments each sample as the
# uninterrupted run does (False: the data-loader workers' generators).
train_cfg = dict(type='ResumableEpochBasedTrainLoop', seed_per_sample=True)
