"""ONNX export of a config's backbone, Semantic FPN or detector (up to its
dense heads), checked against PyTorch in ONNX Runtime, as
``tools/export_onnx.py`` runs it: :func:`export_onnx`, and the pieces it is
made of.

What is exported (``part``):

- ``'backbone'``: ``model.backbone`` (PoolFormer or MetaFormer), image ->
  the stages in ``out_indices``, named ``stage0`` .. ``stage3``.
- ``'model'``: a Semantic FPN (``EncoderDecoder`` + ``FPNHead``), image ->
  ``seg_logits`` (N, classes, H, W), the head's logits resized bilinearly to
  the input as MMSegmentation's ``predict`` does (no argmax); RetinaNet,
  image -> ``cls_score_<level>`` and ``bbox_pred_<level>``, the head's raw
  outputs (what ``model._forward`` returns); Mask R-CNN and Faster R-CNN,
  image -> ``rpn_cls_score_<level>`` and ``rpn_bbox_pred_<level>``,
  backbone, FPN and RPN head only.

Not in the graph: anchor decoding, NMS, the RoI heads and mask pasting.
mmcv's RoIAlign and NMS are custom operators of no ONNX domain, and
MMDetection's post-processing is Python whose shapes depend on the data
(how many boxes survive); run them on the exported outputs.

Execution path: the reference network by default, ``deploy`` the folded one
(GroupNorm(1) statistics as ``ReduceMean``, norm affines and layer scales
folded into the convolutions), both through
:mod:`poolformer_mm.models.execution`. The reference network's GroupNorm(1)
is written by torch as Reshape -> InstanceNormalization -> Reshape ->
Mul/Add, which ONNX Runtime computes exactly (1e-6). The TorchScript
exporter is used (opset 17 to 20). Before the file is saved, ``Identity``
nodes that copy an initializer are removed
(:func:`drop_initializer_identities`) and the nodes are sorted
topologically (:func:`sort_graph`).

``dynamic`` makes batch, height and width dynamic. MMSegmentation's
``Upsample`` (in ``FPNHead``) computes its output size as Python ints,
which a trace records as constants: at another size the file would give
the right shape but wrong values. The exported segmentor upsamples by the
scale factor instead (the same values), and its final resize takes the
input's shape, so it holds at every size that is a multiple of 32.
CAFormer's attention is global over the tokens of the input and reshapes
by the traced token count: dynamic exports hold at other sizes, too
(verified at a different token count), and cost quadratically more there.
``verify`` runs the file in ONNX Runtime on random inputs at the export
size and, for dynamic exports, at a second size (H+64, W-32, batch 2), and
compares every output with PyTorch (max abs diff / max abs <= :data:`RTOL`).

Without a checkpoint the weights are random (nothing is downloaded: the
configs' ``init_cfg`` is not run). A checkpoint is read and fitted by
:mod:`poolformer_mm.checkpoint.fitting` (any naming it reads; backbone
weights alone only for ``part='backbone'``). The file's ``metadata_props``
record the config, part, path, opset, inputs and dynamic axes.

Example:
    >>> from poolformer_mm.apis.onnx_export import export_onnx
    >>> result = export_onnx('configs/sem_fpn_poolformer_s12.py',
    ...                      out='fpn.onnx', dynamic=True, verify=True)
    >>> result.metadata['dynamic_axes']
"""
import copy
import json
import os.path as osp
import statistics
import time
import warnings
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config

from ..checkpoint.fitting import load_weights, read_weights
from ..config_package import config_dir
from ..errors import InputError
from ..models.execution import switch_impl, switch_model_to_deploy
from .runs import build_model, load_config

MIN_OPSET = 17
MAX_OPSET = getattr(torch.onnx._constants,
                    'ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET', 20)
