"""Detectors built from the real configs: sizes, loss / predict on CPU."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from helpers.commands import CONFIGS

# Detectors built from the real configs.
pytestmark = pytest.mark.integration

ARCHS = ('s12', 's24', 's36', 'm36', 'm48')
# Millions of parameters: the paper's for S12-S36, ours for M36 / M48.
PARAMS_M = {
    'retinanet': {'s12': 21.7, 's24': 31.1, 's36': 40.6, 'm36': 66.3,
                  'm48': 83.6},
    'mask_rcnn': {'s12': 31.6, 's24': 41.0, 's36': 50.5, 'm36': 75.7,
                  'm48': 93.0},
}


def load_cfg(name):
    cfg = Config.fromfile(osp.join(CONFIGS, name))
    cfg.model.backbone.init_cfg = None  # no download in tests
    return cfg


def build_detector(cfg):
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    return MODELS.build(cfg.model)


@pytest.mark.parametrize('detector', ['retinanet', 'mask_rcnn'])
@pytest.mark.parametrize('arch', ARCHS)
def test_config_builds_with_paper_size(detector, arch):
    cfg = load_cfg(f'{detector}_poolformer_{arch}.py')
    assert cfg.default_scope == 'mmdet'
    assert cfg.model.backbone.arch == arch
    with torch.device('meta'):  # sizes only: no memory, no init time
        model = build_detector(cfg)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(n, 1) == PARAMS_M[detector][arch]
    assert model.neck.in_channels == model.backbone.out_channels


@pytest.mark.parametrize('detector', ['retinanet', 'mask_rcnn'])
def test_paper_recipe(detector):
    cfg = Config.fromfile(osp.join(CONFIGS, f'{detector}_poolformer_s12.py'))
    lr = {'retinanet': 1e-4, 'mask_rcnn': 2e-4}[detector]
    assert cfg.optim_wrapper.optimizer == dict(
        type='AdamW', lr=lr, weight_decay=1e-4)
    assert cfg.optim_wrapper.get('clip_grad') is None
    assert cfg.train_cfg.max_epochs == 12
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end) == ('LinearLR',
                                                              0.001, 500)
    assert steps.milestones == [8, 11] and steps.gamma == 0.1
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    resize = [t for t in cfg.train_pipeline if t.type == 'Resize'][0]
    assert resize.scale == (1333, 800) and resize.keep_ratio
    flip = [t for t in cfg.train_pipeline if t.type == 'RandomFlip'][0]
    assert flip.prob == 0.5
    backbone = cfg.model.backbone
    assert backbone.drop_path_rate == 0 and backbone.frozen_stages == -1
    assert backbone.init_cfg == dict(
        type='Pretrained',
        checkpoint='https://github.com/sail-sg/poolformer/releases/download/'
        'v1.0/poolformer_s12.pth.tar')
    assert cfg.model.neck.out_channels == 256 and cfg.model.neck.num_outs == 5


def demo_batch(with_mask):
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(0)
    return demo_mm_inputs(
        batch_size=2,
        image_shapes=[(3, 67, 93), (3, 75, 61)],
        num_items=[2, 3],
        num_classes=80,
        with_mask=with_mask)


@pytest.mark.parametrize('detector', ['retinanet', 'mask_rcnn'])
def test_loss_and_predict_s12(detector):
    with_mask = detector == 'mask_rcnn'
    model = build_detector(load_cfg(f'{detector}_poolformer_s12.py'))
    model.init_weights()
    model.train()
    data = model.data_preprocessor(demo_batch(with_mask), True)
    losses = model(**data, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss)
    if with_mask:
        assert 'loss_mask' in log_vars
    loss.backward()
    # No parameter may be unused: DDP runs find_unused_parameters=False.
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None]
    assert no_grad == []

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(demo_batch(with_mask), False)
        results = model(**data, mode='predict')
        feats = model(**data, mode='tensor')
    assert len(results) == 2
    for result in results:
        pred = result.pred_instances
        assert pred.bboxes.shape[-1] == 4
        assert len(pred.scores) == len(pred.labels) == len(pred.bboxes)
        if with_mask:
            assert pred.masks.shape[-2:] == result.ori_shape
    assert len(feats) > 0
