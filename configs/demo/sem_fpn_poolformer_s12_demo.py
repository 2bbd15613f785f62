# Semantic FPN-PoolFormer-S12 from scratch on the demo data, ADE20K layout.
_base_ = ['../sem_fpn_poolformer_s12.py', './_base_/from_scratch.py']
# mmengine refuses a key in two bases: the demo's come as `demo`, merged here.
_base_.merge(_base_.pop('demo'))

data_root = 'data/demo/ade/'
# With reduce_zero_label the unlabelled 0 is ignored and label 1 becomes 0.
metainfo = dict(
    classes=('background', 'circle', 'square', 'triangle', 'star'),
    palette=[(0, 0, 0), (220, 20, 60), (0, 130, 230), (250, 170, 30),
             (120, 60, 220)])
image_scale = (160, 160)
max_iters = 2400

data_preprocessor = dict(size=image_scale)
model = dict(
    data_preprocessor=data_preprocessor,
    # Hard-pixel mining, class weights and a Lovasz loss for the small shapes.
    decode_head=dict(
        num_classes=5,
        sampler=dict(type='OHEMPixelSampler', thresh=0.7, min_kept=10000),
        loss_decode=[
            dict(
                type='CrossEntropyLoss',
                use_sigmoid=False,
                loss_weight=1.0,
                class_weight=[1.0, 1.0, 1.6, 2.4, 2.4]),
            dict(type='LovaszLoss', reduction='none', loss_weight=1.0)
        ]))

# Only scaled up, so no crop is padded with 255, which class weights reject.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=image_scale, ratio_range=(1.0, 1.5),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_scale, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
dataset = dict(
    _delete_=True,
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.png',
    seg_map_suffix='.png',
    reduce_zero_label=True)
# Small batches: more steps in the same CPU time train faster from scratch.
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    dataset=dict(
        dataset,
        data_prefix=dict(
            img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=2,
    dataset=dict(
        dataset,
        data_prefix=dict(
            img_path='images/validation',
            seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=100),
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=100, end=max_iters,
         by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters // 4)
default_hooks = dict(checkpoint=dict(interval=max_iters))