RTOL = 1e-4
STRIDE = 32
BACKBONES = ('PoolFormer', 'MetaFormer')
PARTS = ('model', 'backbone')
# Model type -> the head whose raw outputs end the graph.
MODELS = {
    'EncoderDecoder': 'FPNHead',
    'RetinaNet': 'RetinaHead',
    'MaskRCNN': 'RPNHead',
    'FasterRCNN': 'RPNHead',
}
DEFAULT_SHAPE = {'mmseg': (512, 512), 'mmdet': (800, 1344)}


class Graph(NamedTuple):
    """What is exported: a module from image to ``outputs``.

    Attributes:
        module (nn.Module): Image -> a tuple of ``outputs``, in eval mode.
        outputs (list[str]): The output names.
        description (str): For the messages and the file's metadata.
        multiple (int): H and W must be multiples of this.
    """
    module: nn.Module
    outputs: List[str]
    description: str
    multiple: int


class ExportResult(NamedTuple):
    """What :func:`export_onnx` did.

    Attributes:
        path (str): The ONNX file.
        graph (Graph): What was exported, for comparisons in PyTorch.
        metadata (dict): The ``metadata_props`` written to the file.
        rows (list[tuple], optional): Of :func:`verify_onnx`, if run.
        times (dict, optional): Of :func:`benchmark_onnx`, if run.
    """
    path: str
    graph: Graph
    metadata: Dict[str, str]
    rows: Optional[List[tuple]]
    times: Optional[Dict[str, float]]


def check_opset(opset: int) -> None:
    """Refuse an opset the TorchScript exporter does not write here.

    Raises:
        InputError: ``opset`` outside :data:`MIN_OPSET`..:data:`MAX_OPSET`.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f'--opset {opset} is not supported: torch\'s '
                         f'TorchScript exporter writes {MIN_OPSET}..'
                         f'{MAX_OPSET} here (GroupNorm and Resize as tested)')


def check_supported(cfg: Config, part: str) -> None:
    """Refuse, before building, what cannot be exported.

    Args:
        cfg (Config): From :func:`~poolformer_mm.apis.runs.load_config`.
        part (str): 'model' or 'backbone'.

    Raises:
        InputError: Another ``part``, a backbone other than
            :data:`BACKBONES`, or (``part='model'``) a model and head not
            in :data:`MODELS`.
    """
    if part not in PARTS:
        raise InputError(f'part must be one of {PARTS}, got {part!r}')
    backbone = cfg.model.get('backbone', {}).get('type')
    if backbone not in BACKBONES:
        raise InputError(f'backbone type {backbone!r} is not supported: '
                         f'this tool exports {"/".join(BACKBONES)} backbones')
    if part == 'backbone':
        return
    kind = cfg.model.get('type')
    head_cfg = cfg.model.get('decode_head') or cfg.model.get(
        'bbox_head') or cfg.model.get('rpn_head') or {}
    head = head_cfg.get('type') if isinstance(head_cfg, dict) else None
    if kind not in MODELS or head != MODELS[kind]:
        supported = ', '.join(f'{m} ({h})' for m, h in MODELS.items())
        raise InputError(
            f'model type {kind!r} with head {head!r} is not supported for '
            f'--part model; supported: {supported}; or export the backbone '
            'alone with --part backbone')


def check_shape(shape: Sequence[int], multiple: int, what: str) -> None:
    """Refuse an input size the graph cannot take.

    Args:
        shape (Sequence[int]): (H, W).
        multiple (int): H and W must be multiples of this.
        what (str): The exported part, for the message.

    Raises:
        InputError: Not two positive multiples of ``multiple``.
    """
    if len(shape) != 2:
        raise InputError(f'--shape takes two sizes, H W; got {list(shape)}')
    if any(s <= 0 for s in shape):
        raise InputError(f'--shape must be positive, got {list(shape)}')
    if multiple > 1 and any(s % multiple for s in shape):
        raise InputError(
            f'--shape {shape[0]} {shape[1]}: {what} needs H and W that are '
            f'multiples of {multiple} (the FPN adds stride-{multiple} maps '
            'upsampled by 2 to the finer ones, so the sizes must halve '
            'exactly; the data preprocessor pads images so)')


class BackboneGraph(nn.Module):
    """A backbone whose outputs are a tuple, as the exporter wants them."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return tuple(self.backbone(x))


