"""``impl='compile'``: the reference network's regions under
``torch.compile`` (:mod:`poolformer_mm.models.fast.compiled`).

Most tests here run dynamo with its ``eager`` backend (the compiled regions,
their caches and guards, without inductor's minutes of C++ compilation on
two cores); :func:`test_inductor_train_step_matches_reference` compiles with
inductor on the CPU, and the ``cuda`` tests (tools/gpu_check.sh) on the GPU.
The count of recompilations over 50 detection-size batches is measured by
the GPU check; here with a few small sizes.
"""
import copy
import pickle

import pytest
import torch

from poolformer_mm import MetaFormer, PoolFormer
from poolformer_mm.models.backbones import layers as L
from poolformer_mm.models.fast import IMPLS, apply_impl, reference_type
from poolformer_mm.models.fast import compiled as C

TINY = dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32], mlp_ratios=2,
            layer_scale_init_values=0.5)
TINY_CONV = dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32],
                 mlp_ratios=2, token_mixers='SepConv')
REGIONS = 9  # stem, four stages, four output norms
# float32: inductor fuses the pointwise work and sums in another order (the
# norms' statistics over C*H*W <= 2e4 elements, the parameter gradients over
# N*H*W): about sqrt(n) u ~ 1e-5 of each tensor's largest entry at most
# (u = 6e-8); 1e-4 leaves a margin and still catches any wrong term.
RTOL = 1e-4


@pytest.fixture
def eager_backend(monkeypatch):
    """dynamo without inductor: regions, caches and guards as in
    ``impl='compile'``, compiled in seconds."""
    monkeypatch.setattr(C, 'COMPILE_OPTIONS',
                        dict(C.COMPILE_OPTIONS, backend='eager', options=None))


def tiny(cls=PoolFormer, arch=TINY, **kwargs):
    torch.manual_seed(0)
    model = cls(arch=arch, impl='reference', **kwargs)
    with torch.no_grad():  # non-trivial affines and scales
        for name, p in model.named_parameters():
            if name.endswith('scale') or 'norm' in name:
                p.add_(0.3 * torch.rand_like(p))
    return model


