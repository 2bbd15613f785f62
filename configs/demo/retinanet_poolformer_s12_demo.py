# RetinaNet-PoolFormer-S12 from scratch on the demo data (make_demo_data.py).
_base_ = ['../retinanet_poolformer_s12.py', './_base_/coco_data.py']
# mmengine refuses a key in two bases: the demo's come as `demo`, merged here.
_base_.merge(_base_.pop('demo'))

image_scale = (160, 160)
max_epochs = 7
model = dict(
    # GroupNorm in the head, as detectors trained from scratch need.
    bbox_head=dict(
        num_classes=4,
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs,
         T_max=max_epochs, eta_min_ratio=0.01, convert_to_iter_based=True)
]
default_hooks = dict(checkpoint=dict(interval=max_epochs))
