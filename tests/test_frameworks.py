"""Importing the package says what of the OpenMMLab stack is missing."""
import sys
import types

import pytest

from poolformer_mm import frameworks


def test_the_stack_is_reported():
    found = frameworks.stack()
    assert set(found) == {'mmengine', 'mmcv', 'mmdet', 'mmseg'}
    assert found['mmengine'].split()[0] in ('mmengine', 'onedl-mmengine')


@pytest.mark.parametrize('version,ok', [('0.10.7', True), ('0.10.12', True),
                                        ('0.10.6', False), ('0.11.0', False),
                                        ('1.0.0rc1', False)])
def test_versions_outside_the_tested_range_are_named(version, ok,
                                                     monkeypatch):
    monkeypatch.setitem(sys.modules, 'mmengine',
                        types.SimpleNamespace(__version__=version))
    if ok:
        frameworks.check_frameworks()
        return
    with pytest.raises(ImportError,
                       match=rf'mmengine >=0\.10\.7,<0\.11, found '
                       rf'{version}.*maintained fork'):
        frameworks.check_frameworks()


def test_a_missing_module_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'mmcv', None)
    with pytest.raises(ImportError,
                       match=r'needs mmcv, which cannot be imported.*'
                       r'onedl-mmcv'):
        frameworks.check_frameworks()
