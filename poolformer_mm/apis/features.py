"""Pictures of the four stage outputs of a PoolFormer / MetaFormer backbone
on an image, to see what each level holds and whether the weights loaded:
what ``tools/analysis/vis_features.py`` draws.

- :func:`feature_maps`: the stage outputs of a config's backbone on an
  image, their statistics and a report of the weights used;
- :func:`draw_features`: the picture of a :func:`feature_maps` result;
- :func:`visualize`: both, every option checked first;
- :func:`format_features`: the printed report of a result.

One picture, one row per stage (stride 4, 8, 16, 32): the input image, the
channel-mean activation and the ``topk`` channels of highest mean
activation, each drawn over the image, with the stage, stride, channels and
map size in the titles. The report gives per stage mean, std, min and max
of the features and mean and std of the stage output before its output
norm, and the strongest channels: random and trained weights differ there.
(An output norm at its initial affine, as in random weights, standardises
the map: mean 0 and std 1 then say nothing; the stage output does.)

Model: ``model.backbone`` of the config (``PoolFormer`` or ``MetaFormer``),
built with all four stages (``out_indices=(0, 1, 2, 3)``, whatever the
config emits), in eval mode, without gradients. A stage the config does not
emit has no trained output norm in any of its checkpoints, nor have
classification weights any: such a stage is drawn through a norm at its
initial identity affine, i.e. the stage output standardised, and the report
says so.

Weights (what was loaded, from where, in which naming, and every tensor
missing or left unused is reported):

- a checkpoint: a training checkpoint of tools/train.py, a whole-model file
  (``backbone.`` plus neck and heads), or backbone-only weights in any
  naming :mod:`poolformer_mm.checkpoint` reads (original release, timm,
  mmpretrain, sail-sg/metaformer, this package's; ``.pth``, ``.pth.tar``,
  ``.safetensors``, local or URL). It is read by
  :func:`~poolformer_mm.checkpoint.fitting.read_weights` and its
  ``backbone.`` tensors are fitted to the backbone alone under the package's
  rule (:func:`~poolformer_mm.checkpoint.fitting.check_fit` with backbone
  weights allowed): every backbone tensor but the output norms must be
  there with its shape, and no backbone block the model lacks; the neck and
  heads of a whole-model file are listed as unused, since only the backbone
  is drawn.
- no checkpoint: the backbone's own ``init_weights()`` applies the config's
  ``init_cfg`` (its ImageNet weights, downloaded once into torch's hub
  cache). Without one, or when it cannot be applied, the weights are random
  (seeded with ``seed``), and the report says so.

Input: the image resized as the config's test pipeline does (its ``Resize``
and, in segmentation configs, ``ResizeToMultiple``), then normalised as its
``data_preprocessor`` does (``mean``, ``std``, ``bgr_to_rgb``). ``shape=(H,
W)`` resizes to exactly H x W instead (e.g. smaller, for speed, or the
training crop). A test pipeline without ``Resize`` keeps the image size,
the longer side scaled down to ``max_size``. The detectors' batch padding
to a multiple of 32 is left out: for one image it only adds a border of
mean colour at the bottom and right.
"""
import os
import os.path as osp
import textwrap
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import MODELS

from ..checkpoint import fitting
from ..checkpoint.files import read_checkpoint
from ..checkpoint.naming import unwrap_state_dict
from ..errors import CheckpointError, InputError
from ..models import MetaFormer, PoolFormer
from .runs import load_config

BACKBONES = ('PoolFormer', 'MetaFormer')
STAGES = (0, 1, 2, 3)
MIN_SIZE = 32
# Pipeline steps that only load or pack data; anything else that is not a
# resize is named in the report as not applied.
SKIPPED_PREFIXES = ('Load', 'Pack')
# Inches per picture panel; the height follows the image's aspect ratio.
PANEL = 2.2
TITLE = 0.45
HEADER = 0.3


