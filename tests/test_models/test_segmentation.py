"""Segmentors built from the real configs: sizes, loss / predict on CPU."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope

from helpers.commands import CONFIGS

# Segmentors built from the real configs.
pytestmark = pytest.mark.integration

ARCHS = ('s12', 's24', 's36', 'm36', 'm48')
PARAMS_M = {'s12': 15.7, 's24': 25.1, 's36': 34.6, 'm36': 59.8, 'm48': 77.1}


def load_cfg(name):
    cfg = Config.fromfile(osp.join(CONFIGS, name))
    cfg.model.backbone.init_cfg = None  # no download in tests
    return cfg


def build_segmentor(cfg):
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    return MODELS.build(cfg.model)


@pytest.mark.parametrize('arch', ARCHS)
def test_config_builds_with_paper_size(arch):
    cfg = load_cfg(f'sem_fpn_poolformer_{arch}.py')
    assert cfg.default_scope == 'mmseg'
    with torch.device('meta'):  # sizes only: no memory, no init time
        model = build_segmentor(cfg)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(n, 1) == PARAMS_M[arch]
    assert model.neck.in_channels == model.backbone.out_channels


def test_paper_recipe():
    cfg = Config.fromfile(osp.join(CONFIGS, 'sem_fpn_poolformer_s12.py'))
    assert cfg.optim_wrapper.optimizer == dict(
        type='AdamW', lr=2e-4, weight_decay=1e-4)
    (poly, ) = cfg.param_scheduler
    assert (poly.type, poly.power, poly.eta_min, poly.end) == ('PolyLR', 0.9,
                                                               0.0, 40000)
    assert (cfg.train_cfg.type, cfg.train_cfg.max_iters,
            cfg.train_cfg.val_interval) == ('ResumableIterBasedTrainLoop',
                                            40000, 4000)
    assert cfg.default_hooks.checkpoint.interval == 4000
    assert cfg.train_dataloader.batch_size == 4
    assert cfg.crop_size == (512, 512)
    head = cfg.model.decode_head
    assert (head.type, head.channels, head.dropout_ratio,
            head.num_classes) == ('FPNHead', 128, 0.1, 150)
    assert head.norm_cfg.type == 'SyncBN'
    assert cfg.model.neck.num_outs == 4 and cfg.model.neck.out_channels == 256
    train = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert train['RandomResize'].scale == (2048, 512)
    assert train['RandomResize'].ratio_range == (0.5, 2.0)
    assert train['RandomCrop'].cat_max_ratio == 0.75
    assert 'PhotoMetricDistortion' in train and 'RandomFlip' in train
    assert train['LoadAnnotations'].reduce_zero_label
    test = [t.type for t in cfg.test_dataloader.dataset.pipeline]
    assert test[:3] == ['LoadImageFromFile', 'Resize', 'ResizeToMultiple']
    assert cfg.test_dataloader.dataset.data_root == (
        'data/ade/ADEChallengeData2016')


# Training batches are cropped to one size by the pipeline; at test time an
# image keeps its own odd size and its prediction must come back at that size.
TRAIN_SIZES = [(64, 96), (64, 96)]
TEST_SIZES = [(67, 93), (75, 61)]


def demo_batch(sizes, num_classes=150):
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    torch.manual_seed(0)
    inputs, samples = [], []
    for h, w in sizes:
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, h, w)))
        sample.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w),
                                 pad_shape=(h, w)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize('mode', ['whole', 'slide'])
def test_loss_and_predict_s12(mode):
    cfg = load_cfg('sem_fpn_poolformer_s12.py')
    cfg.model.data_preprocessor.size = None
    cfg.model.data_preprocessor.size_divisor = 32
    if mode == 'slide':
        cfg.model.test_cfg = dict(mode='slide', crop_size=(48, 48),
                                  stride=(32, 32))
    # A single CPU process has no SyncBN; the runner reverts it the same way.
    model = revert_sync_batchnorm(build_segmentor(cfg))
    model.init_weights()
    model.train()
    data = model.data_preprocessor(demo_batch(TRAIN_SIZES), True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None]
    assert no_grad == []

    model.eval()
    # MMSegmentation tests one image per batch (its preprocessor refuses
    # mixed sizes outside training), so each odd size goes through alone.
    for h, w in TEST_SIZES:
        with torch.no_grad():
            data = model.data_preprocessor(demo_batch([(h, w)]), False)
            (result, ) = model(**data, mode='predict')
        assert result.pred_sem_seg.data.shape == (1, h, w)
        assert result.seg_logits.data.shape == (150, h, w)


UPERNET = ('poolformer_s12', 'poolformer_s24', 'poolformer_s36',
           'poolformer_m36', 'poolformer_m48', 'convformer_s18',
           'caformer_s18', 'poolformerv2_s12')


@pytest.mark.parametrize('arch', UPERNET)
def test_upernet_configs_build(arch):
    """On the meta device: no memory, no initialisation time."""
    cfg = load_cfg(f'upernet_{arch}.py')
    with torch.device('meta'):
        model = build_segmentor(cfg)
    out = model.backbone.out_channels
    assert model.decode_head.in_channels == out
    assert model.auxiliary_head.in_channels == out[2]
    assert type(model.backbone).__name__ == (
        'PoolFormer' if arch.startswith('poolformer_') else 'MetaFormer')


def test_upernet_recipe():
    """MMSegmentation's ConvNeXt UperNet recipe, without layer-wise decay."""
    cfg = Config.fromfile(osp.join(CONFIGS, 'upernet_poolformer_s12.py'))
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert 'constructor' not in cfg.optim_wrapper
    assert cfg.optim_wrapper.optimizer == dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end) == ('LinearLR',
                                                              1e-6, 1500)
    assert (poly.type, poly.power, poly.begin, poly.end,
            poly.eta_min) == ('PolyLR', 1.0, 1500, 160000, 0.0)
    assert (cfg.train_cfg.type, cfg.train_cfg.max_iters,
            cfg.train_cfg.seed_per_sample) == ('ResumableIterBasedTrainLoop',
                                               160000, True)
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs = 16 images
    assert cfg.crop_size == (512, 512)
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert (head.type, head.channels, head.pool_scales, head.num_classes,
            head.dropout_ratio) == ('UPerHead', 512, (1, 2, 3, 6), 150, 0.1)
    assert (aux.type, aux.in_index, aux.channels, aux.num_classes,
            aux.loss_decode.loss_weight) == ('FCNHead', 2, 256, 150, 0.4)
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(512, 512),
                                      stride=(341, 341))
    assert cfg.runner_type == 'SafeRunner'
    assert cfg.default_hooks.checkpoint.type == 'SafeCheckpointHook'
    assert cfg.custom_imports.imports == ['poolformer_mm']


@pytest.mark.parametrize('arch', ['poolformer_s12', 'caformer_s18'])
def test_upernet_loss_and_predict(arch):
    cfg = load_cfg(f'upernet_{arch}.py')
    cfg.model.data_preprocessor.size = None
    cfg.model.data_preprocessor.size_divisor = 32
    cfg.model.test_cfg = dict(mode='whole')
    model = revert_sync_batchnorm(build_segmentor(cfg))
    model.init_weights()
    model.train()
    data = model.data_preprocessor(demo_batch(TRAIN_SIZES), True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(loss)
    loss.backward()
    assert [n for n, p in model.named_parameters()
            if p.requires_grad and p.grad is None] == []
    model.eval()
    (h, w) = TEST_SIZES[0]
    with torch.no_grad():
        data = model.data_preprocessor(demo_batch([(h, w)]), False)
        (result, ) = model(**data, mode='predict')
    assert result.pred_sem_seg.data.shape == (1, h, w)
