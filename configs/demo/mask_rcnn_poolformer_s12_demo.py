# Mask R-CNN-PoolFormer-S12 from scratch on the demo data (make_demo_data.py).
_base_ = ['../mask_rcnn_poolformer_s12.py', './_base_/coco_data.py']
# mmengine refuses a key in two bases: the demo's come as `demo`, merged here.
_base_.merge(_base_.pop('demo'))

image_scale = (160, 160)
max_epochs = 6
# GroupNorm in the FPN and the RoI heads, MMDetection's recipe from scratch.
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
# COCO's finest RoI scale, scaled to the demo's smaller images.
finest_scale = 56 // 4
model = dict(
    neck=dict(norm_cfg=norm_cfg),
    # Lighter RoI heads for four simple shapes; GN's convolutional box head.
    roi_head=dict(
        bbox_roi_extractor=dict(finest_scale=finest_scale),
        mask_roi_extractor=dict(finest_scale=finest_scale),
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            num_classes=4,
            conv_out_channels=128,
            fc_out_channels=256,
            norm_cfg=norm_cfg),
        mask_head=dict(
            num_classes=4, conv_out_channels=128, norm_cfg=norm_cfg)),
    # Fewer proposals and sampled RoIs: a scene holds at most four shapes.
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
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
