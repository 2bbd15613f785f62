# UperNet with a PoolFormer-S12 backbone on ADE20K: the comparison recipe of
# ConvNeXt, Swin and later backbones, as MMSegmentation's ConvNeXt UperNet
# config has it (convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py): its
# UPerHead (channels 512, pool scales 1, 2, 3, 6) and FCN auxiliary head on
# stage 2 (weight 0.4), 160k iterations, 512x512 crops, 2 images per GPU on 8
# GPUs, AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, linear warm-up
# over 1500 iterations then poly (power 1) to 0, slide inference (stride
# 341). Mixed precision with tools/train.py --amp.
# Layer-wise learning-rate decay is off: MMSegmentation's
# LearningRateDecayOptimizerConstructor derives each parameter's depth from
# ConvNeXt's module names (downsample_layers.i, stages.i.j), which this
# backbone does not have, so it would decay the wrong parameters.
_base_ = [
    'mmseg::_base_/models/upernet_convnext.py',
    'mmseg::_base_/datasets/ade20k.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py'
]

custom_imports = dict(imports=['poolformer_mm'], allow_failed_imports=False)
# Safe checkpoint loading and resume, multi-process CPU runs (poolformer_mm).
runner_type = 'SafeRunner'

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
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
    decode_head=dict(in_channels=[64, 128, 320, 512], num_classes=150),
    auxiliary_head=dict(in_channels=320, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=None)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        power=1.0,
        begin=1500,
        end=160000,
        eta_min=0.0,
        by_epoch=False)
]
# IterBasedTrainLoop that resumes without loading the batches done
# (poolformer_mm), loading every sample with random generators seeded from
# (seed, epoch, sample index): a resumed run, and one with another
# num_workers, augments each sample as the uninterrupted run does (False:
# the data-loader workers' generators).
train_cfg = dict(
    type='ResumableIterBasedTrainLoop',
    max_iters=160000,
    val_interval=16000,
    seed_per_sample=True)
# CheckpointHook's options, with atomic writes (poolformer_mm); on SIGTERM or
# SIGUSR1 (a scheduler's preemption) finish the iteration, write iter_N.pth
# and exit with code 75, then --resume continues from there.
default_hooks = dict(
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=16000),
    preemption=dict(type='PreemptionHook'))

train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
