"""A run stopped by a scheduler's signal at any iteration and resumed ends
with the weights of the uninterrupted run, having trained every sample once.

The tiny demo config (tests/helpers/tiny_demo.py) with a small
RetinaNet-PoolFormer (one block a stage) trains 2 epochs of 4 iterations (8
images; 2 a batch in one process, 1 a batch in each of 2 processes). The
stop points are the first iteration of an epoch (1), the middle of an epoch
(6 of 8) and the last iteration before an epoch checkpoint (4). The hook
``SignalAt`` (tests/helpers/stop_hooks.py) sends SIGTERM at the end of that
iteration, in 2 processes to one rank or both: the ranks must agree.

Every run flips images at random. Weights are compared bitwise: on the CPU
with ``deterministic=True`` the runs are deterministic, and each sample is
loaded under its own seed of (seed, epoch, index) (the loops'
``seed_per_sample``), whichever process loads it: the single-process runs
load in the main process, the two-process runs with a persistent worker
each, and ``test_workers_draw_what_the_main_process_draws`` with two
workers started again each epoch.

Single-process runs train in this process; the 2-process runs and the runs
that die by SIGKILL in processes forked from it (the frameworks are imported
once), the torchrun test through tools/dist_train.sh.
"""
import json
import multiprocessing
import os
import os.path as osp
import signal
import subprocess
import uuid

import pytest
import torch

from helpers.commands import ROOT, TOOLS, free_port
from poolformer_mm.apis.runs import build_runner, load_config, set_resume
from poolformer_mm.engine import PREEMPTED_EXIT_CODE
from poolformer_mm.engine.runner import checkpoint_is_complete
from helpers.tiny_demo import state_dict, write_tiny_config

TESTS = osp.dirname(osp.dirname(osp.abspath(__file__)))
EPOCHS = 2
ITERS_PER_EPOCH = 4
# name: (iteration after which the signal comes, ranks that get it when 2
# processes train)
STOPS = {
    'first_of_epoch': (1, (0, )),
    'mid_epoch': (6, (1, )),
    'before_epoch_checkpoint': (4, (0, 1)),
}

# One image a batch in each of 2 processes, loaded by a persistent worker.
TWO_PROCESS_LOADING = dict(
    batch_size=1, num_workers=1, persistent_workers=True)


def tiny_config(path, demo_data, processes, records, hooks=(), loading=None):
    """The tiny config with a random flip, recording each batch's sample
    ids and flips into ``records``; ``loading`` updates
    ``train_dataloader`` (default: in the main process for 1 process,
    :data:`TWO_PROCESS_LOADING` for 2)."""
    os.makedirs(records, exist_ok=True)
    custom_hooks = [dict(type='RecordSamples', out_dir=str(records))]
    custom_hooks += list(hooks)
    extra = f'custom_hooks = {custom_hooks!r}\n'
    if loading is None and processes == 2:
        loading = TWO_PROCESS_LOADING
    if loading:
        extra += f'train_dataloader.update({loading!r})\n'
    return write_tiny_config(
        path,
        demo_data,
        EPOCHS,
        imports=('poolformer_mm', 'helpers.stop_hooks'),
        flip=True,
        small_model=True,
        extra=extra)


def runner_cfg(config, work_dir, resume=False, launcher='none',
               cfg_options=None):
    """The config as tools/train.py prepares it."""
    cfg = load_config(config, cfg_options, launcher, str(work_dir))
    # The runner logs and dumps the config as text: unformatted, as
    # Config(format_python_code=False) gives it, it skips yapf, about a
    # fifth of these short trainings' time.
    object.__setattr__(cfg, '_format_python_code', False)
    # Runners of one test process need their own logger and visualizer.
    cfg.experiment_name = cfg.visualizer.name = uuid.uuid4().hex
    if resume:
        set_resume(cfg, 'auto')
    return cfg


def train(config, work_dir, resume=False, launcher='none'):
    """tools/train.py's steps in this process; the exit code (0 when the
    run ends, the hook's code when it stops)."""
    runner = build_runner(runner_cfg(config, work_dir, resume, launcher))
    try:
        runner.train()
    except SystemExit as stop:
        return stop.code
    return 0


