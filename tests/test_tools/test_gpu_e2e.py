"""tools/gpu_e2e: what can be checked without a GPU.

The GPU run itself (mmcv's CUDA build, the trainings, the table) needs one;
here: the files it brings cover the frameworks' requirements at the tested
versions, the preparation downloads exactly those, the generated configs
are the real ones pointed at the demo data, and the table's arithmetic.
"""
import importlib.metadata
import math
import os.path as osp
import re
import subprocess
import sys

import pytest
from mmengine.config import Config

from helpers.commands import ROOT
from poolformer_mm.apis import gpu_e2e as driver

FILES = osp.join(ROOT, 'tools', 'gpu_e2e', 'files.txt')


def entries():
    """{name: (kind, version or None)} of tools/gpu_e2e/files.txt."""
    found = {}
    with open(FILES) as f:
        for line in f:
            if not line.strip() or line.startswith('#'):
                continue
            kind, spec = line.split()
            name, _, version = spec.partition('==')
            found[name.lower()] = (kind, version or None)
    return found


def setup_env_pins():
    with open(osp.join(ROOT, 'tools', 'setup_env.sh')) as f:
        text = f.read()
    pins = dict(re.findall(r'([A-Za-z0-9_.-]+)==([0-9][^\s)]*)', text))
    pins['mmcv'] = re.search(r'MMCV_VERSION=(\S+)', text).group(1)
    return {k.lower(): v for k, v in pins.items()}


def test_the_frameworks_at_the_tested_versions():
    carried, tested = entries(), setup_env_pins()
    for name in ('mmcv', 'mmengine', 'mmdet', 'mmsegmentation'):
        assert carried[name][1] == tested[name], name
    assert carried['mmcv'][0] == 'sdist'
    # Every carried version is the one the CPU environment runs.
    for name, (kind, version) in carried.items():
        if kind != 'image' and name in tested:
            assert version == tested[name], name
        if kind != 'image':
            assert version, f'{name}: carried files need an exact version'


@pytest.mark.parametrize('framework',
                         ['mmengine', 'mmcv', 'mmdet', 'mmsegmentation'])
def test_every_requirement_is_carried_or_in_the_image(framework):
    carried = entries()
    for requirement in importlib.metadata.requires(framework) or []:
        if 'extra ==' in requirement or 'sys_platform == "win32"' in (
                requirement):
            continue
        name = re.match(r'[A-Za-z0-9_.-]+', requirement).group(0).lower()
        assert name in carried, (framework, requirement)


@pytest.mark.integration
def test_prepare_downloads_exactly_the_list():
    result = subprocess.run(
        ['bash', osp.join(ROOT, 'tools', 'gpu_e2e', 'prepare.sh'),
         '--dry-run'],
        capture_output=True, text=True, check=True)
    commands = result.stdout.splitlines()
    fetched = {c.split()[-1] for c in commands}
    expected = {f'{name}=={version}'
                for name, (kind, version) in entries().items()
                if kind != 'image'}
    assert {f.lower() for f in fetched} == expected
    for command in commands:
        assert ' download ' in command and ' --no-deps ' in command
        if 'mmcv==' in command:
            assert '--no-binary :all:' in command
        else:
            assert '--only-binary :all:' in command
            assert '--python-version 3.12' in command
            assert '--platform manylinux2014_x86_64' in command


@pytest.mark.integration
def test_run_script_refuses_a_machine_without_cuda(tmp_path):
    result = subprocess.run(
        ['bash', osp.join(ROOT, 'tools', 'gpu_e2e', 'run.sh'),
         str(tmp_path / 'out')],
        capture_output=True, text=True,
        env={'PATH': osp.dirname(sys.executable) + ':/usr/bin:/bin',
             'CUDA_VISIBLE_DEVICES': ''})
    assert result.returncode != 0
    assert 'torch sees no CUDA device' in result.stderr


def test_generated_configs_are_the_real_ones_on_demo_data(demo_data,
                                                          tmp_path):
    from mmengine.registry import init_default_scope
    for name, (task, base, _) in driver.MODELS.items():
        path = driver.write_config(name, str(demo_data), 3, 2, str(tmp_path))
        cfg = Config.fromfile(path)
        probe = tmp_path / 'base.py'
        probe.write_text(f'_base_ = [{base!r}]\n')
        real = Config.fromfile(str(probe))
        # What trains is the real config's: optimizer, schedule shape,
        # batch per GPU, image sizes, backbone.
        assert cfg.optim_wrapper == real.optim_wrapper, name
        assert cfg.train_dataloader.batch_size == (
            real.train_dataloader.batch_size)
        assert cfg.model.backbone.type == real.model.backbone.type
        assert cfg.model.backbone.init_cfg is None
        if task == 'sem_fpn':
            assert (cfg.train_dataloader.dataset.pipeline ==
                    real.train_dataloader.dataset.pipeline)
            assert cfg.train_cfg.max_iters == 3
            assert cfg.model.decode_head.num_classes == 5
        else:
            assert cfg.train_pipeline == real.train_pipeline
            assert cfg.train_cfg.max_epochs == 1
        init_default_scope(cfg.default_scope)
        if cfg.default_scope == 'mmdet':
            import mmdet.datasets  # noqa: F401
            from mmdet.registry import DATASETS
        else:
            import mmseg.datasets  # noqa: F401
            from mmseg.registry import DATASETS
        train = DATASETS.build(cfg.train_dataloader.dataset)
        test = DATASETS.build(cfg.test_dataloader.dataset)
        if task != 'sem_fpn':  # one epoch of exactly 3 iterations
            assert len(train) == 3 * cfg.train_dataloader.batch_size
        assert len(test) == 2
        assert train.metainfo['classes'][-1] == 'star'


def test_summary_and_table():
    records = [dict(loss=2.0, time=1.0, memory=900),
               dict(loss=1.5, time=0.2, memory=1000),
               dict(loss=1.4, time=0.3, memory=950),
               dict(loss=1.2, time=0.25, memory=980)]
    summary = driver.summarize(records, warmup=1)
    assert summary == dict(iterations=4, finite_losses=4,
                           all_losses_finite=True, median_iter_s=0.25,
                           peak_memory_mb=1000)
    broken = driver.summarize(records + [dict(loss=math.nan, time=0.2)], 1)
    assert broken['finite_losses'] == 4 and not broken['all_losses_finite']
    ours = dict(run='a', model='retinanet_poolformer_s12', precision='amp',
                predictions=8, **summary)
    ref = dict(run='b', model='retinanet_r50', precision='amp',
               predictions=8, **dict(summary, median_iter_s=0.5,
                                     peak_memory_mb=2000))
    failed = dict(run='c', model='sem_fpn_r50', precision='fp32',
                  error='RuntimeError: CUDA out of memory')
    rows = driver.table([ours, ref, failed]).splitlines()
    assert rows[2] == ('| retinanet_poolformer_s12 | amp | 4/4 | 250.0 | '
                       '1000 | 0.50 | 0.50 | 8 |')
    assert rows[3].startswith('| retinanet_r50 | amp | 4/4 | 500.0 | 2000 '
                              '| - | - |')
    assert 'failed: RuntimeError: CUDA out of memory' in rows[4]
