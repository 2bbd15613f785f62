"""Convert PoolFormer weights of any public naming to this project's.

Backbone checkpoints (original release, timm, mmpretrain, original dense)
become a plain backbone state dict for ``init_cfg=dict(type='Pretrained',
checkpoint=...)``. Whole released models (e.g. MMSegmentation's Semantic FPN
PoolFormer checkpoints, with ``backbone.`` plus neck and head) keep their
neck and head and get a converted backbone, so that ``tools/test.py`` can
evaluate them with this project's configs.

Example:
    python tools/convert_weights.py poolformer_s12.pth.tar s12_mm.pth
    python tools/convert_weights.py fpn_poolformer_s12_ade20k.pth out.pth \
        --whole-model
"""
import argparse
import os
import os.path as osp
import sys
from collections import OrderedDict

import torch

from poolformer_mm.checkpoint import read_checkpoint
from poolformer_mm.checkpoint.naming import (FORMATS,
                                             convert_backbone_state_dict,
                                             unwrap_state_dict)
from poolformer_mm.errors import CheckpointError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='checkpoint to convert (path or URL; '
                        '.pth, .pth.tar or .safetensors)')
    parser.add_argument('dst', help='output file (.pth or .safetensors)')
    parser.add_argument(
        '--format',
        choices=('auto', ) + FORMATS,
        default='auto',
        help='naming of the source (detected from the keys by default)')
    parser.add_argument(
        '--whole-model',
        action='store_true',
        help='keep the non-backbone weights (neck, heads) under their names '
        'and put the backbone under `backbone.`; the output is an mmengine '
        'checkpoint ({"state_dict": ..., "meta": ...})')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    fmt = None if args.format == 'auto' else args.format
    try:
        state_dict = unwrap_state_dict(read_checkpoint(args.src))
        backbone, others, fmt = convert_backbone_state_dict(state_dict, fmt)
    except (FileNotFoundError, CheckpointError) as exc:
        sys.exit(f'error: {exc}')
    print(f'{args.src}: {fmt} naming, {len(state_dict)} tensors')
    print(f'  backbone tensors converted: {len(backbone)}')
    if args.whole_model:
        # The classifier's pieces under `backbone.` (e.g. mmpretrain's final
        # norm6) have no place in a dense model.
        kept = [k for k in others if not k.startswith('backbone.')]
        dropped = [k for k in others if k.startswith('backbone.')]
        out = OrderedDict(('backbone.' + k, v) for k, v in backbone.items())
        out.update((k, state_dict[k]) for k in kept)
        print(f'  other tensors kept as they are: {len(kept)}')
    else:
        out, dropped = backbone, others
    if dropped:
        print(f'  dropped ({len(dropped)}): {", ".join(dropped)}')
    if not backbone:
        sys.exit(f'error: no backbone tensors found in {args.src}')
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    if args.dst.endswith('.safetensors'):
        if args.whole_model:
            sys.exit('error: --whole-model writes an mmengine checkpoint; '
                     'use a .pth output')
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in out.items()}, args.dst)
    elif args.whole_model:
        torch.save(
            dict(state_dict=out,
                 meta=dict(converted_from=str(args.src), source_format=fmt)),
            args.dst)
    else:
        torch.save(out, args.dst)
    print(f'wrote {args.dst} ({len(out)} tensors, poolformer_mm naming)')


if __name__ == '__main__':
    main()
