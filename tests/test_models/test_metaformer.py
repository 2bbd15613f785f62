"""MetaFormer Baselines backbones: parity with timm and with the original
naming, structure, registry, mixed precision and configs (what MetaFormer
shares with PoolFormer is tested on both in test_backbones.py).

timm's ``MetaFormer`` is the reference network. timm has no IdentityFormer
nor RandFormer, so for those the reference is timm's ``MetaFormer`` class
built as sail-sg/metaformer builds them (identity mixers, and a random mixing
matrix written here after the original). Random weights everywhere, at odd
input sizes; the output norms are fresh (weight 1, bias 0), so the expected
outputs are timm's ``forward_intermediates`` through a plain channel
LayerNorm.
"""
import functools
import os.path as osp
import re
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope
from timm.models.metaformer import GroupNorm1NoBias
from timm.models.metaformer import MetaFormer as TimmMetaFormer
from timm.models.metaformer import checkpoint_filter_fn

from helpers.commands import CONFIGS
from test_backbones import SMALL_ARCHS, TINY_CA, expected_sizes, randomize_
from poolformer_mm import MetaFormer, PoolFormer
from poolformer_mm.pretrained import (convert_backbone_state_dict,
                                      detect_format, load_pretrained)
from poolformer_mm.models.backbones import metaformer as mf

TIMM_ARCHS = ('poolformerv2_s12', 'poolformerv2_s24', 'poolformerv2_s36',
              'poolformerv2_m36', 'poolformerv2_m48', 'convformer_s18',
              'convformer_s36', 'convformer_m36', 'convformer_b36',
              'caformer_s18', 'caformer_s36', 'caformer_m36', 'caformer_b36')
SIZES = {
    's12': ([2, 2, 6, 2], [64, 128, 320, 512]),
    's24': ([4, 4, 12, 4], [64, 128, 320, 512]),
    's36': ([6, 6, 18, 6], [64, 128, 320, 512]),
    'm36': ([6, 6, 18, 6], [96, 192, 384, 768]),
    'm48': ([8, 8, 24, 8], [96, 192, 384, 768])
}
OTHER_ARCHS = tuple(f'{family}_{size}'
                    for family in ('identityformer', 'randformer')
                    for size in SIZES)
ALL_ARCHS = TIMM_ARCHS + OTHER_ARCHS
ODD = (67, 93)
# RandFormer's matrices fit the 14x14 / 7x7 grids; 225x223 gives them (and
# is odd).
RAND_NATIVE = (225, 223)


class RefRandomMixing(nn.Module):
    """sail-sg/metaformer's RandomMixing on (N, C, H, W) maps."""

    num_tokens = 196

    def __init__(self, **kwargs):
        super().__init__()
        self.random_matrix = nn.Parameter(
            torch.softmax(torch.rand(self.num_tokens, self.num_tokens), -1),
            requires_grad=False)

    def forward(self, x):
        b, c, h, w = x.shape
        x = torch.einsum('mn,bcn->bcm', self.random_matrix,
                         x.reshape(b, c, h * w))
        return x.reshape(b, c, h, w)


class RefRandomMixing49(RefRandomMixing):
    num_tokens = 49


def reference_model(arch):
    """The reference classification network of ``arch``."""
    family, size = arch.split('_')
    if family not in ('identityformer', 'randformer'):
        return timm.create_model(arch, pretrained=False)
    depths, dims = SIZES[size]
    mixers = nn.Identity if family == 'identityformer' else [
        nn.Identity, nn.Identity, RefRandomMixing, RefRandomMixing49
    ]
    # The sail-sg/metaformer definition in timm's terms (its defaults are
    # the MetaFormer Baselines ones); the classifier is a linear layer.
    return TimmMetaFormer(
        depths=depths,
        dims=dims,
        token_mixers=mixers,
        norm_layers=GroupNorm1NoBias,
        use_mlp_head=False)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def channel_ln(x, eps=1e-6):
    """A fresh output norm: LayerNorm over channels, weight 1, bias 0."""
    return F.layer_norm(
        x.permute(0, 2, 3, 1), x.shape[1:2], eps=eps).permute(0, 3, 1, 2)


