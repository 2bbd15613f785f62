"""Benchmark the PoolFormer backbone against timm, side by side in one run.

For one arch, input size, batch, device, dtype and thread count it measures,
in one process with alternating repetitions (medians):

- eval forward latency and train step time (forward + backward of the sum of
  the output means) of: timm's ``poolformer_*`` through
  ``forward_intermediates`` (default, and channels_last), this project's
  backbone (default; with the CPU fast ops off, ``plain``; after
  ``switch_to_deploy()``; with ``with_cp``), and, as the floor, the
  backbone's 1x1 convolutions alone (and all its convolutions alone) with
  the fastest kernels available (oneDNN with reordered weights on CPU;
  in training their forward and backward GEMMs);
- peak memory: on CUDA the allocator's peak above what was allocated before
  the step; on CPU the peak RSS above the RSS before the step, each variant
  in its own subprocess (``/proc/self/clear_refs`` resets the peak);
- with ``--detector``, end to end: RetinaNet-PoolFormer inference on one
  ``--detector-size`` image next to MMDetection's RetinaNet-R50 (needs
  MMDetection and mmcv's ops).

Ratios are against timm default (``> 1`` is faster / smaller) and against the
floor. A second table gives the ratios to timm default paired by round
(timm's time over the variant's in the same round, median and quartiles over
the rounds): the machine's speed drifts between rounds, and the pairs, taken
a moment apart, cancel most of that. The load average before and after the
run is printed: timings taken on a busy machine are not comparable.

Examples:
    python tools/benchmark.py --arch s12 --size 512 512 --threads 2
    python tools/benchmark.py --arch s12 --device cuda --dtype bf16
    python tools/benchmark.py --arch s12 --threads 2 --detector --no-train
    python tools/benchmark.py --arch s12 --threads 2 --profile deploy
"""
import argparse
import contextlib
import copy
import gc
import itertools
import json
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
BACKBONE_VARIANTS = ('timm', 'timm_cl', 'ours', 'reference', 'compiled',
                     'deploy', 'with_cp', 'floor_1x1', 'floor_convs')