class ScaleUpsample(nn.Module):
    """MMSegmentation's ``Upsample`` by its scale factor: the output size
    is then traced from the input's shape (``Resize`` with scales) instead
    of being recorded as the export size's constant."""

    def __init__(self, upsample: nn.Module):
        super().__init__()
        self.scale_factor = upsample.scale_factor
        self.mode = upsample.mode
        self.align_corners = upsample.align_corners

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale_factor,
                             mode=self.mode, align_corners=self.align_corners)


class SegmentorGraph(nn.Module):
    """Backbone, neck and decode head, logits resized to the input. The
    head's size-less ``Upsample`` modules are replaced by
    :class:`ScaleUpsample` (the same values)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from mmseg.models.utils import Upsample
        self.model = model
        head = model.decode_head
        for name, module in list(head.named_modules()):
            if isinstance(module, Upsample) and not module.size:
                parent, _, child = name.rpartition('.')
                setattr(head.get_submodule(parent), child,
                        ScaleUpsample(module))

    def forward(self, x):
        logits = self.model.decode_head(self.model.extract_feat(x))
        # The input's shape, not Python ints: traced as Shape ops.
        return F.interpolate(logits, size=x.shape[2:], mode='bilinear',
                             align_corners=self.model.decode_head.
                             align_corners)


class DenseHeadGraph(nn.Module):
    """Backbone, neck and a dense head (RetinaNet's or the RPN), flattened
    to one tuple: all class scores, then all box deltas."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x):
        cls_scores, bbox_preds = getattr(self.model, self.head)(
            self.model.extract_feat(x))
        return (*cls_scores, *bbox_preds)


def make_graph(model: nn.Module, part: str) -> Graph:
    """Wrap the part to export, in eval mode (the exporter restores the
    wrapper's mode afterwards, and a deploy backbone refuses training).

    Args:
        model (nn.Module): A model :func:`check_supported` accepts the
            config of.
        part (str): 'model' or 'backbone'.
    """
    graph = _make_graph(model, part)
    graph.module.eval()
    return graph


def _make_graph(model: nn.Module, part: str) -> Graph:
    if part == 'backbone':
        backbone = model.backbone
        return Graph(BackboneGraph(backbone),
                     [f'stage{i}' for i in backbone.out_indices],
                     f'{type(backbone).__name__} backbone', 1)
    kind = type(model).__name__
    if kind == 'EncoderDecoder':
        return Graph(SegmentorGraph(model), ['seg_logits'],
                     'Semantic FPN (logits at input size)', STRIDE)
    head = 'bbox_head' if kind == 'RetinaNet' else 'rpn_head'
    prefix = '' if kind == 'RetinaNet' else 'rpn_'
    levels = len(getattr(model, head).prior_generator.strides)
    outputs = [
        f'{prefix}{out}_{i}' for out in ('cls_score', 'bbox_pred')
        for i in range(levels)
    ]
    what = 'head outputs' if kind == 'RetinaNet' else 'up to the RPN head'
    return Graph(DenseHeadGraph(model, head), outputs, f'{kind} ({what})',
                 STRIDE)


def _subgraph_nodes(node) -> list:
    """Nodes of ``node``'s subgraphs (If, Loop), recursively."""
    nodes = []
    for attr in node.attribute:
        graphs = ([attr.g] if attr.HasField('g') else []) + list(attr.graphs)
        for graph in graphs:
            for sub in graph.node:
                nodes += [sub] + _subgraph_nodes(sub)
    return nodes


def drop_initializer_identities(graph) -> int:
    """Remove ``Identity`` nodes that only copy an initializer, reading the
    initializer directly instead.

    torch's TorchScript exporter writes them where one constant is shared
    (the deploy path's folded weights, with constant folding: 49 in
    PoolFormer-S12). The model is valid ONNX, but ONNX Runtime 1.32's
    graph optimizations (any level above ORT_DISABLE_ALL) then refuse it:
    "Node input 'onnx::Mul_..' is not a graph input, initializer, or output
    of a previous node".

    Args:
        graph (onnx.GraphProto): The graph, changed in place.

    Returns:
        int: How many nodes were removed.
    """
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias, keep = {}, []
    for node in graph.node:
        if (node.op_type == 'Identity' and node.input[0] in inits
                and node.output[0] not in outputs):
            alias[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    for node in keep:
        for sub in [node] + _subgraph_nodes(node):
            for k, name in enumerate(sub.input):
                sub.input[k] = alias.get(name, name)
    del graph.node[:]
    graph.node.extend(keep)
    return len(alias)


def sort_graph(graph) -> int:
    """Topologically sort ``graph.node`` in place, keeping the given order
    where it is valid.

    Args:
        graph (onnx.GraphProto): The graph.

    Returns:
        int: How many nodes were out of order.

    Raises:
        ValueError: A node input that no node, graph input or initializer
            provides (or a cycle).
    """
    known = {i.name for i in graph.input} | {i.name for i in
                                             graph.initializer} | {''}

    def needs(node) -> set:
        # Subgraphs (If, Loop) may read values of the outer graph.
        subs = _subgraph_nodes(node)
        made = {o for sub in subs for o in sub.output}
        return set(node.input).union(*(sub.input for sub in subs)) - made

    pending = [(node, needs(node)) for node in graph.node]
    ordered, moved = [], None
    while pending:
        rest = []
        for node, inputs in pending:
            if inputs <= known:
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append((node, inputs))
        if len(rest) == len(pending):
            missing = sorted(rest[0][1] - known)
            raise ValueError(f'node {rest[0][0].name!r} reads {missing}, '
                             'which nothing in the graph provides')
        moved = len(rest) if moved is None else moved
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
    return moved or 0


def write_onnx(graph: Graph, out: str, shape: Tuple[int, int], opset: int,
               dynamic: bool, metadata: Dict[str, str]) -> Dict[str, str]:
    """Export ``graph`` to ``out``: cleaned (:func:`sort_graph`,
    :func:`drop_initializer_identities`), metadata added, checked; prints
    what was written.

    Args:
        graph (Graph): From :func:`make_graph`, on the execution path to
            export.
        out (str): The ONNX file.
        shape (tuple[int, int]): The export size (H, W).
        opset (int): ONNX opset (:func:`check_opset`).
        dynamic (bool): Dynamic batch, height and width.
        metadata (dict): Recorded in the file, with the opset, inputs,
            outputs and dynamic axes added; must have ``path`` and
            ``weights`` (for the printed summary).

    Returns:
        dict: The metadata written to the file.
    """
    import onnx
    x = torch.randn(1, 3, *shape)
    axes = None
    if dynamic:
        axes = {'image': {0: 'batch', 2: 'height', 3: 'width'}}
        axes.update({
            n: {0: 'batch', 2: f'{n}_height', 3: f'{n}_width'}
            for n in graph.outputs
        })
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.onnx.export(graph.module, (x, ), out, dynamo=False,
                          opset_version=opset, input_names=['image'],
                          output_names=graph.outputs, dynamic_axes=axes,
                          do_constant_folding=True)
    traced = [w for w in caught if 'TracerWarning' in w.category.__name__]
    model = onnx.load(out)
    dropped = drop_initializer_identities(model.graph)
    # The order torch writes was valid in every export measured; sorting
    # is cheap insurance against a runtime refusing the file for it.
    moved = sort_graph(model.graph)
    metadata = dict(metadata, opset=str(opset), inputs=json.dumps(
        {'image': ['batch' if dynamic else 1, 3, *(
            ['height', 'width'] if dynamic else shape)]}),
        export_shape=json.dumps([1, 3, *shape]),
        dynamic_axes=json.dumps(axes or {}),
        outputs=json.dumps(graph.outputs))
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, out)
    print(f'wrote {out}: {graph.description}, opset {opset}, '
          f'{metadata["path"]} path, {metadata["weights"]}')
    print('dynamic axes: ' + ('image batch, height, width (outputs follow)'
                              if dynamic else f'none (static 1x3x{shape[0]}'
                              f'x{shape[1]})'))
    if dropped or moved:
        print(f'cleaned the graph: {dropped} Identity nodes of initializers '
              f'removed, {moved} nodes put after their inputs')
    if traced:
        print(f'{len(traced)} tracer warnings (values recorded as '
              'constants); --verify at a second size checks them')
    return metadata


def open_session(path: str, threads: int = 0):
    """An ONNX Runtime CPU session on an ONNX file.

    Args:
        path (str): The file.
        threads (int): Intra-op threads; 0: ONNX Runtime's default.

    Raises:
        InputError: No such file, or one ONNX Runtime cannot load.
    """
    import onnxruntime as ort
    if not osp.isfile(path):
        raise InputError(f'ONNX file not found: {path!r}')
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path, options,
                                    providers=['CPUExecutionProvider'])
    except Exception as exc:  # ORT raises its own pybind classes
        first = str(exc).strip().splitlines()[0] if str(exc) else ''
        raise InputError(f'cannot load {path!r} in ONNX Runtime (corrupted '
                         f'or not an ONNX model): {first}') from None


