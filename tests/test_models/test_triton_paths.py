"""``impl='triton'``: the fused Triton kernels against the reference network,
outputs and every gradient (the input's and each parameter's).

The kernels run in Triton's CPU interpreter on CPU tensors: the variable is
set here, before the kernels are defined (they are imported at the first
Triton forward, never at ``import poolformer_mm``, which conftest.py may
have done already). With ``TRITON_INTERPRET=0`` on a machine with a GPU the
same tests run the compiled kernels on CUDA tensors. The interpreter is
slow: tensors are tiny and most cases use the default tiles; one case per
kernel family shrinks the tiles so that every sample spans many of them.
"""
import copy
import os
import sys

import pytest
import torch
import torch.nn as nn

from poolformer_mm.models.backbones import layers as L

_KERNELS = 'poolformer_mm.models.fast.triton_kernels'
# Recorded at collection, before any test runs a Triton module.
KERNELS_AT_IMPORT = _KERNELS in sys.modules

if os.environ.get('TRITON_INTERPRET') == '0' and torch.cuda.is_available():
    DEVICE = 'cuda'
else:
    DEVICE = 'cpu'
    os.environ['TRITON_INTERPRET'] = '1'
pytest.importorskip('triton', reason='impl=triton needs triton')

from poolformer_mm import MetaFormer, PoolFormer  # noqa: E402
from poolformer_mm.models.fast import _as, _first_fit, _replace  # noqa
from poolformer_mm.models.fast import triton_modules as tm  # noqa: E402

tk = pytest.importorskip(_KERNELS)
if not tk.serves(torch.device(DEVICE)):
    pytest.skip(f'the Triton kernels were defined for another device than '
                f'{DEVICE} (set TRITON_INTERPRET before they are imported)',
                allow_module_level=True)

# float32: the kernels and the modules round differently (fp32 sums in
# another order), nothing else.
RTOL = 1e-4
# Unit roundoff of the half types. Both paths compute in float32 and round
# their stored tensors: the reference after every module (norm output,
# pooled map, difference, products: a handful of roundings per element),
# the kernels only at each fused pass's output. So against a float64 truth
# the fused error is at most about the reference's; allowed: twice it plus
# 4 u (relative to each tensor's largest entry), u = 2^-8 (bf16) / 2^-11
# (fp16). The fp32 statistics over C*H*W <= 2e3 elements add ~1e-5 at most.
HALF_U = {torch.bfloat16: 2.**-8, torch.float16: 2.**-11}
GN1 = dict(type='GN', num_groups=1)
GN1_NO_BIAS = dict(type='GN', num_groups=1, eps=1e-6, bias=False)


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch):
    """On CUDA, float32 convolutions in float32: TF32 would round the
    reference's and the folded weights differently, by ~1e-3."""
    if DEVICE == 'cuda':
        monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
        monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)


def rel_err(out, ref):
    scale = ref.abs().max().clamp_min(1e-30)
    return ((out.double() - ref.double()).abs().max() / scale).item()


