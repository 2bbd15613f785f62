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
    assert result.stdout.strip() == 'PoolFormer'
