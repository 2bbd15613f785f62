_base_ = ['./_base_/retinanet_poolformer_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='s12',
        init_cfg=dict(
            checkpoint='https://github.com/sail-sg/poolformer/releases/'
            'download/v1.0/poolformer_s12.pth.tar')))
