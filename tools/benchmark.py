"""Benchmark the PoolFormer backbone against timm, side by side in one run.

Eval forward and train step of timm's ``poolformer_*`` (default and
channels_last) and of this package's backbone (default, ``reference``,
``deploy``, ``with_cp``, on request ``compiled``) against the floor (its
convolutions alone), in alternating repetitions (medians), with peak memory
(on CPU each variant in a fresh interpreter) and, with ``--detector``,
RetinaNet-PoolFormer against MMDetection's RetinaNet-R50 end to end. What
runs and how it is measured: :mod:`poolformer_mm.apis.benchmark`, whose
:func:`benchmark` and :func:`profile` this tool runs; results and commands:
docs/benchmark.md.

Examples:
    python tools/benchmark.py --arch s12 --size 512 512 --threads 2
    python tools/benchmark.py --arch s12 --device cuda --dtype bf16
    python tools/benchmark.py --arch s12 --threads 2 --detector --no-train
    python tools/benchmark.py --arch s12 --threads 2 --profile deploy
"""
import argparse
import json
import sys

from poolformer_mm.apis.benchmark import (BACKBONE_VARIANTS, DTYPES,
                                          BenchmarkSettings, benchmark,
                                          profile)
from poolformer_mm.apis.common import exit_on_error

PROG = 'benchmark.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog=PROG,
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
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with exit_on_error(PROG):
        settings = BenchmarkSettings(
            arch=args.arch, size=args.size, batch=args.batch,
            device=args.device, dtype=args.dtype, threads=args.threads,
            reps=args.reps, warmup=args.warmup, vary_size=args.vary_size,
            detector_size=args.detector_size)
        if args.profile:
            print(profile(settings, args.profile, args.profile_phase))
            return {}
        phases = [p for p, skip in (('eval', args.no_eval),
                                    ('train', args.no_train)) if not skip]
        out = benchmark(
            settings, args.variants, phases, memory=not args.no_memory,
            backbone=not args.detector_only,
            detector=args.detector or args.detector_only,
            progress=lambda line: print(line, flush=True))
    print(out['table'])
    # The file keeps the command line's arguments, as it always has.
    out['args'] = vars(args)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == '__main__':
    main(sys.argv[1:])
