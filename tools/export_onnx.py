"""Export a config's backbone, Semantic FPN, or detector (up to its dense
heads) to ONNX, and check the file against PyTorch in ONNX Runtime.

Examples:
    # the backbone alone, any batch and size, checked at two sizes
    python tools/export_onnx.py configs/retinanet_poolformer_s12.py \
        --part backbone --out s12.onnx --shape 512 512 --dynamic --verify
    # a trained Semantic FPN, image -> class logits at the input size
    python tools/export_onnx.py configs/sem_fpn_poolformer_s12.py \
        work_dirs/sem_fpn_poolformer_s12/iter_40000.pth --out fpn.onnx \
        --dynamic --verify
    # the folded inference path, timed against PyTorch
    python tools/export_onnx.py configs/sem_fpn_poolformer_s12.py \
        --out fpn.onnx --deploy --verify --benchmark 20

What is exported (``--part``):

- ``backbone``: ``model.backbone`` (PoolFormer or MetaFormer), image ->
  the stages in ``out_indices``, named ``stage0`` .. ``stage3``.
- ``model`` (default): a Semantic FPN (``EncoderDecoder`` + ``FPNHead``),
  image -> ``seg_logits`` (N, classes, H, W), the head's logits resized
  bilinearly to the input as MMSegmentation's ``predict`` does (no argmax);
  RetinaNet, image -> ``cls_score_<level>`` and ``bbox_pred_<level>``, the
  head's raw outputs (what ``model._forward`` returns); Mask R-CNN and
  Faster R-CNN, image -> ``rpn_cls_score_<level>`` and
  ``rpn_bbox_pred_<level>``, backbone, FPN and RPN head only.

Not in the graph: anchor decoding, NMS, the RoI heads and mask pasting.
mmcv's RoIAlign and NMS are custom operators of no ONNX domain, and
MMDetection's post-processing is Python whose shapes depend on the data
(how many boxes survive); run them on the exported outputs.

Execution path: the reference network (``backbone.switch_impl
('reference')``) by default, ``--deploy`` the folded one
(``switch_to_deploy()``: GroupNorm(1) statistics as ``ReduceMean``, norm
affines and layer scales folded into the convolutions). The reference
network's GroupNorm(1) is written by torch as Reshape ->
InstanceNormalization -> Reshape -> Mul/Add, which ONNX Runtime computes
exactly (1e-6). The TorchScript exporter is used (opset 17 to 20). Before
the file is saved, ``Identity`` nodes that copy an initializer are removed
(torch writes them for shared constants of the deploy path; ONNX Runtime
1.32's graph optimizer refuses such files: "Node input .. is not a graph
input, initializer, or output of a previous node") and the nodes are
sorted topologically.

``--dynamic`` makes batch, height and width dynamic. MMSegmentation's
``Upsample`` (in ``FPNHead``) computes its output size as Python ints,
which a trace records as constants: at another size the file would give
the right shape but wrong values. The exported segmentor upsamples by the
scale factor instead (the same values), and its final resize takes the
input's shape, so it holds at every size that is a multiple of 32.
CAFormer's attention is global over the tokens of the input and reshapes
by the traced token count: dynamic exports hold at other sizes, too
(verified at a different token count), and cost quadratically more there.
``--verify`` runs the file in ONNX Runtime on random inputs at the export
size and, for ``--dynamic``, at a second size (H+64, W-32, batch 2), and
compares every output with PyTorch (max abs diff / max abs <= 1e-4).

Without CHECKPOINT the weights are random (nothing is downloaded: the
configs' ``init_cfg`` is not run). The file's ``metadata_props`` record the
config, part, path, opset, inputs and dynamic axes.
"""
import argparse
import copy
import json
import os.path as osp
import statistics
import sys
import time
import warnings
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from poolformer_mm.apis.runs import build_model, load_config

# Configs under this checkout are recorded by their relative path.
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

MIN_OPSET = 17
MAX_OPSET = getattr(torch.onnx._constants,
                    'ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET', 20)
RTOL = 1e-4
STRIDE = 32
BACKBONES = ('PoolFormer', 'MetaFormer')
# Model type -> the head whose raw outputs end the graph.
MODELS = {
    'EncoderDecoder': 'FPNHead',
    'RetinaNet': 'RetinaHead',
    'MaskRCNN': 'RPNHead',
    'FasterRCNN': 'RPNHead',
}
DEFAULT_SHAPE = {'mmseg': (512, 512), 'mmdet': (800, 1344)}


