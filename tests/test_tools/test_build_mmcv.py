"""The plumbing of ``make setup-cuda`` (tools/setup_cuda.sh), which builds
mmcv's CUDA ops on a machine without a GPU: the cache key of a CUDA build
(tools/mmcv_wheel.sh), the refusal without a toolkit, and the check of a
build (tools/check_mmcv_cuda.py) on shared libraries compiled here: with
nvcc, real device code for two architectures; with g++, none.

The build itself takes about an hour on 2 cores; docs/benchmark.md records
it.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch

from helpers.commands import ROOT, TOOLS

pytestmark = pytest.mark.integration

# The launchers the configs' heads call, with mmcv's argument lists (the
# check reads them from `nm -DC`, demangled).
LAUNCHERS = '''
namespace at { struct Tensor {}; }
using at::Tensor;
void NMSCUDAKernelLauncher(Tensor, Tensor, float, int) {}
void ROIAlignForwardCUDAKernelLauncher(Tensor, Tensor, Tensor, Tensor, Tensor,
                                       int, int, float, int, int, bool) {}
void SigmoidFocalLossForwardCUDAKernelLauncher(Tensor, Tensor, Tensor, Tensor,
                                               float, float) {}
void SigmoidFocalLossBackwardCUDAKernelLauncher(Tensor, Tensor, Tensor,
                                                Tensor, float, float) {}
'''
ROI_ALIGN_BACKWARD = '''
void ROIAlignBackwardCUDAKernelLauncher(Tensor, Tensor, Tensor, Tensor,
                                        Tensor, int, int, float, int, int,
                                        bool) {}
'''
KERNEL = '__global__ void scale(float *x, float a) { x[threadIdx.x] *= a; }\n'


def compile_library(tmp_path, name, source, nvcc_archs=()):
    """A shared library of ``source``: by nvcc with device code for
    ``nvcc_archs`` (e.g. ``(80, 90)``), else by g++."""
    if nvcc_archs:
        src = tmp_path / f'{name}.cu'
        cmd = [shutil.which('nvcc') or pytest.skip('needs nvcc'), '-shared',
               '-Xcompiler', '-fPIC']
        for arch in nvcc_archs:
            cmd += ['-gencode', f'arch=compute_{arch},code=sm_{arch}']
    else:
        src = tmp_path / f'{name}.cpp'
        cmd = ['g++', '-shared', '-fPIC']
    src.write_text(source)
    out = tmp_path / f'lib{name}.so'
    subprocess.run(cmd + [str(src), '-o', str(out)], check=True,
                   capture_output=True, timeout=300)
    return str(out)


def check(*args):
    """tools/check_mmcv_cuda.py's exit code and output."""
    return subprocess.run(
        [sys.executable, osp.join(TOOLS, 'check_mmcv_cuda.py'), *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_check_reads_launchers_and_device_code(tmp_path):
    complete = compile_library(tmp_path, 'complete',
                               LAUNCHERS + ROI_ALIGN_BACKWARD + KERNEL,
                               nvcc_archs=(80, 90))
    result = check('--archs', '8.0;9.0', '--ext', complete)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '5 CUDA kernel launchers' in result.stdout
    for op in ('nms', 'roi_align', 'sigmoid_focal_loss'):
        assert f'  {op}: ok' in result.stdout
    assert 'device code for sm [80, 90]; asked for [80, 90]' in result.stdout
    result = check('--archs', '8.0;9.0;10.0', '--ext', complete)
    assert result.returncode == 1
    assert 'architectures [100]' in result.stderr

    # Host code only, RoIAlign's backward launcher left out.
    partial = compile_library(tmp_path, 'partial', LAUNCHERS)
    result = check('--archs', '9.0', '--ext', partial)
    assert result.returncode == 1
    assert '  roi_align: MISSING' in result.stdout
    assert 'device code for sm []' in result.stdout
    assert "'roi_align: ROIAlignBackwardCUDAKernelLauncher'" in result.stderr
    assert 'ROIAlignForward' not in result.stderr


def test_the_installed_cpu_build_fails_the_check():
    """The tested environment's mmcv has CPU ops only."""
    result = check('--archs', '9.0')
    assert result.returncode == 1
    assert '0 CUDA kernel launchers' in result.stdout
    assert 'device code for sm []' in result.stdout


def test_cuda_builds_are_cached_per_architecture_list(tmp_path):
    """FORCE_CUDA=1 with TORCH_CUDA_ARCH_LIST '8.0;9.0' finds the wheel in
    the folder for that list (and builds nothing)."""
    py = f'cp{sys.version_info[0]}{sys.version_info[1]}'
    version = torch.__version__.split('+')[0]
    key = (f'mmcv-2.1.0-torch{version}-{py}-cuda{torch.version.cuda}-'
           f'sm80-90-{os.uname().machine}')
    wheel = tmp_path / 'wheels' / key / 'mmcv-2.1.0-cp311-linux.whl'
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b'')
    env = dict(os.environ, POOLFORMER_MM_CACHE=str(tmp_path), FORCE_CUDA='1',
               TORCH_CUDA_ARCH_LIST='8.0;9.0')
    result = subprocess.run(
        ['bash', osp.join(TOOLS, 'mmcv_wheel.sh'), sys.executable, '2.1.0'],
        capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(wheel)
    assert 'reusing cached mmcv wheel' in result.stderr


def test_setup_cuda_needs_a_toolkit():
    nvcc = shutil.which('nvcc')
    path = os.pathsep.join(
        d for d in os.environ['PATH'].split(os.pathsep)
        if not (nvcc and osp.isdir(d)
                and osp.samefile(d, osp.dirname(nvcc))))
    env = {k: v for k, v in os.environ.items() if k != 'CUDA_HOME'}
    env['PATH'] = path
    result = subprocess.run(['bash', osp.join(TOOLS, 'setup_cuda.sh')],
                            capture_output=True, text=True, timeout=120,
                            env=env, cwd=ROOT)
    assert result.returncode == 1
    assert 'a CUDA toolkit is needed' in result.stderr
