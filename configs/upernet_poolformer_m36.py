_base_ = ['./_base_/upernet_poolformer_ade20k_160k.py']

model = dict(
    backbone=dict(
        arch='m36',
        init_cfg=dict(
            checkpoint='https://github.com/sail-sg/poolformer/releases/'
            'download/v1.0/poolformer_m36.pth.tar')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