def _rank_main(rank, world_size, port, config, work_dir, resume):
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(port))
    torch.set_num_threads(1)  # see _single_main
    code = train(config, work_dir, resume, launcher='pytorch')
    from poolformer_mm.engine.distributed import close_distributed
    close_distributed()
    raise SystemExit(code)


def train_forked(config, work_dir, processes, resume=False, timeout=120):
    """Train in ``processes`` processes forked from this one (gloo across
    them); their exit codes."""
    context = multiprocessing.get_context('fork')
    port = free_port()
    if processes == 1:
        procs = [context.Process(target=_single_main,
                                 args=(config, work_dir, resume))]
    else:
        procs = [
            context.Process(
                target=_rank_main,
                args=(rank, processes, port, config, work_dir, resume))
            for rank in range(processes)
        ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout)
        if proc.exitcode is None:
            for p in procs:
                p.kill()
            pytest.fail(f'training did not end in {timeout} s')
    return [proc.exitcode for proc in procs]


def _single_main(config, work_dir, resume):
    # The OpenMP thread pool of this process's parent does not survive the
    # fork: more than one thread hangs in GNU OpenMP.
    torch.set_num_threads(1)
    raise SystemExit(train(config, work_dir, resume))


def read_records(records):
    """{rank: [(iter, batch_idx, ids), ...]} in the order trained."""
    out = {}
    for name in sorted(os.listdir(records)):
        rank = int(name[len('rank'):-len('.jsonl')])
        with open(osp.join(records, name)) as f:
            out[rank] = [(r['iter'], r['batch_idx'], r['ids'], r['flips'])
                         for r in map(json.loads, f)]
    return out


def assert_same_weights(path, reference):
    actual, expected = state_dict(path), state_dict(reference)
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key  # bitwise


def assert_every_sample_once_per_epoch(records, processes):
    """Each epoch trains every image exactly once over all ranks."""
    for epoch in range(EPOCHS):
        first = epoch * ITERS_PER_EPOCH
        ids = sorted(
            i for rank_records in records.values()
            for it, _, batch, _ in rank_records
            if first <= it < first + ITERS_PER_EPOCH for i in batch)
        assert ids == list(range(8)), (epoch, ids)


@pytest.fixture(scope='module')
def uninterrupted(demo_data, tmp_path_factory):
    """{processes: (work dir, records)} of runs that nothing stops."""
    runs = {}
    for processes in (1, 2):
        tmp = tmp_path_factory.mktemp(f'uninterrupted{processes}')
        config = tiny_config(tmp / 'tiny.py', demo_data, processes,
                             tmp / 'records')
        if processes == 1:
            assert train(config, tmp / 'work') == 0
        else:
            assert train_forked(config, tmp / 'work', 2) == [0, 0]
        records = read_records(tmp / 'records')
        assert sorted(records) == list(range(processes))
        assert_every_sample_once_per_epoch(records, processes)
        runs[processes] = (tmp / 'work', records)
    return runs


# Every stop point with two processes (which ranks get the signal matters);
# one process once.
@pytest.mark.parametrize('stop,processes',
                         [(stop, 2) for stop in sorted(STOPS)] +
                         [('mid_epoch', 1)])
