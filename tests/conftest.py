import importlib.util
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs')
TOOLS = osp.join(ROOT, 'tools')

# Tests run on 2 cores: keep torch from oversubscribing them.
os.environ.setdefault('OMP_NUM_THREADS', '2')


def run_command(cmd, cwd=None, env=None, timeout=900):
    """Run ``cmd`` (in ``env``, default the current environment); fail with
    its output unless it exits 0."""
    cmd = [str(c) for c in cmd]
    result = subprocess.run(cmd, cwd=str(cwd or ROOT), capture_output=True,
                            text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        pytest.fail(f'{" ".join(cmd)} exited {result.returncode}\n'
                    f'--- stdout ---\n{result.stdout[-6000:]}\n'
                    f'--- stderr ---\n{result.stderr[-6000:]}')
    return result


def run_commands(cmds, cwd=None, env=None, timeout=900):
    """Run independent commands side by side (most of their time is
    single-threaded imports); fail with the output of any that does not
    exit 0. Returns their results in order."""
    procs = [
        subprocess.Popen([str(c) for c in cmd], cwd=str(cwd or ROOT),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env) for cmd in cmds
    ]
    results = []
    for cmd, proc in zip(cmds, procs):
        stdout, stderr = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(cmd, proc.returncode,
                                                   stdout, stderr))
    for result in results:
        if result.returncode != 0:
            pytest.fail(f'{" ".join(map(str, result.args))} exited '
                        f'{result.returncode}\n'
                        f'--- stdout ---\n{result.stdout[-6000:]}\n'
                        f'--- stderr ---\n{result.stderr[-6000:]}')
    return results


def free_port():
    """A TCP port free on 127.0.0.1 now, for a process group's master."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def load_tool(script):
    """tools/<script> (e.g. 'infer.py', 'analysis/get_flops.py') imported
    as a module, to call its functions in this process."""
    name = osp.splitext(osp.basename(script))[0]
    spec = importlib.util.spec_from_file_location(name,
                                                  osp.join(TOOLS, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(script, *args, cwd=None, timeout=900, env=None):
    """Run tools/<script> in a fresh interpreter; fail with its output."""
    return run_command([sys.executable, osp.join(TOOLS, script), *args],
                       cwd, dict(os.environ, **(env or {})), timeout)


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
    from tiny_demo import DEMO_MODELS, train_demos
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
