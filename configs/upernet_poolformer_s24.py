_base_ = ['./_base_/upernet_poolformer_ade20k_160k.py']

model = dict(
    backbone=dict(
        arch='s24',
        init_cfg=dict(
            checkpoint='https://github.com/sail-sg/poolformer/releases/'
            'download/v1.0/poolformer_s24.pth.tar')),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))
