"""The configs end to end for a few iterations on a GPU, and the table: the
second half of tools/gpu_e2e/run.sh, over :mod:`poolformer_mm.apis.gpu_e2e`
(which says what each run does).

Example:
    python tools/gpu_e2e/driver.py --data work_dirs/gpu_e2e/data \
        --out work_dirs/gpu_e2e --iters 40
"""
import argparse
import os.path as osp
import sys

from poolformer_mm.apis.gpu_e2e import MODELS, PRECISIONS, run_all, table


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='The configs end to end for a few iterations')
    parser.add_argument('--data', required=True,
                        help='demo data (tools/make_demo_data.py --out)')
    parser.add_argument('--out', required=True, help='work dirs, summary')
    parser.add_argument('--iters', type=int, default=40)
    parser.add_argument('--warmup', type=int, default=5,
                        help='iterations left out of the median time')
    parser.add_argument('--test-images', type=int, default=8)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--models', nargs='+', default=list(MODELS),
                        choices=list(MODELS), metavar='MODEL')
    parser.add_argument('--precisions', nargs='+', default=list(PRECISIONS),
                        choices=PRECISIONS)
    args = parser.parse_args(argv)
    for path in (osp.join(args.data, 'coco'), osp.join(args.data, 'ade')):
        if not osp.isdir(path):
            parser.error(f'--data {args.data!r} has no {osp.basename(path)}/'
                         ' folder; write it with tools/make_demo_data.py')
    if args.iters <= args.warmup:
        parser.error(f'--iters {args.iters} must exceed --warmup '
                     f'{args.warmup}')
    return args


def main(argv=None):
    args = parse_args(argv)
    results = run_all(args.data, args.out, args.models, args.precisions,
                      iters=args.iters, warmup=args.warmup,
                      test_images=args.test_images, seed=args.seed)
    print(table(results))
    failed = [r['run'] for r in results
              if 'error' in r or not r.get('all_losses_finite')
              or not r.get('predictions')]
    if failed:
        print(f'[gpu_e2e] failed or non-finite: {failed}', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
