"""The execution paths of :mod:`poolformer_mm.models.fast` against the
reference network: same outputs (and gradients), same state dict.

Timing goals are checked by ``tools/benchmark.py``, never here.
"""
import copy
import os.path as osp
import pickle
import sys

import pytest
import torch
import torch.nn as nn
from helpers.commands import CONFIGS, TOOLS, run_commands

from poolformer_mm import MetaFormer, PoolFormer
from poolformer_mm.models.backbones import metaformer as mf
from poolformer_mm.models.fast import _as, cpu, cuda, folded

# Relative error: max |deploy - default| over max |default|, per output.
RTOL = 1e-4


def rel_err(ref, out):
    return max(((r - o).abs().max() / r.abs().max()).item()
               for r, o in zip(ref, out))


@torch.no_grad()
def perturb(model, seed=0):
    """Non-trivial norm affines, layer scales and biases, so that folding
    them is actually exercised (the initial ones are 1, 0 and 1e-5)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if 'norm' in name and name.endswith('weight'):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        elif 'norm' in name and name.endswith('bias'):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        elif name.endswith('scale'):
            p.copy_(torch.rand(p.shape, generator=g) * 0.9 + 0.1)
        elif name.endswith('bias'):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def pair(arch='s12', **kwargs):
    torch.manual_seed(0)
    model = perturb(PoolFormer(arch, **kwargs)).eval()
    return model, copy.deepcopy(model).switch_to_deploy()


@pytest.mark.parametrize('arch,size,batch', [('s12', (67, 93), 2),
                                             ('s12', (64, 64), 1),
                                             ('s12', (33, 35), 1),
                                             ('m36', (67, 93), 1)])
def test_deploy_matches_default(arch, size, batch):
    model, deployed = pair(arch)
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        ref = model(x)
        # The first call runs on plain weights, the second reorders them
        # for this shape, the third uses the reordered ones.
        outs = [deployed(x) for _ in range(3)]
    for out in outs:
        assert [o.shape for o in out] == [r.shape for r in ref]
        assert rel_err(ref, out) < RTOL
    # NCHW out, as the default path (see the layout test below).
    assert all(o.is_contiguous() for o in outs[0])


def test_deploy_generic_kernels(monkeypatch):
    """The path used off CPU (CUDA, other dtypes), forced on CPU."""
    model, deployed = pair('s12')
    monkeypatch.setattr(cpu, '_ONEDNN', False)
    x = torch.randn(2, 3, 67, 93)
    with torch.no_grad():
        assert rel_err(model(x), deployed(x)) < RTOL


def _force_off_cpu(monkeypatch):
    """The deploy blocks and the GroupNorm(1)s as they run on CUDA, on
    CPU (with the fast ops on)."""
    monkeypatch.setattr(folded, '_runs_off_cpu', lambda x: True)
    monkeypatch.setattr(cuda, '_on_gpu', lambda x: True)
    monkeypatch.setattr(cuda, 'GROUP_NORM1_MIN_SIZE', 0)


@pytest.mark.parametrize('arch', ['s12', 'poolformerv2_s12'])
def test_deploy_off_cpu_path(monkeypatch, arch):
    """The path as it runs off the CPU (NCHW, var_mean statistics), forced
    on CPU, against the modules on PyTorch's kernels; PoolFormerV2 for
    res-scales, StarReLU and bias-free norms."""
    torch.manual_seed(0)
    backbone = MetaFormer if arch.startswith('poolformerv2') else PoolFormer
    model = perturb(backbone(arch, impl='reference')).eval()
    x = torch.randn(2, 3, 67, 93)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            ref_autocast = model(x)
    _force_off_cpu(monkeypatch)
    model.switch_impl('deploy')
    with torch.no_grad():
        assert rel_err(ref, model(x)) < RTOL
        # Under autocast: what autocast makes of the modules, to its
        # rounding, with the weights cast once.
        with torch.autocast('cpu', dtype=torch.bfloat16):
            for _ in range(2):
                out = model(x)
    assert rel_err(ref, out) < 2 * rel_err(ref, ref_autocast) + 1e-3
    blocks = [b for s in model.stages for b in s.blocks]
    assert all(type(b) is folded.DeployPoolBlock for b in blocks)
    assert len(blocks) == 12
    for b in blocks:
        assert set(b.folded().casts) == {(torch.float32, torch.float32),
                                         (torch.float32, torch.bfloat16)}


def test_deploy_off_cpu_half_model(monkeypatch):
    """A model cast to bfloat16, alone and under autocast: the residual
    stream stays bfloat16, as in the modules, the statistics float32."""
    torch.manual_seed(0)
    model = perturb(PoolFormer('s12', impl='reference')).eval()
    x = torch.randn(2, 3, 67, 93)
    with torch.no_grad():
        ref = model(x)
        model = model.bfloat16()
        ref_half = model(x.bfloat16())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            ref_autocast = model(x.bfloat16())
    _force_off_cpu(monkeypatch)
    model.switch_to_deploy()
    with torch.no_grad():
        out_half = model(x.bfloat16())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out_autocast = model(x.bfloat16())
    for mine, theirs in ((out_half, ref_half),
                         (out_autocast, ref_autocast)):
        assert [o.dtype for o in mine] == [o.dtype for o in theirs]
        assert rel_err(ref, mine) < 2 * rel_err(ref, theirs) + 1e-3


def test_group_norm1_stats_half_precision():
    # A float16 variance would overflow (std 300: 9e4 > 65504).
    x = (torch.randn(2, 8, 16, 16) * 300).half()
    mean, rstd = cuda.group_norm1_stats(x, 1e-5)
    assert mean.dtype == rstd.dtype == torch.float32
    ref_var, ref_mean = torch.var_mean(
        x.double().flatten(1), dim=1, correction=0)
    torch.testing.assert_close(rstd.flatten().double(),
                               (ref_var + 1e-5).rsqrt(), rtol=1e-5, atol=0)


@pytest.mark.parametrize('shape', [(2, 6, 5, 7), (3, 4, 9), (2, 5)])
def test_group_norm1_off_cpu(monkeypatch, shape):
    """GroupNorm(1) as it runs on CUDA (:class:`cuda._GroupNorm1`), forced on
    CPU: gradcheck, and :class:`cuda.GroupNorm1` against the reference
    ``Fp32GroupNorm``."""
    torch.manual_seed(0)
    channels = shape[1]
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).requires_grad_()
    weight = (torch.rand(channels, dtype=torch.float64) + 0.5)
    bias = torch.randn(channels, dtype=torch.float64)
    for w, b in ((weight, bias), (weight, None), (None, bias),
                 (None, None)):
        args = [t.clone().requires_grad_() if t is not None else None
                for t in (w, b)]
        assert torch.autograd.gradcheck(
            lambda *t: cuda._GroupNorm1.apply(*t, 1e-5), (x, *args))
    monkeypatch.setattr(cuda, '_on_gpu', lambda x: True)
    monkeypatch.setattr(cuda, 'GROUP_NORM1_MIN_SIZE', 0)
    calls = []
    apply = cuda._GroupNorm1.apply
    monkeypatch.setattr(cuda._GroupNorm1, 'apply',
                        lambda *a: calls.append(a) or apply(*a))
    ref_norm = mf.Fp32GroupNorm(channels, 1, eps=1e-5)
    with torch.no_grad():
        ref_norm.weight.uniform_(0.5, 1.5)
        ref_norm.bias.normal_()
    for dtype in (torch.float32, torch.bfloat16):
        norm = _as(copy.deepcopy(ref_norm), cuda.GroupNorm1)
        inp = x.detach().to(dtype).requires_grad_()
        ref_inp = x.detach().to(dtype).requires_grad_()
        out, ref = norm(inp), ref_norm(ref_inp)
        assert out.dtype == ref.dtype == dtype
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        grad = torch.randn_like(out)
        mine = torch.autograd.grad(out, [inp, norm.weight, norm.bias], grad)
        theirs = torch.autograd.grad(
            ref, [ref_inp, ref_norm.weight, ref_norm.bias], grad)
        for m, t in zip(mine, theirs):
            torch.testing.assert_close(m, t, rtol=1e-4, atol=1e-5)
    assert len(calls) == 2
    # Small maps keep PyTorch's kernel, and so does the CPU.
    monkeypatch.setattr(cuda, 'GROUP_NORM1_MIN_SIZE', x[0].numel() + 1)
    norm(x.detach().float())
    monkeypatch.setattr(cuda, 'GROUP_NORM1_MIN_SIZE', 0)
    monkeypatch.setattr(cuda, '_on_gpu', lambda x: x.is_cuda)
    norm(x.detach().float())
    assert len(calls) == 2
    assert norm(x.detach()[:0].float()).shape == x[:0].shape


def test_deploy_two_pass_statistics(monkeypatch):
    """A mean far above the spread takes the two-pass variance."""
    monkeypatch.setattr(cpu, '_ONE_PASS_MAX_RATIO', 0.)
    model, deployed = pair('s12')
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), deployed(x)) < RTOL
    x = torch.randn(2, 8, 5, 7) * 0.01 + 1000.
    mean, rstd = cpu.mean_rstd(x, 1e-5)
    ref_var, ref_mean = torch.var_mean(
        x.double().flatten(1), dim=1, correction=0)
    torch.testing.assert_close(
        mean.flatten().double(), ref_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close((rstd.flatten().double()**-2 - 1e-5),
                               ref_var, rtol=1e-3, atol=0)


def test_deploy_without_layer_scale_and_other_pool_size():
    arch = dict(layers=[1, 1, 2, 1], embed_dims=[16, 24, 32, 40],
                mlp_ratios=2, layer_scale_init_value=None)
    model, deployed = pair(arch, pool_size=5, out_indices=(3, 1))
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        assert rel_err(model(x), deployed(x)) < RTOL


def test_deploy_metaformer_res_scale_and_star_relu():
    """PoolFormerV2 blocks: res-scales, StarReLU, bias-free GroupNorm,
    normed stem and downsamplings (run as they are)."""
    torch.manual_seed(0)
    model = perturb(MetaFormer('poolformerv2_s12')).eval()
    blocks = [b for s in model.stages for b in s.blocks]
    assert all(folded.can_fold(b) for b in blocks)
    deployed = copy.deepcopy(model).switch_to_deploy()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ref = model(x)
        for _ in range(3):
            assert rel_err(ref, deployed(x)) < RTOL


def test_weights_loaded_after_switch_are_used(tmp_path):
    model, _ = pair('s12')
    deployed = PoolFormer('s12', deploy=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = deployed(x)
        deployed(x)  # reorders the weights of this shape
        deployed.load_state_dict(model.state_dict())
        ref, out = model(x), deployed(x)
    assert rel_err(ref, out) < RTOL
    assert rel_err(ref, before) > 1e-2
    # Through the checkpoint loader (init_cfg Pretrained) as well.
    path = tmp_path / 'weights.pth'
    torch.save(perturb(copy.deepcopy(model), seed=1).state_dict(), path)
    deployed.init_cfg = dict(type='Pretrained', checkpoint=str(path))
    deployed.init_weights()
    fresh = PoolFormer('s12').eval()
    fresh.load_state_dict(torch.load(path))
    with torch.no_grad():
        assert rel_err(fresh(x), deployed(x)) < RTOL


def test_state_dict_unchanged_and_copies():
    model, deployed = pair('s12')
    assert list(model.state_dict()) == list(deployed.state_dict())
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        deployed(x), deployed(x)  # folded, weights reordered
    block = deployed.stages[0].blocks[0]
    assert hasattr(block, '_fast_folded')
    for twin in (copy.deepcopy(deployed),
                 pickle.loads(pickle.dumps(deployed))):
        assert twin.deploy and not hasattr(twin.stages[0].blocks[0],
                                           '_fast_folded')
        with torch.no_grad():
            assert rel_err(model(x), twin(x)) < RTOL


def test_deploy_is_inference_only():
    _, deployed = pair('s12')
    assert not deployed.training
    deployed.eval()  # fine
    with pytest.raises(RuntimeError, match='inference-only deploy'):
        deployed.train()
    wrapper = nn.Sequential(deployed)
    with pytest.raises(RuntimeError, match='cannot train'):
        wrapper.train()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    with pytest.raises(RuntimeError, match='requires grad'):
        deployed(x)
    with pytest.raises(ValueError, match='C=3'):
        deployed(torch.randn(1, 4, 32, 32))


@pytest.mark.integration
@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_deploy_from_config(scope):
    registry = pytest.importorskip(f'{scope}.registry').MODELS
    model = registry.build(dict(type='PoolFormer', arch='s12', deploy=True))
    assert model.deploy and not model.training
    ref = PoolFormer('s12').eval()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ref(x), model(x)) < RTOL


def test_switch_model_to_deploy():
    from poolformer_mm.errors import InputError
    from poolformer_mm.models.execution import (switch_impl,
                                                switch_model_to_deploy)
    detector = nn.ModuleDict(dict(backbone=PoolFormer('s12'),
                                  neck=nn.Conv2d(3, 3, 1)))
    assert switch_model_to_deploy(detector) == ['backbone']
    assert detector.backbone.deploy
    assert switch_impl(detector, 'reference') == ['backbone']
    assert detector.backbone.impl == 'reference'
    with pytest.raises(InputError, match="Conv2d holds no PoolFormer or "
                       "MetaFormer backbone, so there is no execution path to "
                       "switch to 'deploy'"):
        switch_model_to_deploy(nn.Conv2d(3, 3, 1))


# ---------------------------------------------------------------------------
# The default path's CPU fast ops
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('pool_size', [3, 5, 7])
@pytest.mark.parametrize('shape', [(2, 8, 9, 13), (1, 4, 1, 6), (1, 4, 5, 1),
                                   (1, 3, 2, 2)])
@pytest.mark.parametrize('channels_last', [False, True])
def test_pool_mixer_matches_avg_pool(pool_size, shape, channels_last):
    pool = nn.AvgPool2d(pool_size, 1, pool_size // 2, count_include_pad=False)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = torch.randn(shape)
    mixer = mf.Pooling(pool_size)
    out = _as(mixer, cpu.FastPooling)(x)
    (gx, ) = torch.autograd.grad(out, x, grad)
    x_ref = x.detach().clone().requires_grad_()
    ref = pool(x_ref) - x_ref
    (g_ref, ) = torch.autograd.grad(ref, x_ref, grad)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('affine,layer_scale',
                         [(True, True), (True, False), (False, True),
                          (False, False)])
@pytest.mark.parametrize('pool_size', [3, 5])
def test_pool_norm_residual_gradcheck(affine, layer_scale, pool_size):
    """The hand-written backward of ``x + ls * (pool(gn(x)) - gn(x))``
    against finite differences (float64: the separable window sums)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    weight = bias = scale = None
    if affine:
        weight = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
        bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    if layer_scale:
        scale = (torch.rand(3, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *args: cpu._PoolNormResidual.apply(*args, pool_size, 1e-5),
        (x, weight, bias, scale))


@pytest.mark.parametrize('channels_last', [False, True])
def test_pool_norm_residual_matches_modules(channels_last):
    """float32 (oneDNN window sums for channels_last) against GroupNorm,
    AvgPool2d and the layer scale as modules, forward and gradients."""
    torch.manual_seed(0)
    norm = nn.GroupNorm(1, 16)
    pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    scale = (torch.rand(16) + 0.1).requires_grad_()
    x = torch.randn(2, 16, 11, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 16, 11, 9)
    params = [norm.weight, norm.bias, scale]
    results = []
    for fused in (True, False):
        inp = x.detach().clone().requires_grad_()
        if fused:
            out = cpu._PoolNormResidual.apply(inp, norm.weight, norm.bias,
                                              scale, 3, norm.eps)
        else:
            y = norm(inp)
            out = inp + scale.view(-1, 1, 1) * (pool(y) - y)
        results.append([out] + list(
            torch.autograd.grad(out, [inp] + params, grad)))
    fused, ref = results
    assert fused[0].is_contiguous(
        memory_format=torch.channels_last) == channels_last
    for name, a, b in zip(['out', 'x', 'weight', 'bias', 'scale'], fused, ref):
        # norm.bias cancels: its gradient is zero, up to rounding in ref.
        atol = 1e-5 * b.abs().max().item() if name != 'bias' else 1e-4
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=name)
    assert not fused[3].any()


