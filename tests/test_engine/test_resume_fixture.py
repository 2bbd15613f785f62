"""Checkpoint layouts are a contract: a training checkpoint written by an
earlier version of this package keeps resuming.

``resume_fixture/epoch_1.pth`` (model, AdamW state, schedulers, message hub)
was written by ``tools/train.py`` of commit 964a160 from
``resume_fixture/retinanet_tiny.py`` on the tests' tiny demo data (see
``resume_fixture/README.md``). Never regenerate it: a change that breaks this
test changes parameter names, their order or what a checkpoint holds.
"""
import os.path as osp

import torch

from helpers.commands import run_tool

FIXTURE = osp.join(osp.dirname(osp.abspath(__file__)), 'resume_fixture')
CONFIG = osp.join(FIXTURE, 'retinanet_tiny.py')
CHECKPOINT = osp.join(FIXTURE, 'epoch_1.pth')


def test_fixture_state_dict_is_the_models():
    """Same parameter and buffer names, order and shapes as the model the
    fixture's config builds today."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from poolformer_mm.checkpoint import load_training_checkpoint
    cfg = Config.fromfile(CONFIG)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    saved = load_training_checkpoint(CHECKPOINT)
    assert [(k, tuple(v.shape)) for k, v in saved['state_dict'].items()] == [
        (k, tuple(v.shape)) for k, v in model.state_dict().items()
    ]
    model.load_state_dict(saved['state_dict'])
    # The optimizer state follows the parameters by position.
    params = [p for p in model.parameters() if p.requires_grad]
    state = saved['optimizer']['state']
    assert len(state) == len(params)
    for i, param in enumerate(params):
        assert state[i]['exp_avg'].shape == param.shape


def test_resume_from_fixture(demo_data, tmp_path):
    """tools/train.py --resume continues the fixture's run to its second
    epoch with finite losses."""
    root = f'{demo_data}/coco/'
    work = tmp_path / 'work'
    result = run_tool(
        'train.py', CONFIG, '--work-dir', work, '--resume', CHECKPOINT,
        '--cfg-options', f'train_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        f'test_evaluator.ann_file={root}annotations/instances_val.json')
    log = result.stdout + result.stderr
    assert 'resumed epoch: 1, iter: 4' in log, log[-3000:]
    from poolformer_mm.checkpoint import load_training_checkpoint
    final = load_training_checkpoint(str(work / 'epoch_2.pth'))
    assert final['meta']['epoch'] == 2 and final['meta']['iter'] == 8
    assert all(
        torch.isfinite(v).all() for v in final['state_dict'].values()
        if v.is_floating_point())
    start = load_training_checkpoint(CHECKPOINT)['state_dict']
    assert any(not torch.equal(start[k], v)
               for k, v in final['state_dict'].items())