@dataclass
class FeatureMaps:
    """What :func:`feature_maps` computed.

    Args:
        config (str): The config file.
        image (str): The image file.
        backbone (str): Class and arch, e.g. 'PoolFormer s12'.
        weights (str): Where the weights came from, for the picture's
            title: file name(s) or 'RANDOM'.
        weight_report (list[str]): What was loaded, from where; missing and
            unused tensors.
        image_size (tuple[int, int]): (H, W) of the image as read.
        input_image (np.ndarray): The network's input before normalisation,
            BGR uint8 (H, W, 3).
        resize (str): How the image was resized.
        normalisation (str): How it was normalised.
        features (list[Tensor]): The four normed stage outputs (C, h, w),
            float32 on the CPU.
        pre_norm (list[Tensor]): The stage outputs before their output norm.
        stats (list[dict]): Per stage: ``stage``, ``stride``, ``channels``,
            ``size``, ``mean``, ``std``, ``min``, ``max``, ``pre_mean``,
            ``pre_std``, ``top`` (the strongest channels) and
            ``top_means``.
    """
    config: str
    image: str
    backbone: str
    weights: str
    weight_report: List[str]
    image_size: Tuple[int, int]
    input_image: np.ndarray
    resize: str
    normalisation: str
    features: List[torch.Tensor]
    pre_norm: List[torch.Tensor]
    stats: List[dict]

    @property
    def columns(self) -> int:
        """Picture columns: image, channel mean, the strongest channels."""
        return 2 + min(len(s['top']) for s in self.stats)


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------
def _check_options(topk: int, shape: Optional[Sequence[int]],
                   max_size: int, device: str) -> None:
    if topk < 0:
        raise InputError(f'--topk must be 0 or more, got {topk}')
    if shape is not None and (len(shape) != 2 or min(shape) < MIN_SIZE):
        raise InputError(
            f'--shape H W must be at least {MIN_SIZE} {MIN_SIZE} (one cell '
            f'at stride 32), got {" ".join(map(str, shape))}')
    if max_size < MIN_SIZE:
        raise InputError(
            f'--max-size must be at least {MIN_SIZE}, got {max_size}')
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f'--device {device!r}: {exc}') from exc
    if parsed.type == 'cuda' and not torch.cuda.is_available():
        raise InputError(f'--device {device!r}: no CUDA device here; '
                         'use --device cpu')


def _check_alpha(alpha: float) -> None:
    if not 0 <= alpha <= 1:
        raise InputError(f'--alpha must be in 0..1, got {alpha}')


def read_image(path: str) -> np.ndarray:
    """The image as BGR uint8 (H, W, 3).

    Raises:
        InputError: No such file, or not an image OpenCV reads.
    """
    hint = 'give an image file that OpenCV reads (.jpg, .png, ...)'
    if not osp.isfile(path):
        raise InputError(f'image not found: {path!r}; {hint}')
    try:
        img = mmcv.imread(path, flag='color', channel_order='bgr')
    except Exception as exc:  # decoders raise many classes
        img, reason = None, f': {exc}'
    else:
        reason = ''
    if img is None:
        raise InputError(f'cannot read image {path!r}{reason}; {hint}')
    return img


def read_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """The config (:func:`~poolformer_mm.apis.runs.load_config`), checked to
    have a backbone of this package.

    Raises:
        InputError: No such file, not an mmdet / mmseg config, a config that
            fails to run, or another backbone.
    """
    try:
        cfg = load_config(path, cfg_options)
    except InputError:
        raise
    except Exception as exc:  # config files run code: any error
        raise InputError(f'cannot read config {path!r}: '
                         f'{type(exc).__name__}: {exc}') from exc
    backbone = cfg.get('model', {}).get('backbone')
    kind = backbone.get('type') if isinstance(backbone, dict) else None
    # Scoped names ('mmdet.PoolFormer') resolve to the same class.
    if not isinstance(kind, str) or kind.split('.')[-1] not in BACKBONES:
        raise InputError(
            f'config {path!r} has model.backbone.type {kind!r}; only this '
            f'package\'s backbones are drawn: type {BACKBONES[0]!r} or '
            f'{BACKBONES[1]!r}')
    return cfg


