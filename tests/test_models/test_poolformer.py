"""Unit tests of the PoolFormer backbone (CPU, small inputs)."""
import pytest
import torch
from mmcv.cnn.bricks import DropPath

from poolformer_mm import PoolFormer

ARCHS = ('s12', 's24', 's36', 'm36', 'm48')
# Backbone parameters in millions with all four output norms.
PARAMS_M = {'s12': 11.40, 's24': 20.88, 's36': 30.35, 'm36': 55.40,
            'm48': 72.71}
CHANNELS = {'s12': [64, 128, 320, 512], 's24': [64, 128, 320, 512],
            's36': [64, 128, 320, 512], 'm36': [96, 192, 384, 768],
            'm48': [96, 192, 384, 768]}


def conv_out(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def expected_sizes(h, w):
    """Spatial sizes the stem and the three downsamplings give."""
    sizes = [(conv_out(h, 7, 4, 2), conv_out(w, 7, 4, 2))]
    for _ in range(3):
        h_, w_ = sizes[-1]
        sizes.append((conv_out(h_, 3, 2, 1), conv_out(w_, 3, 2, 1)))
    return sizes


@pytest.mark.parametrize('arch', ARCHS)
def test_param_count(arch):
    model = PoolFormer(arch)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(n, 2) == PARAMS_M[arch]


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('size', [(33, 33), (112, 137), (64, 48)])
def test_output_shapes(arch, size):
    model = PoolFormer(arch).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert len(outs) == 4
    assert model.out_channels == CHANNELS[arch]
    for out, c, hw in zip(outs, CHANNELS[arch], expected_sizes(*size)):
        assert out.shape == (1, c, *hw)


def test_out_indices_subset_and_order():
    model = PoolFormer('s12', out_indices=(3, 1)).eval()
    assert model.out_channels == [512, 128]
    assert not hasattr(model, 'norm0') and not hasattr(model, 'norm2')
    outs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [512, 128]
    assert outs[0].shape[-2:] == (2, 2) and outs[1].shape[-2:] == (8, 8)


def test_custom_arch_dict():
    arch = dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32],
                mlp_ratios=2, layer_scale_init_value=1e-3)
    model = PoolFormer(arch)
    assert model.arch_name == 'custom'
    outs = model(torch.randn(1, 3, 40, 40))
    assert [o.shape[1] for o in outs] == [8, 16, 24, 32]
    assert model.stages[0].blocks[0].mlp.fc1.out_channels == 16
    torch.testing.assert_close(model.stages[0].blocks[0].layer_scale1.scale,
                               torch.full((8, ), 1e-3))


@pytest.mark.parametrize('arch,value', [('s12', 1e-5), ('s36', 1e-6),
                                        ('m48', 1e-6)])
def test_layer_scale_init(arch, value):
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


def test_weight_init_matches_original():
    torch.manual_seed(0)
    model = PoolFormer('s12')
    fc1 = model.stages[2].blocks[3].mlp.fc1
    assert torch.all(fc1.bias == 0)
    # timm's trunc_normal_(std=.02), as the original calls it, truncates at
    # +-2 absolute, i.e. 100 std: in effect a normal distribution.
    assert fc1.weight.abs().max() <= 2
    assert abs(fc1.weight.std().item() - 0.02) < 0.003
    assert torch.all(model.norm2.weight == 1) and torch.all(model.norm2.bias
                                                            == 0)


def test_drop_path_schedule():
    model = PoolFormer('s12', drop_path_rate=0.2)
    blocks = [b for s in model.stages for b in s.blocks]
    rates = [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath)
             else 0. for b in blocks]
    expected = torch.linspace(0, 0.2, 12).tolist()
    assert rates == pytest.approx(expected)
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.2)


def _frozen_names(model):
    return {n for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 4])
def test_frozen_stages(frozen_stages):
    model = PoolFormer('s12', frozen_stages=frozen_stages)
    model.train()
    frozen = _frozen_names(model)
    prefixes = []
    if frozen_stages >= 0:
        prefixes.append('stem.')
    for i in range(max(frozen_stages, 0)):
        prefixes += [f'stages.{i}.', f'norm{i}.']
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(tuple(prefixes))} if prefixes else set()
    assert frozen == expected
    # Frozen modules stay in eval mode after train().
    for name, module in model.named_modules():
        if name and name.startswith(tuple(p.rstrip('.') for p in prefixes)):
            assert not module.training, name
    trainable = [m for n, m in model.named_modules()
                 if n.startswith('stages.3')]
    if frozen_stages < 4:
        assert all(m.training for m in trainable)


def test_frozen_stages_get_no_gradient():
    model = PoolFormer('s12', frozen_stages=2)
    model.train()
    sum(o.sum() for o in model(torch.randn(1, 3, 64, 64))).backward()
    for name, p in model.named_parameters():
        if name.startswith(('stem.', 'stages.0.', 'stages.1.', 'norm0.',
                            'norm1.')):
            assert p.grad is None, name
        else:
            assert p.grad is not None, name


def test_with_cp_same_outputs_and_grads():
    torch.manual_seed(0)
    ref = PoolFormer('s12', drop_path_rate=0.)
    cp_model = PoolFormer('s12', with_cp=True)
    cp_model.load_state_dict(ref.state_dict())
    # Large layer scales so that every block contributes to the output.
    for model in (ref, cp_model):
        for name, p in model.named_parameters():
            if name.endswith('.scale'):
                p.data.fill_(0.5)
    x = torch.randn(2, 3, 65, 47)
    outs_ref = ref(x)
    outs_cp = cp_model(x)
    for a, b in zip(outs_ref, outs_cp):
        torch.testing.assert_close(a, b)
    sum((o * o).mean() for o in outs_ref).backward()
    sum((o * o).mean() for o in outs_cp).backward()
    grads_cp = dict(cp_model.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(p.grad, grads_cp[name].grad,
                                   msg=lambda m, n=name: f'{n}: {m}')


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='s13'), r"Unknown PoolFormer arch 's13'.*'m36'"),
    (dict(arch=dict(layers=[2, 2, 6, 2])), r'lacks the keys'),
    (dict(arch=dict(layers=[2, 2, 6], embed_dims=[8, 16, 24],
                    mlp_ratios=[4] * 3, layer_scale_init_value=1e-5)),
     r'4 entries'),
    (dict(out_indices=(0, 4)), r'0\.\.3, got \(0, 4\)'),
    (dict(out_indices=(-1, )), r'0\.\.3, got \(-1,\)'),
    (dict(out_indices=(1, 1)), r'must not repeat a stage, got \(1, 1\)'),
    (dict(out_indices=()), r'non-empty'),
    (dict(frozen_stages=5), r'-1\.\.4.*got 5'),
    (dict(frozen_stages=-2), r'-1\.\.4.*got -2'),
    (dict(frozen_stages='2'), r"-1\.\.4.*got '2'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PoolFormer(**kwargs)


def test_bad_arch_type():
    with pytest.raises(TypeError, match=r'str or a dict, got int: 12'):
        PoolFormer(arch=12)


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