def input_size(arch):
    return RAND_NATIVE if arch.startswith('randformer') else ODD


@functools.lru_cache(maxsize=None)
def reference(arch, seed=1):
    """A random reference network of ``arch``, an input and the expected
    outputs; shared by the tests (do not modify)."""
    # Built without initialising (on the meta device): randomize_ sets every
    # tensor, and initialising the big archs takes seconds.
    with torch.device('meta'):
        model = reference_model(arch)
    model = randomize_(model.to_empty(device='cpu'), seed).eval()
    x = torch.randn(
        1, 3, *input_size(arch), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
    return model, x, [channel_ln(f) for f in feats]


def assert_parity(backbone, x, expected):
    backbone.eval()
    with torch.no_grad():
        outs = backbone(x)
    assert len(outs) == len(expected)
    for i, (out, ref) in enumerate(zip(outs, expected)):
        assert out.shape == ref.shape, i
        assert rel_err(out, ref) < 1e-4, (i, rel_err(out, ref))


def load(arch, path, **kwargs):
    model = MetaFormer(
        arch, init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kwargs)
    model.init_weights()
    return model


OUT_NORMS = {f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias')}


@pytest.mark.parametrize('arch', SMALL_ARCHS)
def test_timm_naming_parity(arch, tmp_path):
    model, x, expected = reference(arch)
    path = tmp_path / f'{arch}.pth'
    torch.save(model.state_dict(), path)
    ours = MetaFormer(arch)
    report = load_pretrained(ours, str(path))
    assert report['format'] == 'timm'
    # Key for key: only the output norms are new, only the head is left.
    assert set(report['missing']) == OUT_NORMS
    assert report['ignored'] and all(
        k.startswith('head.') for k in report['ignored'])
    assert backbone_params(ours) == reference_params(model)
    assert_parity(ours, x, expected)


def backbone_params(model):
    """Parameters of one of our backbones without its output norms."""
    return sum(p.numel() for n, p in model.named_parameters()
               if not re.match(r'norm\d\.', n))


def reference_params(model):
    """Parameters of a reference classifier without its head."""
    return sum(p.numel() for n, p in model.named_parameters()
               if not n.startswith('head.'))


@pytest.mark.parametrize('arch', ALL_ARCHS)
def test_same_tensors_and_param_count_as_reference(arch):
    # Names and shapes only, so built on the meta device: initialising the
    # big archs on 2 busy cores takes many seconds. With the same tensors
    # and the computation checked by the parity tests on the small archs,
    # timm's weights of every arch load key for key.
    with torch.device('meta'):
        ours, ref = MetaFormer(arch), reference_model(arch)
    ours_shapes = {
        k: v.shape
        for k, v in ours.state_dict().items() if not re.match(r'norm\d\.', k)
    }
    ref_shapes = {
        k: v.shape
        for k, v in ref.state_dict().items() if not k.startswith('head.')
    }
    assert ours_shapes == ref_shapes
    assert backbone_params(ours) == reference_params(ref)


def timm_to_original(state_dict, model):
    """timm names and shapes to sail-sg/metaformer's (the inverse of timm's
    checkpoint_filter_fn, written independently of the package)."""
    out = OrderedDict()
    for k, v in state_dict.items():
        # The original is channels-last throughout: linear layers where
        # timm has 1x1 convolutions.
        if re.search(r'(mlp\.fc[12]|pwconv[12])\.weight$', k) and v.dim() == 4:
            v = v.flatten(1)
        k = re.sub(r'^stem\.conv\.', 'downsample_layers.0.conv.', k)
        k = re.sub(r'^stem\.norm\.', 'downsample_layers.0.post_norm.', k)
        k = re.sub(r'^stages\.(\d+)\.downsample\.conv\.',
                   r'downsample_layers.\1.conv.', k)
        k = re.sub(r'^stages\.(\d+)\.downsample\.norm\.',
                   r'downsample_layers.\1.pre_norm.', k)
        k = re.sub(r'^stages\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.\2.', k)
        k = re.sub(r'^head\.norm\.', 'norm.', k)
        k = re.sub(r'^head\.fc\.', 'head.', k)
        out[k] = v
    # The inverse must agree with timm's forward mapping.
    back = checkpoint_filter_fn(out, model)
    assert set(back) == set(state_dict)
    for k, v in state_dict.items():
        assert torch.equal(back[k], v), k
    return out


@pytest.mark.parametrize('arch', SMALL_ARCHS)
def test_original_naming_parity(arch, tmp_path):
    model, x, expected = reference(arch)
    original = timm_to_original(model.state_dict(), model)
    assert detect_format(original) == 'metaformer_original'
    torch.save(original, tmp_path / f'{arch}.pth')
    assert_parity(load(arch, tmp_path / f'{arch}.pth'), x, expected)


def test_original_naming_in_a_detector_checkpoint(tmp_path):
    model, x, expected = reference('caformer_s18')
    original = timm_to_original(model.state_dict(), model)
    wrapped = {
        'state_dict':
        OrderedDict(('backbone.' + k, v) for k, v in original.items())
    }
    wrapped['state_dict']['neck.conv.weight'] = torch.zeros(1)
    torch.save(wrapped, tmp_path / 'wrapped.pth')
    ours = MetaFormer('caformer_s18')
    report = load_pretrained(
        ours, str(tmp_path / 'wrapped.pth'), prefix='backbone.')
    assert report['format'] == 'metaformer_original'
    assert set(report['missing']) == OUT_NORMS
    assert_parity(ours, x, expected)


def test_original_conversion_shapes():
    model = reference('caformer_s18')[0]
    converted, ignored, fmt = convert_backbone_state_dict(
        timm_to_original(model.state_dict(), model))
    assert fmt == 'metaformer_original'
    assert set(converted) == {
        k
        for k in model.state_dict() if not k.startswith('head.')
    }
    for k, v in converted.items():
        assert v.shape == model.state_dict()[k].shape, k
    assert 'norm.weight' in ignored and 'head.fc1.weight' in ignored


@pytest.mark.parametrize('arch',
                         [a for a in ALL_ARCHS if a not in SMALL_ARCHS])
def test_big_arch_shapes(arch):
    # Shapes only, on the meta device (see above).
    with torch.device('meta'):
        model = MetaFormer(arch).eval()
        outs = model(torch.randn(1, 3, *ODD))
    assert model.out_channels == model.embed_dims
    for out, c, hw in zip(outs, model.out_channels, expected_sizes(*ODD)):
        assert out.shape == (1, c, *hw)


def test_structure_v2():
    with torch.device('meta'):  # structure only
        model = MetaFormer('caformer_s18')
        v2 = MetaFormer('poolformerv2_s12').stages[0].blocks[0]
    assert isinstance(model.stem.norm, mf.Fp32LayerNorm2d)
    assert model.stem.norm.bias is None and model.stem.norm.eps == 1e-6
    assert isinstance(model.stages[0].downsample, nn.Identity)
    assert isinstance(model.stages[1].downsample.norm, mf.Fp32LayerNorm2d)
    conv_block, attn_block = model.stages[1].blocks[0], model.stages[2].blocks[
        0]
    assert isinstance(conv_block.token_mixer, mf.SepConv)
    assert isinstance(conv_block.mlp.fc1, nn.Conv2d)
    assert conv_block.mlp.fc1.bias is None
    assert isinstance(conv_block.mlp.act, mf.StarReLU)
    assert isinstance(conv_block.layer_scale1, nn.Identity)
    assert isinstance(conv_block.res_scale1, nn.Identity)
    assert isinstance(attn_block.token_mixer, mf.Attention)
    assert attn_block.token_mixer.num_heads == 10
    assert isinstance(attn_block.norm1, mf.Fp32LayerNorm)
    assert isinstance(attn_block.mlp.fc1, nn.Linear)
    assert attn_block.res_scale1.scale.shape == (320, )
    assert [s.channels_last
            for s in model.stages] == [False, False, True, True]
    assert isinstance(model.norm3, mf.Fp32LayerNorm2d)
    assert model.norm3.bias is not None
    assert isinstance(v2.norm1, mf.Fp32GroupNorm) and v2.norm1.bias is None
    assert v2.norm1.num_groups == 1 and v2.norm1.eps == 1e-6


def test_random_mixing_any_grid():
    mixer = mf.RandomMixing(196)
    assert mixer.matrix(14, 14) is mixer.random_matrix
    for h, w in [(5, 6), (14, 14 + 1), (30, 7), (1, 1)]:
        m = mixer.matrix(h, w)
        assert m.shape == (h * w, h * w)
        assert (m >= 0).all()
        torch.testing.assert_close(m.sum(-1), torch.ones(h * w))
    model = MetaFormer('randformer_s12').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *ODD))
    assert all(torch.isfinite(o).all() for o in outs)
    with pytest.raises(
            ValueError, match='square token grid, got '
            'num_tokens=50'):
        mf.RandomMixing(50)


