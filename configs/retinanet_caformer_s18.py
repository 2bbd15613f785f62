# RetinaNet with a CAFormer-S18 backbone (MetaFormer Baselines for Vision, Yu
# et al., TPAMI 2023) on COCO, trained as the PoolFormer configs are (the
# PoolFormer paper's recipe in ./_base_/retinanet_poolformer_fpn_1x_coco.py:
# AdamW, 12 epochs), starting from the original sail-sg/metaformer ImageNet-1k
# weights.
_base_ = ['./_base_/retinanet_poolformer_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='MetaFormer',
        arch='caformer_s18',
        drop_path_rate=0.,
        # RetinaNet's FPN starts at stride 8 (see the base config).
        out_indices=(1, 2, 3),
        frozen_stages=-1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://huggingface.co/sail/dl/resolve/main/'
            'caformer/caformer_s18.pth')),
    neck=dict(in_channels=[128, 320, 512]))
