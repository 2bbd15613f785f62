# UperNet with a PoolFormerV2-S12 backbone (MetaFormer Baselines for Vision, Yu et
# al., TPAMI 2023) on ADE20K, trained as the PoolFormer UperNet configs are
# (./_base_/upernet_poolformer_ade20k_160k.py: MMSegmentation's ConvNeXt
# UperNet recipe), starting from the original sail-sg/metaformer ImageNet-1k
# weights.
_base_ = ['./_base_/upernet_poolformer_ade20k_160k.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='MetaFormer',
        arch='poolformerv2_s12',
        drop_path_rate=0.,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://huggingface.co/sail/dl/resolve/main/'
            'poolformerv2/poolformerv2_s12.pth')),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))
