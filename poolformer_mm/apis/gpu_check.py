"""The fast paths checked on one GPU in a few minutes: the Python parts of
``tools/gpu_check.sh``, which says how to run it.

The script runs each part in a process of its own under a time limit, so
that a hang loses that part alone. Each part also keeps to its own budget
(``--seconds``: it starts nothing new past it) and rewrites
``<part>.json`` in a work folder after every step, so that what it finished
survives its limit. The last, ``table``, reads them, writes ``table.md``
and ``summary.json`` into the output folder and prints the table.

- ``tests`` (:func:`tests_part`): pytest on the CUDA tests of every fast
  path (:data:`TEST_GROUPS`) with ``TRITON_INTERPRET=0``; counts from the
  JUnit XML.
- ``bench`` (:func:`bench_part`): :func:`.benchmark.benchmark` (timm,
  ``'auto'``, reference, Triton, ``impl='compile'``, deploy, the floor;
  paired by round) per dtype, arch and input, in that order of priority,
  until the budget ends.
- ``recompiles`` (:func:`recompiles_part`):
  :func:`~poolformer_mm.models.fast.compiled.count_recompiles` of an
  ``impl='compile'`` backbone over detection-like sizes, eval then train.
- ``train`` (:func:`train_part`): the backbone with a small head
  (:class:`SmallHead`), autocast with ``torch.amp.GradScaler``, AdamW at the
  configs' learning rate; every loss must be finite.
"""
import argparse
import json
import math
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..models.fast import IMPLS
from ..models.fast.compiled import count_recompiles, detection_sizes
from .benchmark import DTYPES, BenchmarkSettings, benchmark
from .common import resolve_arch
from .gpu_check_report import PARTS, table

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# name: pytest arguments (paths relative to the checkout).
TEST_GROUPS = {
    'fast_paths -k cuda': ['tests/test_models/test_fast_paths.py', '-k',
                           'cuda'],
    'triton_paths': ['tests/test_models/test_triton_paths.py'],
    'compiled_path -k cuda': ['tests/test_models/test_compiled_path.py',
                              '-k', 'cuda'],
}
BENCH_ARCHS = ('s12', 'm36', 'poolformerv2_s12', 'convformer_s18')
BENCH_INPUTS = ('2x800x1216', '4x512x512')
BENCH_DTYPES = ('fp16', 'fp32', 'bf16')
BENCH_VARIANTS = ('timm', 'ours', 'reference', 'triton', 'compile', 'deploy',
                  'floor_1x1')


def parse_input(spec: str) -> Tuple[int, Tuple[int, int]]:
    """``'NxHxW'`` as (batch, (H, W)).

    Raises:
        InputError: Not three positive integers joined by ``x``.
    """
    parts = str(spec).lower().split('x')
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(f'input {spec!r}: expected NxHxW, e.g. 2x800x1216')
    n, h, w = map(int, parts)
    return n, (h, w)


def write_part(work: str, part: str, data: dict) -> str:
    """Write ``<work>/<part>.json`` whole or not at all (a part killed
    while writing leaves the previous version)."""
    path = osp.join(work, f'{part}.json')
    with open(path + '.tmp', 'w') as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(path + '.tmp', path)
    return path


