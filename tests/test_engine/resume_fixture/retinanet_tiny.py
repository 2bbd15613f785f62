# A tiny RetinaNet-PoolFormer whose training checkpoint is committed next to
# this file (epoch_1.pth): tests/test_engine/test_resume_fixture.py resumes
# from it, so that a change of parameter names or order, or of what a
# training checkpoint holds, fails a test. Self-contained on purpose: it
# does not inherit this package's configs, which may change.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']

custom_imports = dict(imports=['poolformer_mm'], allow_failed_imports=False)

data_root = 'data/demo/coco/'
metainfo = dict(classes=('circle', 'square', 'triangle', 'star'))
scale = (64, 64)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PoolFormer',
        arch=dict(
            layers=[1, 1, 2, 1],
            embed_dims=[8, 16, 24, 32],
            mlp_ratios=[2, 2, 2, 2],
            layer_scale_init_value=1e-2),
        out_indices=(1, 2, 3),
        init_cfg=None),
    neck=dict(
        in_channels=[16, 24, 32],
        out_channels=16,
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5),
    bbox_head=dict(
        num_classes=4, in_channels=16, feat_channels=16, stacked_convs=1))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')

train_cfg = dict(max_epochs=2, val_interval=1000)
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=2, milestones=[1])
]
runner_type = 'SafeRunner'
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=-1))
randomness = dict(seed=0, deterministic=True)