@torch.no_grad()
def randomize(module, seed=0):
    """Non-trivial norm affines, scales and biases."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=gen).to(p.device)
        if name.endswith('scale') or name.endswith('norm1.weight') or \
                name.endswith('norm2.weight'):
            p.copy_(0.8 + 0.3 * noise.abs())
        elif p.dim() == 1:
            p.copy_(0.3 * noise)
        else:
            p.add_(0.2 * noise)
    return module


def run(module, x, grad=None, autocast=None):
    """Output and gradients (input first, then each parameter by name)."""
    x = x.detach().clone().requires_grad_()
    with torch.autocast(DEVICE, dtype=autocast, enabled=autocast is not None):
        out = module(x)
    outs = out if isinstance(out, (tuple, list)) else [out]
    grads = [torch.randn(o.shape, generator=torch.Generator().manual_seed(
        i + 7)).to(o) for i, o in enumerate(outs)] if grad is None else grad
    names = ['input'] + [n for n, _ in module.named_parameters()]
    tensors = [x] + list(module.parameters())
    got = torch.autograd.grad(outs, tensors, grads, allow_unused=True)
    return outs, dict(zip(names, got)), grads


def zero_cancelled(name, fast_grad):
    # A pool block's first norm bias cancels in pool(y) - y: its gradient is
    # 0 (the reference's is rounding noise, checked against the weight's).
    return name.endswith('norm1.bias') and not fast_grad.any()


def assert_matches(fast, ref, x, rtol=RTOL, autocast=None):
    """``fast`` (a Triton module) against ``ref`` (the reference one)."""
    outs, grads, g = run(ref, x, autocast=autocast)
    fast_outs, fast_grads, _ = run(fast, x, g, autocast=autocast)
    for o, r in zip(fast_outs, outs):
        assert o.dtype == r.dtype and o.shape == r.shape
        assert rel_err(o, r) < rtol
    for name, r in grads.items():
        f = fast_grads[name]
        assert (f is None) == (r is None), name
        if r is None:
            continue
        assert f.dtype == r.dtype, name
        if zero_cancelled(name, f):
            weight = grads[name[:-len('bias')] + 'weight']
            assert r.abs().max() <= rtol * weight.abs().max(), name
        else:
            assert rel_err(f, r) < rtol, (name, rel_err(f, r))


def counts_calls(monkeypatch):
    """The Triton autograd functions applied, by name."""
    calls = []
    fn = tm._functions()
    for name in ('PoolMix', 'Normalize', 'GroupNorm1', 'BiasAct',
                 'ScaleResidual'):
        cls = getattr(fn, name)
        monkeypatch.setattr(
            cls, 'apply',
            lambda *a, _n=name, _f=cls.apply: calls.append(_n) or _f(*a))
    return calls


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of a few elements: many tiles, position and channel blocks
    per sample, and several finalize iterations."""
    for key, value in dict(elements=32, max_block_p=8, max_block_c=4,
                           stats_block=32, finalize_block=2).items():
        monkeypatch.setitem(tk.TILE, key, value)


def pool_block(v2=False, pool_size=3, channels=8):
    """A PoolFormer block (GELU, affine norms, layer scales), or a
    PoolFormerV2 one (StarReLU, bias-free norms and MLP, res-scales)."""
    torch.manual_seed(0)
    if v2:
        block = L.MetaFormerBlock(channels, L.Pooling(pool_size), 2,
                                  GN1_NO_BIAS, dict(type='StarReLU'),
                                  layer_scale_init_value=None,
                                  res_scale_init_value=1., mlp_bias=False)
    else:
        block = L.MetaFormerBlock(channels, L.Pooling(pool_size), 2, GN1,
                                  dict(type='GELU'),
                                  layer_scale_init_value=0.5)
    return randomize(block.to(DEVICE))


def maps(shape, channels_last=False, dtype=torch.float32, seed=1):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    x = (x * 2 + 0.5).to(DEVICE, dtype)
    return x.contiguous(memory_format=torch.channels_last
                        if channels_last else torch.contiguous_format)


def test_kernels_not_imported_with_the_package():
    assert not KERNELS_AT_IMPORT


def test_missing_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'triton', None)
    with pytest.raises(ImportError, match='impl=.triton. needs the `triton`'):
        PoolFormer('s12', impl='triton')


def test_group_norm1_statistics(small_tiles):
    """Split statistics against float64, with a mean far above the spread
    (the finalize combines tile deviations: no E[x^2] - E[x]^2)."""
    x = torch.randn(3, 5, 7, 9, dtype=torch.float64) * 0.01 + 300.
    for dtype in (torch.float32, torch.bfloat16):
        inp = x.to(DEVICE, dtype)
        mean, rstd = tk.group_norm1_stats(inp, 1e-5)
        var, ref_mean = torch.var_mean(inp.double().flatten(1), 1,
                                       correction=0)
        assert mean.dtype == rstd.dtype == torch.float32
        torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-6,
                                   atol=0)
        torch.testing.assert_close(rstd.double(), (var + 1e-5).rsqrt(),
                                   rtol=1e-3, atol=0)


