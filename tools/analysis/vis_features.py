"""Draw the four stage outputs of a PoolFormer / MetaFormer backbone on an
image, to see what each level holds and whether the weights loaded.

One picture, one row per stage (stride 4, 8, 16, 32): the input image, the
channel-mean activation and the ``--topk`` channels of highest mean
activation, each drawn over the image, with the stage, stride, channels and
map size in the titles. Per stage the tool also prints mean, std, min and
max of the features and mean and std of the stage output before its output
norm, and the strongest channels: random and trained weights differ there.
(An output norm at its initial affine, as in random weights, standardises
the map: mean 0 and std 1 then say nothing; the stage output does.)

Model: ``model.backbone`` of the config (``PoolFormer`` or ``MetaFormer``),
built with all four stages (``out_indices=(0, 1, 2, 3)``, whatever the
config emits), in eval mode, without gradients. A stage the config does not
emit has no trained output norm in any of its checkpoints, nor have
classification weights any: such a stage is drawn through a norm at its
initial identity affine, i.e. the stage output standardised, and the tool
says so.

Weights (what was loaded, from where, in which naming, and every tensor
missing or left unused is printed):

- CHECKPOINT: a training checkpoint of tools/train.py, a whole-model file
  (``backbone.`` plus neck and heads), or backbone-only weights in any
  naming :mod:`poolformer_mm.pretrained` reads (original release, timm,
  mmpretrain, sail-sg/metaformer, this package's; ``.pth``, ``.pth.tar``,
  ``.safetensors``, local or URL).
- no CHECKPOINT: the config's ``init_cfg`` (its ImageNet weights, downloaded
  once into torch's hub cache). Without one, or when it cannot be loaded,
  the weights are random (seeded with ``--seed``), and the tool says so.

Input: the image resized as the config's test pipeline does (its ``Resize``
and, in segmentation configs, ``ResizeToMultiple``), then normalised as its
``data_preprocessor`` does (``mean``, ``std``, ``bgr_to_rgb``). ``--shape H
W`` resizes to exactly H x W instead (e.g. smaller, for speed, or the
training crop). A test pipeline without ``Resize`` keeps the image size,
the longer side scaled down to ``--max-size``. The detectors' batch padding
to a multiple of 32 is left out: for one image it only adds a border of
mean colour at the bottom and right.

Examples:
    python tools/analysis/vis_features.py \
        configs/retinanet_poolformer_s12.py \
        work_dirs/retinanet_poolformer_s12/epoch_12.pth demo.jpg \
        --out feats.png
    # the config's ImageNet weights (init_cfg), input 512x512
    python tools/analysis/vis_features.py configs/sem_fpn_poolformer_s12.py \
        demo.jpg --shape 512 512 --out feats.png
    # random weights, for comparison
    python tools/analysis/vis_features.py configs/sem_fpn_poolformer_s12.py \
        demo.jpg --out random.png --cfg-options model.backbone.init_cfg=None
"""
import argparse
import logging
import os
import os.path as osp
import sys
import textwrap
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import mmcv
import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger
from mmengine.registry import MODELS

from poolformer_mm import MetaFormer, PoolFormer
from poolformer_mm.apis.runs import load_config
from poolformer_mm.pretrained import CheckpointError, load_pretrained

BACKBONES = ('PoolFormer', 'MetaFormer')
STAGES = (0, 1, 2, 3)
# Pipeline steps that only load or pack data; anything else that is not a
# resize is named in the output as not applied.
SKIPPED_PREFIXES = ('Load', 'Pack')
# Inches per picture panel; the height follows the image's aspect ratio.
PANEL = 2.2
TITLE = 0.45
HEADER = 0.3