@pytest.mark.parametrize('arch,match', [
    ('convformer_s12', r"Unknown MetaFormer arch 'convformer_s12'.*"
     r"'caformer_b36'"),
    ('poolformer_s12', r"type='PoolFormer', arch='s12'"),
    (dict(layers=[2, 2, 6, 2]), r"lacks the keys \['embed_dims', "
     r"'token_mixers'\]"),
    (dict(TINY_CA, depths=[1, 1, 1, 1]), r"unknown keys \['depths'\]"),
    (dict(TINY_CA, layers=[1, 1, 1]), r'layers must have 4 entries'),
    (dict(TINY_CA, token_mixers='Conv'), r"Unknown token mixer \{'type': "
     r"'Conv'\}.*'SepConv'"),
    (dict(TINY_CA, norm_cfgs=dict(type='LN2d')), r"stage 2 has token mixer "
     r"'Attention' with norm \{'type': 'LN2d'\}; use type='LN'"),
    (dict(TINY_CA, norm_cfgs=dict(type='LN')), r"stage 0 has token mixer "
     r"'SepConv' with norm \{'type': 'LN'\}; use .*'LN2d'"),
])
def test_bad_arch(arch, match):
    with pytest.raises(ValueError, match=match):
        MetaFormer(arch)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_registry(scope):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    assert MODELS.get('MetaFormer') is MetaFormer
    assert MODELS.get('PoolFormer') is PoolFormer
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(
            dict(
                type='MetaFormer', arch='caformer_s18', out_indices=(1, 2, 3)))
    assert isinstance(model,
                      MetaFormer) and model.out_channels == [128, 320, 512]