def build_backbone(cfg: Config, device: str = 'cpu') -> torch.nn.Module:
    """``model.backbone`` of the config with all four stages, in eval mode.
    Its ``init_cfg`` is kept and not applied: :func:`load_weights` applies
    it when no checkpoint is given.

    Raises:
        InputError: The backbone config does not build one of this
            package's backbones.
    """
    backbone_cfg = cfg.model.backbone.copy()
    backbone_cfg.update(out_indices=STAGES)
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


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------
def _describe_unused(names: Sequence[str]) -> str:
    """Every name when few, else counts by the first name component."""
    if len(names) <= 10:
        return ', '.join(names)
    groups = Counter(name.split('.')[0] for name in names)
    return ', '.join(f'{group}.*: {count}'
                     for group, count in sorted(groups.items()))


def _report_loaded(result: Dict[str, object], source: str,
                   config_stages: Sequence[int]) -> List[str]:
    """Report lines of a load (``format``, ``loaded``, ``missing``,
    ``ignored`` as :func:`~poolformer_mm.checkpoint.load_pretrained`
    returns them, and ``unnamed``: unused tensors without a name);
    untrained output norms and random tensors are explained."""
    missing = list(result['missing'])
    ignored = list(result['ignored'])
    unnamed = result.get('unnamed', 0)
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
    if ignored or unnamed:
        described = [_describe_unused(ignored)] if ignored else []
        if unnamed:
            described.append(f'{unnamed} beside the backbone weights (e.g. '
                             'a classifier head)')
        lines.append(f'  {len(ignored) + unnamed} tensors of the file not '
                     f'used (not backbone weights): {", ".join(described)}')
    return lines


def load_checkpoint(backbone: torch.nn.Module,
                    checkpoint: str) -> Dict[str, object]:
    """Load the backbone tensors of a checkpoint into ``backbone``.

    The file is read as :func:`~poolformer_mm.checkpoint.read_weights`
    reads it, and its ``backbone.`` tensors must fit the backbone under
    :func:`~poolformer_mm.checkpoint.fitting.check_fit` (backbone weights
    allowed: the output norms may be missing).

    Args:
        backbone (nn.Module): A backbone of this package.
        checkpoint (str): Path or URL.

    Returns:
        dict: ``format`` (the naming), ``loaded`` and ``missing`` (backbone
        tensor names), ``ignored`` (names of the file's tensors not used)
        and ``unnamed`` (how many more are not used: those beside backbone
        weights, e.g. a classifier head, which reading drops unnamed).

    Raises:
        CheckpointError: Unreadable, no PoolFormer / MetaFormer weights in
            it, or not fitting the backbone.
    """
    try:
        # What read_weights does, keeping the file's tensor count: backbone
        # weights drop their classifier head on reading.
        data = read_checkpoint(checkpoint)
        raw = unwrap_state_dict(data)
        weights = fitting.weights_from_checkpoint(data, str(checkpoint))
    except (CheckpointError, FileNotFoundError) as exc:
        raise CheckpointError(
            f'cannot use checkpoint {checkpoint!r}: {exc}') from exc
    prefix = 'backbone.'
    tensors = OrderedDict((k, v) for k, v in weights.tensors.items()
                          if k.startswith(prefix))
    if weights.naming == 'model' or not tensors:
        raise CheckpointError(
            f'cannot use checkpoint {checkpoint!r}: No PoolFormer weights or '
            'other MetaFormer weights recognised (its tensors start e.g. '
            f'with {sorted(raw)[:3]})')
    fitted = weights._replace(tensors=tensors, backbone_only=True)
    # check_fit reads the model's names: the backbone under `backbone.`.
    holder = torch.nn.ModuleDict(dict(backbone=backbone))
    unused = fitting.check_fit(holder, fitted)
    loadable = OrderedDict(
        (k[len(prefix):], v) for k, v in tensors.items() if k not in unused)
    missing = backbone.load_state_dict(loadable, strict=False).missing_keys
    ignored = [k for k in weights.tensors if not k.startswith(prefix)]
    ignored += unused
    unnamed = len(raw) - len(tensors) if weights.backbone_only else 0
    return dict(
        format=weights.naming,
        loaded=list(loadable),
        missing=list(missing),
        ignored=ignored,
        unnamed=max(unnamed, 0))


