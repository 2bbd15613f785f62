"""poolformer_mm.apis.onnx_export (tools/export_onnx.py): ONNX export of
backbones, Semantic FPN and the detectors' dense heads, checked in ONNX
Runtime against PyTorch; the tool's command line end to end.

Small inputs (64x96, and 128x64 at batch 2 for dynamic exports) keep the
file fast; the export's own ``verify`` does the comparison.
"""
import os.path as osp
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from helpers.commands import CONFIGS, ROOT, TOOLS
from helpers.tiny_demo import write_narrow_config
from onnx import TensorProto, helper

from poolformer_mm.apis import onnx_export as tool
from poolformer_mm.apis.runs import build_model, load_config
from poolformer_mm.errors import CheckpointError, InputError
from poolformer_mm.models.execution import switch_impl

# Detectors and segmentors from the real configs, exported.
pytestmark = pytest.mark.integration

SHAPE = (64, 96)
RETINANET = osp.join(CONFIGS, 'retinanet_poolformer_s12.py')
SEM_FPN = osp.join(CONFIGS, 'sem_fpn_poolformer_s12.py')
MASK_RCNN = osp.join(CONFIGS, 'mask_rcnn_poolformer_s12.py')


@pytest.fixture(scope='module')
def narrow(tmp_path_factory):
    """{'retinanet' | 'sem_fpn' | 'mask_rcnn': the real config with a narrow
    PoolFormer}, for the tests of the export's own logic, where S12's depth
    only costs time; the full S12 in test_backbone_dynamic,
    test_retinanet_head_outputs and test_metaformer_family_dynamic."""
    folder = tmp_path_factory.mktemp('narrow')
    return {
        name: write_narrow_config(folder / f'{name}_narrow.py', base,
                                  neck=dict(in_channels=in_channels))
        for name, base, in_channels in (
            ('retinanet', RETINANET, [32, 64, 128]),
            ('sem_fpn', SEM_FPN, [16, 32, 64, 128]),
            ('mask_rcnn', MASK_RCNN, [16, 32, 64, 128]))
    }


def export(tmp_path, config, checkpoint=None, name='model.onnx', **options):
    """Export with verify; return (result, file)."""
    result = tool.export_onnx(config, checkpoint, out=str(tmp_path / name),
                              shape=SHAPE, verify=True, **options)
    return result, result.path


def check_rows(result, outputs, dynamic=True):
    rows = result.rows
    inputs = sorted({row[0] for row in rows})
    assert inputs == ([(1, 3, 64, 96), (2, 3, 128, 64)]
                      if dynamic else [(1, 3, 64, 96)])
    assert [row[1] for row in rows] == outputs * len(inputs)
    assert max(row[4] for row in rows) <= 1e-4


def metadata(path):
    return {p.key: p.value for p in onnx.load(path).metadata_props}


@pytest.mark.parametrize('opset', [17, 20])
def test_backbone_dynamic(tmp_path, opset):
    result, path = export(tmp_path, RETINANET, part='backbone', dynamic=True,
                          opset=opset)
    # RetinaNet's config emits stages 1..3 only.
    check_rows(result, ['stage1', 'stage2', 'stage3'])
    meta = metadata(path)
    assert meta == result.metadata
    assert (meta['part'], meta['path'], meta['opset']) == ('backbone',
                                                           'reference',
                                                           str(opset))
    assert meta['config'] == 'configs/retinanet_poolformer_s12.py'
    assert '"height"' in meta['dynamic_axes']
    assert 'random' in meta['weights']
    model = onnx.load(path)
    assert model.opset_import[0].version == opset
    # GroupNorm(1) as torch writes it: Reshape -> InstanceNormalization.
    ops = {n.op_type for n in model.graph.node}
    assert 'InstanceNormalization' in ops and 'ReduceMean' not in ops


# opset 20 on the reference path: test_backbone_dynamic.
@pytest.mark.parametrize('opset', [17])
def test_deploy_backbone(tmp_path, opset, narrow):
    """The folded path: with constant folding torch writes Identity nodes of
    shared initializers that ONNX Runtime's optimizer refuses; the export
    removes them, so the file loads with the default optimizations."""
    result, path = export(tmp_path, narrow['retinanet'], part='backbone',
                          dynamic=True, deploy=True, opset=opset)
    check_rows(result, ['stage1', 'stage2', 'stage3'])
    model = onnx.load(path)
    assert metadata(path)['path'] == 'deploy'
    ops = {n.op_type for n in model.graph.node}
    # The folded blocks' statistics as means (the output norms stay).
    assert 'ReduceMean' in ops
    inits = {i.name for i in model.graph.initializer}
    assert not [
        n for n in model.graph.node
        if n.op_type == 'Identity' and n.input[0] in inits
    ]


