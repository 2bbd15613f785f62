"""The mmengine internals the runtime relies on are still what they were
(poolformer_mm.engine.mmengine_coupling)."""
import hashlib
import importlib
import inspect
import textwrap

import pytest

from poolformer_mm.engine.mmengine_coupling import (COPIED_METHODS,
                                                    MMENGINE_VERSION,
                                                    PRIVATE_MEMBERS)


def resolve(path):
    module, _, qualname = path.partition(':')
    obj = importlib.import_module(module)
    for part in qualname.split('.'):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize('copied', COPIED_METHODS, ids=lambda c: c.theirs)
def test_copied_methods_are_unchanged_upstream(copied):
    import mmengine
    source = textwrap.dedent(inspect.getsource(resolve(copied.theirs)))
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest in copied.source_sha256, (
        f'{copied.theirs} differs from the mmengine {MMENGINE_VERSION} '
        f'method that {copied.ours} repeats (installed mmengine '
        f'{mmengine.__version__}, source hash {digest}): carry its change '
        'over, then record the new hash in '
        'poolformer_mm/engine/mmengine_coupling.py')
    assert callable(resolve(copied.ours))


@pytest.mark.parametrize('member', PRIVATE_MEMBERS,
                         ids=lambda m: f'{m.owner}.{m.name}')
def test_private_members_still_exist(member):
    owner = resolve(member.owner)
    if member.kind == 'class':
        assert hasattr(owner, member.name), (
            f'{member.owner} has no {member.name} any more; '
            f'{member.where} relies on it')
    else:
        source = inspect.getsource(owner)
        assert f'self.{member.name} =' in source or (
            f'self.{member.name}:' in source), (
                f'{member.owner} no longer sets self.{member.name}; '
                f'{member.where} relies on it')
