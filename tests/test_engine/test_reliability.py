"""Checkpoints that survive crashes, resume on torch >= 2.6, unsafe pickles.

The end-to-end tests train the tiny demo config with a small RetinaNet
(tests/helpers/tiny_demo.py: 2 epochs of 4 iterations at 64x64, deterministic)
through tools/train.py, and
through MMDetection's own tools/train.py, which runs the same runner and
hooks because the configs name them. A kill after a checkpoint, then
resume: tests/test_engine/test_preemption.py.
"""
import json
import os
import os.path as osp
import pickle
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope

from helpers.commands import ROOT, TOOLS, run_tool
from poolformer_mm.engine.hooks import PART_SUFFIX
from poolformer_mm.engine.runner import (SafeRunner, check_optimizer_state,
                                         checkpoint_is_complete,
                                         find_resumable_checkpoint)
from poolformer_mm.apis import train
from poolformer_mm.checkpoint import (from_plain, load_training_checkpoint,
                                      to_plain)
from poolformer_mm.errors import CheckpointError
from helpers.tiny_demo import state_dict, write_tiny_config

EPOCHS = 2


def assert_same_weights(path, reference):
    actual, expected = state_dict(path), state_dict(reference)
    assert list(actual) == list(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, msg=key)


@pytest.fixture(scope='module')
def reference(demo_data, tmp_path_factory):
    """The uninterrupted run: work dir with epoch_1..3.pth."""
    tmp = tmp_path_factory.mktemp('reference')
    config = write_tiny_config(tmp / 'tiny.py', demo_data, EPOCHS,
                               small_model=True)
    work = tmp / 'work'
    # What tools/train.py runs, in this process; a runner of its own name
    # (mmengine's visualizer is a named singleton).
    train(config, str(work), {'experiment_name': 'reliability_reference',
                              'visualizer.name': 'reliability_reference'})
    assert (work / 'last_checkpoint').read_text() == str(work /
                                                         f'epoch_{EPOCHS}.pth')
    return work


# Imported by the training process through custom_imports: the checkpoint of
# epoch 2 is half written when the process is SIGKILLed.
DIE_WHILE_SAVING = '''
import os, signal
from mmengine.fileio import LocalBackend

_put = LocalBackend.put


def put(self, obj, filepath):
    if 'epoch_2.pth' in str(filepath) and os.environ.get('DIE_WHILE_SAVING'):
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _put(self, obj, filepath)


LocalBackend.put = put
'''


def test_kill_during_checkpoint_write(demo_data, reference, tmp_path):
    """A kill while epoch_2.pth is written leaves epoch_1.pth usable, even
    with max_keep_ckpts=1 (mmengine deletes the old checkpoint before writing
    the new one). Then the torn file is put where a non-atomic writer would
    have left it, with the pointer on it: resume must skip it."""
    (tmp_path / 'die_while_saving.py').write_text(DIE_WHILE_SAVING)
    config = write_tiny_config(
        tmp_path / 'tiny.py',
        demo_data,
        max_epochs=2,
        max_keep_ckpts=1,
        imports=('poolformer_mm', 'die_while_saving'),
        small_model=True)
    work = tmp_path / 'work'
    env = dict(
        os.environ,
        DIE_WHILE_SAVING='1',
        PYTHONPATH=os.pathsep.join(
            [str(tmp_path), os.environ.get('PYTHONPATH', '')]))
    killed = subprocess.run([
        sys.executable,
        osp.join(TOOLS, 'train.py'), config, '--work-dir',
        str(work)
    ],
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # The torn bytes are only under the temporary name.
    part = work / ('epoch_2.pth' + PART_SUFFIX)
    assert part.is_file() and not (work / 'epoch_2.pth').exists()
    assert checkpoint_is_complete(str(work / 'epoch_1.pth'))
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_1.pth')
    assert find_resumable_checkpoint(str(work)) == str(work / 'epoch_1.pth')

    # What mmengine's own hook could leave: the torn file under its name,
    # and (after a disk filled up, or a copy) the pointer on it.
    part.rename(work / 'epoch_2.pth')
    (work / 'last_checkpoint').write_text(str(work / 'epoch_2.pth'))
    assert not checkpoint_is_complete(str(work / 'epoch_2.pth'))

    env.pop('DIE_WHILE_SAVING')
    result = run_tool(
        'train.py', config, '--work-dir', work, '--resume', env=env)
    output = result.stdout + result.stderr
    assert 'missing or incomplete' in output
    assert 'resuming from ' + str(work / 'epoch_1.pth') in output
    assert_same_weights(work / 'epoch_2.pth', reference / 'epoch_2.pth')
    # max_keep_ckpts=1 still holds, and no temporary file is left.
    assert sorted(p.name for p in work.glob('*.pth*')) == ['epoch_2.pth']
    shutil.rmtree(work)


def test_find_resumable_checkpoint_cases(tmp_path):
    assert find_resumable_checkpoint(str(tmp_path)) is None
    torch.save({'x': torch.zeros(1)}, tmp_path / 'iter_4.pth')
    torch.save({'x': torch.zeros(1)}, tmp_path / 'iter_8.pth')
    (tmp_path / 'iter_12.pth').write_bytes(b'torn')
    # No pointer: the newest complete file (written last, then by number).
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path /
                                                           'iter_8.pth')
    # An empty pointer (killed while rewriting it) is not trusted either.
    (tmp_path / 'last_checkpoint').write_text('')
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path /
                                                           'iter_8.pth')
    # A pointer to a deleted file.
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_16.pth'))
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path /
                                                           'iter_8.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path /
                                                           'iter_4.pth')
    for name in ('iter_4.pth', 'iter_8.pth'):
        (tmp_path / name).unlink()
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_12.pth'))
    with pytest.raises(CheckpointError, match=r'no complete checkpoint'):
        find_resumable_checkpoint(str(tmp_path))


