"""Multi-process training and testing on CPUs: torchrun, gloo, DDP."""
import glob
import json
import os
import os.path as osp
import pickle
import subprocess

import pytest
import torch
from mmengine.config import Config

from helpers.commands import CONFIGS, ROOT, TOOLS, free_port
from poolformer_mm.engine import SafeRunner
from poolformer_mm.apis.runs import load_config
from helpers.tiny_demo import assert_finite_losses, write_tiny_config

# Imported by every training process through custom_imports: each rank saves
# its own weights at the end of training (checkpoints come from rank 0 only).
RANK_DUMP = '''
import json, os.path as osp
import torch, torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class DumpRankWeights(Hook):

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def after_train(self, runner):
        wrapper = runner.model
        model = getattr(wrapper, 'module', wrapper)
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(weights,
                   osp.join(self.out_dir, f'rank{runner.rank}.pth'))
        info = dict(world_size=runner.world_size,
                    backend=dist.get_backend(),
                    wrapper=type(wrapper).__name__,
                    device_ids=getattr(wrapper, 'device_ids', 'n/a'),
                    find_unused_parameters=getattr(
                        wrapper, 'find_unused_parameters', None))
        with open(osp.join(self.out_dir, f'rank{runner.rank}.json'), 'w') as f:
            json.dump(info, f)
'''


def run_script(script, *args, env, timeout=600):
    result = subprocess.run(
        ['bash', osp.join(TOOLS, script)] + [str(a) for a in args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f'{script} exited {result.returncode}\n'
                    f'--- stdout ---\n{result.stdout[-6000:]}\n'
                    f'--- stderr ---\n{result.stderr[-6000:]}')
    return result


def test_two_processes_train_and_test_on_cpu(demo_data, tmp_path):
    (tmp_path / 'rank_dump.py').write_text(RANK_DUMP)
    out = tmp_path / 'ranks'
    out.mkdir()
    # 8 images, 2 a batch, 2 processes: 2 iterations an epoch.
    config = write_tiny_config(
        tmp_path / 'tiny.py',
        demo_data,
        max_epochs=2,
        imports=('poolformer_mm', 'rank_dump'),
        extra=f'custom_hooks = [dict(type="DumpRankWeights", '
        f'out_dir={str(out)!r})]',
        small_model=True)
    env = dict(
        os.environ,
        PORT=str(free_port()),
        OMP_NUM_THREADS='1',
        CUDA_VISIBLE_DEVICES='',
        PYTHONPATH=os.pathsep.join(
            [str(tmp_path), os.environ.get('PYTHONPATH', '')]))
    work = tmp_path / 'work'
    run_script('dist_train.sh', config, 2, '--work-dir', work, env=env)

    infos = [json.loads((out / f'rank{r}.json').read_text()) for r in (0, 1)]
    for info in infos:
        assert info == dict(
            world_size=2,
            backend='gloo',
            wrapper='CPUDistributedDataParallel',
            device_ids=None,
            find_unused_parameters=False)
    weights = [torch.load(out / f'rank{r}.pth') for r in (0, 1)]
    assert list(weights[0]) == list(weights[1])
    for key, value in weights[0].items():
        assert torch.isfinite(value).all(), key
        assert torch.equal(value, weights[1][key]), key
    # Rank 0 logs its losses; 2 epochs of 2 iterations.
    assert_finite_losses(work, at_least=4)
    checkpoint = work / 'epoch_2.pth'
    assert checkpoint.is_file()

    # Each process tests 2 of the 4 validation images; rank 0 gathers all.
    env['PORT'] = str(free_port())
    result = run_script(
        'dist_test.sh',
        config,
        checkpoint,
        2,
        '--work-dir',
        tmp_path / 'test',
        '--out',
        tmp_path / 'results.pkl',
        env=env)
    assert 'Epoch(test) [2/2]' in result.stdout
    with open(tmp_path / 'results.pkl', 'rb') as f:
        results = pickle.load(f)
    with open(demo_data / 'coco' / 'annotations' / 'instances_val.json') as f:
        image_ids = sorted(im['id'] for im in json.load(f)['images'])
    assert len(image_ids) == 4
    assert sorted(r['img_id'] for r in results) == image_ids


def project_configs():
    return sorted(
        osp.relpath(p, CONFIGS)
        for p in glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True)
        if '_base_' not in p)


@pytest.mark.integration
@pytest.mark.parametrize('name', project_configs())
def test_every_config_names_what_runs(name):
    """The runner, hooks and loop of this package are in the configs, so
    MMDetection's / MMSegmentation's tools run them too; and no config asks
    DDP to look for unused parameters."""
    cfg = Config.fromfile(osp.join(CONFIGS, name))
    assert cfg.runner_type == 'SafeRunner'
    assert cfg.default_hooks.checkpoint.type == 'SafeCheckpointHook'
    assert cfg.default_hooks.preemption.type == 'PreemptionHook'
    assert cfg.train_cfg.type in ('ResumableEpochBasedTrainLoop',
                                  'ResumableIterBasedTrainLoop')
    assert not cfg.get('find_unused_parameters', False)
    assert not (cfg.get('model_wrapper_cfg') or {}).get(
        'find_unused_parameters', False)