def test_stop_on_signal_then_resume_equals_uninterrupted(
        stop, processes, uninterrupted, demo_data, tmp_path):
    at, ranks = STOPS[stop]
    ranks = ranks if processes == 2 else (0, )
    reference, expected_records = uninterrupted[processes]
    signal_hook = dict(type='SignalAt', at=at, ranks=ranks)
    stopping = tiny_config(tmp_path / 'stopping.py', demo_data, processes,
                           tmp_path / 'records', [signal_hook])
    resuming = tiny_config(tmp_path / 'resuming.py', demo_data, processes,
                           tmp_path / 'records')
    work = tmp_path / 'work'

    if processes == 1:
        codes = [train(stopping, work)]
    else:
        codes = train_forked(stopping, work, 2)
    # Every rank stops after the same iteration, whichever got the signal.
    assert codes == [PREEMPTED_EXIT_CODE] * processes
    checkpoint = work / f'iter_{at}.pth'
    assert (work / 'last_checkpoint').read_text() == str(checkpoint)
    assert checkpoint_is_complete(str(checkpoint))
    stopped = read_records(tmp_path / 'records')
    assert all(r[-1][0] == at - 1 for r in stopped.values()), stopped

    if processes == 1:
        codes = [train(resuming, work, resume=True)]
    else:
        codes = train_forked(resuming, work, 2, resume=True)
    assert codes == [0] * processes

    # The resumed run continued with the next batch of the same epoch: the
    # batches (ids, order, batch index in the epoch) are the uninterrupted
    # run's, none twice, none left out.
    assert read_records(tmp_path / 'records') == expected_records
    assert_same_weights(work / f'epoch_{EPOCHS}.pth',
                        reference / f'epoch_{EPOCHS}.pth')
    # The interim checkpoint went when the next one was complete.
    assert not checkpoint.exists()
    assert sorted(p.name for p in work.glob('*.pth')) == [
        'epoch_1.pth', 'epoch_2.pth'
    ]


def test_workers_draw_what_the_main_process_draws(uninterrupted, demo_data,
                                                  tmp_path):
    """Two data-loader workers, started again each epoch, stopped in the
    middle of epoch 2 and resumed: the batches, their flips and the final
    weights are those of the uninterrupted run that loads in the main
    process. (Persistent workers: the two-process runs, one each.)"""
    reference, expected_records = uninterrupted[1]
    loading = dict(num_workers=2, persistent_workers=False)
    stopping = tiny_config(tmp_path / 'stopping.py', demo_data, 1,
                           tmp_path / 'records', [dict(type='SignalAt', at=6)],
                           loading)
    resuming = tiny_config(tmp_path / 'resuming.py', demo_data, 1,
                           tmp_path / 'records', loading=loading)
    work = tmp_path / 'work'
    assert train(stopping, work) == PREEMPTED_EXIT_CODE
    assert train(resuming, work, resume=True) == 0
    assert read_records(tmp_path / 'records') == expected_records
    assert_same_weights(work / f'epoch_{EPOCHS}.pth',
                        reference / f'epoch_{EPOCHS}.pth')


def test_signal_during_checkpoint_write(uninterrupted, demo_data, tmp_path):
    """SIGTERM while epoch_1.pth is written: the write completes, the run
    stops after the next iteration. Then SIGTERM and, a moment later,
    SIGKILL while that stop's own checkpoint is written (a grace period
    ending mid-write): epoch_1.pth stays the one to resume from."""
    reference, _ = uninterrupted[1]
    during_epoch_save = dict(type='SignalAt', at_save=1)
    config = tiny_config(tmp_path / 'a.py', demo_data, 1,
                         tmp_path / 'records', [during_epoch_save])
    work = tmp_path / 'work'
    assert train(config, work) == PREEMPTED_EXIT_CODE
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_5.pth')
    for name in ('epoch_1.pth', 'iter_5.pth'):
        assert checkpoint_is_complete(str(work / name)), name

    # Resumes from iter_5.pth; the second iteration after it gets SIGTERM,
    # and SIGKILL arrives during the write of iter_7.pth.
    killed_in_write = [
        dict(type='SignalAt', at=7),
        dict(type='SignalAt', at_save=1, then_kill=True)
    ]
    config = tiny_config(tmp_path / 'b.py', demo_data, 1,
                         tmp_path / 'records', killed_in_write)
    codes = train_forked(config, work, 1, resume=True)
    assert codes == [-signal.SIGKILL]
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_5.pth')
    assert checkpoint_is_complete(str(work / 'iter_5.pth'))
    assert not (work / 'iter_7.pth').exists()

    config = tiny_config(tmp_path / 'c.py', demo_data, 1,
                         tmp_path / 'records')
    assert train(config, work, resume=True) == 0
    assert_same_weights(work / f'epoch_{EPOCHS}.pth',
                        reference / f'epoch_{EPOCHS}.pth')


