"""What PreemptionHook costs a training step, side by side in one run.

The hook does one thing per iteration: the processes agree whether any of
them got a stop signal (``PreemptionHook.stop_requested``: an all-reduce of
one integer, then reading it). This starts ``--procs`` processes (gloo on
CPUs, NCCL with ``--device cuda``), trains a DDP-wrapped backbone (loss: the
sum of its output means; AdamW) and alternates rounds of ``--steps`` training
steps without and with the hook's per-iteration call. It prints, from rank
0, the median step time of each, their ratio paired by round (median and
quartiles), and the median time of the call alone.

Example:
    python tools/analysis/benchmark_preemption.py --procs 2 --threads 1
"""
import argparse
import os
import platform
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from poolformer_mm.apis.common import (build_backbone, exit_on_error,
                                       resolve_arch)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Training step time with and without PreemptionHook')
    parser.add_argument('--procs', type=int, default=2)
    parser.add_argument('--arch', default='s12')
    parser.add_argument('--size', type=int, nargs=2, default=(224, 224),
                        metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1,
                        help='images per process')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads per process (CPU)')
    parser.add_argument('--steps', type=int, default=10,
                        help='steps per round')
    parser.add_argument('--rounds', type=int, default=10)
    parser.add_argument('--calls', type=int, default=200,
                        help='calls of stop_requested() timed alone')
    args = parser.parse_args(argv)
    # Quartiles need two rounds; a step time, one step; a median, one call.
    for name, low in (('procs', 1), ('rounds', 2), ('steps', 1), ('calls', 1)):
        if getattr(args, name) < low:
            parser.error(f'--{name} must be >= {low}, not '
                         f'{getattr(args, name)}')
    if args.device not in ('cpu', 'cuda'):
        parser.error(f"--device must be 'cpu' or 'cuda', not "
                     f'{args.device!r}')
    if args.device == 'cuda' and torch.cuda.device_count() < args.procs:
        parser.error(f'--procs {args.procs} needs as many GPUs; '
                     f'{torch.cuda.device_count()} visible')
    return args


def _worker(rank, args, port):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    cuda = args.device == 'cuda'
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group('nccl' if cuda else 'gloo', rank=rank,
                            world_size=args.procs)
    from poolformer_mm.engine import PreemptionHook

    device = torch.device('cuda', rank) if cuda else torch.device('cpu')
    torch.manual_seed(0)
    model = build_backbone(args.arch, out_indices=(0, 1, 2, 3)).to(device)
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[rank] if cuda else None)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    images = torch.randn(args.batch, 3, *args.size, device=device)
    hook = PreemptionHook()

    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step(with_hook):
        optimizer.zero_grad(set_to_none=True)
        loss = sum(out.mean() for out in ddp(images))
        loss.backward()
        optimizer.step()
        # mmengine logs the loss every iteration: it reads the value.
        loss.item()
        if with_hook:
            assert not hook.stop_requested()

    def round_time(with_hook):
        dist.barrier()
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            step(with_hook)
        sync()
        return (time.perf_counter() - start) / args.steps

    for _ in range(3):
        step(True)
    without, with_hook = [], []
    for index in range(args.rounds):
        # Alternate the order so that neither always runs second.
        for flag in (index % 2 == 1, index % 2 == 0):
            (with_hook if flag else without).append(round_time(flag))

    calls = []
    for _ in range(args.calls):
        sync()
        start = time.perf_counter()
        hook.stop_requested()
        calls.append(time.perf_counter() - start)

    if rank == 0:
        ratios = [w / wo for w, wo in zip(with_hook, without)]
        q1, q2, q3 = statistics.quantiles(ratios, n=4)
        call = statistics.median(calls)
        print(f'torch {torch.__version__}, {platform.processor() or ""} '
              f'{platform.machine()}, {os.cpu_count()} CPUs, '
              f'{args.procs} processes x {args.threads} threads, '
              f'device {args.device}')
        print(f'{type(model).__name__}-{args.arch.upper()} backbone, '
              f'{args.batch}x3x{args.size[0]}x{args.size[1]} per process, '
              f'{args.rounds} rounds of {args.steps} steps')
        print('| step | median ms |\n|---|---|')
        print(f'| without the hook | {statistics.median(without) * 1e3:.2f} |')
        print(f'| with the hook | {statistics.median(with_hook) * 1e3:.2f} |')
        print(f'with / without, paired by round: median {q2:.4f} '
              f'(quartiles {q1:.4f}-{q3:.4f})')
        print(f'stop_requested() alone: median {call * 1e6:.1f} us '
              f'({call / statistics.median(without) * 100:.3f}% of a step)')
    dist.destroy_process_group()


def main(argv=None):
    args = parse_args(argv)
    with exit_on_error('benchmark_preemption.py'):
        resolve_arch(args.arch)  # here, not as a traceback in each worker
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(args, port), nprocs=args.procs, join=True)


if __name__ == '__main__':
    main()