def init_from_config(backbone: torch.nn.Module, config_stages: Sequence[int],
                     seed: int) -> Tuple[List[str], str]:
    """Apply the backbone's ``init_cfg`` by its own ``init_weights()``.

    Returns:
        tuple: Report lines and the weights' label ('RANDOM' when nothing
        was loaded).
    """
    init_cfg = backbone.init_cfg
    entries = init_cfg if isinstance(init_cfg, list) else [init_cfg]
    entries = [entry for entry in entries if entry]
    lines = []
    if entries:
        lines.append(f'init_cfg applied by {type(backbone).__name__}.'
                     f'init_weights(): {[e.get("type") for e in entries]}')
    failure = None
    try:
        backbone.init_weights()
    except Exception as exc:  # e.g. a failed download: random weights
        failure = exc
    loads = getattr(backbone, 'pretrained_loads', [])
    for source, result in loads:
        lines += _report_loaded(result, f'{source} (config init_cfg)',
                                config_stages)
    if failure is not None:
        lines.append(f'WARNING: the config\'s init_cfg could not be '
                     f'applied: {type(failure).__name__}: {failure}')
    if loads:
        return lines, ', '.join(osp.basename(src) for src, _ in loads)
    reason = 'failed to load' if failure is not None else 'loads none'
    lines.append(f'weights: RANDOM (seed {seed}): no CHECKPOINT given and '
                 f'the config\'s init_cfg {reason}; the features are those '
                 'of an untrained network')
    return lines, 'RANDOM'


def load_weights(backbone: torch.nn.Module, cfg: Config,
                 checkpoint: Optional[str],
                 seed: int = 0) -> Tuple[List[str], str]:
    """Load ``checkpoint`` (:func:`load_checkpoint`), else apply the
    config's ``init_cfg`` (:func:`init_from_config`).

    Returns:
        tuple: The report lines and a short label for the picture.

    Raises:
        CheckpointError: The checkpoint cannot be used.
    """
    config_stages = cfg.model.backbone.get('out_indices', STAGES)
    if isinstance(config_stages, int):
        config_stages = (config_stages, )
    if checkpoint is None:
        return init_from_config(backbone, config_stages, seed)
    result = load_checkpoint(backbone, checkpoint)
    lines = ['(init_cfg of the config not used: CHECKPOINT given)']
    lines += _report_loaded(result, checkpoint, config_stages)
    return lines, osp.basename(checkpoint)


# ---------------------------------------------------------------------------
# Image to network input
# ---------------------------------------------------------------------------
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


def resize_image(img: np.ndarray,
                 cfg: Config,
                 shape: Optional[Sequence[int]] = None,
                 max_size: int = 1333) -> Tuple[np.ndarray, str]:
    """The image at the network's input size and how it got there, with
    mmcv's functions as the pipeline's transforms call them.

    Args:
        img (np.ndarray): BGR (H, W, 3).
        cfg (Config): Its test pipeline gives the resize.
        shape (Sequence[int], optional): (H, W) exactly, instead.
        max_size (int): Longest side when the pipeline has no Resize.
    """
    h, w = img.shape[:2]
    if shape is not None:
        out = mmcv.imresize(img, (shape[1], shape[0]))
        return out, f'--shape {shape[0]} {shape[1]}'
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
        if long_side > max_size:
            img = mmcv.imrescale(img, max_size / long_side)
        notes.append(f'no Resize in the test pipeline: --max-size '
                     f'{max_size}')
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


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------
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
    """The statistics of :class:`FeatureMaps` ``stats``."""
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
    """The statistics as a table, one line per stage."""
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


