"""Parameters and FLOPs of a config's model, or of a backbone alone, per
part: what ``tools/analysis/get_flops.py`` prints.

- :func:`analyze_config`: a detector or segmentor config at its test size
  (:func:`test_size`) or a given input size;
- :func:`analyze_arch`: a backbone alone, by default at 224x224, the
  papers' ImageNet setting;
- :func:`analyze`: either of them, as the command line chooses;
- :func:`format_complexity`: the table of a result; :func:`count`: any module.

The table lists every top-level part of the model (backbone, neck, heads;
the backbone alone: stem, stages, output norms) with its parameters and
FLOPs, and the total; the rows add up to the total.

Counter: mmengine's ``FlopAnalyzer`` (``mmengine.analysis``, fvcore's
``FlopCountAnalysis`` ported with the same operator formulas; fvcore
0.1.5 gives the same numbers). It traces one forward pass with
``torch.jit`` and adds up a formula per traced operator. FLOPs here are
multiply-adds (one fused multiply-add is one FLOP), as fvcore counts them
and as the PoolFormer and MetaFormer papers report "MACs". Counted:

- convolutions: batch * weight elements * output pixels (input pixels for
  transposed ones; bias not counted); linear, matmul, bmm and einsum: their
  products;
- ``scaled_dot_product_attention`` (CAFormer's attention), with a formula of
  this module (:func:`sdpa_flop_jit`), batch * heads * queries * keys *
  (head dim + value dim): the ``q @ k^T`` and ``attn @ v`` products as
  fvcore counts the explicit matmuls of the original CAFormer code. Neither
  fvcore nor mmengine has a formula for this operator; without one they skip
  it, 5% of CAFormer-S18 at 224x224 and 30% of its RetinaNet at 800x1344;
- norms as fvcore does: GroupNorm and LayerNorm 5 per element (4 without
  affine), BatchNorm in eval 2 per element; upsampling 1 (nearest) or 4
  (bilinear) per output element, adaptive average pooling 1 per input
  element.

Not counted (listed under the table): element-wise operators (GELU,
StarReLU, residual additions, layer scales, the pooling mixer's
subtraction), softmax, average and max pooling (PoolFormer's token mixer,
8 additions and a division per element: about 0.5% of S12), and mmcv's
custom operators (RoIAlign, NMS), which the trace sees as opaque calls.

What runs: the model's ``forward(inputs, data_samples, mode='tensor')``
(``_forward``): backbone, neck and heads without post-processing (box
decoding, NMS, mask pasting, resizing the segmentation logits to the image
are not run). A two-stage detector's RPN turns its outputs into proposals
there (its NMS is not counted) because the RoI head needs them: the RoI
head's box branch runs on up to ``test_cfg.rpn.max_per_img`` proposals
(1000 in the Mask R-CNN configs) and its mask branch on the first 100; the
table says how many proposals the count used. A segmentor's auxiliary head
only trains: it has parameters but no FLOPs.

The backbones of this package are counted on the reference network
(``impl='reference'``, same parameters): the default ``impl='auto'`` runs
fused autograd functions and oneDNN kernels that a trace records as opaque
calls. Those modules step aside for the reference computation while a trace
records (``poolformer_mm.models.fast.tracing``), so the count would come out
the same, but the count does not depend on that and switches every such
backbone to ``'reference'`` first (:func:`use_reference`); the folded
``'deploy'`` path would count fewer FLOPs than the network the papers
describe.

Input size: a given ``shape`` (H, W) is used as the network input as given
(H and W at least 32, the backbone's output stride); without it, the
config's test size, from the ``Resize`` of its test pipeline:

- detectors: ``scale=(1333, 800)`` with ``keep_ratio`` is read as an image
  that fills the scale, 800x1333 (the customary COCO test size; other
  aspect ratios come out smaller), padded as the data preprocessor pads it
  (``pad_size_divisor``, 32): 800x1344;
- segmentors in ``whole`` test mode: with ``keep_ratio`` the short side goes
  to the scale's short side S (512 for ADE20K's ``(2048, 512)``) and the
  long side depends on the image, so a square S x S image is counted (the
  ADE20K configs' 512x512 crop size), rounded up to ``ResizeToMultiple``
  (32); a 4:3 image is ``shape=(512, 704)``. In ``slide`` mode: one window,
  ``test_cfg.crop_size``;
- without ``keep_ratio`` the scale's (w, h) as it is.

Parameters are all parameters of the built model, frozen ones included.
Nothing is loaded: configs name pretrained ImageNet weights in ``init_cfg``,
but counting needs only the built model (random weights,
:func:`~poolformer_mm.apis.runs.build_model`); build and trace are seeded,
so the proposal count, too, is the same every run.
"""
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from math import prod
from typing import (Any, Dict, Iterator, List, NamedTuple, Optional, Sequence,
                    Tuple)

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape
from mmengine.config import Config

