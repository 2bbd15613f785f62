"""Arch specs of the MetaFormer family: depths, widths and layer choices.

A spec is a dict with the keys of :data:`SPEC_DEFAULTS`; :func:`complete_spec`
checks one, fills in the defaults and expands per-stage values to lists of
four, and :class:`~.metaformer.BaseMetaFormer` builds the network from the
result. Every arch dict of this package, whichever backbone takes it, uses
these (plural) key names.

The named archs:

- :data:`POOLFORMER_SIZES`, PoolFormer's depths and widths (S12 to M48),
  which PoolFormerV2, IdentityFormer and RandFormer share;
  :data:`POOLFORMER_ARCHS` (``PoolFormer.arch_settings``) adds PoolFormer's
  MLP ratios and layer scales to them.
- :data:`CONVFORMER_SIZES`, those of ConvFormer and CAFormer (S18 to B36).
- :data:`METAFORMER_ARCHS` (``MetaFormer.arch_settings``), the MetaFormer
  Baselines families in these sizes.

Sizes as in the papers and sail-sg/poolformer, sail-sg/metaformer (see
:mod:`.layers`).
"""
from typing import Dict

from .layers import TOKEN_MIXERS, token_mixer_cfg

# The bias-free norms of MetaFormer Baselines (`LayerNormGeneral` in the
# original): over channels, and with normalized_dim=(1, 2, 3) GroupNorm(1).
_LN2D_NO_BIAS = dict(type='LN2d', eps=1e-6, bias=False)
_LN_NO_BIAS = dict(type='LN', eps=1e-6, bias=False)
_GN1_NO_BIAS = dict(type='GN', num_groups=1, eps=1e-6, bias=False)
# Keys of a full spec with the MetaFormer Baselines defaults; the first
# three are required.
SPEC_DEFAULTS = dict(
    layers=None,
    embed_dims=None,
    token_mixers=None,
    mlp_ratios=4,
    norm_cfgs=_LN2D_NO_BIAS,
    act_cfg=dict(type='StarReLU'),
    mlp_bias=False,
    layer_scale_init_values=None,
    res_scale_init_values=(None, None, 1., 1.),
    stem_norm_cfg=_LN2D_NO_BIAS,
    downsample_norm_cfg=_LN2D_NO_BIAS,
    out_norm_cfg=dict(type='LN2d', eps=1e-6),
)
REQUIRED_KEYS = ('layers', 'embed_dims', 'token_mixers')
# Keys that may hold one value for all stages or a list of four.
_PER_STAGE = ('layers', 'embed_dims', 'token_mixers', 'mlp_ratios',
              'norm_cfgs', 'layer_scale_init_values', 'res_scale_init_values')
# Norms over the last dimension, the only ones that fit (N, L, C) tokens.
_TOKEN_NORMS = ('LN', )


def complete_spec(spec: dict, name: str, num_stages: int = 4) -> dict:
    """Check an arch spec, fill in ``SPEC_DEFAULTS`` and expand per-stage
    values to lists; ``name`` prefixes the error messages."""
    if not isinstance(spec, dict):
        raise TypeError(f'{name}: arch must be a str or a dict, got '
                        f'{type(spec).__name__}: {spec!r}')
    missing = [k for k in REQUIRED_KEYS if k not in spec]
    unknown = sorted(set(spec) - set(SPEC_DEFAULTS))
    if missing or unknown:
        what = (f'lacks the keys {missing}' if missing else
                f'has unknown keys {unknown}')
        raise ValueError(f'{name}: {spec!r} {what}; required: '
                         f'{list(REQUIRED_KEYS)}, allowed: '
                         f'{list(SPEC_DEFAULTS)}')
    full = dict(SPEC_DEFAULTS, **spec)
    for key in _PER_STAGE:
        value = full[key]
        if isinstance(value, (list, tuple)):
            if len(value) != num_stages:
                raise ValueError(
                    f'{name}: {key} must have {num_stages} entries (one per '
                    f'stage), got {list(value)}')
            full[key] = list(value)
        elif key in ('layers', 'embed_dims'):
            raise ValueError(f'{name}: {key} must be a list of {num_stages} '
                             f'ints (one per stage), got {value!r}')
        else:
            full[key] = [value] * num_stages
    full['token_mixers'] = [token_mixer_cfg(m) for m in full['token_mixers']]
    for i, (mixer, norm) in enumerate(
            zip(full['token_mixers'], full['norm_cfgs'])):
        tokens = TOKEN_MIXERS[mixer['type']][1]
        if tokens != ((norm or {}).get('type') in _TOKEN_NORMS):
            raise ValueError(
                f'{name}: stage {i} has token mixer {mixer["type"]!r} with '
                f'norm {norm!r}; use ' +
                ("type='LN' (over the channels of (N, L, C) tokens)"
                 if tokens else "a norm of (N, C, H, W) maps such as 'LN2d', "
                 "'GN' or 'BN', not 'LN'"))
    return full