# Attention and separable convolutions; PoolFormerV2's pooling is
# PoolFormer's (test_backbone_dynamic).
@pytest.mark.parametrize('arch', ['caformer_s18', 'convformer_s18'])
def test_metaformer_family_dynamic(tmp_path, arch):
    """CAFormer's attention reshapes by the traced token count, so the file
    holds at other sizes (128x64: more tokens, another batch)."""
    result, _ = export(tmp_path, osp.join(CONFIGS, f'retinanet_{arch}.py'),
                       part='backbone', dynamic=True)
    check_rows(result, ['stage1', 'stage2', 'stage3'])


def test_sem_fpn_dynamic_at_another_size(tmp_path, narrow):
    result, path = export(tmp_path, narrow['sem_fpn'], dynamic=True)
    check_rows(result, ['seg_logits'])
    rows = result.rows
    assert rows[1][2] == (2, 150, 128, 64)  # logits at the input size
    # The exported graph is MMSegmentation's own inference.
    model = result.graph.module.model
    x = torch.randn(1, 3, 64, 96)
    meta = [dict(img_shape=(64, 96), ori_shape=(64, 96),
                 pad_shape=(64, 96))]
    with torch.no_grad():
        expected = model.encode_decode(x, meta)
        got = result.graph.module(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_verify_catches_sizes_recorded_as_constants(tmp_path, narrow):
    """Without the export's upsampling, MMSegmentation's ``Upsample`` sizes
    are Python ints: the dynamic file has the right shape at 128x64 and the
    wrong values, which only the second size of verify shows."""

    class Naive(torch.nn.Module):

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            logits = self.model.decode_head(self.model.extract_feat(x))
            return F.interpolate(logits, size=x.shape[2:], mode='bilinear')

    model = build_model(load_config(narrow['sem_fpn']))
    graph = tool.Graph(Naive(model).eval(), ['seg_logits'], 'naive', 32)
    switch_impl(graph.module, 'reference')
    path = str(tmp_path / 'naive.onnx')
    tool.write_onnx(graph, path, (64, 96), 17, True,
                    dict(path='reference', weights='random'))
    with pytest.raises(InputError,
                       match=r"'seg_logits' at input 2x3x128x64"):
        tool.verify_onnx(graph, path, [(1, 64, 96), (2, 128, 64)])


def test_retinanet_head_outputs(tmp_path):
    result, _ = export(tmp_path, RETINANET, dynamic=True)
    names = [f'{k}_{i}' for k in ('cls_score', 'bbox_pred') for i in range(5)]
    check_rows(result, names)


def test_mask_rcnn_up_to_rpn(tmp_path, narrow):
    result, path = export(tmp_path, narrow['mask_rcnn'])
    names = [
        f'rpn_{k}_{i}' for k in ('cls_score', 'bbox_pred') for i in range(5)
    ]
    check_rows(result, names, dynamic=False)
    assert 'RPN' in metadata(path)['graph']


def test_checkpoint(tmp_path, narrow):
    """A whole-model checkpoint goes through the checkpoint policy: loaded
    when it fits, refused when it does not; backbone weights alone only for
    the backbone."""
    config = narrow['retinanet']
    model = build_model(load_config(config))
    torch.manual_seed(3)
    for p in model.parameters():
        p.data.normal_()
    good = str(tmp_path / 'good.pth')
    torch.save(dict(state_dict=model.state_dict()), good)
    result, path = export(tmp_path, config, good, part='backbone')
    stem = result.graph.module.backbone.stem.conv.weight
    torch.testing.assert_close(stem, model.backbone.stem.conv.weight)
    assert metadata(path)['weights'] == good
    bad = str(tmp_path / 'bad.pth')
    state = model.state_dict()
    state.pop('backbone.stem.conv.weight')
    torch.save(dict(state_dict=state), bad)
    out = str(tmp_path / 'x.onnx')
    with pytest.raises(CheckpointError, match="does not fit the config's "
                       r'model: 1 of the \d+ model tensors are missing '
                       r'\(e.g. backbone.stem.conv.weight\)'):
        tool.export_onnx(config, bad, part='backbone', out=out)
    backbone = str(tmp_path / 'backbone.pth')
    torch.save(model.backbone.state_dict(), backbone)
    with pytest.raises(CheckpointError, match='backbone weights only'):
        tool.export_onnx(config, backbone, out=out)
    assert not osp.exists(out)


def test_corrupted_file(tmp_path):
    path = tmp_path / 'broken.onnx'
    path.write_bytes(b'not a protobuf' * 10)
    with pytest.raises(InputError, match='cannot load .*broken.onnx'):
        tool.open_session(str(path))
    with pytest.raises(InputError, match='not found'):
        tool.open_session(str(tmp_path / 'missing.onnx'))


def test_wrong_input_shape(tmp_path, narrow):
    """A static file runs at its export size only; the message names both
    shapes."""
    _, path = export(tmp_path, narrow['retinanet'], part='backbone')
    session = tool.open_session(path)
    image = np.zeros((1, 3, 96, 64), np.float32)
    with pytest.raises(InputError,
                       match=r'exported with shape \[1, 3, 64, 96\].*'
                       r'given \[1, 3, 96, 64\]'):
        tool.run_session(session, image)


def test_sort_graph():
    """Nodes listed before the nodes that make their inputs are put after
    them; a value that nothing provides is an error."""
    nodes = [
        helper.make_node('Relu', ['b'], ['c']),
        helper.make_node('Identity', ['w'], ['a']),
        helper.make_node('Add', ['x', 'a'], ['b']),
    ]
    graph = helper.make_graph(
        nodes, 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT,
                                                   [2])],
        [helper.make_tensor_value_info('c', TensorProto.FLOAT, [2])],
        [helper.make_tensor('w', TensorProto.FLOAT, [2], [-3., 1.])])
    assert tool.sort_graph(graph) == 1
    assert [n.op_type for n in graph.node] == ['Identity', 'Add', 'Relu']
    # Then the initializer's Identity goes, and ORT runs it as it should.
    assert tool.drop_initializer_identities(graph) == 1
    assert list(graph.node[0].input) == ['x', 'w']
    model = helper.make_model(graph,
                              opset_imports=[helper.make_opsetid('', 17)])
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    out = session.run(None, {'x': np.array([1., 1.], np.float32)})[0]
    np.testing.assert_array_equal(out, [0., 2.])
    broken = helper.make_graph([helper.make_node('Relu', ['y'], ['c'])], 'g',
                               [], [])
    with pytest.raises(ValueError, match=r"reads \['y'\]"):
        tool.sort_graph(broken)