def test_load_config_rewrites_nothing(monkeypatch):
    config = osp.join(CONFIGS, 'retinanet_poolformer_s12.py')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = load_config(config, launcher='pytorch')
    expected = Config.fromfile(config)
    assert cfg.get('model_wrapper_cfg') is None
    assert cfg.env_cfg == expected.env_cfg  # nccl: SafeRunner picks gloo
    assert cfg.default_hooks == expected.default_hooks
    assert cfg.runner_type == 'SafeRunner' and cfg.launcher == 'pytorch'


@pytest.mark.parametrize('device', ['cpu', 'cuda'])
def test_safe_runner_wrapper_for_cpu_processes(monkeypatch, device):
    """What SafeRunner.wrap_model hands to mmengine's: without an
    accelerator CPUDistributedDataParallel in place of mmengine's DDP
    wrapper (broadcast_buffers False unless the config says otherwise),
    with CUDA the config's wrapper unchanged."""
    from mmengine.logging import MMLogger
    from mmengine.runner import Runner

    from poolformer_mm.engine import runner as runner_module
    monkeypatch.setattr(runner_module, 'get_device', lambda: device)
    handed = []
    monkeypatch.setattr(Runner, 'wrap_model',
                        lambda self, cfg, model: handed.append(cfg))
    # Only the attributes wrap_model reads, without building a runner.
    runner = object.__new__(SafeRunner)
    runner._distributed = True
    runner.cfg = Config(dict(find_unused_parameters=False))
    runner.logger = MMLogger.get_current_instance()
    given = [
        None,
        dict(type='MMDistributedDataParallel', broadcast_buffers=True),
        dict(type='MMFullyShardedDataParallel')
    ]
    for cfg in given:
        runner.wrap_model(cfg, torch.nn.Linear(2, 2))
    if device == 'cuda':
        assert handed == given
        return
    assert handed == [
        dict(
            type='CPUDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=False),
        dict(
            type='CPUDistributedDataParallel',
            broadcast_buffers=True,
            find_unused_parameters=False), given[2]
    ]


def test_cpu_wrapper_drops_device_ids_and_sync_bn(monkeypatch):
    import torch.distributed as dist
    from poolformer_mm.engine import CPUDistributedDataParallel
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    dist.init_process_group('gloo', rank=0, world_size=1)
    try:
        module = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 1), torch.nn.SyncBatchNorm(4))
        wrapped = CPUDistributedDataParallel(
            module=module,
            device_ids=[0],
            broadcast_buffers=False,
            find_unused_parameters=False)
        assert wrapped.device_ids is None
        assert not any(
            isinstance(m, torch.nn.SyncBatchNorm) for m in wrapped.modules())
        out = wrapped(torch.randn(2, 3, 5, 5))
        assert out.shape == (2, 4, 5, 5)
    finally:
        dist.destroy_process_group()


def smallest_config_of_each_family():
    """RetinaNet (backbone stages 1-3) and Semantic FPN (stages 0-3, as Mask
    R-CNN) of each backbone family, at its smallest arch: the arch size does
    not change which parameters are used. PoolFormer-S12's detectors and
    segmentor are checked in test_detection.py / test_segmentation.py."""
    chosen = {}
    for name in project_configs():
        model, family, arch = name[:-3].rsplit('_', 2)
        if (model not in ('retinanet', 'sem_fpn') or family == 'poolformer'
                or '/' in name):
            continue
        key = (model, family)
        if key not in chosen or (arch[0] != 's', arch) < chosen[key][0]:
            chosen[key] = ((arch[0] != 's', arch), name)
    return sorted(name for _, name in chosen.values())


def _batch(task):
    torch.manual_seed(0)
    if task == 'sem':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        inputs, samples = [], []
        for _ in range(2):
            inputs.append(
                torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8))
            sample = SegDataSample(
                gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, 64, 64))))
            sample.set_metainfo(
                dict(
                    img_shape=(64, 64), ori_shape=(64, 64),
                    pad_shape=(64, 64)))
            samples.append(sample)
        return dict(inputs=inputs, data_samples=samples)
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(
        batch_size=2,
        image_shapes=[(3, 64, 64)] * 2,
        num_items=[2, 3],
        num_classes=80)


@pytest.mark.integration
@pytest.mark.parametrize('name', smallest_config_of_each_family())
def test_every_parameter_gets_a_gradient(name):
    """What DDP's find_unused_parameters=False relies on."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(osp.join(CONFIGS, name))
    cfg.model.backbone.init_cfg = None
    task = name.split('_', 1)[0]
    if task == 'sem':
        cfg.model.data_preprocessor.size = (64, 64)
    init_default_scope(cfg.default_scope)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.train()
    data = model.data_preprocessor(_batch(task), True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    loss.backward()
    unused = [
        n for n, p in model.named_parameters()
        if p.requires_grad and p.grad is None
    ]
    assert unused == []
