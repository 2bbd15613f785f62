"""Fixtures and lanes of the test suite.

Two lanes: ``make test`` runs every test; ``make test-fast`` runs the unit
tests that take well under a second, ``-m 'not integration and not slow'``
with ``POOLFORMER_MM_FAST_LANE=1``. A test is marked ``integration`` when it
starts processes, trains, compiles, or builds detectors and segmentors from
the real configs: by hand, or here when it uses a fixture that does
(:data:`INTEGRATION_FIXTURES`). ``slow`` marks the unit tests that run
full-size archs for seconds (:data:`SLOW`, the one list of them). In the fast
lane a test that starts an interpreter anyway fails, naming itself, so that
the lane stays free of them.
"""
import copy
import functools
import gc
import multiprocessing
import os
import re
import subprocess

import pytest

from helpers.commands import run_tool

# Tests run on 2 cores: keep torch from oversubscribing them (one thread per
# process when pytest-xdist runs two).
os.environ.setdefault(
    'OMP_NUM_THREADS', '1' if 'PYTEST_XDIST_WORKER' in os.environ else '2')

# The Triton kernels run in Triton's CPU interpreter where there is no GPU;
# the variable must be set before the first kernel is defined, whichever
# test imports them first.
if os.environ.get('TRITON_INTERPRET') is None:
    import torch
    if not torch.cuda.is_available():
        os.environ['TRITON_INTERPRET'] = '1'


def _read_metafiles_once():
    """mmengine reads every metafile of MMDetection or MMSegmentation (about
    a hundred YAML files, half a second) each time a config names an
    ``mmdet::`` or ``mmseg::`` base, and keeps nothing; the suite loads
    configs hundreds of times. The files do not change while it runs: this
    process parses each once and hands out copies. What configs resolve to
    stays the same (test_guards.py compares it with the snapshot)."""
    import mmengine.config.utils as config_utils
    load = config_utils.load
    parsed = functools.lru_cache(maxsize=None)(load)

    def load_once(file, *args, **kwargs):
        if (args or kwargs or not isinstance(file, str)
                or not file.endswith(('.yml', '.yaml'))):
            return load(file, *args, **kwargs)
        return copy.deepcopy(parsed(file))

    config_utils.load = load_once


_read_metafiles_once()


# Fixtures that write data with a tool or train: their users are
# integration tests.
INTEGRATION_FIXTURES = {'demo_data', 'trained_demo'}


# Unit tests of full-size archs, seconds each: make test runs them, the fast
# lane keeps their small-arch cases (node ids, matched from the start).
SLOW = re.compile('|'.join([
    r'tests/test_models/test_backbones\.py::test_output_shapes_at_odd_sizes'
    r'\[(PoolFormer-m36|poolformerv2_s12|randformer_s12|'
    r'identityformer_s12)\]',
    r'tests/test_models/test_fast_paths\.py::test_auto_matches_reference'
    r'\[.*-caformer_s18\]',
    r'tests/test_models/test_fast_paths\.py::test_deploy_matches_default'
    r'\[m36',
    r'tests/test_models/test_fast_paths\.py::test_deploy_off_cpu_',
    r'tests/test_models/test_fast_paths\.py::test_deploy_recorded_form',
    r'tests/test_models/test_pretrained\.py::test_original_release_parity'
    r'\[s24\]',
    r'tests/test_models/test_pretrained\.py::test_shape_mismatch_names',
    r'tests/test_models/test_metaformer\.py::test_(timm|original)_naming_'
    r'parity',
    r'tests/test_models/test_metaformer\.py::test_bf16_autocast_norms_in_'
    r'fp32\[caformer',
]))


# Before pytest-xdist's own hook, which reads the xdist_group marks.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, 'fixturenames', ()))
        if INTEGRATION_FIXTURES & fixtures:
            item.add_marker(pytest.mark.integration)
        if SLOW.match(item.nodeid):
            item.add_marker(pytest.mark.slow)
        # With pytest-xdist (make test: -n 2 --dist loadgroup) an
        # integration test runs in the process of the rest of its file, so
        # that module fixtures (an uninterrupted reference training, an
        # installed wheel) are made once; every user of the demo trainings
        # in one process, which trains them once. Unit tests go wherever a
        # process is free.
        if 'trained_demo' in fixtures:
            item.add_marker(pytest.mark.xdist_group('trained_demo'))
        elif item.get_closest_marker('integration'):
            item.add_marker(
                pytest.mark.xdist_group(item.nodeid.split('::')[0]))


@pytest.fixture(autouse=True)
def _fast_lane_starts_no_process(request, monkeypatch):
    if (os.environ.get('POOLFORMER_MM_FAST_LANE') != '1'
            or request.node.get_closest_marker('integration')):
        yield
        return

    def refuse(*args, **kwargs):
        raise RuntimeError(
            f'{request.node.nodeid} starts a process in the fast lane: mark '
            'it @pytest.mark.integration')

    popen_init = subprocess.Popen.__init__

    def popen(self, args, *rest, **kwargs):
        # Libraries probe compilers and git (mmengine's environment report,
        # Triton's driver): allowed. Interpreters and shell scripts (the
        # tools, trainings) are what the lane leaves out.
        program = args if isinstance(args, str) else str(list(args)[0])
        if any(word in os.path.basename(program.split()[0])
               for word in ('python', 'bash', 'torchrun')):
            refuse()
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, '__init__', popen)
    monkeypatch.setattr(multiprocessing.Process, 'start', refuse)
    yield


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """A tiny demo data set (COCO and ADE20K layouts) for tool tests."""
    out = tmp_path_factory.mktemp('demo_data') / 'demo'
    run_tool('make_demo_data.py', '--out', out, '--num-train', 8,
             '--num-val', 4, '--size', 96, '--seed', 1)
    return out


@pytest.fixture(scope='session')
def trained_demo(tmp_path_factory, demo_data):
    """``trained_demo(model)``: (config, checkpoint, cfg options) of a demo
    config trained for a couple of iterations by ``tools/train.py`` (see
    ``tiny_demo.train_demos``). The first request trains every demo model,
    side by side."""
    from helpers.tiny_demo import DEMO_MODELS, train_demos
    done = {}

    def get(model):
        if model not in DEMO_MODELS:
            raise ValueError(
                f'model must be one of {DEMO_MODELS}, not {model!r}')
        if not done:
            work_dirs = [tmp_path_factory.mktemp(f'trained_{m}')
                         for m in DEMO_MODELS]
            done.update(zip(DEMO_MODELS,
                            train_demos(DEMO_MODELS, demo_data, work_dirs)))
        return done[model]

    return get


def pytest_collection_finish(session):
    """Collection has imported the frameworks (half a million objects that
    live as long as the process). mmengine calls ``gc.collect()`` whenever
    it builds a data set, and each full collection would walk them all
    (half a second): moved out of the collector's view once, here."""
    gc.collect()
    gc.freeze()