class InputError(Exception):
    """A command line value the tool cannot use; ends the run with its
    message and a non-zero exit."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Draw the stage outputs of a PoolFormer / MetaFormer '
        'backbone on an image')
    parser.add_argument(
        'config', help='detection or segmentation config of this repo')
    parser.add_argument(
        'checkpoint',
        nargs='?',
        help='optional: training checkpoint, whole-model file or backbone '
        'weights (any naming poolformer_mm.pretrained reads); default: the '
        "config's init_cfg, or random weights")
    parser.add_argument('image', help='image file')
    parser.add_argument(
        '--out', default='features.png', help='picture to write (.png)')
    parser.add_argument(
        '--topk',
        type=int,
        default=4,
        help='channels of highest mean activation drawn per stage')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help="resize the image to exactly H x W instead of the config's "
        'test pipeline resize')
    parser.add_argument(
        '--max-size',
        type=int,
        default=1333,
        help='longest image side when the test pipeline has no Resize')
    parser.add_argument(
        '--alpha',
        type=float,
        default=0.7,
        help='opacity of the feature maps over the image (1: maps alone)')
    parser.add_argument('--device', default='cpu', help="e.g. 'cuda'")
    parser.add_argument(
        '--seed',
        type=int,
        default=0,
        help='seed of the random initialisation (weights not loaded)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value (e.g. '
        'model.backbone.init_cfg=None for random weights)')
    return parser.parse_args(argv)


def check_args(args) -> None:
    """Refuse bad values before anything slow runs."""
    if not osp.isfile(args.config):
        raise InputError(
            f'config not found: {args.config!r}; give a detection or '
            'segmentation config file, e.g. '
            'configs/retinanet_poolformer_s12.py')
    if args.checkpoint is not None and '://' not in args.checkpoint and (
            not osp.isfile(args.checkpoint)):
        raise InputError(
            f'checkpoint not found: {args.checkpoint!r}; give a training '
            'checkpoint, a whole-model file or backbone weights (local '
            'file or http(s) URL), or leave it out for the config\'s '
            'init_cfg')
    if not osp.isfile(args.image):
        raise InputError(f'image not found: {args.image!r}; give an image '
                         'file that OpenCV reads (.jpg, .png, ...)')
    if args.topk < 0:
        raise InputError(f'--topk must be 0 or more, got {args.topk}')
    if args.shape is not None and min(args.shape) < 32:
        raise InputError(f'--shape H W must be at least 32 32 (one cell at '
                         f'stride 32), got {args.shape[0]} {args.shape[1]}')
    if args.max_size < 32:
        raise InputError(
            f'--max-size must be at least 32, got {args.max_size}')
    if not 0 <= args.alpha <= 1:
        raise InputError(f'--alpha must be in 0..1, got {args.alpha}')
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise InputError(f'--device {args.device!r}: {exc}') from exc
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise InputError(f'--device {args.device!r}: no CUDA device here; '
                         "use --device cpu")


def read_config(path: str, cfg_options: Optional[dict]) -> Config:
    try:
        cfg = load_config(path, cfg_options)
    except ValueError as exc:  # default_scope neither mmdet nor mmseg
        raise InputError(str(exc)) from exc
    except Exception as exc:  # config files run code: any error
        raise InputError(f'cannot read config {path!r}: '
                         f'{type(exc).__name__}: {exc}') from exc
    backbone = cfg.get('model', {}).get('backbone')
    kind = backbone.get('type') if isinstance(backbone, dict) else None
    # Scoped names ('mmdet.PoolFormer') resolve to the same class.
    if not isinstance(kind, str) or kind.split('.')[-1] not in BACKBONES:
        raise InputError(
            f'config {path!r} has model.backbone.type {kind!r}; this tool '
            f'draws the backbones of this package: type {BACKBONES[0]!r} or '
            f'{BACKBONES[1]!r}')
    return cfg


def build_backbone(cfg: Config, device: str) -> torch.nn.Module:
    """``model.backbone`` with all four stages and without ``init_cfg``
    (weights are loaded by :func:`load_weights`, which reports them)."""
    backbone_cfg = cfg.model.backbone.copy()
    backbone_cfg.update(out_indices=STAGES, init_cfg=None)
    try:
        backbone = MODELS.build(backbone_cfg)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f'cannot build model.backbone of '
                         f'{cfg.filename!r}: {exc}') from exc
    if not isinstance(backbone, (PoolFormer, MetaFormer)):
        raise InputError(
            f'model.backbone of {cfg.filename!r} built a '
            f'{type(backbone).__name__}, not a {" or ".join(BACKBONES)}')
    return backbone.to(device).eval()


def describe_unused(names: Sequence[str]) -> str:
    """Every name when few, else counts by the first name component."""
    if len(names) <= 10:
        return ', '.join(names)
    groups = Counter(name.split('.')[0] for name in names)
    return ', '.join(f'{group}.*: {count}'
                     for group, count in sorted(groups.items()))


def report_loaded(result: Dict[str, object], source: str,
                  config_stages: Sequence[int]) -> List[str]:
    """Lines on what :func:`load_pretrained` did; untrained output norms
    and random tensors are explained."""
    missing = list(result['missing'])
    ignored = list(result['ignored'])
    lines = [f'weights: {source} ({result["format"]} naming): '
             f'{len(result["loaded"])} backbone tensors loaded']
    norms = [k for k in missing if k.split('.')[0] in
             {f'norm{i}' for i in STAGES}]
    others = [k for k in missing if k not in norms]
    if norms:
        stages = sorted({int(k.split('.')[0][4:]) for k in norms})
        why = ('not emitted by the config, out_indices '
               f'{tuple(config_stages)}' if set(stages).isdisjoint(
                   config_stages) else 'not in the weights')
        lines.append(
            f'  output norms of stage(s) {stages} {why}: drawn through '
            'the norm at its initial identity affine (the stage output '
            f'standardised); missing: {", ".join(norms)}')
    if others:
        lines.append(f'  WARNING: {len(others)} backbone tensors are not '
                     f'in the weights and stay RANDOM: {", ".join(others)}')
    if ignored:
        lines.append(f'  {len(ignored)} tensors of the file not used (not '
                     f'backbone weights): {describe_unused(ignored)}')
    return lines


def load_weights(backbone: torch.nn.Module, cfg: Config,
                 checkpoint: Optional[str],
                 seed: int) -> Tuple[List[str], str]:
    """Load CHECKPOINT, else the config's ``init_cfg``.

    Returns:
        tuple: The report lines and a short label for the picture.
    """
    config_stages = cfg.model.backbone.get('out_indices', STAGES)
    if isinstance(config_stages, int):
        config_stages = (config_stages, )
    if checkpoint is not None:
        try:
            result = load_pretrained(backbone, checkpoint)
        except (CheckpointError, FileNotFoundError) as exc:
            raise InputError(f'cannot use checkpoint {checkpoint!r}: '
                             f'{exc}') from exc
        lines = ['(init_cfg of the config not used: CHECKPOINT given)']
        lines += report_loaded(result, checkpoint, config_stages)
        return lines, osp.basename(checkpoint)
    init_cfg = cfg.model.backbone.get('init_cfg')
    cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
    cfgs = [c for c in cfgs if c]
    pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
    others = [c for c in cfgs if c.get('type') != 'Pretrained']
    lines = []
    if others:
        # E.g. Kaiming or Constant: random by another rule.
        backbone.init_cfg = others
        backbone.init_weights()
        lines.append(f'init_cfg initialisers applied: '
                     f'{[c.get("type") for c in others]}')
    loaded = []
    for entry in pretrained:
        source = entry.get('checkpoint')
        try:
            result = load_pretrained(
                backbone,
                source,
                prefix=entry.get('prefix'),
                map_location=entry.get('map_location', 'cpu'))
        except Exception as exc:  # any failure leaves random weights
            lines.append(f'WARNING: the config\'s init_cfg weights '
                         f'{source!r} could not be loaded: {exc}')
            continue
        lines += report_loaded(result, f'{source} (config init_cfg)',
                               config_stages)
        loaded.append(osp.basename(str(source)))
    if loaded:
        return lines, ', '.join(loaded)
    reason = ('weights failed to load' if pretrained else 'loads none')
    lines.append(f'weights: RANDOM (seed {seed}): no CHECKPOINT given and '
                 f'the config\'s init_cfg {reason}; the features are those '
                 'of an untrained network')
    return lines, 'RANDOM'


def pipeline_resizes(cfg: Config) -> Tuple[List[dict], List[str]]:
    """The resize steps of the config's test pipeline and the names of the
    other steps, which are not applied."""
    dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    # Dataset wrappers (e.g. ConcatDataset) hold the pipeline further in.
    while 'pipeline' not in dataset and isinstance(
            dataset.get('dataset'), dict):
        dataset = dataset['dataset']
    pipeline = dataset.get('pipeline') or cfg.get('test_pipeline') or []
    resizes, others = [], []
    for step in pipeline:
        kind = str(step.get('type', '')).split('.')[-1]
        if kind in ('Resize', 'ResizeToMultiple'):
            resizes.append(step)
        elif not kind.startswith(SKIPPED_PREFIXES):
            others.append(kind)
    return resizes, others


def resize_image(img: np.ndarray, cfg: Config, args) -> Tuple[np.ndarray, str]:
    """The image at the network's input size and how it got there, with
    mmcv's functions as the pipeline's transforms call them."""
    h, w = img.shape[:2]
    if args.shape is not None:
        out = mmcv.imresize(img, (args.shape[1], args.shape[0]))
        return out, f'--shape {args.shape[0]} {args.shape[1]}'
    resizes, others = pipeline_resizes(cfg)
    notes = []
    for step in resizes:
        kind = step['type'].split('.')[-1]
        interpolation = step.get('interpolation', 'bilinear')
        if kind == 'ResizeToMultiple':
            divisor = step.get('size_divisor', 32)
            img = mmcv.imresize_to_multiple(
                img, divisor, scale_factor=1, interpolation=interpolation)
            notes.append(f'ResizeToMultiple({divisor})')
            continue
        scale = step.get('scale')
        if isinstance(scale, int):
            scale = (scale, scale)
        if scale is None:
            factor = step.get('scale_factor')
            if factor is None:
                continue
            if isinstance(factor, (int, float)):
                factor = (factor, factor)
            fw, fh = factor
            scale = (int(img.shape[1] * fw + 0.5),
                     int(img.shape[0] * fh + 0.5))
        if step.get('keep_ratio', False):
            img = mmcv.imrescale(img, tuple(scale),
                                 interpolation=interpolation)
        else:
            img = mmcv.imresize(img, tuple(scale),
                                interpolation=interpolation)
        notes.append(f'Resize(scale={tuple(scale)}, keep_ratio='
                     f'{step.get("keep_ratio", False)})')
    if not notes:
        long_side = max(h, w)
        if long_side > args.max_size:
            img = mmcv.imrescale(img, args.max_size / long_side)
        notes.append(f'no Resize in the test pipeline: --max-size '
                     f'{args.max_size}')
    else:
        notes[0] = 'test pipeline ' + notes[0]
    if others:
        notes.append(f'not applied: {", ".join(others)}')
    return img, ', '.join(notes)


def preprocess(img: np.ndarray, cfg: Config) -> Tuple[torch.Tensor, str]:
    """(1, 3, H, W) float input as the config's data preprocessor makes it
    from the BGR image."""
    prep = cfg.model.get('data_preprocessor') or cfg.get(
        'data_preprocessor') or {}
    x = img.astype(np.float32)
    notes = []
    if prep.get('bgr_to_rgb') or prep.get('rgb_to_bgr'):
        x = x[..., ::-1]
        notes.append('BGR->RGB')
    mean, std = prep.get('mean'), prep.get('std')
    if mean is not None and std is not None:
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        notes.append(f'mean {list(mean)}, std {list(std)}')
    else:
        notes.append('not normalised (the data_preprocessor has no mean / '
                     'std)')
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
    return x[None], ', '.join(notes)


@torch.no_grad()
def extract(backbone: torch.nn.Module, x: torch.Tensor):
    """The normed outputs of the four stages and the stage outputs before
    their output norm, as float32 CPU tensors (C, H, W)."""
    raw = {}
    hooks = [
        stage.register_forward_hook(
            lambda m, inp, out, i=i: raw.__setitem__(i, out))
        for i, stage in enumerate(backbone.stages)
    ]
    try:
        outs = backbone(x)
    finally:
        for hook in hooks:
            hook.remove()
    feats = [o[0].float().cpu() for o in outs]
    pre = [raw[i][0].float().cpu() for i in STAGES]
    return feats, pre


def stage_stats(feats, pre, topk: int) -> List[dict]:
    stats = []
    for i, (f, p) in enumerate(zip(feats, pre)):
        channel_means = f.mean(dim=(1, 2))
        k = min(topk, f.shape[0])
        top = torch.topk(channel_means, k).indices.tolist() if k else []
        stats.append(
            dict(stage=i, stride=2**(i + 2), channels=f.shape[0],
                 size=tuple(f.shape[1:]), mean=f.mean().item(),
                 std=f.std().item(), min=f.min().item(),
                 max=f.max().item(), pre_mean=p.mean().item(),
                 pre_std=p.std().item(), top=top,
                 top_means=[channel_means[c].item() for c in top]))
    return stats


def format_stats(stats: List[dict]) -> str:
    lines = [f'{"stage":>5} {"stride":>6} {"channels":>8} {"size":>9} '
             f'{"mean":>8} {"std":>8} {"min":>8} {"max":>8} '
             f'{"pre-norm mean":>13} {"pre-norm std":>12}  '
             'strongest channels (mean activation)']
    for s in stats:
        size = f'{s["size"][0]}x{s["size"][1]}'
        top = ' '.join(f'{c}:{m:.3f}' for c, m in zip(s['top'],
                                                      s['top_means']))
        lines.append(
            f'{s["stage"]:>5} {s["stride"]:>6} {s["channels"]:>8} '
            f'{size:>9} {s["mean"]:>8.4f} {s["std"]:>8.4f} '
            f'{s["min"]:>8.3f} {s["max"]:>8.3f} {s["pre_mean"]:>13.4f} '
            f'{s["pre_std"]:>12.4f}  {top}')
    return '\n'.join(lines)


def draw(image: np.ndarray, feats, stats: List[dict], topk: int,
         alpha: float, header: str, out: str) -> Tuple[int, int]:
    """Write the picture; returns its (width, height) in pixels.

    Args:
        image (np.ndarray): The network's input, RGB uint8 (H, W, 3).
        feats (list[Tensor]): The stage outputs (C, h, w).
        stats (list[dict]): From :func:`stage_stats`.
        topk (int): Channels per row after the channel mean.
        alpha (float): Opacity of the maps over the image.
        header (str): The picture's title.
        out (str): Output file.
    """
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure

    h, w = image.shape[:2]
    gray = image.mean(axis=2)
    cols = 2 + min(topk, min(f.shape[0] for f in feats))
    rows = len(feats)
    # Very wide or tall images would give unreadable panels.
    panel_h = PANEL * min(max(h / w, 0.25), 4.0)
    width = cols * PANEL
    # About 14 characters an inch at 8 points: narrow pictures (few
    # columns) get the title on more lines, not cut off.
    header = '\n'.join(
        textwrap.fill(part, max(int(width * 14), 20))
        for part in header.split('\n'))
    header_h = HEADER + 0.15 * header.count('\n')
    height = rows * (panel_h + TITLE) + header_h
    dpi = 100
    fig = Figure(figsize=(width, height), dpi=dpi)
    fig.suptitle(header, fontsize=8, y=1 - 0.1 / height, va='top')
    for row, (f, s) in enumerate(zip(feats, stats)):
        maps = [('channel mean', f.mean(0))] + [
            (f'ch {c} (mean {m:.2f})', f[c])
            for c, m in zip(s['top'], s['top_means'])
        ][:cols - 2]
        top = height - header_h - row * (panel_h + TITLE) - TITLE
        for col in range(cols):
            ax = fig.add_axes((col * PANEL / width, (top - panel_h) / height,
                               PANEL / width * 0.96, panel_h / height))
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.imshow(image, extent=(0, w, h, 0))
                ax.set_title(
                    f'stage {s["stage"]}, stride {s["stride"]}\n'
                    f'{s["channels"]} ch, {s["size"][0]}x{s["size"][1]}',
                    fontsize=7)
                continue
            title, fmap = maps[col - 1]
            fmap = fmap.numpy()
            fh, fw = fmap.shape
            ax.imshow(gray, cmap='gray', extent=(0, w, h, 0))
            # Each cell covers stride x stride pixels of the input.
            ax.imshow(fmap, cmap='jet', alpha=alpha,
                      interpolation='nearest',
                      extent=(0, fw * s['stride'], fh * s['stride'], 0))
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_title(f'{title}\n[{fmap.min():.2f}, {fmap.max():.2f}]',
                         fontsize=7)
    out_dir = osp.dirname(osp.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    # What Agg rendered: the inches times dpi, rounded down.
    return fig.canvas.get_width_height()


def run(args) -> None:
    check_args(args)
    # The image first: reading it is quick, the config is not.
    try:
        img = mmcv.imread(args.image, flag='color', channel_order='bgr')
    except Exception as exc:  # decoders raise many classes
        img, reason = None, f': {exc}'
    else:
        reason = ''
    if img is None:
        raise InputError(f'cannot read image {args.image!r}{reason}; give '
                         'an image file that OpenCV reads (.jpg, .png, ...)')
    cfg = read_config(args.config, args.cfg_options)
    torch.manual_seed(args.seed)
    backbone = build_backbone(cfg, args.device)
    lines, weights = load_weights(backbone, cfg, args.checkpoint,
                                  args.seed)
    kind = type(backbone).__name__
    print(f'config: {args.config} ({kind} {backbone.arch_name})')
    print('\n'.join(lines))
    resized, how = resize_image(img, cfg, args)
    x, norm = preprocess(resized, cfg)
    print(f'image: {args.image}, {img.shape[0]}x{img.shape[1]} -> '
          f'{resized.shape[0]}x{resized.shape[1]} ({how}); {norm}')
    feats, pre = extract(backbone, x.to(args.device))
    stats = stage_stats(feats, pre, args.topk)
    print(format_stats(stats))
    header = (f'{osp.basename(args.config)}: {kind} {backbone.arch_name}, '
              f'weights: {weights}\n{osp.basename(args.image)} at '
              f'{resized.shape[0]}x{resized.shape[1]}')
    width, height = draw(resized[..., ::-1], feats, stats, args.topk,
                         args.alpha, header, args.out)
    cols = 2 + min(args.topk, min(f.shape[0] for f in feats))
    print(f'wrote {args.out}: {width}x{height} px, {len(feats)} rows '
          f'(stages) x {cols} columns (image, channel mean, '
          f'{cols - 2} strongest channels)')


def main(argv=None) -> None:
    args = parse_args(argv)
    # The package logs the backbone's fast path and every key of a load in
    # one line; run() prints what matters here, grouped. Logger and random
    # state are restored for callers in the same process (the tests).
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with torch.random.fork_rng(devices=[]):
            run(args)
    except InputError as exc:
        sys.exit(f'error: {exc}')
    finally:
        logger.setLevel(level)


if __name__ == '__main__':
    main()