@pytest.mark.parametrize('approximate', ['none', 'tanh'])
@pytest.mark.parametrize('bias', [True, False])
def test_pointwise_mlp_matches_modules(approximate, bias):
    torch.manual_seed(0)
    fc1, fc2 = nn.Conv2d(8, 32, 1, bias=bias), nn.Conv2d(32, 8, 1, bias=bias)
    act = nn.GELU(approximate)
    x = torch.randn(2, 8, 7, 5).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 8, 7, 5)
    params = list(fc1.parameters()) + list(fc2.parameters())
    results = []
    for fused in (True, False):
        inp = x.detach().clone().requires_grad_()
        out = (cpu._PointwiseMlp.apply(inp, fc1.weight, fc1.bias,
                                       fc2.weight, fc2.bias, approximate)
               if fused else fc2(act(fc1(inp))))
        results.append([out] + list(
            torch.autograd.grad(out, [inp] + params, grad)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # Frozen weights and an input without grad, as in frozen stages.
    fc1.requires_grad_(False)
    inp = x.detach().clone()
    out = cpu._PointwiseMlp.apply(inp, fc1.weight, fc1.bias, fc2.weight,
                                  fc2.bias, approximate)
    out.backward(grad)
    assert fc1.weight.grad is None and fc2.weight.grad is not None


def test_pointwise_mlp_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    args = (x, torch.randn(6, 3, 1, 1, dtype=torch.float64),
            torch.randn(6, dtype=torch.float64),
            torch.randn(3, 6, 1, 1, dtype=torch.float64),
            torch.randn(3, dtype=torch.float64))
    args = tuple(a.requires_grad_() for a in args)
    assert torch.autograd.gradcheck(
        lambda *a: cpu._PointwiseMlp.apply(*a, 'none'), args)


def test_fast_modules_apply_only_where_exact(monkeypatch):
    """Where the fused functions would compute something else (stochastic
    depth or dropout in training, other dtypes, autocast, tracing) the
    reference computation runs."""
    calls = []
    for name in ('_PoolNormResidual', '_PointwiseMlp'):
        fn = getattr(cpu, name)
        monkeypatch.setattr(fn, 'apply', lambda *a, _f=fn.apply, _n=name:
                            calls.append(_n) or _f(*a))
    block = PoolFormer('s12', drop_path_rate=0.5).stages[3].blocks[1]
    assert type(block) is cpu.FusedPoolBlock
    assert type(block.mlp) is cpu.FusedMlp
    x = torch.randn(1, 512, 4, 4).contiguous(
        memory_format=torch.channels_last)
    block.eval()(x)
    assert calls == ['_PoolNormResidual', '_PointwiseMlp']
    calls.clear()
    block.train()(x)
    assert calls == ['_PointwiseMlp']  # stochastic depth: the modules
    calls.clear()
    block = PoolFormer('s12').stages[0].blocks[0].train()
    x = torch.randn(1, 64, 4, 4).contiguous(memory_format=torch.channels_last)
    block(x)
    assert calls == ['_PoolNormResidual', '_PointwiseMlp']
    calls.clear()
    copy.deepcopy(block).double()(x.double())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        block(x)
    torch.jit.trace(block, x, check_trace=False)
    assert calls == []
    with torch.no_grad():  # without autograd the MLP's modules are as fast
        block(x)
    assert calls == ['_PoolNormResidual']
    # Modules of other configurations are not replaced.
    model = PoolFormer(dict(layers=[1] * 4, embed_dims=[8] * 4, mlp_ratios=1,
                            layer_scale_init_value=1e-5),
                       act_cfg=dict(type='ReLU'), pool_size=2)
    assert not any(isinstance(m, (cpu.FusedMlp, cpu.FastPooling))
                   for m in model.modules())


def test_deploy_under_inference_mode_then_no_grad():
    # The scratch tensors are shared between calls (and models): ones made
    # under inference_mode must not be written outside it.
    model = PoolFormer('s12').eval().switch_to_deploy()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
    with torch.no_grad():
        out = model(x)
    assert rel_err(ref, out) == 0


def test_channels_last_inside_contiguous_outside():
    """The CPU float32 path runs channels_last, but every path hands out
    contiguous NCHW maps: mmcv's RoIAlign reads channels_last input wrongly
    (checked here too), which silently broke the RoI heads of Mask R-CNN."""
    pytest.importorskip('mmcv.ops')
    from mmcv.ops import roi_align
    model = PoolFormer('s12').eval()
    layouts = []
    model.stem.conv.register_forward_pre_hook(
        lambda m, inp: layouts.append(
            inp[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        outs = model(x)
        assert layouts == [True]
        assert all(o.is_contiguous() for o in outs)
        # The copy keeps the hook: the reference runs NCHW.
        ref = copy.deepcopy(model).switch_impl('reference')(x)
        assert layouts == [True, False]
        assert rel_err(ref, outs) < 1e-5
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert all(o.is_contiguous() for o in model(x))
        deployed = copy.deepcopy(model).switch_to_deploy()
        assert all(o.is_contiguous() for o in deployed(x))
        rois = torch.tensor([[0., 1., 2., 9., 7.]])
        expected = roi_align(outs[0], rois, (3, 3), 1.0, 0, 'avg', True)
        wrong = roi_align(
            outs[0].contiguous(memory_format=torch.channels_last), rois,
            (3, 3), 1.0, 0, 'avg', True)
        assert not torch.allclose(expected, wrong)


def _run(model, x, autocast):
    """Outputs, and every parameter's and the input's gradient."""
    model.zero_grad()
    x = x.detach().clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    sum(o.float().square().mean() for o in out).backward()
    return ([o.detach().float() for o in out],
            [x.grad] + [p.grad for p in model.parameters()])


TINY_V1 = dict(layers=[1, 2, 1, 1], embed_dims=[16, 24, 32, 40], mlp_ratios=2,
               layer_scale_init_value=0.5)


def narrow(arch):
    """A named MetaFormer arch with its norms, mixers, activations and
    scales, but two blocks in the middle stages and narrow widths (96 gives
    attention 3 heads of 32): every kind of block at a fraction of the
    full size's time."""
    return dict(MetaFormer.arch_settings[arch], layers=[1, 2, 2, 1],
                embed_dims=[16, 32, 64, 96])


BUILDS = {
    'poolformer_s12': lambda impl: PoolFormer('s12', impl=impl),
    'poolformer_tiny_pool5': lambda impl: PoolFormer(
        TINY_V1, pool_size=5, out_indices=(3, 0), impl=impl),
    'poolformerv2_narrow': lambda impl: MetaFormer(
        narrow('poolformerv2_s12'), impl=impl),
    'caformer_narrow': lambda impl: MetaFormer(
        narrow('caformer_s18'), impl=impl),
    'caformer_s18': lambda impl: MetaFormer('caformer_s18', impl=impl),
}
# Every mode and layout on the small builds; the full-size PoolFormer-S12 in
# the cases that exercise most (training with channels_last input, bfloat16
# autocast, the CUDA norm forced on), CAFormer-S18 in inference.
MODES = [(layout, mode, False) for layout in ('nchw', 'channels_last')
         for mode in ('train', 'eval', 'bf16_autocast')
         ] + [('nchw', 'train', True), ('nchw', 'eval', True)]
AUTO_CASES = [
    pytest.param(name, *mode, id='-'.join(map(str, mode + (name, ))))
    for name in ('poolformer_tiny_pool5', 'poolformerv2_narrow',
                 'caformer_narrow') for mode in MODES
] + [
    pytest.param(name, *mode, id='-'.join(map(str, mode + (name, ))))
    for name, mode in (('poolformer_s12', ('channels_last', 'train', False)),
                       ('poolformer_s12', ('nchw', 'bf16_autocast', False)),
                       ('poolformer_s12', ('nchw', 'eval', True)),
                       ('caformer_s18', ('nchw', 'eval', False)))
]


@pytest.mark.parametrize('name,layout,mode,norms_off_cpu', AUTO_CASES)
def test_auto_matches_reference(monkeypatch, name, layout, mode,
                                norms_off_cpu):
    """impl='auto' against impl='reference': same state dict, outputs and
    every gradient (parameters and input), at an odd size, NCHW and
    channels_last input, train and eval mode, float32 and bfloat16
    autocast; with the CUDA GroupNorm(1) forced on the CPU too."""
    if norms_off_cpu:
        monkeypatch.setattr(cuda, '_on_gpu', lambda x: True)
        monkeypatch.setattr(cuda, 'GROUP_NORM1_MIN_SIZE', 0)
    build = BUILDS[name]
    torch.manual_seed(0)
    ref = perturb(build('reference'))
    fast = build('auto')
    fast.load_state_dict(ref.state_dict())
    assert [(k, v.shape) for k, v in ref.state_dict().items()] == [
        (k, v.shape) for k, v in fast.state_dict().items()]
    assert any(type(m).__module__.startswith('poolformer_mm.models.fast')
               for m in fast.modules())
    assert not any(
        type(m).__module__.startswith('poolformer_mm.models.fast')
        for m in ref.modules())
    for model in (ref, fast):
        model.train(mode == 'train')
    x = torch.randn(2, 3, 67, 93)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    (out_ref, grads_ref), (out, grads) = (_run(m, x, mode == 'bf16_autocast')
                                          for m in (ref, fast))
    tol = 2e-2 if mode == 'bf16_autocast' else 1e-5
    assert rel_err(out_ref, out) < tol
    assert all(o.is_contiguous() for o in out)
    for r, g in zip(grads_ref, grads):
        assert (r is None) == (g is None)
        if r is not None:
            # Some gradients are zero up to rounding (norm1's bias cancels
            # in pool(y) - y): compare with a small absolute floor.
            assert (r - g).abs().max() <= 10 * tol * r.abs().max() + 1e-7


def test_switch_impl_round_trip():
    model = PoolFormer('s12')
    reference = [
        type(m) for m in PoolFormer('s12', impl='reference').modules()
    ]
    params = list(model.parameters())
    for impl in ('reference', 'deploy', 'auto', 'reference'):
        model.switch_impl(impl)
        assert model.impl == impl
        assert all(p is q for p, q in zip(params, model.parameters()))
    assert [type(m) for m in model.modules()] == reference
    with pytest.raises(ValueError, match=r"impl must be one of .*'auto'.*"
                       r"got 'fast'"):
        PoolFormer('s12', impl='fast')


def test_reference_exports_to_onnx(tmp_path):
    """The reference network exports with torch.onnx.export, dynamic height
    and width, no context manager; so does the default-built one (its
    fast modules run the reference computation while exporting)."""
    pytest.importorskip('onnx')
    for impl in ('reference', 'auto'):
        model = PoolFormer(TINY_V1, impl=impl).eval()
        path = tmp_path / f'{impl}.onnx'
        torch.onnx.export(
            model, (torch.randn(1, 3, 64, 64), ), str(path), dynamo=False,
            input_names=['image'],
            dynamic_axes={'image': {2: 'height', 3: 'width'}})
        assert path.stat().st_size > 0


@pytest.mark.parametrize('arch', ['s12', 'poolformerv2_s12'])
def test_deploy_recorded_form(arch):
    """While tracing / exporting, folded blocks run out of place in public
    ops (folded_block_recorded): equal to the folded path, and a traced
    deploy backbone equals the reference at another input size."""
    torch.manual_seed(0)
    build = PoolFormer if arch == 's12' else MetaFormer
    model = perturb(build(arch)).eval()
    deployed = copy.deepcopy(model).switch_to_deploy()
    blocks = [b for s in deployed.stages for b in s.blocks]
    x = torch.randn(2, 64, 15, 11)  # stage 0 has 64 channels
    with torch.no_grad():
        for block in blocks[:2]:
            recorded = folded.folded_block_recorded(block.folded(), x)
            assert rel_err(block(x), recorded) < RTOL
        traced = torch.jit.trace(deployed, torch.randn(1, 3, 64, 96),
                                 check_trace=False)
        other = torch.randn(2, 3, 96, 64)
        assert rel_err(model(other), traced(other)) < RTOL


# ---------------------------------------------------------------------------
# tools/test.py --deploy, end to end
# ---------------------------------------------------------------------------
@pytest.mark.integration
def test_tools_test_deploy(demo_data, tmp_path):
    pytest.importorskip('mmdet')
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmdet.utils import register_all_modules
    from helpers.tiny_demo import SMALL_MODEL
    # The demo RetinaNet with a narrow network: the folding is per block.
    config = tmp_path / 'narrow_retinanet.py'
    config.write_text('_base_ = [%r]\n' % osp.join(
        CONFIGS, 'demo', 'retinanet_poolformer_s12_demo.py') + SMALL_MODEL)
    cfg = Config.fromfile(config)
    register_all_modules(init_default_scope=False)
    from mmdet.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        detector = MODELS.build(cfg.model)
    perturb(detector.backbone)
    checkpoint = tmp_path / 'detector.pth'
    torch.save(dict(state_dict=detector.state_dict(), meta=dict()),
               checkpoint)

    root = f'{demo_data}/coco/'
    options = [
        f'test_dataloader.dataset.data_root={root}',
        f'test_evaluator.ann_file={root}annotations/instances_val.json',
        'test_dataloader.num_workers=0', 'test_dataloader.batch_size=1',
        'test_dataloader.persistent_workers=False',
        # Keep low-scoring boxes so that there is something to compare.
        'model.test_cfg.score_thr=0.0', 'model.test_cfg.max_per_img=20'
    ]
    modes = ('default', 'deploy')
    # The two runs side by side: most of each is the interpreter's imports.
    runs = run_commands([[
        sys.executable,
        osp.join(TOOLS, 'test.py'), config, checkpoint, '--work-dir',
        tmp_path / mode, '--out', tmp_path / f'{mode}.pkl'
    ] + (['--deploy'] if mode == 'deploy' else []) + ['--cfg-options'] +
                         options for mode in modes], timeout=300)
    results = {}
    for mode, run in zip(modes, runs):
        log = run.stdout + run.stderr
        assert ('Switched to the deploy' in log) == (mode == 'deploy')
        with open(tmp_path / f'{mode}.pkl', 'rb') as f:
            results[mode] = pickle.load(f)
    assert len(results['default']) == len(results['deploy']) == 4
    for ref, out in zip(results['default'], results['deploy']):
        ref_scores = ref['pred_instances']['scores'].sort().values
        out_scores = out['pred_instances']['scores'].sort().values
        assert len(ref_scores) > 0
        torch.testing.assert_close(out_scores, ref_scores, rtol=1e-4,
                                   atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_deploy_cuda(monkeypatch):
    # TF32 would round the two paths' convolutions differently.
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    model, deployed = pair('s12')
    model, deployed = model.cuda(), deployed.cuda()
    x = torch.randn(2, 3, 67, 93, device='cuda')
    with torch.no_grad():
        ref = model(x)
        for _ in range(3):
            assert rel_err(ref, deployed(x)) < RTOL
        for dtype in (torch.float16, torch.bfloat16):
            with torch.autocast('cuda', dtype=dtype):
                ref_autocast = model(x)
                for _ in range(2):
                    out = deployed(x)
            assert ([o.dtype for o in out] == [o.dtype for o in ref_autocast])
            assert rel_err(ref, out) < 2 * rel_err(ref, ref_autocast) + 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_default_path_cuda_matches_cpu(monkeypatch):
    """Training on CUDA (the modules' own ops) computes what the CPU's
    fast path computes: outputs and every gradient."""
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    # Every GroupNorm(1) on CUDA as cuda._GroupNorm1.
    monkeypatch.setattr(cuda, 'GROUP_NORM1_MIN_SIZE', 0)
    torch.manual_seed(0)
    model = perturb(PoolFormer('s12'))
    x = torch.randn(2, 3, 67, 93)
    outs, grads = [], []
    for device in ('cpu', 'cuda'):
        model = model.to(device)
        model.zero_grad()
        out = model(x.to(device))
        sum(o.square().mean() for o in out).backward()
        # Copies: moving the model moves its gradients too.
        outs.append([o.detach().cpu().clone() for o in out])
        grads.append([p.grad.cpu().clone() for p in model.parameters()])
    assert rel_err(outs[0], outs[1]) < 1e-5
    for ref, grad in zip(*grads):
        assert (ref - grad).abs().max() <= 1e-4 * ref.abs().max() + 1e-7