class InputError(Exception):
    """A command line value or file the tool cannot use: one line, no
    traceback."""


class Graph(NamedTuple):
    """What is exported: a module from image to ``outputs``."""
    module: nn.Module
    outputs: List[str]
    description: str
    multiple: int  # H and W must be multiples of this


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a backbone, Semantic FPN or detector (up to '
        'its dense heads) to ONNX')
    parser.add_argument('config', help='detector or segmentor config')
    parser.add_argument('checkpoint', nargs='?', help='weights (optional: '
                        'random weights without)')
    parser.add_argument('--out', required=True, help='the .onnx file')
    parser.add_argument('--part', choices=('model', 'backbone'),
                        default='model', help='the whole model up to its '
                        'dense heads, or the backbone alone')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size (default 512 512, detectors '
                        '800 1344)')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch, height and width')
    parser.add_argument('--opset', type=int, default=MIN_OPSET,
                        help=f'ONNX opset, {MIN_OPSET}..{MAX_OPSET}')
    parser.add_argument('--deploy', action='store_true',
                        help='export the folded inference path')
    parser.add_argument('--verify', action='store_true',
                        help='compare with PyTorch in ONNX Runtime')
    parser.add_argument('--benchmark', type=int, metavar='N', default=0,
                        help='time ONNX Runtime and PyTorch, N repetitions')
    # CHECKPOINT may also come after the options.
    return parser.parse_intermixed_args(argv)


def load_cfg(path: str):
    """The config, as the other tools read it."""
    if not osp.isfile(path):
        raise InputError(f'config file not found: {path!r}')
    try:
        return load_config(path)
    except ValueError as exc:  # not an mmdet / mmseg config
        raise InputError(str(exc)) from None


def check_supported(cfg, part: str) -> None:
    """Refuse, before building, what the tool cannot export."""
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


def load_weights(model: nn.Module, path: str, part: str) -> None:
    """Load ``path`` strictly into the model (``--part model``) or its
    backbone (``backbone.`` keys, or a backbone-only file)."""
    from poolformer_mm.pretrained import (CheckpointError, read_checkpoint,
                                          unwrap_state_dict)
    try:
        state = unwrap_state_dict(read_checkpoint(path))
    except (FileNotFoundError, CheckpointError) as exc:
        raise InputError(f'checkpoint {path!r}: {exc}') from None
    target = model
    if part == 'backbone':
        target = model.backbone
        if any(k.startswith('backbone.') for k in state):
            state = {
                k[len('backbone.'):]: v
                for k, v in state.items() if k.startswith('backbone.')
            }
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        ours, theirs = set(target.state_dict()), set(state)
        missing, extra = sorted(ours - theirs), sorted(theirs - ours)
        detail = (f'{len(missing)} missing (e.g. {missing[:3]}), '
                  f'{len(extra)} unexpected (e.g. {extra[:3]})'
                  if missing or extra else str(exc).splitlines()[-1].strip())
        raise InputError(
            f'checkpoint {path!r} does not fit {type(target).__name__}: '
            f'{detail}; convert original releases with '
            'tools/convert_weights.py') from None


class BackboneGraph(nn.Module):

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
    """Backbone, neck and decode head, logits resized to the input."""

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
    wrapper's mode afterwards, and a deploy backbone refuses training)."""
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


def check_shape(shape: Sequence[int], multiple: int, what: str) -> None:
    if any(s <= 0 for s in shape):
        raise InputError(f'--shape must be positive, got {list(shape)}')
    if multiple > 1 and any(s % multiple for s in shape):
        raise InputError(
            f'--shape {shape[0]} {shape[1]}: {what} needs H and W that are '
            f'multiples of {multiple} (the FPN adds stride-{multiple} maps '
            'upsampled by 2 to the finer ones, so the sizes must halve '
            'exactly; the data preprocessor pads images so)')


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
    """Topologically sort ``graph.node`` (an onnx GraphProto) in place,
    keeping the given order where it is valid.

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


def export(graph: Graph, out: str, shape: Tuple[int, int], opset: int,
           dynamic: bool, metadata: Dict[str, str]) -> Dict[str, str]:
    """Export ``graph`` to ``out`` (sorted, metadata added, checked).

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
    """An ONNX Runtime CPU session on ``path``, or a clear InputError."""
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
    exported one (a static export runs at its export size only)."""
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


def verify(graph: Graph, path: str,
           shapes: Sequence[Tuple[int, int, int]]) -> List[tuple]:
    """Compare the file with PyTorch on random inputs of ``shapes``
    ((N, H, W) each); raise InputError naming the first output beyond
    :data:`RTOL`.

    Returns:
        list[tuple]: (shape, output, output shape, max abs diff, relative
        error) per output and shape.
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