def mmengine_like_checkpoint():
    """What mmengine puts into a training checkpoint besides tensors."""
    hub = MessageHub.get_instance('test_reliability')
    hub.update_scalar('train/loss', np.float64(1.5))
    hub.update_scalar('train/lr', 0.1)
    hub.update_info('keep_ckpt_ids', [1, 2])
    return {
        'meta': {
            'epoch': 1,
            'iter': 4,
            'dataset_meta': {
                'classes': ('a', 'b'),
                'palette': np.array([[1, 2, 3]])
            }
        },
        'state_dict': {
            'w': torch.ones(2)
        },
        'message_hub': hub.state_dict(),
    }


@pytest.mark.integration
def test_older_checkpoints_load_through_the_package_only(tmp_path):
    """A checkpoint holding mmengine's objects (mmengine's CheckpointHook,
    earlier releases) is read by this package's loader through its
    stand-ins, and refused by plain weights-only torch.load, whether
    poolformer_mm is imported or not: the import widens nothing."""
    path = tmp_path / 'epoch_1.pth'
    torch.save(mmengine_like_checkpoint(), path)
    checkpoint = load_training_checkpoint(str(path))
    buffer = checkpoint['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    assert buffer.mean() == 1.5 and buffer.statistics('max') == 1.5
    assert checkpoint['meta']['dataset_meta']['palette'].tolist() == [[
        1, 2, 3
    ]]
    script = ('import pickle, sys, torch\n'
              'if sys.argv[2] == "import": import poolformer_mm\n'
              'try:\n'
              '    torch.load(sys.argv[1])\n'
              'except pickle.UnpicklingError:\n'
              '    sys.exit(3)\n')
    for mode in ('import', 'no-import'):
        result = subprocess.run(
            [sys.executable, '-c', script, str(path), mode],
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 3, (mode, result.stderr[-3000:])


@pytest.mark.integration
def test_plain_checkpoints_need_no_allowlist(tmp_path):
    """to_plain's form of the same checkpoint: plain torch.load reads it in
    a process that never imported poolformer_mm, and from_plain builds the
    objects again."""
    plain = to_plain(mmengine_like_checkpoint())
    hub = plain['message_hub']['log_scalars']['train/loss']
    assert hub['__type__'] == 'mmengine.logging.HistoryBuffer'
    torch.save(plain, tmp_path / 'plain.pth')
    script = ('import sys, torch\n'
              'ckpt = torch.load(sys.argv[1])\n'
              'print(ckpt["message_hub"]["log_scalars"]["train/loss"]'
              '["log_history"].tolist())\n')
    result = subprocess.run(
        [sys.executable, '-c', script, str(tmp_path / 'plain.pth')],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # (The test's message hub is shared: one 1.5 per call.)
    assert set(json.loads(result.stdout)) == {1.5}
    back = from_plain(torch.load(tmp_path / 'plain.pth'))
    assert back['message_hub']['log_scalars']['train/loss'].mean() == 1.5
    assert back['meta']['dataset_meta']['palette'].dtype == np.int64
    with pytest.raises(TypeError, match=r"checkpoint\['meta'\]\['x'\] is a "
                       r'.*Payload'):
        to_plain(dict(meta=dict(x=Payload())))


class Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (print, ('pwned', ))


class SneakyAttribute:
    """getattr of something other than a HistoryBuffer statistic."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, 'update'))


@pytest.mark.parametrize('payload,what', [
    (Payload(), 'the global print'),
    (SneakyAttribute(), "getattr(mmengine.logging.history_buffer."
     "HistoryBuffer, 'update')"),
])
def test_unsafe_checkpoint_is_refused(payload, what, tmp_path, capsys):
    checkpoint = mmengine_like_checkpoint()
    checkpoint['meta']['evil'] = payload
    torch.save(checkpoint, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointError) as info:
        load_training_checkpoint(str(tmp_path / 'evil.pth'))
    message = str(info.value)
    assert 'evil.pth' in message and 'not plain data' in message
    assert what in message
    # The frameworks' own plain torch.load refuses it too.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / 'evil.pth')
    assert 'pwned' not in capsys.readouterr().out


class ToyModel(BaseModel):
    """What SafeRunner needs of a model, with the weights of
    mmengine_like_checkpoint()."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))

    def forward(self, inputs=None, data_samples=None, mode='tensor'):
        return self.w


def test_runner_loading_is_guarded(tmp_path):
    torch.save(mmengine_like_checkpoint(), tmp_path / 'good.pth')
    checkpoint = mmengine_like_checkpoint()
    checkpoint['evil'] = Payload()
    torch.save(checkpoint, tmp_path / 'evil.pth')
    data = (tmp_path / 'good.pth').read_bytes()
    (tmp_path / 'torn.pth').write_bytes(data[:len(data) // 2])
    # The runner makes its scope the current one; later tests expect none.
    with DefaultScope.overwrite_default_scope('mmengine'):
        runner = SafeRunner(model=ToyModel(), work_dir=str(tmp_path / 'work'))
        assert runner.load_checkpoint(str(tmp_path /
                                          'good.pth'))['meta']['iter'] == 4
        assert torch.equal(runner.model.w, torch.ones(2))
        with pytest.raises(CheckpointError, match='not plain data'):
            runner.load_checkpoint(str(tmp_path / 'evil.pth'))
        with pytest.raises(CheckpointError, match=r'torn\.pth.*truncated'):
            runner.load_checkpoint(str(tmp_path / 'torn.pth'))


def test_optimizer_state_must_fit_the_parameters():
    from types import SimpleNamespace
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 4))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 2)).sum().backward()
    optimizer.step()
    runner = SimpleNamespace(model=model,
                             optim_wrapper=OptimWrapper(optimizer=optimizer))
    check_optimizer_state(runner, 'ok.pth')
    # What loading the state of a model with another parameter order gives.
    first, second = model[0].weight, model[1].weight
    state = optimizer.state
    state[first], state[second] = state[second], state[first]
    with pytest.raises(CheckpointError,
                       match=r"'exp_avg' has shape \(4, 3\) where the model "
                       r'parameter 0.weight has \(3, 2\)'):
        check_optimizer_state(runner, 'other.pth')


# Imported by MMDetection's tools/train.py through custom_imports: records
# which runner and hooks it runs.
RECORD_RUNNER = '''
import json, os.path as osp
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RecordRunner(Hook):

    def before_train(self, runner):
        with open(osp.join(runner.work_dir, 'runner.jsonl'), 'a') as f:
            f.write(json.dumps(dict(
                runner=type(runner).__name__,
                train_loop=type(runner.train_loop).__name__,
                hooks=[type(h).__name__ for h in runner.hooks])) + '\\n')
'''


def mmdet_train_script():
    import mmdet
    script = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools',
                      'train.py')
    if not osp.isfile(script):
        pytest.skip(f'{script} is not installed with mmdet')
    return script


