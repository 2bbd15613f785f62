"""The Python parts of ``tools/gpu_check.sh``
(:mod:`poolformer_mm.apis.gpu_check`) run on the CPU, through their command
line, on small inputs: each part writes its JSON and its ``.done.json``, and
the table reads them.

What needs CUDA is replaced: ``--device cpu`` for the parts, and in
:func:`test_recompiles_part_counts` dynamo's ``eager`` backend instead of
inductor (a full-size S12 takes inductor minutes on two cores; the counting
is dynamo's either way).
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from poolformer_mm.apis import gpu_check as G
from poolformer_mm.apis.gpu_check_report import read_parts, table
from poolformer_mm.errors import InputError
from poolformer_mm.models.fast import compiled as C

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
INFO = dict(gpu='test', torch='x')


def read(work, part):
    with open(osp.join(work, f'{part}.json')) as f:
        return json.load(f)


def test_parse_input():
    assert G.parse_input('2x800x1216') == (2, (800, 1216))
    for bad in ('2x800', '0x64x64', 'axbxc'):
        with pytest.raises(InputError, match='NxHxW'):
            G.parse_input(bad)


@pytest.mark.integration  # times full-size runs
def test_bench_part(tmp_path):
    work = str(tmp_path)
    assert G.main(['bench', '--work', work, '--seconds', '60', '--device',
                   'cpu', '--archs', 's12', '--inputs', '1x64x96',
                   '--dtypes', 'fp32', '--variants', 'ours', 'reference',
                   'floor_1x1', '--compile-archs', '--reps', '2',
                   '--warmup', '1']) == 0
    configs = read(work, 'bench')['configs']
    assert [c['status'] for c in configs] == ['ok']
    results = configs[0]['results']
    assert {'ours', 'reference', 'floor_1x1'} <= set(results['eval'])
    assert {'train_ours', 'train_reference'} <= set(results['train'])
    assert read(work, 'bench.done')['error'] is None
    with pytest.raises(InputError, match='dtypes'):
        G.bench_part(work, 1, dtypes=['fp8'])


def test_bench_part_stops_at_its_budget(tmp_path):
    configs = G.bench_part(str(tmp_path), 0, archs=['s12'],
                           inputs=['1x64x64', '2x64x64'], dtypes=['fp32'],
                           device='cpu')['configs']
    assert [c['status'] for c in configs] == ['skipped: budget'] * 2


@pytest.mark.integration  # trains
def test_train_part_losses_finite(tmp_path):
    work = str(tmp_path)
    assert G.main(['train', '--work', work, '--seconds', '60', '--device',
                   'cpu', '--arch', 's12', '--impls', 'auto', 'reference',
                   '--steps', '3', '--size', '64', '64', '--dtype',
                   'bf16']) == 0
    runs = read(work, 'train')['runs']
    assert [r['impl'] for r in runs] == ['auto', 'reference']
    for r in runs:
        assert r['status'] == 'ok' and r['steps'] == 3 and r['all_finite']
    with pytest.raises(InputError, match='impl'):
        G.train_check(impl='deploy', device='cpu')


@pytest.mark.integration  # compiles (dynamo)
def test_recompiles_part_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(C, 'COMPILE_OPTIONS',
                        dict(C.COMPILE_OPTIONS, backend='eager', options=None))
    import torch._dynamo
    torch._dynamo.reset()
    work = str(tmp_path)
    assert G.main(['recompiles', '--work', work, '--seconds', '120',
                   '--device', 'cpu', '--arch', 's12', '--sizes', '3',
                   '--batch', '1', '--dtype', 'fp32', '--scale', '160',
                   '96']) == 0
    data = read(work, 'recompiles')
    assert set(data['phases']) == {'eval', 'train'}
    assert all(max(size) <= 160 for size in data['sizes'])
    for r in data['phases'].values():
        assert r['calls'] == 3 and r['first_graphs'] >= 1
        assert r['recompiles'] >= 0 and 'status' not in r


def test_a_failing_part_is_reported(tmp_path):
    work = str(tmp_path)
    assert G.main(['bench', '--work', work, '--seconds', '5', '--device',
                   'cpu', '--archs', 'no_such_arch']) == 1
    assert 'no_such_arch' in read(work, 'bench.done')['error']


def test_table_of_partial_and_finished_parts(tmp_path):
    work, out = str(tmp_path / 'parts'), str(tmp_path / 'out')
    os.makedirs(work)
    G.write_part(work, 'tests', dict(groups=[dict(
        group='fast_paths -k cuda', status='ok', seconds=3., tests=2,
        passed=2, failed=0, errors=0, skipped=0, failures=[])]))
    G.write_part(work, 'tests.done', dict(seconds=3., budget_s=100,
                                          error=None))
    # train stopped at its limit: the JSON alone.
    G.write_part(work, 'train', dict(runs=[dict(
        arch='s12', impl='auto', dtype='fp16', lr=2e-4, steps=5,
        all_finite=True, nonfinite=[], first_loss=1.4, last_loss=1.2,
        scaler_skipped=1, final_scale=32768., median_step_ms=30.,
        status='ok')]))
    summary = table(work, out, info=INFO)
    assert not summary['ok']  # bench and recompiles gave nothing
    text = open(osp.join(out, 'table.md')).read()
    assert '| tests: fast_paths -k cuda | ok |' in text
    assert 'every loss finite' in text
    assert '| bench | no result' in text
    assert read_parts(work)['train']['finished'] is False
    assert json.load(open(osp.join(out, 'summary.json')))['ok'] is False


@pytest.mark.integration
def test_tests_part_runs_pytest_and_counts(tmp_path):
    test_file = tmp_path / 'test_group.py'
    test_file.write_text('import pytest\n'
                         'def test_ok(): pass\n'
                         'def test_bad(): assert False\n'
                         '@pytest.mark.skip\n'
                         'def test_skip(): pass\n')
    work = str(tmp_path / 'work')
    os.makedirs(work)
    result = G.tests_part(work, 120, groups={'g': [str(test_file)]})
    group, = result['groups']
    assert group['status'] == 'exit 1'
    assert (group['passed'], group['failed'], group['skipped']) == (1, 1, 1)
    # Class names are relative to pytest's rootdir, wherever that is.
    failure, = group['failures']
    assert failure.endswith('test_group::test_bad')
    assert read(work, 'tests') == result


@pytest.mark.integration
def test_script_needs_a_gpu(tmp_path):
    result = subprocess.run(
        ['bash', osp.join(ROOT, 'tools', 'gpu_check.sh'), str(tmp_path)],
        capture_output=True, text=True,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES='', PYTHON=sys.executable))
    assert result.returncode != 0
    assert 'needs a GPU' in result.stderr