def verify_shapes(shape: Tuple[int, int], dynamic: bool,
                  multiple: int) -> List[Tuple[int, int, int]]:
    """The export size (N, H, W) and, for dynamic exports, a second one of
    another batch, height, width and area (so that CAFormer's token count
    differs, too)."""
    h, w = shape
    shapes = [(1, h, w)]
    if dynamic:
        step = max(multiple, STRIDE)
        shapes.append((2, h + 2 * step, w - step if w > step else w + step))
    return shapes


def benchmark(graph: Graph, path: str, shape: Tuple[int, int],
              repeats: int) -> Dict[str, float]:
    """Median seconds of ONNX Runtime and of PyTorch's default (``auto``)
    and deploy paths, alternating, on one input."""
    threads = torch.get_num_threads()
    session = open_session(path, threads)
    x = torch.randn(1, 3, *shape)
    runners = {'onnxruntime': lambda: run_session(session, x.numpy())}
    for impl in ('auto', 'deploy'):
        module = copy.deepcopy(graph.module)
        backbone = [m for m in module.modules()
                    if hasattr(m, 'switch_impl')][0]
        backbone.switch_impl(impl)
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


def run(args) -> dict:
    """Do what the command line says.

    Returns:
        dict: ``graph`` (:class:`Graph`), ``metadata`` (written to the
        file), ``rows`` (of :func:`verify`, if run), ``times`` (of
        :func:`benchmark`, if run).
    """
    result = {}
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise InputError(f'--opset {args.opset} is not supported: torch\'s '
                         f'TorchScript exporter writes {MIN_OPSET}..'
                         f'{MAX_OPSET} here (GroupNorm and Resize as tested)')
    cfg = load_cfg(args.config)
    if args.checkpoint and not osp.isfile(args.checkpoint):
        raise InputError(f'checkpoint not found: {args.checkpoint!r}')
    check_supported(cfg, args.part)
    shape = tuple(args.shape or DEFAULT_SHAPE[cfg.default_scope])
    multiple = 1 if args.part == 'backbone' else STRIDE
    what = 'the backbone' if args.part == 'backbone' else cfg.model.type
    check_shape(shape, multiple, what)
    model = build_model(cfg)
    if args.checkpoint:
        load_weights(model, args.checkpoint, args.part)
    graph = make_graph(model, args.part)
    if args.deploy:
        model.backbone.switch_to_deploy()
    else:
        # Never the CPU training kernels (they step aside while exporting
        # anyway, poolformer_mm.models.fast.tracing): said explicitly.
        model.backbone.switch_impl('reference')
    metadata = dict(
        producer='poolformer_mm tools/export_onnx.py',
        config=osp.relpath(args.config, ROOT)
        if osp.abspath(args.config).startswith(ROOT) else args.config,
        part=args.part,
        graph=graph.description,
        path='deploy' if args.deploy else 'reference',
        weights=args.checkpoint or 'random (no checkpoint)')
    result['graph'] = graph
    result['metadata'] = export(graph, args.out, shape, args.opset,
                                args.dynamic, metadata)
    if args.verify:
        shapes = verify_shapes(shape, args.dynamic, multiple)
        if not args.dynamic:
            print('static export: verified at the export size only')
        result['rows'] = verify(graph, args.out, shapes)
        print(f'verify passed: every output within {RTOL:.0e} of PyTorch')
    if args.benchmark:
        result['times'] = benchmark(graph, args.out, shape, args.benchmark)
    return result


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except InputError as exc:
        sys.exit('error: ' + str(exc).replace('\n', ' '))


if __name__ == '__main__':
    main()