@pytest.mark.parametrize('shape,channels_last,pool_size,v2', [
    ((2, 8, 7, 9), False, 3, False),
    ((1, 8, 13, 5), True, 3, False),
    ((4, 8, 3, 3), True, 5, True),
    ((3, 8, 1, 1), False, 3, True),
])
def test_pool_block(shape, channels_last, pool_size, v2, monkeypatch):
    ref = pool_block(v2, pool_size, shape[1])
    fast = _as(copy.deepcopy(ref), tm.TritonPoolBlock)
    calls = counts_calls(monkeypatch)
    assert_matches(fast, ref, maps(shape, channels_last))
    assert calls == ['PoolMix', 'Normalize', 'BiasAct', 'ScaleResidual']


@pytest.mark.parametrize('channels_last', [False, True])
def test_pool_block_small_tiles(small_tiles, channels_last):
    ref = pool_block(v2=channels_last, channels=6)
    assert_matches(_as(copy.deepcopy(ref), tm.TritonPoolBlock), ref,
                   maps((2, 6, 7, 5), channels_last))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('v2', [False, True])
def test_pool_block_half(dtype, v2):
    """A block cast to ``dtype`` (float32 statistics), against float64."""
    truth = pool_block(v2).double()
    ref = copy.deepcopy(truth).to(dtype)
    fast = _as(copy.deepcopy(ref), tm.TritonPoolBlock)
    x = maps((2, 8, 7, 9), channels_last=v2)
    want, want_grads, g = run(truth, x.double())
    results = [run(m, x.to(dtype), [t.to(dtype) for t in g])
               for m in (ref, fast)]
    (ref_out, ), ref_grads, _ = results[0]
    (out, ), grads, _ = results[1]
    assert out.dtype == ref_out.dtype == dtype
    tol = 4 * HALF_U[dtype]
    assert rel_err(out, want[0]) < 2 * rel_err(ref_out, want[0]) + tol
    for name, w in want_grads.items():
        assert grads[name].dtype == ref_grads[name].dtype, name
        if zero_cancelled(name, grads[name]):
            continue
        bound = 2 * rel_err(ref_grads[name], w) + tol
        assert rel_err(grads[name], w) < bound, (name, rel_err(
            grads[name], w), bound)


def test_pool_block_autocast():
    """A float32 block under bfloat16 autocast, as GPUs train: the 1x1
    convolutions in bfloat16, the residual stream float32."""
    ref = pool_block()
    fast = _as(copy.deepcopy(ref), tm.TritonPoolBlock)
    want, want_grads, g = run(ref, maps((2, 8, 7, 9)))
    ref_out, ref_grads, _ = run(ref, maps((2, 8, 7, 9)), g, torch.bfloat16)
    out, grads, _ = run(fast, maps((2, 8, 7, 9)), g, torch.bfloat16)
    assert out[0].dtype == ref_out[0].dtype
    tol = 4 * HALF_U[torch.bfloat16]
    assert rel_err(out[0], want[0]) < 2 * rel_err(ref_out[0], want[0]) + tol
    for name, w in want_grads.items():
        if not zero_cancelled(name, grads[name]):
            assert rel_err(grads[name], w) < 2 * rel_err(
                ref_grads[name], w) + tol, name


@pytest.mark.parametrize('affine,bias', [(True, True), (True, False),
                                         (False, False)])
def test_group_norm1(affine, bias, small_tiles):
    ref = randomize(L.Fp32GroupNorm(6, 1, affine=affine, bias=bias)).to(DEVICE)
    fast = _as(copy.deepcopy(ref), tm.TritonGroupNorm1)
    assert tm.TritonGroupNorm1.fits(ref)
    assert_matches(fast, ref, maps((2, 6, 5, 3), channels_last=bias))


def test_group_norm1_bfloat16():
    ref = randomize(L.Fp32GroupNorm(8, 1)).to(DEVICE, torch.bfloat16)
    fast = _as(copy.deepcopy(ref), tm.TritonGroupNorm1)
    # Both compute in float32 from the same bfloat16 inputs and round once.
    assert_matches(fast, ref, maps((2, 8, 7, 9), dtype=torch.bfloat16),
                   rtol=2 * HALF_U[torch.bfloat16])