def rel_err(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()


def step(model, x):
    """Outputs and the gradients of the input and every parameter of a
    train step (the loss weights each output differently)."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    outs = model(x)
    sum((i + 1) * (o * o).mean() for i, o in enumerate(outs)).backward()
    grads = [x.grad] + [p.grad for p in model.parameters()]
    return [o.detach() for o in outs], grads


def test_selector_replaces_the_outermost_regions():
    ref = tiny()
    fast = copy.deepcopy(ref)
    apply_impl(fast, 'compile')
    assert 'compile' in IMPLS and fast.impl == 'compile'
    assert type(fast.stem) is C.CompiledStem
    assert [type(s) for s in fast.stages] == [C.CompiledStage] * 4
    assert [type(getattr(fast, f'norm{i}')) for i in range(4)
            ] == [C.CompiledGroupNorm] * 4
    # Inside a region everything is the reference's: it compiles with it.
    inner = [m for s in fast.stages for m in list(s.modules())[1:]]
    assert inner and all(reference_type(m) is type(m) for m in inner)
    assert type(fast.stages[1].blocks[0].norm1) is L.Fp32GroupNorm
    # The same tensors, names and order; back to the reference classes.
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(
        fast.state_dict().values(), ref.state_dict().values()))
    fast.switch_impl('reference')
    assert [type(m) for m in fast.modules()] == [
        type(m) for m in ref.modules()]
    conv = MetaFormer(arch=TINY_CONV, impl='compile')
    assert type(conv.norm3) is C.CompiledLayerNorm2d
    assert type(conv.stem) is C.CompiledStem
    with pytest.raises(ValueError, match=r"impl must be one of .*'compile'"):
        apply_impl(ref, 'compiled')


@pytest.mark.integration  # compiles (dynamo)
def test_compiled_function_is_a_cache(eager_backend):
    model = tiny().switch_impl('compile').eval()
    x = torch.randn(1, 3, 64, 96)
    assert not any('_fast_compiled' in vars(m) for m in model.modules())
    with torch.no_grad():
        before = model(x)
    regions = [m for m in model.modules() if '_fast_compiled' in vars(m)]
    assert len(regions) == REGIONS
    assert all('_fast_compiled' not in k for k in model.state_dict())
    # A copy compiles its own: it must run its own parameters.
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert not any('_fast_compiled' in vars(m)
                       for m in copied.modules())
        with torch.no_grad():
            copied.stages[3].blocks[0].layer_scale2.scale.mul_(3)
            changed = copied(x)[3]
            again = model(x)[3]
        assert torch.equal(again, before[3])
        assert rel_err(changed, before[3]) > 1e-3
    model.switch_impl('compile')  # switching drops the caches
    assert not any('_fast_compiled' in vars(m) for m in model.modules())


@pytest.mark.integration  # compiles (dynamo)
def test_recording_runs_the_reference(eager_backend):
    """Tracing (and an outer torch.compile, which is_recording also
    reports) records the reference forward, not a compiled call."""
    model = tiny().switch_impl('compile').eval()
    ref = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        assert not any('_fast_compiled' in vars(m) for m in model.modules())
        assert max(map(rel_err, traced(x), ref(x))) < 1e-6


@pytest.mark.integration  # compiles (dynamo)
def test_regions_keep_their_own_recompile_limit(eager_backend):
    """Each region compiles a code object of its own: four stages in train
    and eval mode, in float32 and under bfloat16 autocast (16 entries, twice
    dynamo's recompile_limit of 8 per code object, where they would share
    MetaFormerStage.forward's), all stay compiled; and within a mode and
    dtype new sizes compile nothing again (dynamic shapes)."""
    model = tiny().switch_impl('compile')
    sizes = C.detection_sizes(5, scale=(256, 160), seed=4)
    assert len(set(sizes)) >= 3
    for dtype in (None, torch.bfloat16):
        for train in (True, False):
            count = C.count_recompiles(model, sizes, train=train,
                                       dtype=dtype)
            assert count['first_graphs'] == REGIONS, count
            assert count['recompiles'] == 0, count
            assert count['eager_frames'] == 0, count
            assert count['calls'] == count['sizes'] == 5
    limited = C.count_recompiles(model, sizes, max_seconds=0.)
    assert limited['calls'] == 1 and limited['sizes'] == 5


@pytest.mark.integration  # compiles (dynamo)
def test_count_recompiles_counts_a_recompilation(eager_backend):
    """A width of 32 after 64: the last stage's map becomes 1 wide, a size
    dynamo specializes, so the regions that see it compile again."""
    model = tiny().switch_impl('compile')
    count = C.count_recompiles(model, [(64, 64), (64, 32), (64, 32)],
                               train=False)
    assert count['first_graphs'] == REGIONS
    assert 1 <= count['recompiles'] <= 2, count  # stage 4 and / or norm3
    with pytest.raises(ValueError, match='at least one'):
        C.count_recompiles(model, [])
    with pytest.raises(ValueError, match=r'both >= 32, got \[\(16, 64\)\]'):
        C.count_recompiles(model, [(16, 64)])


def test_detection_sizes():
    sizes = C.detection_sizes(50)
    assert sizes == C.detection_sizes(50) != C.detection_sizes(50, seed=1)
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in sizes)
    # Within the resize scale (long side 1333, short 800) after padding.
    assert all(max(h, w) <= 1344 and min(h, w) <= 800 for h, w in sizes)
    assert len(set(sizes)) >= 15  # as varied as detection batches are
    assert all(min(s) >= 64 for s in C.detection_sizes(20, (160, 96)))
    with pytest.raises(ValueError, match='num must be an int >= 1, got 0'):
        C.detection_sizes(0)
    with pytest.raises(ValueError, match=r'scale must be .* got \(800,\)'):
        C.detection_sizes(3, scale=(800, ))


def assert_train_step_matches(model, ref, x):
    outs, grads = step(model, x)
    ref_outs, ref_grads = step(ref, x)
    assert max(map(rel_err, outs, ref_outs)) < RTOL
    # Parameters past the last output (out_indices) get no gradient in
    # either.
    assert [g is None for g in grads] == [r is None for r in ref_grads]
    # PoolFormer's first norm's bias cancels in pool(n(x)) - n(x): its
    # gradient is zero but for rounding (~1e-9) in both, so each gradient
    # is compared relative to its own largest entry or, for such vanishing
    # ones, to 1e-3 of the largest gradient of the step (an absolute
    # 1e-7 of it, a few float32 roundings of the summed terms).
    floor = 1e-3 * max(r.abs().max().item() for r in ref_grads
                       if r is not None)
    errors = [(g - r).abs().max().item() / max(r.abs().max().item(), floor)
              for g, r in zip(grads, ref_grads) if r is not None]
    assert max(errors) < RTOL, errors


@pytest.mark.integration
def test_inductor_train_step_matches_reference():
    """Inductor on the CPU against the reference: a train step's outputs
    and every gradient, at two odd sizes (the second compiles again:
    inductor's convolution backward fixes the sizes). The stem, the first
    stage and its output norm: three regions, inductor's compile time on
    two cores being what it is (CUDA: every region, below)."""
    ref = tiny(out_indices=(0, )).train()
    model = copy.deepcopy(ref).switch_impl('compile')
    for size in ((37, 53), (64, 45)):
        assert_train_step_matches(model, ref, torch.randn(2, 3, *size))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('cls,arch', [(PoolFormer, TINY),
                                      (MetaFormer, TINY_CONV)])
def test_inductor_cuda_matches_reference(cls, arch, monkeypatch):
    """On the GPU (TF32 off): train step in float32, eval under bfloat16
    autocast against the reference under the same autocast."""
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    ref = tiny(cls, arch).cuda().train()
    model = copy.deepcopy(ref).switch_impl('compile')
    x = torch.randn(2, 3, 67, 93, device='cuda')
    assert_train_step_matches(model, ref, x)
    model.eval(), ref.eval()
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        # Both round to bfloat16 at different points: a few units of 2^-8.
        assert max(map(rel_err, (o.float() for o in model(x)),
                       (o.float() for o in ref(x)))) < 8 * 2.**-8


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_eval_compiles_once_for_every_size():
    model = tiny().switch_impl('compile').cuda()
    sizes = C.detection_sizes(6, scale=(640, 384))
    count = C.count_recompiles(model, sizes, train=False, device='cuda',
                               dtype=torch.float16)
    assert count['first_graphs'] == REGIONS
    assert count['recompiles'] == 0 and count['eager_frames'] == 0, count
