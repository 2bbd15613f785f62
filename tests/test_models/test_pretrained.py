"""Pretrained weights in every public naming, with parity to the original.

timm's MetaFormer, loaded through timm's own ``checkpoint_filter_fn``, is the
reference implementation of the original network here. The original-naming
state dicts are written from timm's by an inverse mapping that this file
defines on its own (and checks against timm's filter), so a wrong rename in
the package's loader cannot hide behind the same wrong rename in the test.
"""
import functools
import http.server
import logging
import re
import threading
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger
from safetensors.torch import save_file
from timm.models.metaformer import checkpoint_filter_fn

from poolformer_mm import PoolFormer
from poolformer_mm.pretrained import (CheckpointError, detect_format,
                                      load_pretrained)


def randomize_(model, seed=0):
    """Random weights everywhere, layer scales included: with the default
    1e-6 / 1e-5 scales a wrong block would barely change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if not p.is_floating_point():
                continue
            if name.endswith('.scale'):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.1)
            elif p.dim() == 1 and 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def timm_to_original(state_dict):
    """timm names to the original release's (inverse of timm's filter)."""
    out = OrderedDict()
    for k, v in state_dict.items():
        k = re.sub(r'^stem\.conv\.', 'patch_embed.proj.', k)
        k = re.sub(r'^stages\.(\d+)\.downsample\.conv\.',
                   lambda m: f'network.{2 * int(m.group(1)) - 1}.proj.', k)
        k = re.sub(r'layer_scale(\d)\.scale$', r'layer_scale_\1', k)
        k = re.sub(r'^stages\.(\d+)\.blocks\.',
                   lambda m: f'network.{2 * int(m.group(1))}.', k)
        k = re.sub(r'^head\.norm\.', 'norm.', k)
        k = re.sub(r'^head\.fc\.', 'head.', k)
        out[k] = v
    return out


@functools.lru_cache(maxsize=None)
def reference(arch):
    """Random timm model, its weights in original naming, and an input."""
    model = randomize_(timm.create_model(f'poolformer_{arch}'), seed=1).eval()
    original = timm_to_original(model.state_dict())
    # The test's inverse mapping must agree with timm's forward mapping.
    back = checkpoint_filter_fn(original, model)
    assert set(back) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v), k
    x = torch.randn(2, 3, 67, 45, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
    return model, original, x, feats


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def assert_parity(backbone, x, expected):
    backbone.eval()
    with torch.no_grad():
        outs = backbone(x)
    assert len(outs) == len(expected)
    for i, (out, ref) in enumerate(zip(outs, expected)):
        assert out.shape == ref.shape, i
        assert rel_err(out, ref) < 1e-4, (i, rel_err(out, ref))


def fresh_norms(feats):
    return [F.group_norm(f, 1, eps=1e-5) for f in feats]


def load(arch, path, prefix=None, **kwargs):
    init_cfg = dict(type='Pretrained', checkpoint=str(path))
    if prefix is not None:
        init_cfg['prefix'] = prefix
    model = PoolFormer(arch, init_cfg=init_cfg, **kwargs)
    model.init_weights()
    return model


# The conversion maps block by block, by stage and block index, whatever the
# widths and layer scales: S12, and S24's deeper stages (S36 and the M archs
# only repeat them; every arch's names: test_guards.py).
@pytest.mark.parametrize('arch', ('s12', 's24'))
def test_original_release_parity(arch, tmp_path):
    _, original, x, feats = reference(arch)
    path = tmp_path / f'poolformer_{arch}.pth.tar'
    torch.save(original, path)
    assert_parity(load(arch, path), x, fresh_norms(feats))


@pytest.mark.parametrize('arch', ['s12'])
def test_timm_naming_parity(arch, tmp_path):
    model, _, x, feats = reference(arch)
    torch.save(model.state_dict(), tmp_path / 'timm.pth')
    save_file(model.state_dict(), str(tmp_path / 'timm.safetensors'))
    for name in ('timm.pth', 'timm.safetensors'):
        assert_parity(load(arch, tmp_path / name), x, fresh_norms(feats))


@pytest.mark.parametrize('wrapper', ['state_dict', 'model'])
def test_wrapped_original(wrapper, tmp_path):
    _, original, x, feats = reference('s12')
    torch.save({wrapper: original, 'epoch': 300}, tmp_path / 'ckpt.pth')
    assert_parity(load('s12', tmp_path / 'ckpt.pth'), x, fresh_norms(feats))


def dense_checkpoint(original, positions=(0, 2, 4, 6)):
    """An original dense-prediction checkpoint: `backbone.` + original names
    without the classifier, random output norms, and a neck."""
    gen = torch.Generator().manual_seed(3)
    dims = {0: 64, 2: 128, 4: 320, 6: 512}
    ckpt = OrderedDict(('backbone.' + k, v) for k, v in original.items()
                       if not k.startswith(('head.', 'norm.')))
    for pos in positions:
        ckpt[f'backbone.norm{pos}.weight'] = torch.rand(
            dims[pos], generator=gen) + 0.5
        ckpt[f'backbone.norm{pos}.bias'] = torch.randn(dims[pos],
                                                       generator=gen)
    ckpt['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 64, 1, 1)
    return ckpt


def test_original_dense_keeps_output_norms(tmp_path):
    _, original, x, feats = reference('s12')
    ckpt = dense_checkpoint(original)
    torch.save({'state_dict': ckpt, 'meta': {}}, tmp_path / 'dense.pth')
    expected = [
        F.group_norm(f, 1, ckpt[f'backbone.norm{2 * i}.weight'],
                     ckpt[f'backbone.norm{2 * i}.bias'], eps=1e-5)
        for i, f in enumerate(feats)
    ]
    for prefix in ('backbone.', None):
        model = load('s12', tmp_path / 'dense.pth', prefix=prefix)
        assert_parity(model, x, expected)


def test_original_dense_fork_last3(tmp_path):
    """The original RetinaNet checkpoints carry norm2/4/6 only."""
    _, original, x, feats = reference('s12')
    ckpt = dense_checkpoint(original, positions=(2, 4, 6))
    torch.save(ckpt, tmp_path / 'dense.pth')
    model = PoolFormer('s12', out_indices=(1, 2, 3))
    report = load_pretrained(model, str(tmp_path / 'dense.pth'),
                             prefix='backbone.')
    assert report['format'] == 'original_dense'
    assert report['missing'] == []
    expected = [
        F.group_norm(f, 1, ckpt[f'backbone.norm{2 * i}.weight'],
                     ckpt[f'backbone.norm{2 * i}.bias'], eps=1e-5)
        for i, f in enumerate(feats) if i > 0
    ]
    assert_parity(model, x, expected)


def mmpretrain_checkpoint(original):
    ckpt = OrderedDict(('backbone.' + k, v) for k, v in original.items()
                       if not k.startswith(('head.', 'norm.')))
    ckpt['backbone.norm6.weight'] = original['norm.weight']
    ckpt['backbone.norm6.bias'] = original['norm.bias']
    ckpt['head.fc.weight'] = original['head.weight']
    ckpt['head.fc.bias'] = original['head.bias']
    return ckpt


@pytest.mark.parametrize('prefix', [None, 'backbone.'])
def test_mmpretrain_final_norm_is_not_an_output_norm(prefix, tmp_path):
    _, original, x, feats = reference('s12')
    torch.save({'state_dict': mmpretrain_checkpoint(original)},
               tmp_path / 'mmpretrain.pth')
    model = PoolFormer('s12')
    report = load_pretrained(model, str(tmp_path / 'mmpretrain.pth'),
                             prefix=prefix)
    assert report['format'] == 'mmpretrain'
    assert 'backbone.norm6.weight' in report['ignored']
    assert sorted(report['missing']) == sorted(
        f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias'))
    assert_parity(model, x, fresh_norms(feats))


def test_own_checkpoint_roundtrip(tmp_path):
    _, original, x, feats = reference('s12')
    torch.save(original, tmp_path / 'orig.pth')
    model = load('s12', tmp_path / 'orig.pth')
    with torch.no_grad():
        for i in range(4):
            getattr(model, f'norm{i}').weight.mul_(1.5)
    expected = [o.detach() for o in model.eval()(x)]
    torch.save(model.state_dict(), tmp_path / 'own.pth')
    # And as a detector checkpoint of this project: backbone. + neck.
    detector = OrderedDict(('backbone.' + k, v)
                           for k, v in model.state_dict().items())
    detector['neck.fpn_convs.0.conv.weight'] = torch.zeros(1)
    torch.save({'state_dict': detector, 'meta': {'epoch': 12}},
               tmp_path / 'detector.pth')
    assert detect_format(torch.load(tmp_path / 'own.pth')) == 'poolformer_mm'
    assert_parity(load('s12', tmp_path / 'own.pth'), x, expected)
    assert_parity(load('s12', tmp_path / 'detector.pth', prefix='backbone.'),
                  x, expected)


def test_summary_is_logged(tmp_path):
    _, original, _, _ = reference('s12')
    torch.save(original, tmp_path / 'orig.pth')
    logger = MMLogger.get_instance('test_summary', log_level='INFO')
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        report = load_pretrained(PoolFormer('s12'), str(tmp_path / 'orig.pth'),
                                 logger=logger)
    finally:
        logger.removeHandler(handler)
    message = ' '.join(r.getMessage() for r in records)
    assert 'original naming' in message
    assert f'{len(report["loaded"])} tensors loaded' in message
    assert 'norm0.weight' in message  # unloaded backbone parameters
    assert 'head.weight' in message and 'norm.bias' in message  # ignored
    assert len(report['loaded']) == len(original) - 4


def test_url_loading(tmp_path, monkeypatch):
    _, original, x, feats = reference('s12')
    serve = tmp_path / 'serve'
    serve.mkdir()
    torch.save(original, serve / 'poolformer_s12.pth.tar')
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(serve))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = (f'http://127.0.0.1:{server.server_address[1]}/'
               'poolformer_s12.pth.tar')
        assert_parity(load('s12', url), x, fresh_norms(feats))
        assert (tmp_path / 'hub' / 'checkpoints' /
                'poolformer_s12.pth.tar').is_file()
    finally:
        server.shutdown()


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    _, original, _, _ = reference('m36')
    torch.save(original, tmp_path / 'm36.pth')
    with pytest.raises(CheckpointError,
                       match=r'stem\.conv\.weight is \(96, 3, 7, 7\) in the '
                       r'checkpoint but \(64, 3, 7, 7\) in the model'):
        load('s12', tmp_path / 'm36.pth')


def test_nothing_matches(tmp_path):
    torch.save({'conv1.weight': torch.zeros(1), 'fc.bias': torch.zeros(1)},
               tmp_path / 'resnet.pth')
    with pytest.raises(CheckpointError, match='No PoolFormer weights'):
        load('s12', tmp_path / 'resnet.pth')


def test_deeper_checkpoint_into_shallower_arch_reports_extra(tmp_path):
    # S24 weights into S12: shapes fit, the extra blocks are ignored.
    _, original, _, _ = reference('s24')
    torch.save(original, tmp_path / 's24.pth')
    report = load_pretrained(PoolFormer('s12'), str(tmp_path / 's24.pth'))
    assert 'stages.0.blocks.3.mlp.fc1.weight' in report['ignored']


def test_prefix_not_found(tmp_path):
    _, original, _, _ = reference('s12')
    torch.save(original, tmp_path / 'orig.pth')
    with pytest.raises(CheckpointError, match="prefix 'backbone.'"):
        load('s12', tmp_path / 'orig.pth', prefix='backbone.')


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"checkpoint not found: '.*nope\.pth'; give an "
                       r'existing local file or a URL'):
        load('s12', tmp_path / 'nope.pth')


def test_known_naming_but_nothing_fits(tmp_path):
    # timm naming, but of stages this network does not have.
    torch.save({'stages.7.blocks.0.mlp.fc1.weight': torch.zeros(4, 2, 1, 1)},
               tmp_path / 'other.pth')
    with pytest.raises(CheckpointError,
                       match=r"Nothing in '.*other\.pth' \(timm naming\) "
                       r'matches PoolFormer'):
        load('s12', tmp_path / 'other.pth')


# Text files make torch's weights-only unpickler raise KeyError or
# IndexError, random bytes an UnpicklingError that names no global.
@pytest.mark.parametrize('content', [
    b'', b'not a checkpoint at all', b'hello\n',
    b'some text file with words in it\n',
    bytes(range(256)) * 8
])
def test_not_a_checkpoint(content, tmp_path):
    (tmp_path / 'bad.pth').write_bytes(content)
    with pytest.raises(CheckpointError,
                       match="'.*bad.pth' is not a readable checkpoint"):
        load('s12', tmp_path / 'bad.pth')


def test_truncated_file(tmp_path):
    _, original, _, _ = reference('s12')
    torch.save(original, tmp_path / 'full.pth')
    data = (tmp_path / 'full.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    (tmp_path / 'cut.safetensors').write_bytes(b'\x08\x00\x00\x00\x00')
    for name in ('cut.pth', 'cut.safetensors'):
        with pytest.raises(CheckpointError, match=name):
            load('s12', tmp_path / name)


class Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (print, ('pwned', ))


def test_pickled_code_is_refused(tmp_path, capsys):
    torch.save({'state_dict': {}, 'evil': Payload()}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointError,
                       match='needs the global print. Such a file could run '
                       'code'):
        load('s12', tmp_path / 'evil.pth')
    assert 'pwned' not in capsys.readouterr().out