@pytest.mark.parametrize('act', [
    dict(type='GELU'),
    dict(type='GELU', approximate='tanh'),
    dict(type='StarReLU', scale_value=0.8, bias_value=-0.1)
])
def test_mlp(act):
    torch.manual_seed(0)
    ref = randomize(L.Mlp(6, 12, act, bias=act['type'] == 'GELU')).to(DEVICE)
    fast = _as(copy.deepcopy(ref), tm.TritonMlp)
    assert_matches(fast, ref, maps((2, 6, 5, 7), channels_last=True))


def test_sep_conv(small_tiles):
    torch.manual_seed(0)
    ref = randomize(L.SepConv(4, kernel_size=3)).to(DEVICE)
    assert_matches(_as(copy.deepcopy(ref), tm.TritonSepConv), ref,
                   maps((2, 4, 5, 3)))


def test_residual_block():
    """IdentityFormer's block: the residual passes with res-scales."""
    torch.manual_seed(0)
    ref = randomize(L.MetaFormerBlock(
        8, nn.Identity(), 2, GN1_NO_BIAS, dict(type='StarReLU'),
        layer_scale_init_value=0.5, res_scale_init_value=1.,
        mlp_bias=False)).to(DEVICE)
    holder = nn.Sequential(copy.deepcopy(ref))  # replaced as by the selector
    _replace(holder, _first_fit(tm.TRITON_MODULES))
    assert [type(m) for m in (holder[0], holder[0].norm1, holder[0].mlp)] \
        == [tm.TritonResidualBlock, tm.TritonGroupNorm1, tm.TritonMlp]
    assert_matches(holder[0], ref, maps((2, 8, 5, 7), channels_last=True))


def test_falls_back_to_the_reference(monkeypatch):
    ref = pool_block()
    fast = _as(copy.deepcopy(ref), tm.TritonPoolBlock)
    calls = counts_calls(monkeypatch)
    with torch.no_grad():
        # No float64 kernels.
        copy.deepcopy(fast).double()(maps((1, 8, 3, 4), dtype=torch.float64))
        fast(maps((1, 8, 3, 8))[:, :, :, ::2])  # not dense
        monkeypatch.setattr(tm, 'is_recording', lambda: True)
        fast(maps((1, 8, 3, 4)))
    assert calls == []


def backbones():
    tiny_pf = dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32],
                   mlp_ratios=2, layer_scale_init_values=0.5)
    tiny_v2 = dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32],
                   mlp_ratios=2, token_mixers='Pooling',
                   norm_cfgs=GN1_NO_BIAS)
    tiny_conv = dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32],
                     mlp_ratios=2, token_mixers='SepConv')
    return [
        pytest.param(PoolFormer, tiny_pf, tm.TritonPoolBlock,
                     id='poolformer'),
        pytest.param(MetaFormer, tiny_v2, tm.TritonPoolBlock,
                     id='poolformerv2'),
        pytest.param(MetaFormer, tiny_conv, tm.TritonResidualBlock,
                     id='convformer'),
    ]


@pytest.mark.parametrize('cls,arch,block', backbones())
def test_backbone(cls, arch, block, monkeypatch):
    """A small whole backbone, ``impl='triton'`` against ``'reference'``:
    same state dict, same outputs and gradients in training, same outputs
    in eval. (On the CPU the 'auto' stem hands the blocks channels_last
    maps.)"""
    torch.manual_seed(0)
    ref = randomize(cls(arch=arch, impl='reference')).to(DEVICE)
    fast = copy.deepcopy(ref).switch_impl('triton')
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert all(a is not b and torch.equal(a, b) for a, b in zip(
        fast.state_dict().values(), ref.state_dict().values()))
    blocks = [b for s in fast.stages for b in s.blocks]
    assert [type(b) for b in blocks] == [block] * 4
    ref.train(), fast.train()
    x = maps((2, 3, 37, 53))
    assert_matches(fast, ref, x)
    ref.eval(), fast.eval()
    calls = counts_calls(monkeypatch)
    with torch.no_grad():
        assert max(map(rel_err, fast(x), ref(x))) < RTOL
    assert calls
    fast.switch_impl('reference')
    assert all(type(m) is type(r) for m, r in zip(fast.modules(),
                                                  ref.modules()))