POOLFORMER_SIZES = {
    's12': dict(layers=[2, 2, 6, 2], embed_dims=[64, 128, 320, 512]),
    's24': dict(layers=[4, 4, 12, 4], embed_dims=[64, 128, 320, 512]),
    's36': dict(layers=[6, 6, 18, 6], embed_dims=[64, 128, 320, 512]),
    'm36': dict(layers=[6, 6, 18, 6], embed_dims=[96, 192, 384, 768]),
    'm48': dict(layers=[8, 8, 24, 8], embed_dims=[96, 192, 384, 768]),
}
CONVFORMER_SIZES = {
    's18': dict(layers=[3, 3, 9, 3], embed_dims=[64, 128, 320, 512]),
    's36': dict(layers=[3, 12, 18, 3], embed_dims=[64, 128, 320, 512]),
    'm36': dict(layers=[3, 12, 18, 3], embed_dims=[96, 192, 384, 576]),
    'b36': dict(layers=[3, 12, 18, 3], embed_dims=[128, 256, 512, 768]),
}

# The original trains S12 and S24 with layer scales from 1e-5, the deeper
# models from 1e-6.
POOLFORMER_ARCHS: Dict[str, dict] = {
    size: dict(
        **dims,
        mlp_ratios=4,
        layer_scale_init_values=1e-5 if size in ('s12', 's24') else 1e-6)
    for size, dims in POOLFORMER_SIZES.items()
}

# A PoolFormer arch dict holds the sizes and the layer scales; the other keys
# of its spec follow from PoolFormer's arguments.
POOLFORMER_ARCH_KEYS = ('layers', 'embed_dims', 'mlp_ratios',
                        'layer_scale_init_values')
# The name of PoolFormer's layer scale key before the two arch formats
# became one; committed configs (and those saved in checkpoints) use it.
_LAYER_SCALE_ALIAS = 'layer_scale_init_value'


def poolformer_arch(arch: dict) -> dict:
    """Check a custom PoolFormer arch dict (each key of
    :data:`POOLFORMER_ARCH_KEYS` is required; ``layer_scale_init_value`` is
    read as ``layer_scale_init_values``) and return a copy with the keys of
    :data:`POOLFORMER_ARCH_KEYS`."""
    given = dict(arch)
    if _LAYER_SCALE_ALIAS in given:
        if 'layer_scale_init_values' in given:
            raise ValueError(
                f'Custom PoolFormer arch {arch!r} gives both '
                f"'{_LAYER_SCALE_ALIAS}' and 'layer_scale_init_values'; "
                'give one')
        given['layer_scale_init_values'] = given.pop(_LAYER_SCALE_ALIAS)
    missing = [k for k in POOLFORMER_ARCH_KEYS if k not in given]
    unknown = sorted(set(given) - set(POOLFORMER_ARCH_KEYS))
    if missing or unknown:
        raise ValueError(
            f'Custom PoolFormer arch {arch!r} lacks the keys {missing} or '
            f'has unknown keys {unknown}; required: '
            f'{list(POOLFORMER_ARCH_KEYS)}')
    return given


def _family(prefix: str, sizes: Dict[str, dict], **spec) -> Dict[str, dict]:
    return {f'{prefix}_{s}': dict(**dims, **spec) for s, dims in sizes.items()}


# RandFormer's matrices are drawn for the 14x14 and 7x7 grids of stages 2
# and 3 at 224x224.
_RANDOM = [
    'Identity', 'Identity',
    dict(type='RandomMixing', num_tokens=196),
    dict(type='RandomMixing', num_tokens=49)
]
_CA = ['SepConv', 'SepConv', 'Attention', 'Attention']
_CA_NORMS = [_LN2D_NO_BIAS, _LN2D_NO_BIAS, _LN_NO_BIAS, _LN_NO_BIAS]

METAFORMER_ARCHS: Dict[str, dict] = {
    **_family('poolformerv2', POOLFORMER_SIZES, token_mixers='Pooling',
              norm_cfgs=_GN1_NO_BIAS),
    **_family('convformer', CONVFORMER_SIZES, token_mixers='SepConv',
              norm_cfgs=_LN2D_NO_BIAS),
    **_family('caformer', CONVFORMER_SIZES, token_mixers=_CA,
              norm_cfgs=_CA_NORMS),
    **_family('identityformer', POOLFORMER_SIZES, token_mixers='Identity',
              norm_cfgs=_GN1_NO_BIAS),
    **_family('randformer', POOLFORMER_SIZES, token_mixers=_RANDOM,
              norm_cfgs=_GN1_NO_BIAS),
}
