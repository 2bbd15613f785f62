"""Guards of what must not change silently: the state-dict layout of every
arch under every execution path, and what every config under ``configs/``
resolves to.

The snapshots in ``tests/snapshots/`` were written by this file
(``python tests/test_guards.py --write``). Write them again only with a
change that means to change a layout or a config, and say so in its commit.
"""
import glob
import json
import os.path as osp
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SNAPSHOTS = osp.join(ROOT, 'tests', 'snapshots')
STATE_DICTS = osp.join(SNAPSHOTS, 'state_dict_keys.json')
CONFIGS = osp.join(SNAPSHOTS, 'configs.json')


def impls():
    """Every execution path of the selector; 'triton' where triton is
    installed (it needs it to build)."""
    from poolformer_mm.models.fast import IMPLS, require_triton
    try:
        require_triton()
    except ImportError:
        return [i for i in IMPLS if i != 'triton']
    return list(IMPLS)


def archs():
    from poolformer_mm import MetaFormer, PoolFormer
    return ([('PoolFormer', a) for a in sorted(PoolFormer.arch_settings)] +
            [('MetaFormer', a) for a in sorted(MetaFormer.arch_settings)])


def build(cls_name, arch, impl='reference'):
    """The backbone, built on the meta device: no memory, no init time."""
    import poolformer_mm
    with torch.device('meta'):
        return getattr(poolformer_mm, cls_name)(arch, impl=impl)


def layout(model):
    """[name, shape] of every state-dict entry, in order."""
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def config_files():
    return sorted(
        osp.relpath(p, ROOT)
        for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                           recursive=True))


def resolved(path):
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, path)).to_dict()
    return json.loads(json.dumps(cfg, sort_keys=True, default=repr))


def _read(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize('cls_name,arch', archs())
def test_state_dict_layout_is_the_snapshot(cls_name, arch):
    """The constructor's last step is ``switch_impl(impl)``: one build per
    arch, switched to each impl in turn (and back to the reference, as a
    user may switch it)."""
    expected = _read(STATE_DICTS)[f'{cls_name}/{arch}']
    model = build(cls_name, arch)
    for impl in impls() + ['reference']:
        with torch.device('meta'):
            model.switch_impl(impl)
        assert layout(model) == expected, (arch, impl)


@pytest.mark.parametrize('cls_name,arch', [('PoolFormer', 's12'),
                                           ('MetaFormer', 'caformer_s18')])
def test_built_with_each_impl_is_the_snapshot(cls_name, arch):
    expected = _read(STATE_DICTS)[f'{cls_name}/{arch}']
    for impl in impls():
        assert layout(build(cls_name, arch, impl)) == expected, (arch, impl)


def test_every_arch_has_a_snapshot():
    assert sorted(_read(STATE_DICTS)) == sorted(f'{c}/{a}' for c, a in archs())


@pytest.mark.integration
def test_configs_resolve_as_the_snapshot():
    expected = _read(CONFIGS)
    assert sorted(expected) == config_files()
    for path in config_files():
        assert resolved(path) == expected[path], path


def write():
    layouts = {
        f'{c}/{a}': layout(build(c, a))
        for c, a in archs()
    }
    with open(STATE_DICTS, 'w') as f:
        f.write('{\n' + ',\n'.join(
            f'{json.dumps(k)}: {json.dumps(v, separators=(",", ":"))}'
            for k, v in layouts.items()) + '\n}\n')
    with open(CONFIGS, 'w') as f:
        json.dump({p: resolved(p) for p in config_files()}, f, indent=1,
                  sort_keys=True)
        f.write('\n')


if __name__ == '__main__':
    if sys.argv[1:] != ['--write']:
        sys.exit('usage: python tests/test_guards.py --write')
    write()
