"""Paths of the checkout and subprocess runs, for the tests."""
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(ROOT, 'configs')
TOOLS = osp.join(ROOT, 'tools')
TESTS = osp.join(ROOT, 'tests')


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


def run_tool(script, *args, cwd=None, timeout=900, env=None):
    """Run tools/<script> in a fresh interpreter; fail with its output."""
    return run_command([sys.executable, osp.join(TOOLS, script), *args],
                       cwd, dict(os.environ, **(env or {})), timeout)
