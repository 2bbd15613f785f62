"""tools/benchmark.py runs every variant and reports what it measured.

A few repetitions at a tiny size: this checks that the tool works and what
its table holds, never the timings (those are the benchmark's own output).
"""
import os.path as osp
import re

import pytest
import torch
from conftest import load_tool


QUICK = ['--size', '64', '64', '--threads', '1', '--reps', '1', '--warmup',
         '0', '--no-memory']


def test_backbone_variants_and_floors(tmp_path):
    pytest.importorskip('timm')
    benchmark = load_tool('benchmark.py')
    out = benchmark.main(['--arch', 's12', *QUICK, '--json',
                          str(tmp_path / 'result.json')])
    eval_names = set(out['results']['eval'])
    train_names = set(out['results']['train'])
    assert {'timm', 'timm_cl', 'ours', 'reference', 'deploy', 'floor_1x1',
            'floor_convs'} <= eval_names
    assert {'train_timm', 'train_ours', 'train_reference', 'train_with_cp',
            'train_floor_1x1', 'train_floor_convs'} <= train_names
    # torch.compile takes minutes: only on request (--variants compiled).
    assert 'compiled' not in eval_names
    assert 'train_deploy' not in train_names
    for phase in out['results'].values():
        for timing in phase.values():
            assert timing['median_ms'] > 0
    table, paired = out['table'].split('# paired by round')
    assert '| PoolFormer, switch_to_deploy() |' in table
    # The train floor is a column of its own: every row has 11 cells.
    rows = [line for line in table.splitlines() if line.startswith('| ')]
    assert all(row.count('|') == 12 for row in rows), rows
    # One round: the paired ratio is that round's, without quartiles.
    paired_rows = {
        line.split(' | ')[0][2:]: line
        for line in paired.splitlines() if line.startswith('| ')
    }
    assert 'timm forward_intermediates' not in paired_rows
    ratio = r'[0-9]+\.[0-9]{2}x'
    assert re.fullmatch(rf'\| PoolFormer \(default\) \| {ratio} \| {ratio} \|',
                        paired_rows['PoolFormer (default)'])
    assert re.fullmatch(
        rf'\| PoolFormer, switch_to_deploy\(\) \| {ratio} \| - \|',
        paired_rows['PoolFormer, switch_to_deploy()'])
    for phase in out['results'].values():
        for timing in phase.values():
            assert len(timing['wall_ms']) == 1
    assert osp.isfile(tmp_path / 'result.json')


def test_paired_ratio():
    benchmark = load_tool('benchmark.py')
    base = dict(wall_ms=[10., 10., 10., 10., 10.])
    # Per round 2, 1, 2, 1, 2.5: median 2, quartiles 1 and 2.25.
    timing = dict(wall_ms=[5., 10., 5., 10., 4.])
    assert benchmark.paired_ratio(base, timing) == '2.00x [1.00-2.25]'
    # Under four rounds the median alone.
    assert benchmark.paired_ratio(
        dict(wall_ms=[10., 30.]), dict(wall_ms=[5., 10.])) == '2.50x'
    assert benchmark.paired_ratio(None, timing) == '-'
    assert benchmark.paired_ratio(base, None) == '-'


def test_metaformer_rows_go_by_their_arch():
    benchmark = load_tool('benchmark.py')
    out = benchmark.main(['--arch', 'convformer_s18', *QUICK, '--variants',
                          'ours', 'deploy', 'floor_1x1', '--no-train',
                          '--vary-size', '2'])
    assert '| MetaFormer convformer_s18 (default) |' in out['table']
    assert 'PoolFormer' not in out['table']
    # Their stem and downsampling run folded, their blocks as 'auto'.
    assert 'deploy' in out['results']['eval']


def test_profile_train_step(capsys):
    benchmark = load_tool('benchmark.py')
    benchmark.main(['--arch', 's12', *QUICK, '--profile', 'ours',
                    '--profile-phase', 'train'])
    assert '# profile of PoolFormer (default) (train, 3 calls)' in (
        capsys.readouterr().out)
    with pytest.raises(SystemExit, match='no train run'):
        benchmark.main(['--arch', 's12', *QUICK, '--profile', 'deploy',
                        '--profile-phase', 'train'])


def test_vary_size_cycles_through_sizes():
    benchmark = load_tool('benchmark.py')
    args = benchmark.parse_args(['--size', '64', '96', '--vary-size', '3'])
    bench = benchmark.Bench(args)
    inputs = bench._inputs(bench.x_cl)
    shapes = [tuple(next(inputs).shape[2:]) for _ in range(6)]
    assert shapes[:3] == [(64, 96), (96, 192), (128, 128)]
    assert shapes[3:] == shapes[:3]
    assert next(inputs).is_contiguous(memory_format=torch.channels_last)
    args = benchmark.parse_args(['--size', '64', '96'])
    inputs = benchmark.Bench(args)._inputs(bench.x)
    assert next(inputs) is next(inputs) is bench.x
