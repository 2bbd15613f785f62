_base_ = ['./_base_/mask_rcnn_poolformer_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='s36',
        init_cfg=dict(
            checkpoint='https://github.com/sail-sg/poolformer/releases/'
            'download/v1.0/poolformer_s36.pth.tar')),
)