from ..errors import InputError
from ..models.execution import backbones, switch_impl
from .common import build_backbone
from .runs import build_model, load_config

# One pixel at the backbone's stride-32 output.
MIN_SIZE = 32
ARCH_SIZE = (224, 224)
COUNTER = ('mmengine.analysis.FlopAnalyzer (fvcore formulas) + '
           'scaled_dot_product_attention; FLOPs = multiply-adds')


@dataclass
class Part:
    """One row of the table.

    Args:
        name (str): The module, e.g. 'backbone' or 'stages.0'.
        params (int): Its parameters.
        flops (int): Its multiply-adds.
        note (str): E.g. why it has no FLOPs.
    """
    name: str
    params: int
    flops: int
    note: str = ''


class Counted(NamedTuple):
    """What :func:`count` found."""
    parts: List[Part]
    params: int
    flops: int
    not_counted: Counter


@dataclass
class Complexity:
    """What :func:`analyze_config` and :func:`analyze_arch` found.

    Args:
        title (str): The model, e.g. 'RetinaNet (configs/...py)'.
        shape (tuple[int, int]): Network input (H, W), batch 1.
        shape_note (str): How the size was chosen.
        parts (list[Part]): Rows that add up to ``params`` and ``flops``.
        params (int): All parameters of the model.
        flops (int): Multiply-adds of one forward pass.
        not_counted (Counter): Traced operators without a formula, by name.
        notes (list[str]): Lines printed under the table.
    """
    title: str
    shape: Tuple[int, int]
    shape_note: str
    parts: List[Part]
    params: int
    flops: int
    not_counted: Counter = field(default_factory=Counter)
    notes: List[str] = field(default_factory=list)


def input_size(value: Any) -> int:
    """One side of an input size: an integer of at least :data:`MIN_SIZE`.

    Args:
        value (str | int): E.g. a ``--shape`` value as typed.

    Raises:
        InputError: Not an integer, or smaller than :data:`MIN_SIZE`.
    """
    try:
        # Through str, so that 22.5 is refused as '22.5' is, not truncated.
        size = int(str(value))
    except ValueError:
        size = None
    if size is None or size < MIN_SIZE:
        raise InputError(
            f'invalid size {value!r}: H and W must be integers >= '
            f'{MIN_SIZE} (the backbone\'s output stride)')
    return size


def _check_shape(shape: Optional[Sequence[Any]]) -> Optional[Tuple[int, int]]:
    if shape is None:
        return None
    if len(shape) != 2:
        raise InputError(f'shape must be (H, W), got {tuple(shape)!r}')
    return input_size(shape[0]), input_size(shape[1])


# ---------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------
def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Multiply-adds of ``aten::scaled_dot_product_attention``: ``q @ k^T``
    and ``attn @ v`` (the softmax is element-wise, not counted)."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    return prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


EXTRA_OPS = {'aten::scaled_dot_product_attention': sdpa_flop_jit}


def part_names(model: nn.Module) -> List[str]:
    """The model's top-level modules, the children of a ModuleList (a
    backbone's stages) one by one."""
    names = []
    for name, child in model.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            names += [f'{name}.{i}' for i in range(len(child))]
        else:
            names.append(name)
    return names


