"""PoolFormer builds from MMDetection's and MMSegmentation's registries."""
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.registry import DefaultScope, init_default_scope

import poolformer_mm  # noqa: F401  (registers the backbone)
from poolformer_mm import PoolFormer


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_build_from_framework_registry(scope):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    assert MODELS.get('PoolFormer') is PoolFormer
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(dict(type='PoolFormer', arch='s12',
                                  out_indices=(1, 2, 3)))
    assert isinstance(model, PoolFormer)
    assert [o.shape[1] for o in model(torch.randn(1, 3, 64, 64))] == [
        128, 320, 512]


def test_registered_under_default_scope():
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    assert MODELS.build(dict(type='PoolFormer')).out_channels == [
        64, 128, 320, 512]


def run_isolated(code):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.integration
@pytest.mark.parametrize('missing,present', [('mmseg', 'mmdet'),
                                             ('mmdet', 'mmseg')])
def test_one_framework_missing_does_not_hide_the_other(missing, present):
    # Make importing one framework fail, as on a machine without it.
    result = run_isolated(f"""
        import sys, warnings
        sys.modules['{missing}'] = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import poolformer_mm
        assert any('{missing}.registry' in str(w.message) for w in caught)
        from {present}.registry import MODELS
        assert MODELS.get('PoolFormer') is poolformer_mm.PoolFormer
        print('ok')
    """)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', (
        result.stdout + result.stderr)


@pytest.mark.integration
def test_custom_imports_in_config():
    result = run_isolated("""
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        cfg = Config(dict(custom_imports=dict(imports=['poolformer_mm'],
                                              allow_failed_imports=False)))
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**cfg.custom_imports)
        init_default_scope('mmseg')
        from mmseg.registry import MODELS
        print(type(MODELS.build(dict(type='PoolFormer', arch='s24'))).__name__)
    """)
    assert result.returncode == 0, result.stderr
    # Before it, the build's log line says which execution path runs.
    *log, name = result.stdout.strip().splitlines()
    assert name == 'PoolFormer'
    assert "runs impl='auto'" in log[-1]


def neck_mismatch_cfg(name):
    import os.path as osp

    from mmengine.config import Config

    from helpers.commands import CONFIGS
    cfg = Config.fromfile(osp.join(CONFIGS, name))
    cfg.model.backbone.init_cfg = None
    # The backbone emits stages 1-3 of S12: [128, 320, 512].
    cfg.model.backbone.out_indices = (1, 2, 3)
    cfg.model.neck.in_channels = [64, 128, 320, 512]
    return cfg.model


NECK_MISMATCH = (r'neck \(FPN\) has in_channels=\[64, 128, 320, 512\] but '
                 r"the backbone \(PoolFormer, arch 's12', out_indices=\(1, 2, "
                 r'3\)\) emits out_channels=\[128, 320, 512\]')


@pytest.mark.integration
@pytest.mark.parametrize('scope,config', [
    ('mmdet', 'retinanet_poolformer_s12.py'),
    ('mmseg', 'sem_fpn_poolformer_s12.py'),
])
def test_neck_channel_mismatch_fails_at_build(scope, config):
    from mmengine.registry import MODELS as ROOT_MODELS
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    model_cfg = neck_mismatch_cfg(config)
    init_default_scope(scope)
    # The framework's registry (scripts) and mmengine's root registry with
    # the default scope (what the runner calls).
    for registry in (MODELS, ROOT_MODELS):
        with pytest.raises(ValueError, match=NECK_MISMATCH):
            registry.build(model_cfg)
    model_cfg.neck.in_channels = [128, 320, 512]
    model = MODELS.build(model_cfg)
    assert model.neck.in_channels == model.backbone.out_channels


def test_neck_check_leaves_other_backbones_alone():
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    model = MODELS.build(dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor'),
        backbone=dict(type='ResNet', depth=18, out_indices=(1, 2, 3)),
        neck=dict(type='FPN', in_channels=[128, 256, 512], out_channels=32,
                  num_outs=3),
        bbox_head=dict(
            type='RetinaHead', num_classes=2, in_channels=32,
            feat_channels=32, stacked_convs=1,
            anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                  scales_per_octave=1, ratios=[1.0],
                                  strides=[8, 16, 32]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True),
            loss_bbox=dict(type='L1Loss'))))
    assert type(model).__name__ == 'RetinaNet'