def test_mmdetection_train_tool_runs_the_same(demo_data, reference,
                                              tmp_path):
    """MMDetection's tools/train.py builds SafeRunner and SafeCheckpointHook
    from the config, and its --resume from the first epoch's checkpoint of
    our tools/train.py's run continues to that run's final weights."""
    script = mmdet_train_script()
    (tmp_path / 'record_runner.py').write_text(RECORD_RUNNER)
    config = write_tiny_config(
        tmp_path / 'tiny.py',
        demo_data,
        EPOCHS,
        imports=('poolformer_mm', 'record_runner'),
        extra='custom_hooks = [dict(type="RecordRunner")]',
        small_model=True)
    work = tmp_path / 'work'
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(tmp_path), os.environ.get('PYTHONPATH', '')]))

    def train(*args):
        result = subprocess.run(
            [sys.executable, script, config, '--work-dir',
             str(work)] + list(args),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600)
        assert result.returncode == 0, (result.stdout[-3000:] +
                                        result.stderr[-3000:])
        return result.stdout + result.stderr

    work.mkdir()
    shutil.copy(reference / 'epoch_1.pth', work / 'epoch_1.pth')
    output = train('--resume')
    assert 'Resuming from ' + str(work / 'epoch_1.pth') in output
    assert 'resumed epoch: 1' in output
    runs = [
        json.loads(line)
        for line in (work / 'runner.jsonl').read_text().splitlines()
    ]
    assert len(runs) == 1
    for run in runs:
        assert run['runner'] == 'SafeRunner'
        assert 'SafeCheckpointHook' in run['hooks']
        assert 'CheckpointHook' not in run['hooks']
        assert 'PreemptionHook' in run['hooks']
        assert run['train_loop'] == 'ResumableEpochBasedTrainLoop'
    assert_same_weights(work / f'epoch_{EPOCHS}.pth',
                        reference / f'epoch_{EPOCHS}.pth')
    shutil.rmtree(work)