@pytest.mark.parametrize('options, message', [
    (dict(opset=16), '--opset 16 is not supported'),
    (dict(shape=(64, 90)), 'multiples of 32'),
    (dict(shape=(0, 64), part='backbone'), 'must be positive'),
    (dict(checkpoint='missing.pth'), "checkpoint not found: 'missing.pth'"),
    (dict(part='neck'), "part must be one of .*, got 'neck'"),
    (dict(benchmark=-1), 'benchmark must be 0 or positive, got -1'),
])
def test_input_errors(tmp_path, options, message):
    out = tmp_path / 'x.onnx'
    with pytest.raises(InputError, match=message):
        tool.export_onnx(SEM_FPN, out=out, **options)
    assert not out.exists()


def test_unsupported_models(tmp_path):
    cascade = tmp_path / 'cascade.py'
    cascade.write_text(f"_base_ = [{MASK_RCNN!r}]\n"
                       "model = dict(type='CascadeRCNN')\n")
    out = str(tmp_path / 'x.onnx')
    with pytest.raises(InputError, match="model type 'CascadeRCNN' with "
                       "head 'RPNHead' is not supported"):
        tool.export_onnx(str(cascade), out=out)
    resnet = tmp_path / 'resnet.py'
    resnet.write_text(f"_base_ = [{RETINANET!r}]\nmodel = dict(backbone="
                      "dict(_delete_=True, type='ResNet', depth=18))\n")
    with pytest.raises(InputError, match="backbone type 'ResNet' is not "
                       "supported"):
        tool.export_onnx(str(resnet), part='backbone', out=out)
    with pytest.raises(InputError, match='config file not found'):
        tool.export_onnx('nothing.py', out=out)


def test_benchmark(tmp_path, narrow):
    result, _ = export(tmp_path, narrow['retinanet'], part='backbone',
                       benchmark=2)
    assert set(result.times) == {'onnxruntime', 'pytorch auto',
                                 'pytorch deploy'}


def test_cli(tmp_path, narrow):
    """tools/export_onnx.py end to end, side by side: an export that
    verifies, and a refused opset in one ``error:`` line."""
    out = tmp_path / 'fpn.onnx'
    tool_path = osp.join(TOOLS, 'export_onnx.py')
    cmds = [[
        sys.executable, tool_path, narrow['sem_fpn'], '--out', out, '--shape',
        *map(str, SHAPE), '--dynamic', '--verify', '--deploy'
    ], [sys.executable, tool_path, SEM_FPN, '--out', out, '--opset', '21']]
    procs = [
        subprocess.Popen([str(c) for c in cmd], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for cmd in cmds
    ]
    (stdout, stderr), (_, error) = [p.communicate(timeout=600)
                                    for p in procs]
    assert procs[0].returncode == 0, stderr[-3000:]
    assert 'verify passed' in stdout
    assert 'dynamic axes: image batch, height, width' in stdout
    assert out.is_file()
    # Errors: one line, no traceback.
    assert procs[1].returncode == 1
    assert 'Traceback' not in error
    assert error.strip().splitlines()[-1].startswith('error: --opset 21')