# ---------------------------------------------------------------------------
# Mixed precision: every norm computes in fp32
# ---------------------------------------------------------------------------
def spy_norms(monkeypatch):
    """Record the dtypes the norm functions are called with."""
    calls = []
    for name in ('group_norm', 'layer_norm'):
        real = getattr(F, name)

        def spy(x, *args, _real=real, _name=name, **kwargs):
            weight = args[1] if len(args) > 1 else kwargs.get('weight')
            calls.append(
                (_name, x.dtype, None if weight is None else weight.dtype))
            return _real(x, *args, **kwargs)

        monkeypatch.setattr(F, name, spy)
    return calls


@pytest.mark.parametrize(
    'build', [
        lambda: PoolFormer('s12'),
        lambda: MetaFormer('poolformerv2_s12'),
        lambda: MetaFormer('convformer_s18'),
        lambda: MetaFormer('caformer_s18'),
        lambda: MetaFormer('identityformer_s12'),
        lambda: MetaFormer('randformer_s12'),
    ],
    ids=[
        'poolformer_s12', 'poolformerv2_s12', 'convformer_s18', 'caformer_s18',
        'identityformer_s12', 'randformer_s12'
    ])
def test_bf16_autocast_norms_in_fp32(build, monkeypatch):
    torch.manual_seed(0)
    model = build().eval()
    norms = [
        m for m in model.modules()
        if isinstance(m, (mf.Fp32GroupNorm, mf.Fp32LayerNorm))
    ]
    # Stem, downsamplings, two per block, four outputs.
    assert len(norms) >= 2 * sum(len(s.blocks) for s in model.stages) + 4
    io_dtypes = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: io_dtypes.append(
            (i[0].dtype, o.dtype))) for m in norms
    ]
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad():
        expected = model(x)
        io_dtypes.clear()
        calls = spy_norms(monkeypatch)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = model(x)
    for hook in hooks:
        hook.remove()
    # The convolutions ran in bf16, so the norms got bf16 inputs (fp32 ones
    # where a fp32 scale promoted the residual stream); they computed in
    # fp32 and handed back the input dtype.
    assert io_dtypes[0] == (torch.bfloat16, torch.bfloat16)
    assert all(i == o for i, o in io_dtypes)
    assert len(calls) == len(io_dtypes)
    assert all(dt == torch.float32 and wt in (torch.float32, None)
               for _, dt, wt in calls), calls
    for out, ref in zip(outs, expected):
        assert torch.isfinite(out).all()
        assert rel_err(out.float(), ref) < 0.1