def run_session(session, image: np.ndarray) -> List[np.ndarray]:
    """Run ``session`` on ``image`` after checking its shape against the
    exported one (a static export runs at its export size only).

    Args:
        session (onnxruntime.InferenceSession): From :func:`open_session`.
        image (np.ndarray): (N, 3, H, W) float32.

    Returns:
        list[np.ndarray]: The outputs.

    Raises:
        InputError: A shape the file was not exported for, or ONNX Runtime
            failing on it.
    """
    spec = session.get_inputs()[0]
    expected = list(spec.shape)
    fits = len(expected) == image.ndim and all(
        not isinstance(e, int) or e == g
        for e, g in zip(expected, image.shape))
    if not fits:
        raise InputError(
            f'input {spec.name!r} was exported with shape {expected} '
            f'(names are dynamic axes); given {list(image.shape)} (export '
            'with --dynamic to run at other sizes)')
    try:
        return session.run(None, {spec.name: image})
    except Exception as exc:
        raise InputError(f'ONNX Runtime failed on input shape '
                         f'{list(image.shape)}: {str(exc).strip()}') from None


def verify_shapes(shape: Tuple[int, int], dynamic: bool,
                  multiple: int) -> List[Tuple[int, int, int]]:
    """The export size (N, H, W) and, for dynamic exports, a second one of
    another batch, height, width and area (so that CAFormer's token count
    differs, too).

    Args:
        shape (tuple[int, int]): The export size (H, W).
        dynamic (bool): Whether the file is dynamic.
        multiple (int): H and W must be multiples of this.
    """
    h, w = shape
    shapes = [(1, h, w)]
    if dynamic:
        step = max(multiple, STRIDE)
        shapes.append((2, h + 2 * step, w - step if w > step else w + step))
    return shapes