@contextlib.contextmanager
def _called_parts(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Route direct ``part.forward(...)`` calls through ``part(...)``.

    The trace gives an operator to the modules whose ``__call__`` runs it.
    MMDetection and MMSegmentation call their heads' ``forward`` directly
    (``self.decode_head.forward(x)``), which would leave the operators a
    head runs outside its child modules (FPNHead's upsampling) to the
    model itself.
    """
    handles, patched = [], []
    for name in names:
        module = model.get_submodule(name)
        if 'forward' in vars(module):
            continue
        # Set while the module's __call__ runs: a forward called from
        # there is the real one, any other goes through __call__.
        inside = [False]

        def enter(mod, args, _inside=inside):
            _inside[0] = True

        def leave(mod, args, out, _inside=inside):
            _inside[0] = False

        def forward(*args, _module=module, _inside=inside, **kwargs):
            if _inside[0]:
                return type(_module).forward(_module, *args, **kwargs)
            return _module(*args, **kwargs)

        handles += [
            module.register_forward_pre_hook(enter),
            module.register_forward_hook(leave, always_call=True)
        ]
        module.forward = forward
        patched.append(module)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in patched:
            del module.forward


def count(model: nn.Module, inputs: tuple) -> Counted:
    """Count ``model(*inputs)`` per part; the model is traced as it is
    (no impl switch, see :func:`use_reference`).

    Args:
        model (nn.Module): In eval mode.
        inputs (tuple[Tensor]): Its forward's arguments.

    Returns:
        Counted: The rows (a last ``(other)`` row holds what no part owns,
        where anything), the model's totals and the traced operators
        without a formula.
    """
    analyzer = FlopAnalyzer(model, inputs).set_op_handle(**EXTRA_OPS)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    with torch.no_grad(), _called_parts(model, part_names(model)):
        by_module = analyzer.by_module()
    uncalled = analyzer.uncalled_modules()
    modules = dict(model.named_modules())
    parts = []
    for name in part_names(model):
        params = sum(p.numel() for p in modules[name].parameters())
        flops = by_module.get(name, 0)
        if not params and not flops:
            continue  # e.g. the data preprocessor
        note = ''
        ran = any(n not in uncalled for n in modules
                  if n == name or n.startswith(name + '.'))
        if params and not flops and not ran:
            note = 'not run by the test forward (training only)'
        parts.append(Part(name, params, int(flops), note))
    total_params = sum(p.numel() for p in model.parameters())
    total_flops = int(by_module[''])
    rest_params = total_params - sum(p.params for p in parts)
    rest_flops = total_flops - sum(p.flops for p in parts)
    if rest_params or rest_flops:
        parts.append(
            Part('(other)', rest_params, rest_flops,
                 'outside the parts above'))
    return Counted(parts, total_params, total_flops,
                   analyzer.unsupported_ops())


def use_reference(model: nn.Module) -> List[str]:
    """Switch every backbone of this package inside ``model`` to
    ``impl='reference'``
    (:func:`~poolformer_mm.models.execution.switch_impl`).

    Args:
        model (nn.Module): A backbone, detector or segmentor; one without a
            backbone of this package is left as it is.

    Returns:
        list[str]: How each switched backbone ran before, e.g.
        ``"backbone s12 (impl='auto')"``.
    """
    names = backbones(model)
    if not names:
        return []
    modules = dict(model.named_modules())
    before = [
        f'{name or type(modules[name]).__name__} {modules[name].arch_name} '
        f'(impl={modules[name].impl!r})' for name in names
    ]
    switch_impl(model, 'reference')
    return before


def _unsupported(counter: Counter) -> str:
    return ', '.join(f'{op.replace("aten::", "")} x{n}'
                     for op, n in sorted(counter.items()))


# ---------------------------------------------------------------------------
# Backbone alone
# ---------------------------------------------------------------------------
def analyze_arch(arch: str,
                 shape: Optional[Sequence[int]] = None) -> Complexity:
    """Count a backbone alone, all four stages emitted, by default at
    224x224.

    The papers' ImageNet MACs are those of a classifier: this backbone
    without its output norms ``norm0-2`` (1.8M multiply-adds for S12), plus
    a linear head (512 x 1000, 0.5M). Together 0.07% of S12's 1.82G: the
    backbone reproduces the papers' numbers.

    Args:
        arch (str): A PoolFormer or MetaFormer arch
            (:func:`~poolformer_mm.apis.common.resolve_arch`).
        shape (Sequence[int], optional): (H, W), each >= 32. Defaults to
            224x224.

    Raises:
        InputError: Unknown arch, or a bad ``shape``.
    """
    shape = _check_shape(shape)
    torch.manual_seed(0)
    model = build_backbone(arch, impl='reference').eval()
    h, w = shape or ARCH_SIZE
    counted = count(model, (torch.randn(1, 3, h, w), ))
    return Complexity(
        title=f'{type(model).__name__} {model.arch_name} (backbone alone, '
        'out_indices (0, 1, 2, 3))',
        shape=(h, w),
        shape_note='from --shape' if shape else 'the papers\' ImageNet size',
        parts=counted.parts,
        params=counted.params,
        flops=counted.flops,
        not_counted=counted.not_counted,
        notes=['counted on impl=\'reference\''])


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------
def _test_pipeline(cfg: Config) -> List[dict]:
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    # Dataset wrappers keep the pipeline on the wrapped dataset.
    while 'pipeline' not in dataset and 'dataset' in dataset:
        dataset = dataset['dataset']
    return dataset.get('pipeline') or cfg.get('test_pipeline') or []


def _transform(pipeline: List[dict], name: str) -> Optional[dict]:
    """The first transform of type ``name``, with or without a scope."""
    return next(
        (t for t in pipeline if str(t.get('type', '')).split('.')[-1] == name),
        None)


def _round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def test_size(cfg: Config) -> Tuple[Tuple[int, int], str]:
    """The network input (H, W) of the config at test time and how it was
    found (the rules are in this module's docstring).

    Args:
        cfg (Config): From :func:`~poolformer_mm.apis.runs.load_config`.

    Raises:
        InputError: The test pipeline has no ``Resize`` with a ``scale``.
    """
    pipeline = _test_pipeline(cfg)
    resize = _transform(pipeline, 'Resize')
    test_cfg = cfg.model.get('test_cfg') or {}
    if cfg.default_scope == 'mmseg' and test_cfg.get('mode') == 'slide':
        h, w = test_cfg['crop_size']
        return (h, w), (f'one sliding window, test_cfg.crop_size '
                        f'{tuple(test_cfg["crop_size"])}')
    if resize is None or resize.get('scale') is None:
        raise InputError(
            f'cannot tell the test size of {cfg.filename}: its test '
            'pipeline has no Resize with a scale; pass --shape H W')
    scale = tuple(resize['scale'])
    if isinstance(scale[0], (tuple, list)):
        raise InputError(
            f'cannot tell the test size of {cfg.filename}: its test Resize '
            f'has several scales {scale}; pass --shape H W')
    if not resize.get('keep_ratio', False):
        (w, h), how = scale, f'test Resize scale {scale} (w, h)'
    elif cfg.default_scope == 'mmdet':
        h, w = min(scale), max(scale)
        how = (f'test Resize scale {scale}, keep_ratio: an image that '
               f'fills it, {h}x{w}')
    else:
        h = w = min(scale)
        how = (f'test Resize scale {scale}, keep_ratio: short side {h}; '
               'counted for a square image')
    divisor = 1
    if cfg.default_scope == 'mmdet':
        preprocessor = cfg.model.get('data_preprocessor') or {}
        divisor = preprocessor.get('pad_size_divisor', 1)
        pad = 'padded to a multiple of {} (data preprocessor)'
    else:
        multiple = _transform(pipeline, 'ResizeToMultiple')
        if multiple is not None:
            divisor = multiple.get('size_divisor', 32)
        pad = 'rounded up to a multiple of {} (ResizeToMultiple)'
    size = (_round_up(h, divisor), _round_up(w, divisor))
    if size != (h, w):
        how += ', ' + pad.format(divisor)
    return size, how


def data_samples(scope: str, h: int, w: int) -> list:
    """One data sample with the meta information the heads read."""
    meta = dict(
        img_shape=(h, w),
        ori_shape=(h, w),
        pad_shape=(h, w),
        batch_input_shape=(h, w),
        scale_factor=(1., 1.))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample as Sample
    else:
        from mmseg.structures import SegDataSample as Sample
    return [Sample(metainfo=meta)]


def _count_rois(model: nn.Module) -> Tuple[Dict[str, int], list]:
    """Hooks that record how many RoIs a RoI head's branches see."""
    seen: Dict[str, int] = {}
    hooks = []
    roi_head = getattr(model, 'roi_head', None)
    for branch in ('bbox_head', 'mask_head'):
        module = getattr(roi_head, branch, None)
        # Cascade heads keep one branch per stage in a ModuleList.
        if isinstance(module,
                      nn.Module) and not isinstance(module, nn.ModuleList):

            def record(mod, args, branch=branch):
                seen[branch] = args[0].shape[0]

            hooks.append(module.register_forward_pre_hook(record))
    return seen, hooks


def analyze_config(path: str,
                   shape: Optional[Sequence[int]] = None,
                   cfg_options: Optional[dict] = None) -> Complexity:
    """Count a config's model at its test size, or at ``shape``.

    Args:
        path (str): An mmdet or mmseg config.
        shape (Sequence[int], optional): (H, W) network input, as given,
            each >= 32.
        cfg_options (dict, optional): ``--cfg-options`` overrides.

    Raises:
        InputError: No such config, not an mmdet / mmseg config, a bad
            ``shape``, or no test size in the config (and no ``shape``).
    """
    shape = _check_shape(shape)
    cfg = load_config(path, cfg_options)
    if shape:
        (h, w), how = shape, 'from --shape, as given'
    else:
        (h, w), how = test_size(cfg)
    model = build_model(cfg)
    switched = use_reference(model)
    notes = ['counted on impl=\'reference\' (same parameters): ' +
             ', '.join(switched)] if switched else []
    torch.manual_seed(0)
    inputs = torch.randn(1, 3, h, w)
    # What MMDetection's and MMSegmentation's get_flops trace: the network
    # without post-processing.
    model.forward = partial(
        model.forward,
        data_samples=data_samples(cfg.default_scope, h, w),
        mode='tensor')
    rois, hooks = _count_rois(model)
    try:
        counted = count(model, (inputs, ))
    finally:
        del model.forward
        for hook in hooks:
            hook.remove()
    if rois:
        rpn_cfg = (cfg.model.get('test_cfg') or {}).get('rpn') or {}
        note = 'roi_head: ' + ', '.join(f'{branch} on {n} RoIs'
                                        for branch, n in rois.items())
        if rpn_cfg.get('max_per_img'):
            note += (' (proposals: up to test_cfg.rpn.max_per_img='
                     f'{rpn_cfg["max_per_img"]})')
        notes.append(note)
    notes.append('not counted: post-processing (box decoding, NMS, '
                 'resizing outputs to the image)')
    return Complexity(
        title=f'{type(model).__name__} ({path})',
        shape=(h, w),
        shape_note=how,
        parts=counted.parts,
        params=counted.params,
        flops=counted.flops,
        not_counted=counted.not_counted,
        notes=notes)


def analyze(config: Optional[str] = None,
            arch: Optional[str] = None,
            shape: Optional[Sequence[int]] = None,
            cfg_options: Optional[dict] = None) -> Complexity:
    """:func:`analyze_config` or :func:`analyze_arch`, whichever is given.

    Args:
        config (str, optional): A detector or segmentor config.
        arch (str, optional): A backbone arch, counted alone.
        shape (Sequence[int], optional): (H, W) network input.
        cfg_options (dict, optional): Overrides of the config.

    Raises:
        InputError: Both or neither of ``config`` and ``arch``, or
            ``cfg_options`` with ``arch``; and what the two raise.
    """
    if (config is None) == (arch is None):
        raise InputError('give either a config file or --arch NAME, not '
                         f'{"both" if config else "neither"}')
    if arch is not None:
        if cfg_options:
            raise InputError(
                '--cfg-options applies to a config, not to --arch')
        return analyze_arch(arch, shape)
    return analyze_config(config, shape, cfg_options)


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def format_complexity(result: Complexity) -> str:
    """The table of ``result`` and the lines around it, as
    ``tools/analysis/get_flops.py`` prints them."""
    h, w = result.shape
    rows = [(p.name, f'{p.params / 1e6:.3f}', f'{p.flops / 1e9:.3f}', p.note)
            for p in result.parts]
    rows.append(('total', f'{result.params / 1e6:.3f}',
                 f'{result.flops / 1e9:.3f}', ''))
    header = ('part', 'params (M)', 'FLOPs (G)', 'note')
    if not any(r[3] for r in rows):
        header, rows = header[:3], [r[:3] for r in rows]
    widths = [
        max(len(r[i]) for r in rows + [header]) for i in range(len(header))
    ]

    def line(cells):
        text = ' | '.join(
            c.rjust(wd) if i in (1, 2) else c.ljust(wd)
            for i, (c, wd) in enumerate(zip(cells, widths)))
        return f'| {text} |'

    lines = [
        result.title,
        f'input: 1x3x{h}x{w} ({result.shape_note})',
        f'counter: {COUNTER}',
        '',
        line(header),
        '| ' + ' | '.join('-' * wd for wd in widths) + ' |',
    ] + [line(r) for r in rows]
    lines.append('')
    lines += result.notes
    if result.not_counted:
        lines.append('operators without a FLOP formula (not counted): ' +
                     _unsupported(result.not_counted))
    return '\n'.join(lines)


__all__ = [
    'Complexity', 'Counted', 'Part', 'analyze', 'analyze_arch',
    'analyze_config', 'count', 'format_complexity', 'input_size', 'test_size',
    'use_reference'
]