def test_fp32_norms_keep_the_input_dtype():
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64) * 1e3
    gn = mf.Fp32GroupNorm(8, 1, eps=1e-5).double()
    torch.testing.assert_close(gn(x), F.group_norm(x, 1, eps=1e-5))
    ln = mf.Fp32LayerNorm2d(8, bias=False)
    assert ln.bias is None
    half = x.to(torch.float16)
    out = ln(half)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(
        out.double(), channel_ln(x), atol=2e-3, rtol=2e-3)


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------
CONFIG_ARCHS = ('poolformerv2_s12', 'convformer_s18', 'caformer_s18')
MODELS_OF = {'retinanet': 'mmdet', 'mask_rcnn': 'mmdet', 'sem_fpn': 'mmseg'}


def url(arch):
    family = arch.split('_')[0]
    return f'https://huggingface.co/sail/dl/resolve/main/{family}/{arch}.pth'


@pytest.mark.integration
@pytest.mark.parametrize('model_type', sorted(MODELS_OF))
@pytest.mark.parametrize('arch', CONFIG_ARCHS)
def test_config_same_recipe_as_poolformer(model_type, arch):
    cfg = Config.fromfile(osp.join(CONFIGS, f'{model_type}_{arch}.py'))
    pf = Config.fromfile(osp.join(CONFIGS, f'{model_type}_poolformer_s12.py'))
    backbone = cfg.model.backbone
    assert backbone.type == 'MetaFormer' and backbone.arch == arch
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=url(arch))
    assert backbone.out_indices == pf.model.backbone.out_indices
    assert backbone.drop_path_rate == pf.model.backbone.drop_path_rate
    # Everything but the backbone is the PoolFormer config's.
    ours, theirs = cfg.to_dict(), pf.to_dict()
    for c in (ours, theirs):
        c['model'].pop('backbone')
        c.pop('filename', None)
    assert ours == theirs


@pytest.mark.integration
@pytest.mark.parametrize('model_type', sorted(MODELS_OF))
@pytest.mark.parametrize('arch', CONFIG_ARCHS)
def test_config_builds_with_matching_channels(model_type, arch):
    cfg = Config.fromfile(osp.join(CONFIGS, f'{model_type}_{arch}.py'))
    cfg.model.backbone.init_cfg = None  # no download in tests
    scope = MODELS_OF[model_type]
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    # Shapes only, on the meta device (see above).
    with torch.device('meta'):
        model = MODELS.build(cfg.model).eval()
        feats = model.extract_feat(torch.randn(1, 3, 67, 93))
    assert isinstance(model.backbone, MetaFormer)
    assert model.backbone.arch_name == arch
    assert list(model.neck.in_channels) == model.backbone.out_channels
    assert all(f.shape[1] == 256 for f in feats)
