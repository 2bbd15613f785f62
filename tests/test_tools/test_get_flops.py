"""Parameters and FLOPs (multiply-adds) of the configs' models and of the
backbones alone: :mod:`poolformer_mm.apis.complexity`, called here, and
tools/analysis/get_flops.py, run once as a user runs it.

The backbones alone must reproduce the papers' ImageNet MACs; the configs
are counted at small ``--shape`` values, which keeps the file fast.
"""
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers.commands import CONFIGS, run_tool

from poolformer_mm import PoolFormer
from poolformer_mm.apis import complexity
from poolformer_mm.apis.common import exit_on_error
from poolformer_mm.apis.runs import load_config
from poolformer_mm.errors import InputError

# Models from the real configs, counted.
pytestmark = pytest.mark.integration

# ImageNet-1k classifiers at 224x224, G MACs: PoolFormer (Yu et al., CVPR
# 2022), Table 1; CAFormer-S18 (MetaFormer Baselines, TPAMI 2023).
PAPER_MACS = {'s12': 1.8, 's24': 3.4, 's36': 5.0, 'm36': 8.8, 'm48': 11.6}
CAFORMER_S18_MACS = 4.1
SHAPE = (128, 192)
TABLE_ROW = re.compile(r'\| (\S+) +\| +([0-9.]+) \| +([0-9.]+) \|')


@pytest.fixture(scope='module')
def s12_alone():
    """PoolFormer-S12 alone at :data:`SHAPE`."""
    return complexity.analyze_arch('s12', SHAPE)


def check_rows_add_up(result):
    # Every operator and parameter belongs to a part: no '(other)' row.
    assert '(other)' not in [p.name for p in result.parts]
    assert sum(p.flops for p in result.parts) == result.flops
    assert sum(p.params for p in result.parts) == result.params


# Both widths and both depths: S12, and M36 (S36's depths at the M widths);
# the count adds block by block, so S24, S36 and M48 would repeat it.
@pytest.mark.parametrize('arch', ['s12', 'm36'])
def test_backbone_alone_reproduces_paper_macs(arch):
    result = complexity.analyze_arch(arch)
    assert result.shape == (224, 224)
    # The paper rounds to 0.1G; the classifier's head and final norm, which
    # the backbone lacks, and the backbone's own output norms are < 0.1%.
    assert result.flops / 1e9 == pytest.approx(PAPER_MACS[arch], rel=0.02)
    check_rows_add_up(result)
    assert [p.name for p in result.parts] == [
        'stem', 'stages.0', 'stages.1', 'stages.2', 'stages.3', 'norm0',
        'norm1', 'norm2', 'norm3'
    ]
    # Convolutions and norms only; the pooling mixer is not counted.
    assert 'aten::avg_pool2d' in result.not_counted


def test_attention_is_counted():
    """mmengine (like fvcore) has no formula for scaled_dot_product_attention;
    without the package's, CAFormer-S18 would lose 5% at 224x224."""
    result = complexity.analyze_arch('caformer_s18')
    assert result.flops / 1e9 == pytest.approx(CAFORMER_S18_MACS, rel=0.02)
    assert not any('attention' in op for op in result.not_counted)


def test_attention_formula_matches_explicit_matmuls():

    class Explicit(nn.Module):

        def forward(self, q, k, v):
            return ((q @ k.transpose(-2, -1)).softmax(-1)) @ v

    class Fused(nn.Module):

        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    # (batch, heads, tokens, channels); values wider than keys.
    q, k, v = (torch.randn(2, 3, n, c) for n, c in ((5, 4), (7, 4), (7, 6)))
    explicit = complexity.count(Explicit(), (q, k, v)).flops
    fused = complexity.count(Fused(), (q, k, v)).flops
    assert fused == explicit == 2 * 3 * 5 * 7 * (4 + 6)


def test_counts_the_reference_network(s12_alone):
    """The fast modules step aside while a trace records, so counting 'auto'
    as built gives the reference count; the analyses switch anyway, which
    matters for 'deploy' (its oneDNN ops cannot be traced)."""
    x = (torch.randn(1, 3, *SHAPE), )
    auto = PoolFormer('s12').eval()
    assert complexity.count(auto, x).flops == s12_alone.flops
    assert auto.impl == 'auto'
    deploy = PoolFormer('s12', deploy=True)
    assert complexity.use_reference(deploy) == [
        "PoolFormer s12 (impl='deploy')"
    ]
    assert deploy.impl == 'reference'
    assert complexity.count(deploy, x).flops == s12_alone.flops
    # A model without a backbone of this package is counted as it is.
    assert complexity.use_reference(nn.Conv2d(3, 8, 3)) == []


