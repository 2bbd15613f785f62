_base_ = ['./_base_/sem_fpn_poolformer_ade20k_40k.py']

model = dict(
    backbone=dict(
        arch='s36',
        init_cfg=dict(
            checkpoint='https://github.com/sail-sg/poolformer/releases/'
            'download/v1.0/poolformer_s36.pth.tar')),
)
