"""The backbone benchmark runs every variant and reports what it measured:
:mod:`poolformer_mm.apis.benchmark`, called here, and tools/benchmark.py,
run once as a user runs it (with the memory of a variant measured in a
child process).

A few repetitions at a tiny size: this checks that the benchmark works and
what its table holds, never the timings (those are the benchmark's own
output).
"""
import json
import re

import pytest
import torch
from helpers.commands import run_tool

from poolformer_mm.apis.benchmark import (Bench, BenchmarkSettings,
                                          benchmark, paired_ratio, profile)
from poolformer_mm.errors import InputError

QUICK = dict(size=(64, 64), threads=1, reps=1, warmup=0)


def test_backbone_variants_and_floors():
    pytest.importorskip('timm')
    out = benchmark(BenchmarkSettings(arch='s12', **QUICK), memory=False)
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
    assert out['deploy_difference'] < 1e-3
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


@pytest.mark.integration
def test_cli_with_memory_in_a_child(tmp_path):
    """The one run of the command line: a MetaFormer arch, the peak memory
    measured in a fresh interpreter, the JSON file."""
    path = tmp_path / 'result.json'
    out = run_tool('benchmark.py', '--arch', 'convformer_s18', '--size', 64,
                   64, '--threads', 1, '--reps', 1, '--warmup', 0,
                   '--variants', 'ours', '--no-train', '--json', path).stdout
    assert 'deploy vs default outputs: max relative difference' in out
    assert 'timing eval: ours' in out
    row = next(line for line in out.splitlines()
               if line.startswith('| MetaFormer convformer_s18 (default) |'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert float(cells[-2]) >= 0 and cells[-1] == '-', row
    assert 'PoolFormer' not in out.split('timing eval: ours')[1]
    result = json.loads(path.read_text())
    assert result['memory']['ours:eval'] == pytest.approx(
        float(cells[-2]), abs=0.05)
    # The command line's arguments, as before.
    assert result['args']['no_train'] is True
    assert result['args']['arch'] == 'convformer_s18'
    assert result['table'] in out


def test_paired_ratio():
    base = dict(wall_ms=[10., 10., 10., 10., 10.])
    # Per round 2, 1, 2, 1, 2.5: median 2, quartiles 1 and 2.25.
    timing = dict(wall_ms=[5., 10., 5., 10., 4.])
    assert paired_ratio(base, timing) == '2.00x [1.00-2.25]'
    # Under four rounds the median alone.
    assert paired_ratio(
        dict(wall_ms=[10., 30.]), dict(wall_ms=[5., 10.])) == '2.50x'
    assert paired_ratio(None, timing) == '-'
    assert paired_ratio(base, None) == '-'


def test_metaformer_deploy_and_varying_sizes():
    """The rows of a MetaFormer arch go by its name (also in the command
    line's run); its stem and downsampling run folded, its blocks as
    'auto'."""
    out = benchmark(
        BenchmarkSettings(arch='convformer_s18', vary_size=2, **QUICK),
        variants=['deploy'], phases=['eval'], memory=False)
    assert '| MetaFormer convformer_s18, switch_to_deploy() |' in out['table']
    assert 'PoolFormer' not in out['table']
    assert list(out['results']) == ['eval']
    assert out['results']['eval']['deploy']['median_ms'] > 0


def test_profile_train_step():
    settings = BenchmarkSettings(arch='s12', **QUICK)
    assert profile(settings, 'ours', 'train').startswith(
        '# profile of PoolFormer (default) (train, 3 calls)\n')
    with pytest.raises(InputError, match='deploy has no train run'):
        profile(settings, 'deploy', 'train')


@pytest.mark.parametrize('settings, message', [
    (dict(arch='s13'), "unknown arch 's13'"),
    (dict(size=(16, 64)), 'size must be (H, W), each >= 32'),
    (dict(dtype='fp64'), "unknown dtype 'fp64'"),
    (dict(reps=0), 'reps must be >= 1, got 0'),
    (dict(device='tpu'), "unknown device 'tpu'"),
])
def test_bad_settings(settings, message):
    with pytest.raises(InputError) as exc:
        BenchmarkSettings(**settings)
    assert message in str(exc.value)


def test_bad_variants():
    with pytest.raises(InputError, match=r"unknown variant\(s\) \['ourz'\]"):
        benchmark(variants=['ourz'])
    with pytest.raises(InputError, match=r"unknown phase\(s\) \['test'\]"):
        benchmark(phases=['test'])


def test_vary_size_cycles_through_sizes():
    bench = Bench(BenchmarkSettings(size=(64, 96), vary_size=3))
    inputs = bench._inputs(bench.x_cl)
    shapes = [tuple(next(inputs).shape[2:]) for _ in range(6)]
    assert shapes[:3] == [(64, 96), (96, 192), (128, 128)]
    assert shapes[3:] == shapes[:3]
    assert next(inputs).is_contiguous(memory_format=torch.channels_last)
    inputs = Bench(BenchmarkSettings(size=(64, 96)))._inputs(bench.x)
    assert next(inputs) is next(inputs) is bench.x


def test_default_variants():
    from poolformer_mm.apis.benchmark import default_variants
    on_cpu, on_cuda = default_variants('cpu'), default_variants('cuda')
    # torch.compile takes minutes: on request only; Triton's kernels run
    # interpreted on the CPU.
    assert not {'compile', 'compiled', 'triton'} & set(on_cpu)
    assert 'triton' in on_cuda and 'compile' not in on_cuda
    assert {'timm', 'ours', 'reference', 'deploy', 'floor_1x1'} <= set(on_cpu)
