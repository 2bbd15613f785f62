"""--amp: bfloat16 autocast on CPUs, float16 with loss scaling on GPUs."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope

from helpers.commands import CONFIGS, run_tool
from poolformer_mm.engine import AutocastOptimWrapper
from poolformer_mm.apis.runs import enable_amp, load_config
from helpers.tiny_demo import assert_finite_losses, write_tiny_config


def test_enable_amp_on_cpu_picks_bfloat16(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = load_config(osp.join(CONFIGS, 'retinanet_poolformer_s12.py'))
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'
    assert 'loss_scale' not in cfg.optim_wrapper
    # A config that already asks for AmpOptimWrapper (CUDA only) as well.
    cfg.optim_wrapper.update(
        type='AmpOptimWrapper', loss_scale='dynamic', dtype='float16')
    enable_amp(cfg)
    assert (cfg.optim_wrapper.type,
            cfg.optim_wrapper.dtype) == ('AutocastOptimWrapper', 'bfloat16')


def test_enable_amp_on_gpu_is_mmdetection_amp(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = load_config(osp.join(CONFIGS, 'sem_fpn_poolformer_s12.py'))
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    assert 'dtype' not in cfg.optim_wrapper


def test_autocast_wrapper_runs_in_bfloat16():
    model = torch.nn.Linear(4, 2)
    wrapper = AutocastOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert isinstance(wrapper, OptimWrapper)
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().sum())
    with pytest.raises(
            ValueError, match=r"'bfloat16' or 'float16', got "
            r"'float64'"):
        AutocastOptimWrapper(
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            dtype='float64')


def test_autocast_wrapper_skips_nonfinite_steps():
    model = torch.nn.Linear(4, 2)
    wrapper = AutocastOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        max_skipped_steps=2)
    before = model.weight.detach().clone()
    loss = model(torch.randn(3, 4)).sum() * float('nan')
    wrapper.update_params(loss)
    assert torch.equal(model.weight, before)  # skipped, weights untouched
    assert wrapper.skipped_steps == 1
    wrapper.update_params(model(torch.randn(3, 4)).sum())
    assert wrapper.skipped_steps == 0 and not torch.equal(model.weight, before)
    wrapper.update_params(model(torch.randn(3, 4)).sum() * float('inf'))
    with pytest.raises(
            RuntimeError,
            match=r'non-finite gradients under '
            r'torch.bfloat16 autocast in 2 steps in a row'):
        wrapper.update_params(model(torch.randn(3, 4)).sum() * float('nan'))


def test_train_tool_amp_on_cpu(demo_data, tmp_path):
    # 96 px: at 64 px RetinaNet's P7 convolution runs on a 1-pixel-wide map,
    # where torch's CPU bf16 convolution returns NaN weight gradients (see
    # poolformer_mm.engine.optim_wrapper).
    config = write_tiny_config(
        tmp_path / 'tiny.py', demo_data, max_epochs=1, scale=(96, 96),
        small_model=True)
    result = run_tool('train.py', config, '--work-dir', tmp_path / 'work',
                      '--amp')
    output = result.stdout + result.stderr
    assert 'bfloat16 autocast' in output
    assert 'step skipped' not in output
    assert_finite_losses(tmp_path / 'work', at_least=4)


def seg_batch(n, h, w, num_classes):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        sample = SegDataSample(
            gt_sem_seg=PixelData(
                data=torch.randint(0, num_classes, (1, h, w))))
        sample.set_metainfo(
            dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def one_step(model, data, dtype):
    """A training step's forward and backward under CPU autocast."""
    model.train()
    with torch.autocast('cpu', dtype=dtype):
        data = model.data_preprocessor(data, True)
        losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    loss.backward()
    return loss


@pytest.mark.integration
@pytest.mark.parametrize('task', ['retinanet', 'sem_fpn'])
def test_bfloat16_losses_are_finite(task):
    name = {
        'retinanet': 'retinanet_poolformer_s12.py',
        'sem_fpn': 'sem_fpn_poolformer_s12.py'
    }[task]
    cfg = Config.fromfile(osp.join(CONFIGS, name))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    if task == 'retinanet':
        from mmdet.registry import MODELS
        from mmdet.testing import demo_mm_inputs
        init_default_scope('mmdet')
        model = MODELS.build(cfg.model)
        data = demo_mm_inputs(
            batch_size=2,
            image_shapes=[(3, 64, 96)] * 2,
            num_items=[2, 3],
            num_classes=80)
    else:
        from mmseg.registry import MODELS
        init_default_scope('mmseg')
        cfg.model.data_preprocessor.size = (64, 96)
        model = revert_sync_batchnorm(MODELS.build(cfg.model))
        data = seg_batch(2, 64, 96, num_classes=150)
    loss = one_step(model, data, torch.bfloat16)
    assert torch.isfinite(loss), loss
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