def verify_onnx(graph: Graph, path: str,
                shapes: Sequence[Tuple[int, int, int]]) -> List[tuple]:
    """Compare the file with PyTorch on random inputs; prints a table.

    Args:
        graph (Graph): What was exported.
        path (str): The ONNX file.
        shapes (Sequence[tuple]): (N, H, W) of each input, e.g. from
            :func:`verify_shapes`.

    Returns:
        list[tuple]: (shape, output, output shape, max abs diff, relative
        error) per output and shape.

    Raises:
        InputError: An output of another shape, or beyond :data:`RTOL`
            (naming the first one).
    """
    session = open_session(path)
    rows, worst = [], None
    generator = torch.Generator().manual_seed(1)
    for n, h, w in shapes:
        x = torch.randn(n, 3, h, w, generator=generator)
        with torch.no_grad():
            expected = graph.module(x)
        if isinstance(expected, torch.Tensor):
            expected = (expected, )
        got = run_session(session, x.numpy())
        for name, ref, out in zip(graph.outputs, expected, got):
            ref = ref.numpy()
            if ref.shape != out.shape:
                raise InputError(f'output {name!r} at input {[n, 3, h, w]}: '
                                 f'shape {list(out.shape)}, PyTorch '
                                 f'{list(ref.shape)}')
            diff = float(np.abs(ref - out).max())
            rel = diff / max(float(np.abs(ref).max()), 1e-12)
            rows.append(((n, 3, h, w), name, ref.shape, diff, rel))
            if rel > RTOL and worst is None:
                worst = rows[-1]
    print(f'{"input":<16} {"output":<18} {"shape":<20} {"max abs diff":>12} '
          f'{"rel error":>10}')
    for shape, name, out_shape, diff, rel in rows:
        print(f'{"x".join(map(str, shape)):<16} {name:<18} '
              f'{"x".join(map(str, out_shape)):<20} {diff:12.3e} {rel:10.2e}')
    if worst is not None:
        shape, name, _, _, rel = worst
        raise InputError(
            f'verify failed: output {name!r} at input '
            f'{"x".join(map(str, shape))} differs from PyTorch by {rel:.2e} '
            f'(relative; limit {RTOL:.0e})')
    return rows