def test_sigkill_under_torchrun_max_restarts(uninterrupted, demo_data,
                                             tmp_path):
    """A worker dies by SIGKILL after iteration 6 under
    ``tools/dist_train.sh ... --max-restarts=1``: torchrun starts the
    worker group again, which resumes from epoch_1.pth by itself and
    finishes with the uninterrupted run's weights."""
    reference, _ = uninterrupted[2]
    kill = dict(type='SignalAt', at=6, signum='SIGKILL', ranks=(1, ),
                only_first_start=True)
    config = tiny_config(tmp_path / 'killed.py', demo_data, 2,
                         tmp_path / 'records', [kill])
    work = tmp_path / 'work'
    env = dict(
        os.environ,
        PORT=str(free_port()),
        OMP_NUM_THREADS='1',
        CUDA_VISIBLE_DEVICES='',
        PYTHONPATH=os.pathsep.join([TESTS, os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run(
        ['bash', osp.join(TOOLS, 'dist_train.sh'), config, '2',
         '--max-restarts=1', '--work-dir', str(work)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout[-6000:] + result.stderr[-6000:]
    assert result.returncode == 0, output
    assert 'Restart 1 of this job: resuming from ' + str(
        work / 'epoch_1.pth') in output, output
    assert_same_weights(work / 'epoch_2.pth', reference / 'epoch_2.pth')


FAKE_SLURM = {
    # Each records its command line; srun runs until it gets SIGTERM (then
    # exits as PreemptionHook does) or FAKE_SRUN_SECONDS pass.
    'sbatch': 'echo "sbatch $*" >> "$FAKE_LOG"; echo "Submitted batch job 7"',
    'scontrol': 'echo "scontrol $*" >> "$FAKE_LOG"',
    'srun': ('echo "srun $*" >> "$FAKE_LOG"\n'
             'trap \'exit 75\' TERM\n'
             'sleep "${FAKE_SRUN_SECONDS:-0}" & wait $!\n'
             'exit "${FAKE_SRUN_EXIT:-0}"\n'),
}


def slurm_train(tmp_path, env, signal_after=None):
    """tools/slurm_train.sh with sbatch, srun and scontrol replaced by
    scripts that record how they were called (no Slurm here): the script's
    own logic, not Slurm's. ``signal_after``: seconds after which the script
    and its srun get SIGTERM, as Slurm signals a job it preempts."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    for name, body in FAKE_SLURM.items():
        (bin_dir / name).write_text('#!/usr/bin/env bash\n' + body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / 'calls.log'
    env = dict(os.environ, FAKE_LOG=str(log),
               PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', **env)
    proc = subprocess.Popen(
        ['bash', osp.join(TOOLS, 'slurm_train.sh'), 'gpu', 'job',
         'configs/x.py', str(tmp_path / 'work'), '--amp'],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    if signal_after is not None:
        try:
            proc.wait(signal_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, calls, output


@pytest.mark.integration
def test_slurm_train_submits_a_requeueable_job(tmp_path):
    code, calls, output = slurm_train(tmp_path, dict(GPUS='2'))
    assert code == 0, output
    assert len(calls) == 1 and calls[0].startswith('sbatch '), calls
    options = calls[0].split()
    for expected in ('--requeue', '--signal=USR1@180', '--ntasks=2',
                     '--ntasks-per-node=2', '--gres=gpu:2', '--nodes=1',
                     '--partition=gpu', '--job-name=job'):
        assert expected in options, (expected, calls[0])
    assert f'--export=ALL,POOLFORMER_MM_ROOT={ROOT},' in calls[0]
    assert calls[0].endswith(
        f'{ROOT}/tools/slurm_train.sh gpu job configs/x.py '
        f'{tmp_path / "work"} --amp')


@pytest.mark.integration
@pytest.mark.parametrize('case', ['preempted', 'finished', 'failed'])
def test_slurm_train_job_requeues_only_a_preempted_training(case, tmp_path):
    env = dict(SLURM_JOB_ID='7', POOLFORMER_MM_ROOT=ROOT)
    if case == 'preempted':
        env['FAKE_SRUN_SECONDS'] = '30'
    elif case == 'failed':
        env['FAKE_SRUN_EXIT'] = '1'
    code, calls, output = slurm_train(
        tmp_path, env, signal_after=2 if case == 'preempted' else None)
    assert calls[0].startswith('srun --kill-on-bad-exit=1 '), calls
    train_command = calls[0].split(' ', 2)[2]
    assert train_command.endswith(
        f'{ROOT}/tools/train.py configs/x.py '
        f'--work-dir={tmp_path / "work"} --launcher=slurm --resume --amp')
    if case == 'preempted':
        # The shell outlived the signal, waited for the training's code.
        assert code == PREEMPTED_EXIT_CODE, output
        assert calls[1:] == ['scontrol requeue 7'], calls
    else:
        assert code == (0 if case == 'finished' else 1), output
        assert calls[1:] == [], calls


def test_resumable_batch_sampler_drops_whole_batches():
    """Around MMDetection's AspectRatioBatchSampler, whose batches depend on
    every index before them, and torch's BatchSampler with drop_last."""
    from mmdet.datasets.samplers import AspectRatioBatchSampler
    from mmengine.dataset import DefaultSampler
    from torch.utils.data import BatchSampler

    from poolformer_mm.engine import ResumableBatchSampler

    class Shapes:
        # Wide and tall images in an irregular order.
        def __len__(self):
            return 11

        def get_data_info(self, idx):
            wide = idx % 3 != 0
            return dict(width=20 if wide else 10, height=10 if wide else 20)

    sampler = DefaultSampler(Shapes(), shuffle=True, seed=3)
    for inner, drop_last in ((dict(type=AspectRatioBatchSampler), False),
                             (None, True)):
        wrapped = ResumableBatchSampler(sampler, 2, inner, drop_last)
        reference = (AspectRatioBatchSampler(sampler, 2) if inner else
                     BatchSampler(sampler, 2, drop_last=True))
        assert wrapped.sampler is sampler and len(wrapped) == len(reference)
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            full = list(reference)
            assert list(wrapped) == full
            for done in (1, 3, len(full)):
                wrapped.skip_next_batches(done)
                assert list(wrapped) == full[done:]
                assert list(wrapped) == full  # only the next pass
    with pytest.raises(ValueError, match='count must be >= 0'):
        wrapped.skip_next_batches(-1)


def test_resumable_dataloader_cfg():
    from poolformer_mm.engine.loops import (ResumableBatchSampler,
                                            resumable_dataloader_cfg)
    plain = dict(batch_size=2, drop_last=True, dataset=dict(type='X'))
    cfg = resumable_dataloader_cfg(plain)
    assert plain['drop_last'] and 'batch_sampler' not in plain  # a copy
    assert 'drop_last' not in cfg
    assert cfg['batch_sampler'] == dict(
        type=ResumableBatchSampler, batch_sampler=None, drop_last=True)
    aspect = dict(batch_size=2, batch_sampler=dict(
        type='AspectRatioBatchSampler'))
    cfg = resumable_dataloader_cfg(aspect)
    assert cfg['batch_sampler'] == dict(
        type=ResumableBatchSampler,
        batch_sampler=dict(type='AspectRatioBatchSampler'))
    assert resumable_dataloader_cfg(cfg) == cfg


def test_preemption_hook_arguments_are_checked():
    from poolformer_mm.engine import PreemptionHook
    assert PreemptionHook().signals == [signal.SIGTERM, signal.SIGUSR1]
    with pytest.raises(ValueError, match="'SIGNOPE' is not a signal"):
        PreemptionHook(signals=('SIGTERM', 'SIGNOPE'))
    with pytest.raises(ValueError, match='exit_code must be an integer'):
        PreemptionHook(exit_code=0)


def test_restart_count(monkeypatch):
    from poolformer_mm.engine.runner import restart_count
    monkeypatch.delenv('TORCHELASTIC_RESTART_COUNT', raising=False)
    monkeypatch.delenv('SLURM_RESTART_COUNT', raising=False)
    assert restart_count() == 0
    monkeypatch.setenv('SLURM_RESTART_COUNT', '2')
    assert restart_count() == 2
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', 'x')
    with pytest.raises(RuntimeError, match="TORCHELASTIC_RESTART_COUNT='x'"):
        restart_count()


def test_preemption_hook_needs_the_safe_checkpoint_hook(demo_data, tmp_path):
    """A config whose checkpoint hook is mmengine's own: the hook says what
    to change before training starts."""
    config = tiny_config(tmp_path / 'tiny.py', demo_data, 1,
                         tmp_path / 'records')
    cfg = runner_cfg(config, tmp_path / 'work', cfg_options={
        'default_hooks.checkpoint.type': 'CheckpointHook'})
    with pytest.raises(TypeError, match="runner has CheckpointHook; set "
                       "default_hooks.checkpoint.type='SafeCheckpointHook'"):
        build_runner(cfg).train()


def test_a_changed_epoch_length_is_refused(demo_data, tmp_path):
    """Resuming iter_6.pth (epoch 2 of 4 iterations) with 4 images a batch:
    an epoch has 2 iterations then, iteration 6 is not in epoch 2."""
    work = tmp_path / 'work'
    stopping = tiny_config(tmp_path / 'stop.py', demo_data, 1,
                           tmp_path / 'records',
                           [dict(type='SignalAt', at=6)])
    assert train(stopping, work) == PREEMPTED_EXIT_CODE
    config = tiny_config(tmp_path / 'b4.py', demo_data, 1,
                         tmp_path / 'records')
    cfg = runner_cfg(config, work, resume=True,
                     cfg_options={'train_dataloader.batch_size': 4})
    with pytest.raises(RuntimeError,
                       match=r'Cannot continue epoch 2 at iteration 6: an '
                       r'epoch has 2 iterations'):
        build_runner(cfg).train()


# The tiny config on an iteration-based schedule: 8 iterations, a
# checkpoint every 4; the default sampler restarts every 4 batches.
ITER_BASED = '''
train_cfg = dict(_delete_=True, type='ResumableIterBasedTrainLoop',
                 max_iters=8, val_interval=1000)
default_hooks['checkpoint'].update(by_epoch=False, interval=4)
log_processor = dict(by_epoch=False)
'''
INFINITE_SAMPLER = '''
train_dataloader.update(sampler=dict(type='InfiniteSampler', shuffle=True))
'''


@pytest.mark.parametrize('sampler,workers', [('default', 0), ('infinite', 1)])
def test_iteration_based_stop_then_resume(sampler, workers, demo_data,
                                          tmp_path, capsys):
    """Stopped after iteration 6 (in the second pass of the default
    sampler), resumed without loading the 6 batches done: the same batches,
    flips and weights as the uninterrupted run. With persistent workers the
    data-loader iterator that the loop makes when it is built has already
    drawn batches from the infinite sampler's stream when the resumed run
    skips into it (one worker is enough to draw ahead)."""
    extra = ITER_BASED + (INFINITE_SAMPLER if sampler == 'infinite' else '')
    loading = dict(num_workers=workers, persistent_workers=bool(workers))

    def config(name, records, hooks=()):
        hooks = [dict(type='RecordSamples', out_dir=str(records))] + list(
            hooks)
        path = tiny_config(tmp_path / name, demo_data, 1, records,
                           loading=loading)
        with open(path, 'a') as f:
            f.write(extra + f'custom_hooks = {hooks!r}\n')
        return path

    assert train(config('ref.py', tmp_path / 'ref'), tmp_path / 'w0') == 0
    stopping = config('stop.py', tmp_path / 'rec',
                      [dict(type='SignalAt', at=6)])
    assert train(stopping, tmp_path / 'w1') == PREEMPTED_EXIT_CODE
    assert (tmp_path / 'w1' / 'last_checkpoint').read_text() == str(
        tmp_path / 'w1' / 'iter_6.pth')
    capsys.readouterr()
    assert train(config('resume.py', tmp_path / 'rec'), tmp_path / 'w1',
                 resume=True) == 0
    output = capsys.readouterr()
    assert 'drawing the 6 batches done from the batch sampler' in (
        output.out + output.err)
    expected = read_records(tmp_path / 'ref')
    assert len(expected[0]) == 8
    assert read_records(tmp_path / 'rec') == expected
    assert_same_weights(tmp_path / 'w1' / 'iter_8.pth',
                        tmp_path / 'w0' / 'iter_8.pth')
