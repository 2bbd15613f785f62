"""Unit tests of the PoolFormer backbone (CPU, small inputs); what it shares
with MetaFormer is tested on both in test_backbones.py."""
import pytest
import torch

from poolformer_mm import PoolFormer

# Backbone parameters in millions with all four output norms.
PARAMS_M = {'s12': 11.40, 's24': 20.88, 's36': 30.35, 'm36': 55.40,
            'm48': 72.71}


@pytest.mark.parametrize('arch', PARAMS_M)
def test_param_count(arch):
    with torch.device('meta'):  # counts only
        model = PoolFormer(arch)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(n, 2) == PARAMS_M[arch]


@pytest.mark.parametrize('arch,value', [('s12', 1e-5), ('s36', 1e-6)])
def test_layer_scale_init(arch, value):
    # The archs' table: 1e-5 for S12 and S24, 1e-6 from S36 on (as the
    # original); built here for one of each.
    assert {a: s['layer_scale_init_values']
            for a, s in PoolFormer.arch_settings.items()} == {
                's12': 1e-5, 's24': 1e-5, 's36': 1e-6, 'm36': 1e-6,
                'm48': 1e-6}
    model = PoolFormer(arch)
    for block in (model.stages[0].blocks[0], model.stages[3].blocks[-1]):
        assert torch.all(block.layer_scale1.scale == value)
        assert torch.all(block.layer_scale2.scale == value)
    # The argument overrides the arch's value, as the demo configs do.
    model = PoolFormer(arch, layer_scale_init_value=1.0)
    assert all(
        torch.all(s.scale == 1.0) for s in model.modules()
        if type(s).__name__ == 'Scale')


def test_original_structure():
    model = PoolFormer('s12')
    stem = model.stem.conv
    assert (stem.kernel_size, stem.stride, stem.padding) == ((7, 7), (4, 4),
                                                             (2, 2))
    assert isinstance(model.stages[0].downsample, torch.nn.Identity)
    down = model.stages[1].downsample.conv
    assert (down.kernel_size, down.stride, down.padding) == ((3, 3), (2, 2),
                                                             (1, 1))
    block = model.stages[0].blocks[0]
    assert isinstance(block.norm1, torch.nn.GroupNorm)
    assert block.norm1.num_groups == 1 and block.norm1.eps == 1e-5
    pool = block.token_mixer.pool
    assert not pool.count_include_pad and pool.kernel_size == 3
    assert isinstance(block.mlp.act, torch.nn.GELU)
    x = torch.randn(1, 64, 9, 9)
    expected = torch.nn.functional.avg_pool2d(
        x, 3, 1, 1, count_include_pad=False) - x
    torch.testing.assert_close(block.token_mixer(x), expected)


@pytest.mark.parametrize('arch,match', [
    ('s13', r"Unknown PoolFormer arch 's13'.*'m36'"),
    (dict(layers=[2, 2, 6, 2]), r'lacks the keys'),
    (dict(layers=[2, 2, 6], embed_dims=[8, 16, 24], mlp_ratios=[4] * 3,
          layer_scale_init_value=1e-5), r'4 entries'),
])
def test_bad_arch(arch, match):
    with pytest.raises(ValueError, match=match):
        PoolFormer(arch)


@pytest.mark.parametrize('x,match', [
    (torch.randn(3, 32, 32), r'4D .* C=3 .* got shape \(3, 32, 32\)'),
    (torch.randn(1, 1, 32, 32), r'C=3 .* got shape \(1, 1, 32, 32\)'),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), r'floating point.*uint8'),
])
def test_bad_input(x, match):
    model = PoolFormer('s12')
    with pytest.raises((ValueError, TypeError), match=match):
        model(x)


def test_in_channels():
    model = PoolFormer('s12', in_channels=1, out_indices=(0, ))
    assert model(torch.randn(1, 1, 32, 32))[0].shape == (1, 64, 8, 8)
    # The configured channel count is what the error asks for.
    with pytest.raises(ValueError,
                       match=r'C=1 channels, got shape \(1, 3, 32, 32\)'):
        model(torch.randn(1, 3, 32, 32))


def test_input_must_be_a_tensor():
    with pytest.raises(TypeError, match=r'expects a Tensor, got ndarray'):
        PoolFormer('s12')(torch.randn(1, 3, 32, 32).numpy())


def test_arch_dict_keys_are_metaformers():
    """Arch dicts take MetaFormer's plural keys; the older singular
    ``layer_scale_init_value`` (committed configs) is read as the plural."""
    sizes = dict(layers=[1] * 4, embed_dims=[8] * 4, mlp_ratios=2)
    assert set(PoolFormer.arch_settings['s12']) == {
        'layers', 'embed_dims', 'mlp_ratios', 'layer_scale_init_values'
    }
    plural = PoolFormer(dict(sizes, layer_scale_init_values=1e-2))
    singular = PoolFormer(dict(sizes, layer_scale_init_value=1e-2))
    assert plural.state_dict().keys() == singular.state_dict().keys()
    for model in (plural, singular):
        assert torch.all(model.stages[3].blocks[0].layer_scale2.scale == 1e-2)
    with pytest.raises(ValueError, match='gives both'):
        PoolFormer(
            dict(sizes, layer_scale_init_value=1., layer_scale_init_values=1.))