def benchmark_onnx(graph: Graph, path: str, shape: Tuple[int, int],
                   repeats: int) -> Dict[str, float]:
    """Median seconds of ONNX Runtime and of PyTorch's default (``auto``)
    and deploy paths, alternating, on one input; prints a table.

    Args:
        graph (Graph): What was exported.
        path (str): The ONNX file.
        shape (tuple[int, int]): The input size (H, W).
        repeats (int): Timed runs of each (after one warm-up run).

    Returns:
        dict: Seconds per runner: 'onnxruntime', 'pytorch auto',
        'pytorch deploy'.

    Raises:
        InputError: ``repeats`` below 1, or the file cannot be run.
    """
    if repeats < 1:
        raise InputError(f'benchmark repeats must be positive, got {repeats}')
    threads = torch.get_num_threads()
    session = open_session(path, threads)
    x = torch.randn(1, 3, *shape)
    runners = {'onnxruntime': lambda: run_session(session, x.numpy())}
    for impl in ('auto', 'deploy'):
        module = copy.deepcopy(graph.module)
        switch_impl(module, impl)
        runners[f'pytorch {impl}'] = (lambda m=module: m(x))
    times = {name: [] for name in runners}
    with torch.inference_mode():
        for run in runners.values():  # warm-up
            run()
        for _ in range(repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    base = medians['pytorch auto']
    print(f'\n{graph.description}, 1x3x{shape[0]}x{shape[1]}, {threads} '
          f'threads, median of {repeats}; speed-up vs pytorch auto')
    print(f'{"runner":<16} {"ms":>9} {"speed-up":>9}')
    for name, sec in medians.items():
        print(f'{name:<16} {sec * 1e3:9.2f} {base / sec:8.2f}x')
    return medians


def _config_name(config: str) -> str:
    """The config as the file records it: this package's configs by their
    path under ``configs/``, others as given."""
    root = osp.dirname(config_dir())
    path = osp.abspath(config)
    if path.startswith(osp.join(osp.abspath(config_dir()), '')):
        return osp.relpath(path, root)
    return config


def export_onnx(config: str,
                checkpoint: Optional[str] = None,
                *,
                out: str,
                part: str = 'model',
                shape: Optional[Sequence[int]] = None,
                opset: int = MIN_OPSET,
                dynamic: bool = False,
                deploy: bool = False,
                verify: bool = False,
                benchmark: int = 0) -> ExportResult:
    """Export a config's model or backbone to ONNX, optionally verify it
    against PyTorch and time it in ONNX Runtime (see the module docstring).

    The options, the config and the checkpoint file are checked before
    the model is built, the checkpoint's fit to the model after.

    Args:
        config (str): Detector or segmentor config.
        checkpoint (str, optional): Weights; random ones when None.
        out (str): The ONNX file to write.
        part (str): 'model' (up to the dense heads) or 'backbone'. Defaults
            to 'model'.
        shape (Sequence[int], optional): Input size (H, W); 512x512, for
            detectors 800x1344, when None.
        opset (int): ONNX opset, :data:`MIN_OPSET`..:data:`MAX_OPSET`.
            Defaults to 17.
        dynamic (bool): Dynamic batch, height and width. Defaults to False.
        deploy (bool): Export the folded inference path. Defaults to False.
        verify (bool): Compare with PyTorch in ONNX Runtime
            (:func:`verify_onnx`). Defaults to False.
        benchmark (int): Time ONNX Runtime and PyTorch, this many
            repetitions (:func:`benchmark_onnx`); 0: no timing.

    Returns:
        ExportResult: The file, the graph, the metadata, and the rows of
        the verification and the times of the benchmark where run.

    Raises:
        InputError: A bad option, config or model that cannot be exported,
            a missing checkpoint, or a verification that failed.
        CheckpointError: A checkpoint that cannot be read or does not fit
            (backbone weights alone for ``part='model'``).
    """
    check_opset(opset)
    if benchmark < 0:
        raise InputError(f'benchmark must be 0 or positive, got {benchmark}')
    cfg = load_config(str(config))
    if checkpoint and not osp.isfile(checkpoint):
        raise InputError(f'checkpoint not found: {checkpoint!r}')
    check_supported(cfg, part)
    shape = tuple(shape or DEFAULT_SHAPE[cfg.default_scope])
    multiple = 1 if part == 'backbone' else STRIDE
    check_shape(shape, multiple,
                'the backbone' if part == 'backbone' else cfg.model.type)
    weights = read_weights(checkpoint) if checkpoint else None
    model = build_model(cfg)
    if weights is not None:
        load_weights(model, weights, allow_backbone_only=part == 'backbone',
                     uses_heads=part != 'backbone')
    graph = make_graph(model, part)
    if deploy:
        switch_model_to_deploy(model)
    else:
        # Never the CPU training kernels (they step aside while exporting
        # anyway, poolformer_mm.models.fast.tracing): said explicitly.
        switch_impl(model, 'reference')
    metadata = dict(
        producer='poolformer_mm.apis.export_onnx',
        config=_config_name(str(config)),
        part=part,
        graph=graph.description,
        path='deploy' if deploy else 'reference',
        weights=str(checkpoint) if checkpoint else 'random (no checkpoint)')
    out = str(out)
    metadata = write_onnx(graph, out, shape, opset, dynamic, metadata)
    rows = times = None
    if verify:
        if not dynamic:
            print('static export: verified at the export size only')
        rows = verify_onnx(graph, out, verify_shapes(shape, dynamic,
                                                     multiple))
        print(f'verify passed: every output within {RTOL:.0e} of PyTorch')
    if benchmark:
        times = benchmark_onnx(graph, out, shape, benchmark)
    return ExportResult(out, graph, metadata, rows, times)


__all__ = [
    'BackboneGraph', 'DenseHeadGraph', 'ExportResult', 'Graph',
    'SegmentorGraph', 'benchmark_onnx', 'check_opset', 'check_shape',
    'check_supported', 'drop_initializer_identities', 'export_onnx',
    'make_graph', 'open_session', 'run_session', 'sort_graph', 'verify_onnx',
    'verify_shapes', 'write_onnx'
]