def test_detector_cli(s12_alone):
    """The one run of the command line: the table as printed."""
    config = osp.join(CONFIGS, 'retinanet_poolformer_s12.py')
    out = run_tool('analysis/get_flops.py', config, '--shape', *SHAPE).stdout
    rows = {
        m[1]: (float(m[2]), float(m[3]))
        for m in map(TABLE_ROW.fullmatch, out.splitlines()) if m
    }
    assert list(rows) == ['backbone', 'neck', 'bbox_head', 'total'], out
    total = rows.pop('total')
    # The rows are rounded to 0.001.
    for i in range(2):
        assert sum(r[i] for r in rows.values()) == pytest.approx(
            total[i], abs=0.002)
    # RetinaNet takes stages 1-3: the backbone alone less norm0.
    norm0 = next(p for p in s12_alone.parts if p.name == 'norm0')
    params = round((s12_alone.params - norm0.params) / 1e6, 3)
    flops = round((s12_alone.flops - norm0.flops) / 1e9, 3)
    assert rows['backbone'] == (params, flops)
    assert 'input: 1x3x128x192 (from --shape, as given)' in out
    assert 'counter: mmengine.analysis.FlopAnalyzer' in out
    assert "counted on impl='reference' (same parameters): backbone s12 " \
        "(impl='auto')" in out
    assert 'not counted: post-processing' in out


def test_segmentor(s12_alone, tmp_path):
    """The ADE20K Semantic FPN config, with an auxiliary head added: it only
    trains, so it has parameters but no FLOPs."""
    config = tmp_path / 'sem_fpn_aux.py'
    config.write_text(
        f"_base_ = [{osp.join(CONFIGS, 'sem_fpn_poolformer_s12.py')!r}]\n"
        'model = dict(auxiliary_head=dict(type="FCNHead", in_channels=256, '
        'in_index=2, channels=64, num_convs=1, concat_input=False, '
        'num_classes=150))\n')
    result = complexity.analyze_config(str(config), SHAPE)
    assert result.shape == SHAPE
    check_rows_add_up(result)
    parts = {p.name: p for p in result.parts}
    # FPNHead upsamples in its own forward, which MMSegmentation calls
    # directly: still the head's, nothing left outside the parts.
    assert list(parts) == ['backbone', 'neck', 'decode_head', 'auxiliary_head']
    assert parts['backbone'].params == s12_alone.params
    assert parts['backbone'].flops == s12_alone.flops
    assert parts['decode_head'].flops > 0
    aux = parts['auxiliary_head']
    assert aux.params > 0 and aux.flops == 0
    assert aux.note == 'not run by the test forward (training only)'
    assert result.not_counted['aten::avg_pool2d'] == 12


@pytest.mark.parametrize('config, size', [
    ('retinanet_poolformer_s12.py', (800, 1344)),
    ('mask_rcnn_caformer_s18.py', (800, 1344)),
    ('sem_fpn_poolformer_m48.py', (512, 512)),
])
def test_test_size(config, size):
    cfg = load_config(osp.join(CONFIGS, config))
    assert complexity.test_size(cfg)[0] == size


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='s12', shape=(0, 224)), "invalid size 0"),
    (dict(arch='s12', shape=(224, -8)), "invalid size -8"),
    (dict(arch='s12', shape=(31, 224)), "invalid size 31"),
    (dict(arch='s12', shape=(22.5, 224)), "invalid size 22.5"),
    (dict(arch='s12', shape=(224, )), 'shape must be (H, W), got (224,)'),
    (dict(arch='s13'), "unknown arch 's13': choose a PoolFormer arch ['m36'"),
    (dict(), 'give either a config file or --arch NAME, not neither'),
    (dict(config='x.py', arch='s12'), 'not both'),
    (dict(arch='s12', cfg_options={'a': 1}), 'applies to a config'),
    (dict(config='not_openmmlab'), "default_scope is None"),
    (dict(config='no_resize'), 'no Resize with a scale; pass --shape H W'),
    (dict(config='nope.py'), "config file not found: 'nope.py'"),
])
def test_bad_input(tmp_path, kwargs, message):
    if kwargs.get('config') == 'not_openmmlab':
        kwargs['config'] = write(tmp_path / 'cfg.py', 'model = dict()\n')
    elif kwargs.get('config') == 'no_resize':
        kwargs['config'] = write(
            tmp_path / 'cfg.py', "default_scope = 'mmdet'\n"
            "model = dict(type='RetinaNet')\n"
            'test_dataloader = dict(dataset=dict(pipeline=['
            "dict(type='LoadImageFromFile')]))\n")
    with pytest.raises(InputError) as exc:
        complexity.analyze(**kwargs)
    assert message in str(exc.value)
    if message.startswith('invalid size'):
        assert 'integers >= 32' in str(exc.value)


@pytest.mark.parametrize('text', ['0', '-8', '31', '22.5', 'x'])
def test_shape_values_as_typed(text):
    """``--shape`` goes through input_size as typed."""
    with pytest.raises(InputError, match=f"invalid size '{text}': H and W "
                       'must be integers >= 32'):
        complexity.input_size(text)
    assert complexity.input_size('32') == 32


def test_bad_input_is_one_line(capsys):
    """What the tools print for an InputError: one line, status 2."""
    with pytest.raises(SystemExit) as exc, exit_on_error('get_flops.py'):
        raise InputError('config file not found: \'x.py\'\n(a hint)')
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ''
    assert err == "get_flops.py: error: config file not found: 'x.py' " \
        '(a hint)\n'
