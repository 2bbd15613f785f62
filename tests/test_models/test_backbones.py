"""What PoolFormer and MetaFormer share, tested on both: output shapes at odd
sizes, out_indices, frozen_stages, stochastic depth, argument checks, custom
archs under gradient checkpointing and the initialisation.

Each test takes a ``build(**kwargs)`` of each backbone; what differs between
the two (channels, initialisation) comes with it in the parameters. Helpers
and archs the backbone-specific test files share live here too.
"""
import pytest
import torch
from mmcv.cnn.bricks import DropPath

from poolformer_mm import MetaFormer, PoolFormer
from poolformer_mm.models.backbones import metaformer as mf

# The output sizes come from the stem and the downsamplings, which every
# arch shares: one arch of each width.
POOLFORMER_CHANNELS = {
    's12': [64, 128, 320, 512],
    'm36': [96, 192, 384, 768],
}
# One MetaFormer arch of each family, small enough to run at real sizes.
SMALL_ARCHS = ('poolformerv2_s12', 'convformer_s18', 'caformer_s18',
               'identityformer_s12', 'randformer_s12')
# Tiny custom archs: a PoolFormer one, and a MetaFormer one with every
# trainable kind of block.
TINY_PF = dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32],
               mlp_ratios=2, layer_scale_init_value=1e-3)
TINY_CA = dict(
    layers=[1, 1, 2, 1],
    embed_dims=[16, 32, 64, 64],
    token_mixers=['SepConv', 'Pooling', 'Attention', 'Attention'],
    norm_cfgs=[
        dict(type='LN2d', eps=1e-6, bias=False),
        dict(type='GN', num_groups=1, eps=1e-6),
        dict(type='LN', eps=1e-6, bias=False),
        dict(type='LN', eps=1e-6, bias=False)
    ])


def tiny_poolformer(**kwargs):
    return PoolFormer(TINY_PF, **kwargs)


def tiny_metaformer(**kwargs):
    return MetaFormer(TINY_CA, **kwargs)


TINY = [
    pytest.param(tiny_poolformer, id='PoolFormer'),
    pytest.param(tiny_metaformer, id='MetaFormer')
]


def expected_sizes(h, w):
    """Spatial sizes the stem and the three downsamplings give."""

    def down(n, k, s, p):
        return (n + 2 * p - k) // s + 1

    sizes = [(down(h, 7, 4, 2), down(w, 7, 4, 2))]
    for _ in range(3):
        sizes.append(tuple(down(n, 3, 2, 1) for n in sizes[-1]))
    return sizes


def randomize_(model, seed=0):
    """Random weights everywhere: scales (layer / res-scale, StarReLU) and
    norm weights around their defaults, the rest small."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if name.endswith('random_matrix'):  # keep it a mixing matrix
                p.copy_(torch.softmax(torch.rand(p.shape, generator=gen), -1))
            elif name.endswith('.scale'):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.6)
            elif p.dim() == 1 and 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


# Input sizes (H, W), odd and even, square and not, for each backbone.
POOLFORMER_SIZES = [(33, 33), (112, 137), (64, 48)]
METAFORMER_SIZES = [(33, 33), (64, 48), (31, 97)]


@pytest.mark.parametrize('backbone,arch,channels,sizes', [
    *(pytest.param(PoolFormer, arch, channels, POOLFORMER_SIZES,
                   id=f'PoolFormer-{arch}')
      for arch, channels in POOLFORMER_CHANNELS.items()),
    *(pytest.param(MetaFormer, arch, [64, 128, 320, 512], METAFORMER_SIZES,
                   id=arch) for arch in SMALL_ARCHS)
])
def test_output_shapes_at_odd_sizes(backbone, arch, channels, sizes):
    model = backbone(arch).eval()
    assert model.out_channels == channels
    for size in sizes:
        with torch.no_grad():
            outs = model(torch.randn(1, 3, *size))
        assert len(outs) == 4
        for out, c, hw in zip(outs, channels, expected_sizes(*size)):
            assert out.shape == (1, c, *hw), size
            assert torch.isfinite(out).all(), size


@pytest.mark.parametrize('build,channels', [
    pytest.param(tiny_poolformer, [32, 16], id='PoolFormer'),
    pytest.param(tiny_metaformer, [64, 32], id='MetaFormer')
])
def test_out_indices_subset_and_order(build, channels):
    model = build(out_indices=(3, 1)).eval()
    assert model.out_channels == channels
    assert not hasattr(model, 'norm0') and not hasattr(model, 'norm2')
    outs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, channels[0], 2, 2),
                                              (2, channels[1], 8, 8)]


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 4])
@pytest.mark.parametrize('build', TINY)
def test_frozen_stages(build, frozen_stages):
    model = build(frozen_stages=frozen_stages)
    model.train()
    prefixes = ['stem.'] if frozen_stages >= 0 else []
    for i in range(max(frozen_stages, 0)):
        prefixes += [f'stages.{i}.', f'norm{i}.']
    prefixes = tuple(prefixes)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # Every parameter trains unless frozen.
    assert frozen == {
        n
        for n, _ in model.named_parameters() if n.startswith(prefixes)
    }
    # Frozen modules stay in eval mode after train().
    for name, module in model.named_modules():
        if name.startswith(tuple(p.rstrip('.') for p in prefixes)):
            assert not module.training, name
    if frozen_stages < 4:
        trainable = [
            m for n, m in model.named_modules() if n.startswith('stages.3')
        ]
        assert trainable and all(m.training for m in trainable)
        # Frozen parameters get no gradient, all others one.
        sum(o.sum() for o in model(torch.randn(1, 3, 64, 64))).backward()
        for name, p in model.named_parameters():
            assert (p.grad is None) == name.startswith(prefixes), name


@pytest.mark.parametrize('build,rate,num_blocks', [
    pytest.param(
        lambda **kw: PoolFormer('s12', **kw), 0.2, 12, id='PoolFormer'),
    pytest.param(
        lambda **kw: MetaFormer('convformer_s18', **kw),
        0.3,
        18,
        id='MetaFormer')
])
def test_drop_path_schedule(build, rate, num_blocks):
    with torch.device('meta'):  # structure only
        model = build(drop_path_rate=rate)
    blocks = [b for s in model.stages for b in s.blocks]
    rates = [
        b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.
        for b in blocks
    ]
    assert rates == pytest.approx(
        torch.linspace(0, rate, num_blocks).tolist())
    assert rates[0] == 0 and rates[-1] == pytest.approx(rate)


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(arch=12), TypeError, r'str or a dict, got int: 12'),
    (dict(out_indices=(0, 4)), ValueError, r'0\.\.3, got \(0, 4\)'),
    (dict(out_indices=(-1, )), ValueError, r'0\.\.3, got \(-1,\)'),
    (dict(out_indices=(1, 1)), ValueError,
     r'must not repeat a stage, got \(1, 1\)'),
    (dict(out_indices=()), ValueError, r'non-empty'),
    (dict(frozen_stages=5), ValueError, r'-1\.\.4.*got 5'),
    (dict(frozen_stages=-2), ValueError, r'-1\.\.4.*got -2'),
    (dict(frozen_stages='2'), ValueError, r"-1\.\.4.*got '2'"),
])
@pytest.mark.parametrize('backbone', [PoolFormer, MetaFormer])
def test_bad_arguments(backbone, kwargs, error, match):
    with pytest.raises(error, match=match):
        backbone(**kwargs)


@pytest.mark.parametrize('backbone,arch', [(PoolFormer, 's12'),
                                           (MetaFormer, 'poolformerv2_s12')])
def test_deploy_argument(backbone, arch):
    """Both backbones take ``deploy``, which is ``impl='deploy'``."""
    with torch.device('meta'):
        model = backbone(arch, deploy=True)
    assert model.deploy and model.impl == 'deploy' and not model.training
    with pytest.raises(RuntimeError, match='cannot train'):
        model.train()


def check_tiny_pf(model):
    """TINY_PF's mlp_ratios and layer_scale_init_value."""
    block = model.stages[0].blocks[0]
    assert block.mlp.fc1.out_channels == 16
    torch.testing.assert_close(block.layer_scale1.scale,
                               torch.full((8, ), 1e-3))


