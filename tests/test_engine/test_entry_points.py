"""MMDetection's and MMSegmentation's own entry points read the checkpoints
that training with this package's configs writes.

Each entry point runs in a fresh interpreter, as a user would run it: the
config's ``custom_imports`` import ``poolformer_mm``, which adds the data-only
types of mmengine checkpoints to torch's weights-only allowlist before any
checkpoint is read. Nothing in these scripts imports ``poolformer_mm`` itself.
MMDetection's own ``tools/train.py --resume`` on a work dir it wrote is
``test_reliability.test_mmdetection_train_tool_runs_the_same``.
"""
import glob
import os.path as osp
import subprocess
import sys

import pytest
import torch
from helpers.commands import CONFIGS, run_command, run_commands
from helpers.tiny_demo import IN_PROCESS_LOADING, write_narrow_config

from poolformer_mm.frameworks import installed_distribution

# MMSegmentation's own entry points read the config before anything imports
# poolformer_mm, and onedl-mmengine 0.10.12 resolves `mmseg::` bases by the
# distribution name `mmsegmentation`, which the fork's is not (README, "Which
# OpenMMLab"): strict, so the mark goes when the fork fixes it.
mmseg_bases_unresolvable = pytest.mark.xfail(
    installed_distribution('mmseg') == 'onedl-mmsegmentation',
    reason='onedl-mmengine cannot resolve mmseg:: bases for '
    'onedl-mmsegmentation before poolformer_mm is imported',
    strict=True)

MMDET_TOOLS = osp.join(
    osp.dirname(__import__('mmdet').__file__), '.mim', 'tools')
MMSEG_TOOLS = osp.join(
    osp.dirname(__import__('mmseg').__file__), '.mim', 'tools')


def run_python(args, cwd):
    """Run ``python *args`` in a fresh interpreter; fail with its output."""
    return run_command([sys.executable, *args], cwd)


def val_image(demo_data):
    return sorted(glob.glob(str(demo_data / 'coco' / 'val' / '*.png')))[0]


DET_API = '''
import sys
from mmdet.apis import inference_detector, init_detector
model = init_detector(sys.argv[1], sys.argv[2], device='cpu')
result = inference_detector(model, sys.argv[3])
print('boxes', len(result.pred_instances.bboxes))
print('classes', model.dataset_meta['classes'])
'''

DET_INFERENCER = '''
import sys
from mmdet.apis import DetInferencer
inferencer = DetInferencer(sys.argv[1], sys.argv[2], device='cpu')
result = inferencer(sys.argv[3], no_save_vis=True, return_datasamples=True)
print('boxes', len(result['predictions'][0].pred_instances.bboxes))
'''

SEG_API = '''
import sys
from mmseg.apis import inference_model, init_model
model = init_model(sys.argv[1], sys.argv[2], device='cpu')
result = inference_model(model, sys.argv[3])
print('label map', tuple(result.pred_sem_seg.data.shape))
print('classes', model.dataset_meta['classes'])
'''

SEG_INFERENCER = '''
import sys
from mmseg.apis import MMSegInferencer
inferencer = MMSegInferencer(sys.argv[1], sys.argv[2], device='cpu')
result = inferencer(sys.argv[3], return_datasamples=True)
print('label map', tuple(result.pred_sem_seg.data.shape))
'''


def run_snippets(snippets, cwd, *args):
    """Each snippet in its own fresh interpreter, side by side; their
    outputs."""
    results = run_commands(
        [[sys.executable, '-c', code, *args] for code in snippets], cwd)
    return [result.stdout for result in results]


def test_mmdet_apis_read_training_checkpoint(trained_demo, demo_data,
                                             tmp_path):
    config, checkpoint, _ = trained_demo('retinanet')
    api, inferencer = run_snippets([DET_API, DET_INFERENCER], tmp_path,
                                   config, checkpoint, val_image(demo_data))
    assert 'boxes ' in api and "'circle'" in api
    assert 'boxes ' in inferencer


@mmseg_bases_unresolvable
def test_mmseg_apis_read_training_checkpoint(trained_demo, demo_data,
                                             tmp_path):
    config, checkpoint, _ = trained_demo('sem_fpn')
    api, inferencer = run_snippets([SEG_API, SEG_INFERENCER], tmp_path,
                                   config, checkpoint, val_image(demo_data))
    assert 'label map (1, 96, 96)' in api and "'circle'" in api
    assert 'label map (1, 96, 96)' in inferencer


@mmseg_bases_unresolvable
def test_framework_test_tools_read_training_checkpoints(
        trained_demo, tmp_path):
    """MMDetection's tools/test.py on RetinaNet's, MMSegmentation's on
    Semantic FPN's checkpoint, side by side."""
    commands, metrics = [], []
    for model, tools, metric in (('retinanet', MMDET_TOOLS, 'bbox_mAP'),
                                 ('sem_fpn', MMSEG_TOOLS, 'mIoU')):
        config, checkpoint, options = trained_demo(model)
        commands.append([
            sys.executable,
            osp.join(tools, 'test.py'), config, checkpoint, '--work-dir',
            tmp_path / model, '--cfg-options'
        ] + options)
        metrics.append(metric)
    for result, metric in zip(run_commands(commands, tmp_path), metrics):
        assert metric in result.stdout + result.stderr


@mmseg_bases_unresolvable
def test_mmseg_train_tool_resumes_its_own_checkpoint(demo_data, tmp_path):
    # The Semantic FPN demo config with a narrow network: the test is of the
    # tool's resume, which the network's size only slows.
    config = write_narrow_config(
        tmp_path / 'narrow_sem_fpn.py',
        osp.join(CONFIGS, 'demo', 'sem_fpn_poolformer_s12_demo.py'),
        neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
        decode_head=dict(in_channels=[32, 32, 32, 32], channels=32))
    root = f'{demo_data}/ade/'
    options = [
        f'{d}.dataset.data_root={root}'
        for d in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    ] + IN_PROCESS_LOADING + [
        'train_dataloader.batch_size=2', 'train_cfg.val_interval=100',
        'default_hooks.checkpoint.interval=1'
    ]
    work_dir = tmp_path / 'work'
    train = [osp.join(MMSEG_TOOLS, 'train.py'), config, '--work-dir',
             work_dir]
    run_python(train + ['--cfg-options', 'train_cfg.max_iters=1'] + options,
               tmp_path)
    assert (work_dir / 'iter_1.pth').is_file()
    out = run_python(
        train + ['--resume', '--cfg-options', 'train_cfg.max_iters=2'] +
        options, tmp_path)
    assert 'resumed epoch: 0, iter: 1' in out.stdout + out.stderr
    assert (work_dir / 'iter_2.pth').is_file()


class RunsCode:
    """Unpickling this calls a function: what weights-only loading is for."""

    def __reduce__(self):
        return (print, ('code ran while loading',))


def test_framework_api_refuses_checkpoint_with_code(trained_demo, demo_data,
                                                    tmp_path):
    config, checkpoint, _ = trained_demo('retinanet')
    from poolformer_mm.checkpoint import load_training_checkpoint
    evil = load_training_checkpoint(checkpoint)
    evil['meta']['payload'] = RunsCode()
    torch.save(evil, tmp_path / 'evil.pth')
    result = subprocess.run(
        [sys.executable, '-c', DET_API, config, str(tmp_path / 'evil.pth'),
         val_image(demo_data)],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert 'Weights only load failed' in result.stderr
    assert 'RunsCode' in result.stderr or 'print' in result.stderr
    assert 'code ran while loading' not in result.stdout + result.stderr
