_base_ = ['./_base_/mask_rcnn_poolformer_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='m36',
        init_cfg=dict(
            checkpoint='https://github.com/sail-sg/poolformer/releases/'
            'download/v1.0/poolformer_m36.pth.tar')),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