def _error(err: BaseException) -> str:
    traceback.print_exc()
    return f'error: {type(err).__name__}: {err}'[:500]


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------
def junit_counts(path: str) -> dict:
    """Tests, passed, failed, errors, skipped and the failed tests' ids of
    a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    cases = root.iter('testcase')
    counts = dict(tests=0, passed=0, failed=0, errors=0, skipped=0,
                  failures=[])
    for case in cases:
        counts['tests'] += 1
        kinds = {child.tag for child in case}
        name = f'{case.get("classname")}::{case.get("name")}'
        if 'failure' in kinds or 'error' in kinds:
            counts['failed' if 'failure' in kinds else 'errors'] += 1
            counts['failures'].append(name)
        elif 'skipped' in kinds:
            counts['skipped'] += 1
        else:
            counts['passed'] += 1
    return counts


def tests_part(work: str, seconds: float,
               groups: Optional[Dict[str, List[str]]] = None,
               run: Callable = subprocess.run) -> dict:
    """Run each pytest group of ``groups`` (default :data:`TEST_GROUPS`) with
    ``TRITON_INTERPRET=0`` (the kernels compiled for the GPU) in the
    checkout, within ``seconds`` in all; output to stdout."""
    groups = TEST_GROUPS if groups is None else groups
    deadline = time.monotonic() + seconds
    done = []
    for i, (name, args) in enumerate(groups.items()):
        left = deadline - time.monotonic()
        record = dict(group=name, status='skipped: budget', seconds=0.)
        if left > 5:
            xml = osp.join(work, f'tests_{i}.xml')
            cmd = [sys.executable, '-m', 'pytest', '-q', '-p',
                   'no:cacheprovider', '-p', 'no:warnings', *args,
                   f'--junitxml={xml}']
            record['command'] = ' '.join(cmd)
            print(f'[gpu_check] tests: {record["command"]}', flush=True)
            t0 = time.monotonic()
            try:
                code = run(cmd, cwd=ROOT, timeout=left,
                           env=dict(os.environ, TRITON_INTERPRET='0'))
                code = getattr(code, 'returncode', code)
                # 5: nothing collected (e.g. no test of the group here).
                record['status'] = 'ok' if code in (0, 5) else f'exit {code}'
            except subprocess.TimeoutExpired:
                record['status'] = 'timeout'
            record['seconds'] = time.monotonic() - t0
            if osp.isfile(xml):
                record.update(junit_counts(xml))
        done.append(record)
        write_part(work, 'tests', dict(groups=done))
    return dict(groups=done)


# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------
def bench_part(work: str, seconds: float,
               archs: Sequence[str] = BENCH_ARCHS,
               inputs: Sequence[str] = BENCH_INPUTS,
               dtypes: Sequence[str] = BENCH_DTYPES,
               variants: Sequence[str] = BENCH_VARIANTS,
               compile_archs: Sequence[str] = ('s12', ),
               reps: int = 10, warmup: int = 2, device: str = 'cuda',
               memory: bool = False) -> dict:
    """:func:`.benchmark.benchmark` for every dtype, arch and input (in that
    nesting: the first ones matter most), the ``compile`` variant for
    ``compile_archs`` only (each compiles for a minute or more); configs
    not started within ``seconds`` are listed as skipped.

    Raises:
        InputError: An unknown arch, dtype or input spec (before any run).
    """
    for arch in list(archs) + list(compile_archs):
        resolve_arch(arch)
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise InputError(f'dtypes {bad}: choose from {sorted(DTYPES)}')
    shapes = {spec: parse_input(spec) for spec in inputs}
    deadline = time.monotonic() + seconds
    done = []
    for dtype in dtypes:
        for arch in archs:
            for spec in inputs:
                record = dict(arch=arch, input=spec, dtype=dtype,
                              status='skipped: budget')
                if time.monotonic() < deadline:
                    t0 = time.monotonic()
                    try:
                        record.update(
                            _bench_one(arch, shapes[spec], dtype, variants,
                                       compile_archs, reps, warmup, device,
                                       memory))
                        record['status'] = 'ok'
                    except Exception as err:  # the next config may run
                        record['status'] = _error(err)
                    record['seconds'] = time.monotonic() - t0
                done.append(record)
                write_part(work, 'bench', dict(configs=done))
    return dict(configs=done)


def _bench_one(arch, shape, dtype, variants, compile_archs, reps, warmup,
               device, memory) -> dict:
    batch, size = shape
    names = [v for v in variants
             if v != 'compile' or resolve_arch(arch).name in
             {resolve_arch(a).name for a in compile_archs}]
    settings = BenchmarkSettings(arch=arch, size=size, batch=batch,
                                 device=device, dtype=dtype, reps=reps,
                                 warmup=warmup)
    out = benchmark(settings, names, memory=memory,
                    progress=lambda line: print(line, flush=True))
    print(out['table'], flush=True)
    if device.startswith('cuda'):
        torch.cuda.empty_cache()
    slim = {phase: {name: dict(median_ms=t['median_ms'], wall_ms=t['wall_ms'])
                    for name, t in timings.items()}
            for phase, timings in out['results'].items()}
    return dict(results=slim, memory=out['memory'],
                deploy_difference=out['deploy_difference'])


# ---------------------------------------------------------------------------
# recompiles
# ---------------------------------------------------------------------------
def recompiles_part(work: str, seconds: float, arch: str = 's12',
                    num: int = 50, batch: int = 2, dtype: str = 'fp16',
                    device: str = 'cuda',
                    scale: Sequence[int] = (1333, 800)) -> dict:
    """:func:`count_recompiles` of ``impl='compile'`` over ``num``
    :func:`detection_sizes` (batch ``batch``, resized to fit ``scale``, the
    COCO configs' by default), eval then train, each within its share of
    ``seconds``."""
    if dtype not in DTYPES:
        raise InputError(f'dtype {dtype!r}: choose from {sorted(DTYPES)}')
    model = resolve_arch(arch).build(impl='compile').to(device)
    sizes = detection_sizes(num, scale=scale, batch=batch)
    deadline = time.monotonic() + seconds
    done = dict(arch=arch, batch=batch, dtype=dtype, sizes=sizes, phases={})
    phases = ('eval', 'train')
    for i, phase in enumerate(phases):
        left = (deadline - time.monotonic()) / (len(phases) - i)
        try:
            done['phases'][phase] = count_recompiles(
                model, sizes, batch=batch, train=phase == 'train',
                device=device,
                dtype=None if dtype == 'fp32' else DTYPES[dtype],
                max_seconds=max(left, 0.))
        except Exception as err:
            done['phases'][phase] = dict(status=_error(err))
        print(f'[gpu_check] recompiles {phase}: {done["phases"][phase]}',
              flush=True)
        write_part(work, 'recompiles', done)
    return done


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------
class SmallHead(nn.Module):
    """A small FPN-like head: a 1x1 lateral convolution per feature map,
    top-down nearest upsampling and sums, and a 1x1 classifier at the
    finest map's stride."""

    def __init__(self, in_channels: Sequence[int], classes: int = 4,
                 width: int = 64) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(
            nn.Conv2d(c, width, 1) for c in in_channels)
        self.classifier = nn.Conv2d(width, classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.laterals[-1](feats[-1])
        for feat, lateral in zip(feats[-2::-1], self.laterals[-2::-1]):
            x = lateral(feat) + F.interpolate(
                x, size=feat.shape[-2:], mode='nearest')
        return self.classifier(x)


def synthetic_batch(batch: int, size: Tuple[int, int], device: str,
                    generator: torch.Generator) -> Tuple[torch.Tensor, ...]:
    """Random images and, per 4x4 cell, the quartile of the first
    channel's mean there (a target the network can learn)."""
    x = torch.randn(batch, 3, *size, generator=generator).to(device)
    # The mean of 16 standard normals has std 1/4: quartiles at +-0.169.
    cells = F.avg_pool2d(x[:, :1], 4)[:, 0]
    target = torch.bucketize(cells, torch.tensor(
        [-0.169, 0., 0.169], device=device))
    return x, target


def train_check(arch: str = 's12', impl: str = 'auto', steps: int = 300,
                size: Tuple[int, int] = (512, 512), batch: int = 2,
                lr: float = 2e-4, device: str = 'cuda',
                dtype: str = 'fp16', scaler: bool = True,
                max_seconds: Optional[float] = None, seed: int = 0) -> dict:
    """Train the backbone of ``arch`` (by ``impl``) with a
    :class:`SmallHead` on :func:`synthetic_batch` for ``steps`` steps:
    autocast to ``dtype``, ``torch.amp.GradScaler`` if ``scaler``, AdamW
    (``lr``, weight decay 1e-4, as the detection configs).

    Returns:
        dict: ``steps`` (made), ``all_finite``, ``nonfinite`` (their
        steps), the mean loss of the first and last ten steps, the steps
        the scaler skipped (its scale went down), the final scale and the
        median step time in ms.

    Raises:
        InputError: An unknown arch, impl or dtype.
    """
    if impl not in IMPLS or impl == 'deploy':
        raise InputError(f'impl {impl!r}: choose a training impl of '
                         f'{[i for i in IMPLS if i != "deploy"]}')
    if dtype not in DTYPES:
        raise InputError(f'dtype {dtype!r}: choose from {sorted(DTYPES)}')
    torch.manual_seed(seed)
    backbone = resolve_arch(arch).build(impl=impl).to(device).train()
    head = SmallHead(backbone.out_channels).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    device_type = device.split(':')[0]
    grad_scaler = torch.amp.GradScaler(device_type, enabled=scaler)
    generator = torch.Generator().manual_seed(seed)
    losses, times, skipped = [], [], 0
    start = time.perf_counter()
    for step in range(steps):
        if max_seconds is not None and time.perf_counter() - start > (
                max_seconds) and step:
            break
        x, target = synthetic_batch(batch, size, device, generator)
        t0 = time.perf_counter()
        with torch.autocast(device_type, dtype=DTYPES[dtype],
                            enabled=dtype != 'fp32'):
            logits = head(backbone(x))
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        grad_scaler.scale(loss).backward()
        scale = grad_scaler.get_scale() if scaler else 1.
        grad_scaler.step(optimizer)
        grad_scaler.update()
        losses.append(loss.item())  # a sync per step, as logging does
        times.append(time.perf_counter() - t0)
        skipped += scaler and grad_scaler.get_scale() < scale
    nonfinite = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    return dict(arch=arch, impl=impl, dtype=dtype, lr=lr, steps=len(losses),
                all_finite=not nonfinite, nonfinite=nonfinite[:20],
                first_loss=statistics.fmean(losses[:10]),
                last_loss=statistics.fmean(losses[-10:]),
                scaler_skipped=int(skipped),
                final_scale=grad_scaler.get_scale() if scaler else None,
                median_step_ms=statistics.median(times[1:] or times) * 1e3)


def train_part(work: str, seconds: float, arch: str = 's12',
               impls: Sequence[str] = ('auto', 'triton'),
               **kwargs) -> dict:
    """:func:`train_check` for each of ``impls``, each within its share of
    ``seconds`` (``kwargs`` go to it)."""
    deadline = time.monotonic() + seconds
    done = []
    for i, impl in enumerate(impls):
        left = (deadline - time.monotonic()) / (len(impls) - i)
        try:
            record = dict(train_check(arch, impl, max_seconds=max(left, 0.),
                                      **kwargs), status='ok')
        except Exception as err:
            record = dict(arch=arch, impl=impl, status=_error(err))
        print(f'[gpu_check] train: {record}', flush=True)
        done.append(record)
        write_part(work, 'train', dict(runs=done))
    return dict(runs=done)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='gpu_check',
        description='One part of tools/gpu_check.sh, or its table')
    sub = parser.add_subparsers(dest='part', required=True)
    parts = {name: sub.add_parser(name) for name in PARTS}
    for part in parts.values():
        part.add_argument('--work', required=True,
                          help='folder of the parts\' JSON files')
        part.add_argument('--seconds', type=float, required=True,
                          help='this part\'s budget: nothing starts later')
        part.add_argument('--device', default='cuda')
    bench = parts['bench']
    bench.add_argument('--archs', nargs='+', default=list(BENCH_ARCHS))
    bench.add_argument('--inputs', nargs='+', default=list(BENCH_INPUTS),
                       metavar='NxHxW')
    bench.add_argument('--dtypes', nargs='+', default=list(BENCH_DTYPES))
    bench.add_argument('--variants', nargs='+', default=list(BENCH_VARIANTS))
    bench.add_argument('--compile-archs', nargs='*', default=['s12'])
    bench.add_argument('--reps', type=int, default=10)
    bench.add_argument('--warmup', type=int, default=2)
    bench.add_argument('--memory', action='store_true')
    for name in ('recompiles', 'train'):
        parts[name].add_argument('--arch', default='s12')
        parts[name].add_argument('--batch', type=int, default=2)
        parts[name].add_argument('--dtype', default='fp16')
    parts['recompiles'].add_argument('--sizes', type=int, default=50)
    parts['recompiles'].add_argument('--scale', type=int, nargs=2,
                                     default=[1333, 800],
                                     metavar=('LONG', 'SHORT'))
    train = parts['train']
    train.add_argument('--impls', nargs='+', default=['auto', 'triton'])
    train.add_argument('--steps', type=int, default=300)
    train.add_argument('--size', type=int, nargs=2, default=[512, 512])
    train.add_argument('--lr', type=float, default=2e-4)
    report = sub.add_parser('table')
    report.add_argument('--work', required=True)
    report.add_argument('--out', required=True)
    return parser.parse_args(argv)


def run_part(args: argparse.Namespace) -> dict:
    """Run the part ``args`` names (see :func:`parse_args`)."""
    common = (args.work, args.seconds)
    if args.part == 'tests':
        return tests_part(*common)
    if args.part == 'bench':
        return bench_part(*common, archs=args.archs, inputs=args.inputs,
                          dtypes=args.dtypes, variants=args.variants,
                          compile_archs=args.compile_archs, reps=args.reps,
                          warmup=args.warmup, device=args.device,
                          memory=args.memory)
    if args.part == 'recompiles':
        return recompiles_part(*common, arch=args.arch, num=args.sizes,
                               batch=args.batch, dtype=args.dtype,
                               device=args.device, scale=tuple(args.scale))
    return train_part(*common, arch=args.arch, impls=args.impls,
                      steps=args.steps, size=tuple(args.size),
                      batch=args.batch, lr=args.lr, device=args.device,
                      dtype=args.dtype)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one part (writing ``<part>.json`` as it goes and
    ``<part>.done.json`` at its end) or the table; the exit status is 0
    where it finished (the table: where everything passed)."""
    args = parse_args(argv)
    if args.part == 'table':
        summary = table(args.work, args.out)
        print(summary['table'], end='', flush=True)
        return 0 if summary['ok'] else 1
    os.makedirs(args.work, exist_ok=True)
    start, error = time.monotonic(), None
    try:
        run_part(args)
    except Exception as err:
        error = _error(err)
    write_part(args.work, f'{args.part}.done',
               dict(seconds=time.monotonic() - start, budget_s=args.seconds,
                    error=error))
    if error and not osp.isfile(osp.join(args.work, f'{args.part}.json')):
        write_part(args.work, args.part, dict(error=error))
    return 1 if error else 0


if __name__ == '__main__':
    sys.exit(main())