LABELS = {
    'timm': 'timm forward_intermediates',
    'timm_cl': 'timm, channels_last',
    'ours': 'PoolFormer (default)',
    'reference': "PoolFormer, impl='reference'",
    'compiled': "PoolFormer, torch.compile(impl='reference')",
    'deploy': 'PoolFormer, switch_to_deploy()',
    'with_cp': 'PoolFormer, with_cp=True',
    'floor_1x1': 'floor: its 1x1 convs alone',
    'floor_convs': 'floor: all its convs alone',
    'r50': 'RetinaNet-R50 (MMDetection)',
    'det_ours': 'RetinaNet-PoolFormer (default)',
    'det_deploy': 'RetinaNet-PoolFormer, deploy',
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Benchmark PoolFormer against timm (and RetinaNet-R50)')
    parser.add_argument(
        '--arch',
        default='s12',
        help='PoolFormer arch (s12, s24, s36, m36, m48) or a MetaFormer arch '
        '(e.g. poolformerv2_s12, convformer_s18)')
    parser.add_argument(
        '--size', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument(
        '--dtype',
        choices=sorted(DTYPES),
        default='fp32',
        help='fp16 / bf16 run under autocast (mixed precision)')
    parser.add_argument(
        '--threads',
        type=int,
        help='torch intra-op threads (CPU); default: torch\'s default')
    parser.add_argument('--reps', type=int, default=10)
    parser.add_argument(
        '--vary-size',
        type=int,
        default=0,
        metavar='K',
        help='cycle every call through K input sizes (the given size plus '
        'multiples of 32, as padded detection batches vary), e.g. to see '
        'torch.compile recompile')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument(
        '--variants',
        nargs='+',
        choices=BACKBONE_VARIANTS,
        help='backbone variants to run (default: all that apply)')
    parser.add_argument('--no-eval', action='store_true')
    parser.add_argument('--no-train', action='store_true')
    parser.add_argument('--no-memory', action='store_true')
    parser.add_argument(
        '--detector',
        action='store_true',
        help='also RetinaNet-PoolFormer vs RetinaNet-R50 inference')
    parser.add_argument(
        '--detector-only',
        action='store_true',
        help='only the detector comparison')
    parser.add_argument(
        '--detector-size',
        type=int,
        nargs=2,
        default=[800, 1333],
        metavar=('H', 'W'))
    parser.add_argument(
        '--profile',
        choices=BACKBONE_VARIANTS,
        help='print the torch profiler table of this variant\'s eval '
        'forward (train step for with_cp, or with --profile-phase train)')
    parser.add_argument(
        '--profile-phase',
        choices=('eval', 'train'),
        help='which run --profile profiles; default: eval where the '
        'variant has one')
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--_child', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------
def setup_threads(threads: Optional[int]) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def load_average() -> str:
    try:
        return ' '.join(f'{v:.2f}' for v in os.getloadavg())
    except OSError:
        return 'n/a'


def machine_info(args) -> Dict[str, str]:
    info = dict(
        cpu=f'{cpu_model()} ({os.cpu_count()} logical CPUs)',
        torch=torch.__version__,
        python=platform.python_version(),
        threads=str(torch.get_num_threads()),
        onednn=str(torch.backends.mkldnn.is_available()),
    )
    try:
        import timm
        info['timm'] = timm.__version__
    except ImportError:
        info['timm'] = 'not installed'
    if args.device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(args.device)
    return info


def sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize(device)


def autocast(device: str, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.split(':')[0], dtype=dtype)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
def resolve_arch(arch: str) -> Tuple[Callable[..., nn.Module], str]:
    """Our backbone class for ``arch`` and timm's model name."""
    from poolformer_mm import PoolFormer
    if is_poolformer_v1(arch):
        return (lambda **kw: PoolFormer(arch, **kw)), f'poolformer_{arch}'
    try:
        from poolformer_mm import MetaFormer
    except ImportError:
        MetaFormer = None
    if MetaFormer is not None and arch.lower() in MetaFormer.arch_settings:
        return (lambda **kw: MetaFormer(arch, **kw)), arch.lower()
    raise SystemExit(f'Unknown arch {arch!r}')


def is_poolformer_v1(arch: str) -> bool:
    from poolformer_mm import PoolFormer
    return arch.lower() in PoolFormer.arch_settings


def label(name: str, arch: str) -> str:
    """The row label of variant ``name``: the labels say PoolFormer, other
    MetaFormer archs go by their own name."""
    text = LABELS[name]
    if is_poolformer_v1(arch):
        return text
    return text.replace('PoolFormer', f'MetaFormer {arch.lower()}')


def timm_model(name: str) -> Optional[nn.Module]:
    try:
        import timm
    except ImportError:
        return None
    if name not in timm.list_models():
        return None
    return timm.create_model(name, pretrained=False)


def outputs_of(model: nn.Module, x: torch.Tensor, timm_api: bool):
    if timm_api:
        return model.forward_intermediates(x, intermediates_only=True)
    return model(x)


class Bench:
    """Builds each variant's eval and train callables."""

    def __init__(self, args) -> None:
        self.args = args
        self.device = args.device
        self.dtype = DTYPES[args.dtype]
        torch.manual_seed(0)
        self.x = torch.randn(args.batch, 3, *args.size, device=self.device)
        self.x_cl = self.x.contiguous(memory_format=torch.channels_last)
        self.build_ours, self.timm_name = resolve_arch(args.arch)
        self.deploy_model: Optional[nn.Module] = None

    def ours(self, **kwargs) -> nn.Module:
        torch.manual_seed(0)
        return self.build_ours(**kwargs).to(self.device)

    def _inputs(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """``x`` at every call, or with ``--vary-size K`` the next of K
        inputs of other sizes (multiples of 32 added), in ``x``'s layout."""
        k = self.args.vary_size
        if k <= 1:
            return itertools.repeat(x)
        n, c, h, w = x.shape
        layout = (torch.channels_last
                  if x.is_contiguous(memory_format=torch.channels_last)
                  and not x.is_contiguous() else torch.contiguous_format)
        sizes = [(h + 32 * (i % 4), w + 32 * (3 * i % 5)) for i in range(k)]
        return itertools.cycle([
            torch.randn(n, c, *size, device=x.device).contiguous(
                memory_format=layout) for size in sizes
        ])

    def _eval_fn(self, model, x, timm_api=False):
        model.eval()
        device, dtype = self.device, self.dtype
        inputs = self._inputs(x)

        def run():
            with torch.inference_mode(), autocast(device, dtype):
                return outputs_of(model, next(inputs), timm_api)

        return run

    def _train_fn(self, model, x, timm_api=False):
        model.train()
        device, dtype = self.device, self.dtype
        params = [p for p in model.parameters() if p.requires_grad]
        inputs = self._inputs(x)

        def run():
            for p in params:
                p.grad = None
            with autocast(device, dtype):
                outs = outputs_of(model, next(inputs), timm_api)
                loss = sum(o.float().mean() for o in outs)
            loss.backward()
            return loss

        return run

    @staticmethod
    def applies(name: str, phase: str) -> bool:
        """Whether variant ``name`` has a ``phase`` run."""
        if name == 'deploy':
            return phase == 'eval'
        if name == 'with_cp':
            return phase == 'train'
        return True

    def make(self, name: str, phase: str) -> Optional[Callable]:
        """The callable of variant ``name`` for ``phase`` ('eval' or
        'train'), None where it does not apply."""
        if name in ('timm', 'timm_cl'):
            model = timm_model(self.timm_name)
            if model is None:
                return None
            model = model.to(self.device)
            x = self.x
            if name == 'timm_cl':
                model = model.to(memory_format=torch.channels_last)
                x = self.x_cl
            fn = self._eval_fn if phase == 'eval' else self._train_fn
            return fn(model, x, timm_api=True)
        if name in ('ours', 'reference', 'compiled'):
            model = self.ours(impl='auto' if name == 'ours' else 'reference')
            if name == 'compiled':
                # The first calls compile; the warm-up runs take them.
                model = torch.compile(model)
            fn = self._eval_fn if phase == 'eval' else self._train_fn
            return fn(model, self.x)
        if name == 'deploy':
            model = self.ours()
            if phase != 'eval' or not hasattr(model, 'switch_to_deploy'):
                return None
            self.deploy_model = model.switch_to_deploy()
            return self._eval_fn(model, self.x)
        if name == 'with_cp':
            if phase != 'train':
                return None
            return self._train_fn(self.ours(with_cp=True), self.x)
        if name in ('floor_1x1', 'floor_convs'):
            only_1x1 = name == 'floor_1x1'
            return (self.floor(only_1x1) if phase == 'eval' else
                    self.train_floor(only_1x1))
        raise ValueError(name)

    def conv_inputs(self) -> List[Tuple[nn.Conv2d, torch.Size]]:
        """Every convolution of our backbone with its input shape."""
        model = self.ours(impl='reference').eval()
        found = []
        hooks = [
            m.register_forward_pre_hook(
                lambda m, inp: found.append((m, inp[0].shape)))
            for m in model.modules() if type(m) is nn.Conv2d
        ]
        with torch.inference_mode():
            model(self.x)
        for h in hooks:
            h.remove()
        return found

    def floor(self, only_1x1: bool) -> Callable:
        """The backbone's convolutions alone, one after another, each on
        its own preallocated channels_last input, with the fastest kernel
        at hand: oneDNN with weights reordered for the shape on CPU
        (float32), cuDNN elsewhere."""
        from poolformer_mm.models.fast import cpu, folded
        convs = [(m, shape) for m, shape in self.conv_inputs()
                 if not only_1x1 or (m.kernel_size == (1, 1)
                                     and m.stride == (1, 1) and m.groups == 1)]
        jobs = []
        for conv, shape in convs:
            x = torch.randn(
                shape, device=self.device).contiguous(
                    memory_format=torch.channels_last)
            args = (list(conv.padding), list(conv.stride),
                    list(conv.dilation), conv.groups)
            weight, bias = conv.weight.detach(), conv.bias
            bias = bias.detach() if bias is not None else None
            if cpu.use_onednn(x):
                weight = folded._pack_conv(weight, *args, shape)
                jobs.append((True, x, weight, bias, args))
            else:
                jobs.append((False, x.to(self.dtype),
                             weight.to(self.dtype).contiguous(
                                 memory_format=torch.channels_last),
                             bias if bias is None else bias.to(self.dtype),
                             args))

        def run():
            with torch.inference_mode():
                for onednn, x, w, b, args in jobs:
                    if onednn:
                        torch.ops.mkldnn._convolution_pointwise(
                            x, w, b, *args, 'none', [], None)
                    else:
                        F.conv2d(x, w, b, args[1], args[0], args[2], args[3])

        return run

    def train_floor(self, only_1x1: bool) -> Callable:
        """Forward and backward of the backbone's convolutions alone, one
        after another, on preallocated inputs and output gradients: 1x1
        convolutions as the three GEMMs per image they are (``y = W x``,
        ``dx = W^T dy``, ``dW = dy x^T``: MKL on CPU), the others as
        convolution and ``convolution_backward``. The stem gets no input
        gradient (the image needs none). No bias, norm, activation or
        pooling."""
        jobs = []
        for index, (conv, shape) in enumerate(self.conv_inputs()):
            pointwise = (conv.kernel_size == (1, 1) and conv.stride == (1, 1)
                         and conv.groups == 1)
            if only_1x1 and not pointwise:
                continue
            weight = conv.weight.detach().to(self.dtype)
            x = torch.randn(shape, device=self.device, dtype=self.dtype)
            with torch.no_grad():
                grad = torch.randn_like(
                    F.conv2d(x, weight, None, conv.stride, conv.padding,
                             conv.dilation, conv.groups))
            jobs.append((pointwise, index > 0, x, weight, grad, conv))

        def run():
            with torch.no_grad():
                for pointwise, input_grad, x, w, grad, conv in jobs:
                    if pointwise:
                        n, c = x.shape[:2]
                        w2 = w.view(w.shape[0], c)
                        rows = x.view(n, c, -1)
                        grads = grad.view(n, w.shape[0], -1)
                        for i in range(n):
                            torch.mm(w2, rows[i])
                            torch.mm(w2.t(), grads[i])
                            torch.mm(grads[i], rows[i].t())
                    else:
                        F.conv2d(x, w, None, conv.stride, conv.padding,
                                 conv.dilation, conv.groups)
                        torch.ops.aten.convolution_backward(
                            grad, x, w, None, list(conv.stride),
                            list(conv.padding), list(conv.dilation), False,
                            [0, 0], conv.groups, [input_grad, True, False])

        return run


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
def time_alternating(fns: Dict[str, Callable], reps: int, warmup: int,
                     device: str) -> Dict[str, dict]:
    """Run every callable ``warmup`` times, then ``reps`` rounds in which
    each runs once (the order rotating from round to round). Returns the
    median and minimum wall time, the median process CPU time and the wall
    time of every round (``wall_ms``, in round order), in ms."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    sync(device)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name]()
            sync(device)
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    return {
        n: dict(
            median_ms=statistics.median(wall[n]),
            min_ms=min(wall[n]),
            cpu_ms=statistics.median(cpu[n]),
            wall_ms=wall[n])
        for n in names
    }


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------
def _status_kb(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def measure_memory(fn: Callable, device: str) -> Optional[float]:
    """Peak memory of one call of ``fn`` above what was in use before it,
    in MiB, after two warm-up calls (so that gradients, caches and the
    deploy path's folded and reordered weights already exist and are not
    counted). On CPU: the peak resident set above the resident set before
    the call, with the freed heap given back to the OS first."""
    fn()
    fn()
    gc.collect()
    if device.startswith('cuda'):
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    # Give the freed heap back to the OS, so that the call's working set
    # shows up as fresh resident pages.
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass
    if not _reset_peak_rss():
        return None
    base = _status_kb('VmRSS')
    fn()
    peak = _status_kb('VmHWM')
    if base is None or peak is None:
        return None
    return (peak - base) / 1024


def memory_in_child(args, name: str, phase: str) -> Optional[float]:
    """Run :func:`measure_memory` for one variant in a fresh interpreter."""
    cmd = [sys.executable, osp.abspath(__file__), '--_child',
           f'{name}:{phase}', '--arch', args.arch, '--size',
           *map(str, args.size), '--batch', str(args.batch), '--device',
           args.device, '--dtype', args.dtype]
    if args.threads is not None:
        cmd += ['--threads', str(args.threads)]
    env = dict(os.environ)
    if args.threads is not None:
        env['OMP_NUM_THREADS'] = str(args.threads)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith('MEMORY '):
            value = line.split()[1]
            return None if value == 'None' else float(value)
    sys.stderr.write(f'memory of {name} ({phase}) failed:\n'
                     f'{out.stderr[-2000:]}\n')
    return None


def child_main(args) -> None:
    name, phase = args._child.split(':')
    fn = Bench(args).make(name, phase)
    print('MEMORY', None if fn is None else measure_memory(fn, args.device))


# ---------------------------------------------------------------------------
# Detector end to end
# ---------------------------------------------------------------------------
def detector_fns(args) -> Dict[str, Callable]:
    """RetinaNet-R50 and RetinaNet-PoolFormer (default and deploy) inference
    on one random ``--detector-size`` image, through ``test_step`` (data
    preprocessor, backbone, neck, head, NMS)."""
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.hub import get_config
    from mmengine.registry import MODELS

    import poolformer_mm  # noqa: F401  (registers the backbones)
    register_all_modules(init_default_scope=True)
    # configs/retinanet_poolformer_s12.py, configs/retinanet_convformer_s18.py
    arch = args.arch.lower()
    ours_cfg = osp.join(
        ROOT, 'configs', f'retinanet_poolformer_{arch}.py'
        if is_poolformer_v1(arch) else f'retinanet_{arch}.py')
    if not osp.isfile(ours_cfg):
        raise SystemExit(f'--detector: no config {ours_cfg}')
    models = {}
    for name in ('r50', 'det_ours', 'det_deploy'):
        if name == 'r50':
            # MMDetection's own RetinaNet-R50, the base of ours.
            cfg = get_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
        else:
            cfg = Config.fromfile(ours_cfg)
        cfg.model.backbone.init_cfg = None
        torch.manual_seed(0)
        model = MODELS.build(cfg.model).to(args.device).eval()
        if name == 'det_deploy':
            if not hasattr(model.backbone, 'switch_to_deploy'):
                continue
            model.backbone.switch_to_deploy()
        models[name] = model
    h, w = args.detector_size
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)

    def make(model):
        def run():
            sample = DetDataSample(
                metainfo=dict(
                    img_shape=(h, w), ori_shape=(h, w),
                    scale_factor=(1., 1.)))
            with torch.inference_mode():
                return model.test_step(
                    dict(inputs=[image], data_samples=[sample]))

        return run

    return {name: make(model) for name, model in models.items()}


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def fmt(value: Optional[float], spec: str = '.1f') -> str:
    return '-' if value is None else format(value, spec)


def ratio(base: Optional[float], value: Optional[float]) -> str:
    if base is None or value is None or value == 0:
        return '-'
    return f'{base / value:.2f}x'


def paired_ratio(base: Optional[dict], timing: Optional[dict]) -> str:
    """Median and quartiles over the rounds of ``base``'s wall time over
    ``timing``'s in the same round (both from one
    :func:`time_alternating`)."""
    if not base or not timing:
        return '-'
    ratios = [b / t for b, t in zip(base['wall_ms'], timing['wall_ms'])
              if t > 0]
    if not ratios:
        return '-'
    text = f'{statistics.median(ratios):.2f}x'
    if len(ratios) >= 4:
        low, _, high = statistics.quantiles(ratios, n=4)
        text += f' [{low:.2f}-{high:.2f}]'
    return text


def report(args, info, results, memory, det, deploy_cache=None) -> str:
    lines = []
    h, w = args.size
    lines.append(
        f'# {args.arch} backbone, input {args.batch}x3x{h}x{w}, '
        f'{args.device} {args.dtype}, {info["threads"]} threads, '
        f'{args.reps} reps (median wall ms; cpu = process CPU time)')
    lines.append('# ' + ', '.join(f'{k}: {v}' for k, v in info.items()
                                  if k != 'load_before'))
    lines.append(f'# load average (1, 5, 15 min) before: '
                 f'{info["load_before"]}; after: {load_average()}')
    ev, tr = results.get('eval', {}), results.get('train', {})
    base_e = ev.get('timm', {}).get('median_ms')
    base_t = tr.get('train_timm', {}).get('median_ms')
    floor = ev.get('floor_1x1', {}).get('median_ms')
    train_floor = tr.get('train_floor_1x1', {}).get('median_ms')
    header = ('| variant | eval ms | eval cpu ms | vs timm | / floor | '
              'train ms | train cpu ms | vs timm | / floor | eval peak MiB | '
              'train peak MiB |')
    lines += [header, '|' + ' --- |' * 11]
    paired = []
    for name in BACKBONE_VARIANTS:
        e = ev.get(name, {}).get('median_ms')
        c = ev.get(name, {}).get('cpu_ms')
        t = tr.get('train_' + name, {}).get('median_ms')
        tc = tr.get('train_' + name, {}).get('cpu_ms')
        me, mt = memory.get((name, 'eval')), memory.get((name, 'train'))
        if all(v is None for v in (e, t, me, mt)):
            continue
        lines.append(
            f'| {label(name, args.arch)} | {fmt(e)} | {fmt(c)} | '
            f'{ratio(base_e, e)} | '
            f'{fmt(e / floor, ".2f") if e is not None and floor else "-"} | '
            f'{fmt(t)} | {fmt(tc)} | {ratio(base_t, t)} | '
            f'{fmt(t / train_floor, ".2f") if t and train_floor else "-"} | '
            f'{fmt(me)} | {fmt(mt)} |')
        if name != 'timm' and (e is not None or t is not None):
            paired_train = paired_ratio(tr.get('train_timm'),
                                        tr.get('train_' + name))
            paired.append(f'| {label(name, args.arch)} | '
                          f'{paired_ratio(ev.get("timm"), ev.get(name))} | '
                          f'{paired_train} |')
    if floor is not None or train_floor is not None:
        lines.append('(vs timm: timm default time / variant time, > 1 is '
                     'faster; / floor: variant time / time of the 1x1 '
                     'convolutions alone, forward for eval, forward and '
                     'backward for train)')
    if deploy_cache is not None:
        lines.append('deploy caches (folded weights, and weights reordered '
                     f'for this shape): {deploy_cache / 2**20:.1f} MiB')
    if memory.get(('ours', 'train')) and memory.get(('with_cp', 'train')):
        share = memory[('with_cp', 'train')] / memory[('ours', 'train')]
        lines.append(f'with_cp / default train peak memory: {share:.2f}')
    if paired and ('timm' in ev or 'train_timm' in tr):
        lines += [
            '', '# paired by round: timm default time / variant time in '
            'the same round, median [quartiles] over the rounds',
            '| variant | eval vs timm, paired | train vs timm, paired |',
            '| --- | --- | --- |'
        ] + paired
    if det:
        dh, dw = args.detector_size
        base = det.get('r50', {}).get('median_ms')
        lines.append('')
        lines.append(f'# detector inference, one {dh}x{dw} image '
                     '(test_step: preprocessing, backbone, neck, head, NMS)')
        lines += ['| model | ms | cpu ms | vs R50 | vs R50, paired |',
                  '| --- | --- | --- | --- | --- |']
        for name in ('r50', 'det_ours', 'det_deploy'):
            if name in det:
                d = det[name]
                lines.append(f'| {label(name, args.arch)} | '
                             f'{fmt(d["median_ms"])} | '
                             f'{fmt(d["cpu_ms"])} | '
                             f'{ratio(base, d["median_ms"])} | '
                             f'{paired_ratio(det.get("r50"), d)} |')
    return '\n'.join(lines)


def deploy_cache_bytes(model: nn.Module) -> int:
    """Memory of the deploy path's folded and reordered weights (the
    ``_fast_*`` attributes of its modules)."""
    seen, total = set(), 0

    def count(obj) -> None:
        nonlocal total
        if isinstance(obj, torch.Tensor):
            if obj.is_mkldnn:
                total += obj.numel() * obj.element_size()
            elif obj.data_ptr() not in seen:
                seen.add(obj.data_ptr())
                total += obj.untyped_storage().nbytes()
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                count(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                count(item)
        elif hasattr(obj, '__dict__') and not isinstance(obj, nn.Module):
            count(vars(obj))

    params = {p.data_ptr() for p in model.parameters()}
    seen.update(params)
    for module in model.modules():
        count({k: v for k, v in vars(module).items()
               if k.startswith('_fast_')})
    return total


def check_deploy(bench: Bench) -> Optional[float]:
    """Largest relative difference (max abs diff over max abs value) of the
    deploy outputs from the default eval outputs."""
    model = bench.ours().eval()
    if not hasattr(model, 'switch_to_deploy'):
        return None
    deployed = copy.deepcopy(model).switch_to_deploy()
    with torch.inference_mode(), autocast(bench.device, bench.dtype):
        ref = model(bench.x)
        out = deployed(bench.x)
    return max(((r.float() - o.float()).abs().max() /
                r.float().abs().max()).item() for r, o in zip(ref, out))


def profile(bench: Bench, name: str, phase: Optional[str] = None) -> None:
    if phase is None:
        phase = 'eval' if bench.applies(name, 'eval') else 'train'
    fn = bench.make(name, phase) if bench.applies(name, phase) else None
    if fn is None:
        raise SystemExit(f'--profile: {name} has no {phase} run')
    for _ in range(2):
        fn()
    with torch.profiler.profile() as prof:
        for _ in range(3):
            fn()
        sync(bench.device)
    sort = ('self_cuda_time_total'
            if bench.device.startswith('cuda') else 'self_cpu_time_total')
    print(f'# profile of {label(name, bench.args.arch)} ({phase}, 3 calls)')
    print(prof.key_averages().table(sort_by=sort, row_limit=20))


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_threads(args.threads)
    if args._child:
        child_main(args)
        return {}
    load_before = load_average()
    info = machine_info(args)
    info['load_before'] = load_before
    bench = Bench(args)
    if args.profile:
        profile(bench, args.profile, args.profile_phase)
        return {}
    results: Dict[str, dict] = {}
    memory: Dict[Tuple[str, str], Optional[float]] = {}
    det: Dict[str, dict] = {}
    # torch.compile takes minutes: only on request.
    names = args.variants or [
        v for v in BACKBONE_VARIANTS if v != 'compiled'
    ]
    if not args.detector_only:
        err = check_deploy(bench)
        if err is not None:
            print('deploy vs default outputs: max relative difference '
                  f'{err:.2e}')
        for phase, skip in (('eval', args.no_eval), ('train', args.no_train)):
            if skip:
                continue
            fns = {}
            for name in names:
                fn = bench.make(name, phase) if bench.applies(
                    name, phase) else None
                if fn is not None:
                    fns[name if phase == 'eval' else 'train_' + name] = fn
            print(f'timing {phase}: {", ".join(fns)}', flush=True)
            results[phase] = time_alternating(fns, args.reps, args.warmup,
                                              args.device)
            del fns
            gc.collect()
        if not args.no_memory:
            for phase, skip in (('eval', args.no_eval), ('train',
                                                         args.no_train)):
                if skip:
                    continue
                for name in names:
                    if name.startswith('floor') or not bench.applies(
                            name, phase):
                        continue
                    gc.collect()
                    if args.device.startswith('cuda'):
                        # The allocator's statistics are per process.
                        fn = bench.make(name, phase)
                        memory[(name, phase)] = (
                            None if fn is None else measure_memory(
                                fn, args.device))
                        del fn
                    else:
                        memory[(name, phase)] = memory_in_child(
                            args, name, phase)
    if args.detector or args.detector_only:
        print('timing detectors', flush=True)
        det = time_alternating(detector_fns(args), args.reps, args.warmup,
                               args.device)
    deploy_cache = None
    if bench.deploy_model is not None:
        deploy_cache = deploy_cache_bytes(bench.deploy_model)
    text = report(args, info, results, memory, det, deploy_cache)
    print(text)
    out = dict(
        args=vars(args),
        info=info,
        results=results,
        memory={f'{k[0]}:{k[1]}': v
                for k, v in memory.items()},
        detector=det,
        table=text)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == '__main__':
    main()
