"""Benchmark the PoolFormer backbone against timm, side by side in one run:
what ``tools/benchmark.py`` measures.

- :func:`benchmark`: every variant's timings and peak memory, and the
  table of them (:func:`format_benchmark`);
- :func:`profile`: the torch profiler table of one variant;
- :class:`BenchmarkSettings`: the arch, input, device, dtype, threads and
  repetitions of a run, checked.

For one arch, input size, batch, device, dtype and thread count it measures,
in one process with alternating repetitions (medians):

- eval forward latency and train step time (forward + backward of the sum of
  the output means) of: timm's ``poolformer_*`` through
  ``forward_intermediates`` (default, and channels_last), this project's
  backbone (default ``impl='auto'``; ``impl='reference'``;
  ``impl='triton'``, the fused Triton kernels, where they run; on request
  ``impl='compile'``, its regions under ``torch.compile``, and
  ``torch.compile`` of the whole reference backbone; after
  ``switch_to_deploy()``; with ``with_cp``), and, as the floor, the
  backbone's 1x1 convolutions alone (and all its convolutions alone) with
  the fastest kernels available (oneDNN with reordered weights on CPU;
  in training their forward and backward GEMMs);
- peak memory: on CUDA the allocator's peak above what was allocated before
  the step; on CPU the peak RSS above the RSS before the step, each variant
  in its own fresh interpreter (:func:`memory_in_child`;
  ``/proc/self/clear_refs`` resets the peak);
- with ``detector=True``, end to end: RetinaNet-PoolFormer inference on one
  ``detector_size`` image next to MMDetection's RetinaNet-R50 (needs
  MMDetection and mmcv's ops).

Ratios are against timm default (``> 1`` is faster / smaller) and against the
floor. A second table gives the ratios to timm default paired by round
(timm's time over the variant's in the same round, median and quartiles over
the rounds): the machine's speed drifts between rounds, and the pairs, taken
a moment apart, cancel most of that. The load average before and after the
run is printed: timings taken on a busy machine are not comparable.
"""
import contextlib
import copy
import gc
import glob
import itertools
import json
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import (Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config_package import config_dir
from ..errors import InputError
from ..models.execution import switch_model_to_deploy
from .common import resolve_arch
from .runs import build_model, load_config

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
PHASES = ('eval', 'train')
MIN_SIZE = 32
BACKBONE_VARIANTS = ('timm', 'timm_cl', 'ours', 'reference', 'triton',
                     'compile', 'compiled', 'deploy', 'with_cp', 'floor_1x1',
                     'floor_convs')
# Variants that compile for minutes: only when asked for.
ON_REQUEST = ('compile', 'compiled')
# The backbone variants and the impl each builds with.
IMPL_OF = {'ours': 'auto', 'reference': 'reference', 'triton': 'triton',
           'compile': 'compile', 'compiled': 'reference'}
LABELS = {
    'timm': 'timm forward_intermediates',
    'timm_cl': 'timm, channels_last',
    'ours': 'PoolFormer (default)',
    'reference': "PoolFormer, impl='reference'",
    'triton': "PoolFormer, impl='triton'",
    'compile': "PoolFormer, impl='compile'",
    'compiled': "PoolFormer, torch.compile(impl='reference')",
    'deploy': 'PoolFormer, switch_to_deploy()',
    'with_cp': 'PoolFormer, with_cp=True',
    'floor_1x1': 'floor: its 1x1 convs alone',
    'floor_convs': 'floor: all its convs alone',
    'r50': 'RetinaNet-R50 (MMDetection)',
    'det_ours': 'RetinaNet-PoolFormer (default)',
    'det_deploy': 'RetinaNet-PoolFormer, deploy',
}


@dataclass
class BenchmarkSettings:
    """What one benchmark run measures on; checked on construction.

    Args:
        arch (str): A PoolFormer or MetaFormer arch
            (:func:`~poolformer_mm.apis.common.resolve_arch`). Defaults to
            's12'.
        size (Sequence[int]): Input (H, W), each >= 32. Defaults to
            (512, 512).
        batch (int): Images per call. Defaults to 1.
        device (str): 'cpu' or 'cuda[:N]'. Defaults to 'cpu'.
        dtype (str): 'fp32', or 'fp16' / 'bf16' under autocast (mixed
            precision). Defaults to 'fp32'.
        threads (int, optional): torch's intra-op threads (CPU); set for the
            whole process by :func:`benchmark` and :func:`profile`. Defaults
            to torch's default.
        reps (int): Timed rounds. Defaults to 10.
        warmup (int): Untimed calls of each variant first. Defaults to 2.
        vary_size (int): Cycle every call through this many input sizes
            (the given size plus multiples of 32, as padded detection
            batches vary), e.g. to see torch.compile recompile; 0 or 1: one
            size. Defaults to 0.
        detector_size (Sequence[int]): The detector's image (H, W).
            Defaults to (800, 1333).

    Raises:
        InputError: A value out of range, an unknown arch or dtype, or CUDA
            asked for where there is none.
    """
    arch: str = 's12'
    size: Sequence[int] = (512, 512)
    batch: int = 1
    device: str = 'cpu'
    dtype: str = 'fp32'
    threads: Optional[int] = None
    reps: int = 10
    warmup: int = 2
    vary_size: int = 0
    detector_size: Sequence[int] = (800, 1333)

    def __post_init__(self) -> None:
        resolve_arch(self.arch)
        self.size = self._shape('size', self.size)
        self.detector_size = self._shape('detector_size', self.detector_size)
        if self.dtype not in DTYPES:
            raise InputError(f'unknown dtype {self.dtype!r}: choose one of '
                             f'{sorted(DTYPES)}')
        for name, low in (('batch', 1), ('reps', 1), ('warmup', 0),
                          ('vary_size', 0), ('threads', 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise InputError(f'{name} must be >= {low}, got {value}')
        if not (self.device == 'cpu' or self.device.startswith('cuda')):
            raise InputError(
                f"unknown device {self.device!r}: 'cpu' or 'cuda[:N]'")
        if self.device.startswith('cuda') and not torch.cuda.is_available():
            raise InputError(
                f'device {self.device!r}: no CUDA device here; use cpu')

    @staticmethod
    def _shape(name: str, value: Sequence[int]) -> Tuple[int, int]:
        value = tuple(value)
        if len(value) != 2 or min(value) < MIN_SIZE:
            raise InputError(f'{name} must be (H, W), each >= {MIN_SIZE} '
                             f'(the backbone\'s output stride), got {value}')
        return value


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------
def _setup_threads(threads: Optional[int]) -> None:
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


def machine_info(settings: BenchmarkSettings) -> Dict[str, str]:
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
    if settings.device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(settings.device)
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
def label(name: str, arch: str) -> str:
    """The row label of variant ``name``: the labels say PoolFormer, other
    MetaFormer archs go by their own name."""
    text = LABELS[name]
    resolved = resolve_arch(arch)
    if resolved.is_poolformer_v1:
        return text
    return text.replace('PoolFormer', f'MetaFormer {resolved.name}')


def timm_model(name: str) -> Optional[nn.Module]:
    try:
        import timm
    except ImportError:
        return None
    if name not in timm.list_models():
        return None
    return timm.create_model(name, pretrained=False)


def triton_unavailable(device: str) -> Optional[str]:
    """Why ``impl='triton'`` would not run its kernels on ``device`` (its
    modules would run the reference computation instead), None where it
    does: triton importable, and CUDA, or the CPU when the kernels are
    interpreted (``TRITON_INTERPRET=1`` before they were first imported)."""
    from ..models.fast.triton_modules import require_triton
    try:
        require_triton()
    except ImportError as err:
        return str(err)
    from ..models.fast import triton_kernels
    if not triton_kernels.serves(torch.device(device)):
        where = ('CPU tensors only (TRITON_INTERPRET=1)'
                 if triton_kernels.INTERPRETED else 'CUDA tensors only')
        return (f'the Triton kernels here run on {where}, not on {device}; '
                'on the CPU set TRITON_INTERPRET=1 before poolformer_mm '
                'runs them (slow: for tests)')
    return None


def default_variants(device: str) -> List[str]:
    """What :func:`benchmark` runs without ``variants``: all but those that
    compile (:data:`ON_REQUEST`), and ``triton`` on CUDA only (on the CPU
    its kernels run in Triton's interpreter, if at all)."""
    return [
        v for v in BACKBONE_VARIANTS if v not in ON_REQUEST and (
            v != 'triton' or device.startswith('cuda'))
    ]


def outputs_of(model: nn.Module, x: torch.Tensor, timm_api: bool):
    if timm_api:
        return model.forward_intermediates(x, intermediates_only=True)
    return model(x)


class Bench:
    """Builds each variant's eval and train callables."""

    def __init__(self, settings: BenchmarkSettings) -> None:
        self.settings = settings
        self.device = settings.device
        self.dtype = DTYPES[settings.dtype]
        torch.manual_seed(0)
        self.x = torch.randn(
            settings.batch, 3, *settings.size, device=self.device)
        self.x_cl = self.x.contiguous(memory_format=torch.channels_last)
        self.arch = resolve_arch(settings.arch)
        self.timm_name = self.arch.timm_name
        self.deploy_model: Optional[nn.Module] = None

    def ours(self, **kwargs) -> nn.Module:
        torch.manual_seed(0)
        return self.arch.build(**kwargs).to(self.device)

    def _inputs(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """``x`` at every call, or with ``--vary-size K`` the next of K
        inputs of other sizes (multiples of 32 added), in ``x``'s layout."""
        k = self.settings.vary_size
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
        if name in IMPL_OF:
            if name == 'triton' and triton_unavailable(self.device):
                return None
            # impl='compile' compiles at its first calls: the warm-up runs.
            model = self.ours(impl=IMPL_OF[name])
            if name == 'compiled':
                # The first calls compile; the warm-up runs take them.
                model = torch.compile(model)
            fn = self._eval_fn if phase == 'eval' else self._train_fn
            return fn(model, self.x)
        if name == 'deploy':
            if phase != 'eval':
                return None
            model = self.ours()
            switch_model_to_deploy(model)
            self.deploy_model = model
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


# The child imports this module by name, so that it measures the code the
# parent runs, wherever the package lives; `-m` would run a second copy of
# the module once poolformer_mm.apis imports it.
_CHILD = ('import sys; from poolformer_mm.apis.benchmark import _child_main; '
          '_child_main(sys.argv[1:])')


def memory_in_child(settings: BenchmarkSettings, name: str,
                    phase: str) -> Optional[float]:
    """Run :func:`measure_memory` for one variant in a fresh interpreter:
    a process's peak resident set keeps every earlier variant's, so each
    gets a process of its own.

    Returns:
        float | None: MiB, None where it could not be measured (the child's
        error goes to stderr).
    """
    cmd = [sys.executable, '-c', _CHILD, json.dumps(asdict(settings)),
           f'{name}:{phase}']
    env = dict(os.environ)
    # The child finds this package where the parent did, installed or not.
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    paths = [root, env['PYTHONPATH']] if env.get('PYTHONPATH') else [root]
    env['PYTHONPATH'] = os.pathsep.join(paths)
    if settings.threads is not None:
        env['OMP_NUM_THREADS'] = str(settings.threads)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith('MEMORY '):
            value = line.split()[1]
            return None if value == 'None' else float(value)
    sys.stderr.write(f'memory of {name} ({phase}) failed:\n'
                     f'{out.stderr[-2000:]}\n')
    return None


def _child_main(argv: Sequence[str]) -> None:
    """The child of :func:`memory_in_child`: settings as JSON, then
    ``variant:phase``; prints ``MEMORY <MiB>``."""
    settings = BenchmarkSettings(**json.loads(argv[0]))
    name, phase = argv[1].split(':')
    _setup_threads(settings.threads)
    fn = Bench(settings).make(name, phase)
    print('MEMORY',
          None if fn is None else measure_memory(fn, settings.device))


# ---------------------------------------------------------------------------
# Detector end to end
# ---------------------------------------------------------------------------
def detector_config(arch: str) -> str:
    """This package's RetinaNet config of ``arch``.

    Raises:
        InputError: Unknown arch, or no RetinaNet config of it.
    """
    resolved = resolve_arch(arch)
    # configs/retinanet_poolformer_s12.py, configs/retinanet_convformer_s18.py
    name = (f'retinanet_poolformer_{resolved.name}.py'
            if resolved.is_poolformer_v1 else f'retinanet_{resolved.name}.py')
    path = osp.join(config_dir(), name)
    if not osp.isfile(path):
        known = sorted(
            osp.basename(p)
            for p in glob.glob(osp.join(config_dir(), 'retinanet_*.py')))
        raise InputError(f'detector: no RetinaNet config of arch {arch!r} '
                         f'({path}); there are {known}')
    return path


def detector_fns(settings: BenchmarkSettings) -> Dict[str, Callable]:
    """RetinaNet-R50 and RetinaNet-PoolFormer (default and deploy) inference
    on one random ``detector_size`` image, through ``test_step`` (data
    preprocessor, backbone, neck, head, NMS)."""
    from mmdet.structures import DetDataSample
    from mmengine.hub import get_config

    ours_cfg = detector_config(settings.arch)
    models = {}
    for name in ('r50', 'det_ours', 'det_deploy'):
        if name == 'r50':
            # MMDetection's own RetinaNet-R50, the base of ours.
            cfg = get_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
        else:
            cfg = load_config(ours_cfg)
        model = build_model(cfg).to(settings.device)
        if name == 'det_deploy':
            switch_model_to_deploy(model)
        models[name] = model
    h, w = settings.detector_size
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


def format_benchmark(settings: BenchmarkSettings,
                     info: Dict[str, str],
                     results: Dict[str, dict],
                     memory: Dict[Tuple[str, str], Optional[float]],
                     det: Dict[str, dict],
                     deploy_cache: Optional[int] = None) -> str:
    """The tables of a run, as ``tools/benchmark.py`` prints them (the
    parts of :func:`benchmark`'s result)."""
    lines = []
    h, w = settings.size
    lines.append(
        f'# {settings.arch} backbone, input {settings.batch}x3x{h}x{w}, '
        f'{settings.device} {settings.dtype}, {info["threads"]} threads, '
        f'{settings.reps} reps (median wall ms; cpu = process CPU time)')
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
            f'| {label(name, settings.arch)} | {fmt(e)} | {fmt(c)} | '
            f'{ratio(base_e, e)} | '
            f'{fmt(e / floor, ".2f") if e is not None and floor else "-"} | '
            f'{fmt(t)} | {fmt(tc)} | {ratio(base_t, t)} | '
            f'{fmt(t / train_floor, ".2f") if t and train_floor else "-"} | '
            f'{fmt(me)} | {fmt(mt)} |')
        if name != 'timm' and (e is not None or t is not None):
            paired_train = paired_ratio(tr.get('train_timm'),
                                        tr.get('train_' + name))
            paired.append(f'| {label(name, settings.arch)} | '
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
        dh, dw = settings.detector_size
        base = det.get('r50', {}).get('median_ms')
        lines.append('')
        lines.append(f'# detector inference, one {dh}x{dw} image '
                     '(test_step: preprocessing, backbone, neck, head, NMS)')
        lines += ['| model | ms | cpu ms | vs R50 | vs R50, paired |',
                  '| --- | --- | --- | --- | --- |']
        for name in ('r50', 'det_ours', 'det_deploy'):
            if name in det:
                d = det[name]
                lines.append(f'| {label(name, settings.arch)} | '
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
    deployed = copy.deepcopy(model)
    switch_model_to_deploy(deployed)
    with torch.inference_mode(), autocast(bench.device, bench.dtype):
        ref = model(bench.x)
        out = deployed(bench.x)
    return max(((r.float() - o.float()).abs().max() /
                r.float().abs().max()).item() for r, o in zip(ref, out))


def profile(settings: BenchmarkSettings,
            variant: str,
            phase: Optional[str] = None) -> str:
    """The torch profiler table of three calls of one variant.

    Args:
        settings (BenchmarkSettings): Arch, input, device and threads.
        variant (str): One of :data:`BACKBONE_VARIANTS`.
        phase (str, optional): 'eval' or 'train'; default: eval where the
            variant has one (train for with_cp).

    Returns:
        str: A title line and the table (the 20 slowest operators).

    Raises:
        InputError: Unknown variant or phase, or a phase the variant has
            no run of (deploy trains not, with_cp only trains).
    """
    _check_variants([variant])
    if phase is None:
        phase = 'eval' if Bench.applies(variant, 'eval') else 'train'
    if phase not in PHASES:
        raise InputError(f'unknown phase {phase!r}: one of {PHASES}')
    _setup_threads(settings.threads)
    bench = Bench(settings)
    fn = bench.make(variant, phase) if bench.applies(variant, phase) else None
    if fn is None:
        if variant.startswith('timm'):
            why = f'timm is not installed or has no {bench.timm_name}'
        elif variant == 'triton':
            why = triton_unavailable(bench.device)
        else:
            why = 'deploy runs eval only, with_cp train only'
        raise InputError(f'--profile: {variant} has no {phase} run ({why})')
    for _ in range(2):
        fn()
    with torch.profiler.profile() as prof:
        for _ in range(3):
            fn()
        sync(bench.device)
    sort = ('self_cuda_time_total'
            if bench.device.startswith('cuda') else 'self_cpu_time_total')
    return (f'# profile of {label(variant, settings.arch)} ({phase}, 3 '
            f'calls)\n{prof.key_averages().table(sort_by=sort, row_limit=20)}')


def _check_variants(variants: Sequence[str]) -> None:
    unknown = [v for v in variants if v not in BACKBONE_VARIANTS]
    if unknown:
        raise InputError(f'unknown variant(s) {unknown}: choose from '
                         f'{list(BACKBONE_VARIANTS)}')


def benchmark(settings: Optional[BenchmarkSettings] = None,
              variants: Optional[Sequence[str]] = None,
              phases: Sequence[str] = PHASES,
              memory: bool = True,
              backbone: bool = True,
              detector: bool = False,
              progress: Optional[Callable[[str], None]] = None) -> dict:
    """Time (and measure the memory of) the backbone variants and, if asked,
    the detectors; the machine's load average before and after.

    Args:
        settings (BenchmarkSettings, optional): What to measure on; the
            defaults when None.
        variants (Sequence[str], optional): Backbone variants of
            :data:`BACKBONE_VARIANTS`; default: :func:`default_variants`
            (not 'compile' and 'compiled': torch.compile takes minutes;
            'triton' on CUDA only). A variant that cannot run here ('timm'
            without timm, 'triton' where its kernels do not run) is left
            out of the results and the table.
        phases (Sequence[str]): 'eval' and / or 'train'. Defaults to both.
        memory (bool): Measure the peak memory of every variant and phase
            (on CPU each in a child process). Defaults to True.
        backbone (bool): The backbone comparison; False with ``detector``
            for the detectors alone. Defaults to True.
        detector (bool): Also RetinaNet-PoolFormer against RetinaNet-R50.
            Defaults to False.
        progress (callable, optional): Called with a line as each part
            starts, and with the deploy check's result.

    Returns:
        dict: ``args`` (the settings and options), ``info`` (machine and
        versions), ``results`` (per phase, per variant: ``median_ms``,
        ``min_ms``, ``cpu_ms``, ``wall_ms`` per round), ``memory``
        (``'variant:phase'``: MiB or None), ``detector`` (timings),
        ``deploy_difference`` (largest relative difference of the deploy
        outputs from the default ones, None when not checked) and
        ``table`` (:func:`format_benchmark`).

    Raises:
        InputError: Unknown variants or phases, neither ``backbone`` nor
            ``detector``, or no RetinaNet config of the arch
            (``detector``).
    """
    settings = settings or BenchmarkSettings()
    if not (backbone or detector):
        raise InputError('nothing to measure: backbone=False and '
                         'detector=False')
    names = list(variants or default_variants(settings.device))
    _check_variants(names)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise InputError(f'unknown phase(s) {unknown}: choose from {PHASES}')
    phases = [p for p in PHASES if p in phases]
    say = progress or (lambda line: None)
    if detector:
        detector_config(settings.arch)  # before minutes of timing
    _setup_threads(settings.threads)
    load_before = load_average()
    info = machine_info(settings)
    info['load_before'] = load_before
    bench = Bench(settings)
    results: Dict[str, dict] = {}
    peaks: Dict[Tuple[str, str], Optional[float]] = {}
    det: Dict[str, dict] = {}
    err = None
    if backbone:
        err = check_deploy(bench)
        say(f'deploy vs default outputs: max relative difference {err:.2e}')
        for phase in phases:
            fns = {}
            for name in names:
                fn = bench.make(name, phase) if bench.applies(
                    name, phase) else None
                if fn is not None:
                    fns[name if phase == 'eval' else 'train_' + name] = fn
            say(f'timing {phase}: {", ".join(fns)}')
            results[phase] = time_alternating(fns, settings.reps,
                                              settings.warmup,
                                              settings.device)
            del fns
            gc.collect()
        for phase in phases if memory else ():
            for name in names:
                timed = name if phase == 'eval' else 'train_' + name
                # Not the floors, nor what did not run here (no timm, no
                # Triton kernels for this device).
                if name.startswith('floor') or timed not in results[phase]:
                    continue
                gc.collect()
                if settings.device.startswith('cuda'):
                    # The allocator's statistics are per process.
                    fn = bench.make(name, phase)
                    peaks[(name, phase)] = (None if fn is None else
                                            measure_memory(
                                                fn, settings.device))
                    del fn
                else:
                    peaks[(name, phase)] = memory_in_child(
                        settings, name, phase)
    if detector:
        say('timing detectors')
        det = time_alternating(detector_fns(settings), settings.reps,
                               settings.warmup, settings.device)
    deploy_cache = None
    if bench.deploy_model is not None:
        deploy_cache = deploy_cache_bytes(bench.deploy_model)
    text = format_benchmark(settings, info, results, peaks, det,
                            deploy_cache)
    return dict(
        args=dict(asdict(settings), variants=names, phases=phases,
                  memory=memory, backbone=backbone, detector=detector),
        info=info,
        results=results,
        memory={f'{k[0]}:{k[1]}': v
                for k, v in peaks.items()},
        detector=det,
        deploy_difference=err,
        table=text)


__all__ = [
    'BACKBONE_VARIANTS', 'BenchmarkSettings', 'benchmark',
    'default_variants', 'format_benchmark', 'measure_memory',
    'memory_in_child', 'paired_ratio', 'profile', 'time_alternating',
    'triton_unavailable'
]