def feature_maps(config: str,
                 image: str,
                 checkpoint: Optional[str] = None,
                 topk: int = 4,
                 shape: Optional[Sequence[int]] = None,
                 max_size: int = 1333,
                 device: str = 'cpu',
                 seed: int = 0,
                 cfg_options: Optional[dict] = None) -> FeatureMaps:
    """The four stage outputs of a config's backbone on an image.

    Args:
        config (str): A detection or segmentation config with a PoolFormer
            or MetaFormer backbone.
        image (str): An image file OpenCV reads.
        checkpoint (str, optional): A training checkpoint, whole-model file
            or backbone weights (see the module docstring); None: the
            config's ``init_cfg``, or random weights.
        topk (int): The strongest channels reported per stage. Defaults
            to 4.
        shape (Sequence[int], optional): Resize to exactly (H, W), each
            >= 32, instead of the test pipeline's resize.
        max_size (int): Longest side when the test pipeline has no
            ``Resize``. Defaults to 1333.
        device (str): Where the backbone runs. Defaults to 'cpu'.
        seed (int): Of the random initialisation; the caller's random state
            is kept. Defaults to 0.
        cfg_options (dict, optional): Overrides of the config.

    Raises:
        InputError: A bad option, path, image or config.
        CheckpointError: The checkpoint cannot be used.
    """
    _check_options(topk, shape, max_size, device)
    # Missing files first: reading the image is quick, the config is not.
    if checkpoint is not None and '://' not in checkpoint and (
            not osp.isfile(checkpoint)):
        raise InputError(
            f'checkpoint not found: {checkpoint!r}; give a training '
            'checkpoint, a whole-model file or backbone weights (local '
            'file or http(s) URL), or leave it out for the config\'s '
            'init_cfg')
    img = read_image(image)
    cfg = read_config(config, cfg_options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = build_backbone(cfg, device)
        lines, weights = load_weights(backbone, cfg, checkpoint, seed)
    resized, how = resize_image(img, cfg, shape, max_size)
    x, norm = preprocess(resized, cfg)
    feats, pre = extract(backbone, x.to(device))
    return FeatureMaps(
        config=config,
        image=image,
        backbone=f'{type(backbone).__name__} {backbone.arch_name}',
        weights=weights,
        weight_report=lines,
        image_size=tuple(img.shape[:2]),
        input_image=resized,
        resize=how,
        normalisation=norm,
        features=feats,
        pre_norm=pre,
        stats=stage_stats(feats, pre, topk))


def format_features(result: FeatureMaps) -> str:
    """The report of ``result``: backbone, weights, input, statistics."""
    (h, w), (rh, rw) = result.image_size, result.input_image.shape[:2]
    return '\n'.join([
        f'config: {result.config} ({result.backbone})',
        *result.weight_report,
        f'image: {result.image}, {h}x{w} -> {rh}x{rw} ({result.resize}); '
        f'{result.normalisation}',
        format_stats(result.stats),
    ])


def draw_features(result: FeatureMaps,
                  out: str,
                  alpha: float = 0.7) -> Tuple[int, int]:
    """Write the picture of ``result``.

    Args:
        result (FeatureMaps): From :func:`feature_maps`.
        out (str): The picture file (e.g. .png); its folder is created.
        alpha (float): Opacity of the maps over the image, 0..1 (1: the
            maps alone). Defaults to 0.7.

    Returns:
        tuple[int, int]: The picture's (width, height) in pixels.

    Raises:
        InputError: ``alpha`` outside 0..1.
    """
    _check_alpha(alpha)
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure

    image = result.input_image[..., ::-1]
    feats, stats = result.features, result.stats
    h, w = image.shape[:2]
    gray = image.mean(axis=2)
    cols = result.columns
    rows = len(feats)
    header = (f'{osp.basename(result.config)}: {result.backbone}, weights: '
              f'{result.weights}\n{osp.basename(result.image)} at {h}x{w}')
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
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    # What Agg rendered: the inches times dpi, rounded down.
    return fig.canvas.get_width_height()


def visualize(config: str,
              image: str,
              out: str,
              checkpoint: Optional[str] = None,
              topk: int = 4,
              shape: Optional[Sequence[int]] = None,
              max_size: int = 1333,
              alpha: float = 0.7,
              device: str = 'cpu',
              seed: int = 0,
              cfg_options: Optional[dict] = None
              ) -> Tuple[FeatureMaps, Tuple[int, int]]:
    """:func:`feature_maps`, then :func:`draw_features` into ``out``, every
    option checked before anything slow runs (arguments as there).

    Returns:
        tuple: The :class:`FeatureMaps` and the picture's (width, height)
        in pixels.

    Raises:
        InputError: A bad option, path, image or config.
        CheckpointError: The checkpoint cannot be used.
    """
    _check_alpha(alpha)
    result = feature_maps(config, image, checkpoint, topk, shape, max_size,
                          device, seed, cfg_options)
    return result, draw_features(result, out, alpha)


__all__ = [
    'FeatureMaps', 'draw_features', 'feature_maps', 'format_features',
    'load_checkpoint', 'load_weights', 'preprocess', 'read_config',
    'resize_image', 'visualize'
]