def check_tiny_ca(model):
    """TINY_CA's token mixers, one kind per stage."""
    kinds = (mf.SepConv, mf.Pooling, mf.Attention, mf.Attention)
    for stage, kind in zip(model.stages, kinds):
        assert all(isinstance(b.token_mixer, kind) for b in stage.blocks)


@pytest.mark.parametrize('build,channels,check_arch', [
    pytest.param(
        tiny_poolformer, [8, 16, 24, 32], check_tiny_pf, id='PoolFormer'),
    pytest.param(
        tiny_metaformer, [16, 32, 64, 64], check_tiny_ca, id='MetaFormer')
])
def test_custom_arch_and_with_cp(build, channels, check_arch):
    torch.manual_seed(0)
    ref = build()
    assert ref.arch_name == 'custom' and not ref.with_cp
    check_arch(ref)
    # Random weights and large scales: every block contributes.
    randomize_(ref)
    cp_model = build(with_cp=True)
    assert cp_model.with_cp
    cp_model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 65, 47)
    outs_ref, outs_cp = ref(x), cp_model(x)
    assert [o.shape[1] for o in outs_ref] == channels
    for a, b in zip(outs_ref, outs_cp):
        torch.testing.assert_close(a, b)
    sum((o * o).mean() for o in outs_ref).backward()
    sum((o * o).mean() for o in outs_cp).backward()
    grads_cp = dict(cp_model.named_parameters())
    for name, p in ref.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(
            p.grad, grads_cp[name].grad, msg=lambda m, n=name: f'{n}: {m}')


@pytest.mark.parametrize('build,normal,tol,zero_bias,unit_scales', [
    # As the original PoolFormer: the MLPs' 1x1 convs trunc normal with
    # zero bias, every other layer PyTorch's initialisation.
    pytest.param(
        lambda: PoolFormer('s12'), ['stages.2.blocks.3.mlp.fc1'],
        0.003, ['stages.2.blocks.3.mlp.fc1'], [],
        id='PoolFormer'),
    # As sail-sg/metaformer: every conv and linear layer trunc normal.
    pytest.param(
        lambda: MetaFormer('convformer_s18'), [
            'stem.conv', 'stages.1.blocks.0.token_mixer.dwconv',
            'stages.2.blocks.0.mlp.fc1'
        ],
        0.004, ['stem.conv'], ['stages.2.blocks.0.res_scale1'],
        id='MetaFormer')
])
def test_weight_init_matches_original(build, normal, tol, zero_bias,
                                      unit_scales):
    torch.manual_seed(0)
    model = build()
    for name in normal:
        weight = model.get_submodule(name).weight
        # timm's trunc_normal_(std=.02), as the originals call it, truncates
        # at +-2 absolute, i.e. 100 std: in effect a normal distribution.
        assert weight.abs().max() <= 2, name
        assert abs(weight.std().item() - 0.02) < tol, name
    for name in zero_bias:
        assert torch.all(model.get_submodule(name).bias == 0), name
    for name in unit_scales:
        assert torch.all(model.get_submodule(name).scale == 1), name
    for i in model.out_indices:  # fresh output norms
        norm = getattr(model, f'norm{i}')
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0), i
