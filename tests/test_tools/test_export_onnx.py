"""tools/export_onnx.py: ONNX export of backbones, Semantic FPN and the
detectors' dense heads, checked in ONNX Runtime against PyTorch.

Small inputs (64x96, and 128x64 at batch 2 for dynamic exports) keep the
file fast; the tool's own ``--verify`` does the comparison.
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
from conftest import CONFIGS, ROOT, TOOLS, load_tool, run_tool
from onnx import TensorProto, helper

SHAPE = ('64', '96')
RETINANET = osp.join(CONFIGS, 'retinanet_poolformer_s12.py')
SEM_FPN = osp.join(CONFIGS, 'sem_fpn_poolformer_s12.py')
MASK_RCNN = osp.join(CONFIGS, 'mask_rcnn_poolformer_s12.py')


@pytest.fixture(scope='module')
def tool():
    return load_tool('export_onnx.py')


def export(tool, tmp_path, config, *options, name='model.onnx'):
    """Run the tool in-process with --verify; return (result, file)."""
    out = str(tmp_path / name)
    args = tool.parse_args(
        [config, '--out', out, '--shape', *SHAPE, '--verify', *options])
    return tool.run(args), out


def check_rows(result, outputs, dynamic=True):
    rows = result['rows']
    inputs = sorted({row[0] for row in rows})
    assert inputs == ([(1, 3, 64, 96), (2, 3, 128, 64)]
                      if dynamic else [(1, 3, 64, 96)])
    assert [row[1] for row in rows] == outputs * len(inputs)
    assert max(row[4] for row in rows) <= 1e-4


def metadata(path):
    return {p.key: p.value for p in onnx.load(path).metadata_props}


@pytest.mark.parametrize('opset', [17, 20])
def test_backbone_dynamic(tool, tmp_path, opset):
    result, path = export(tool, tmp_path, RETINANET, '--part', 'backbone',
                          '--dynamic', '--opset', str(opset))
    # RetinaNet's config emits stages 1..3 only.
    check_rows(result, ['stage1', 'stage2', 'stage3'])
    meta = metadata(path)
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


@pytest.mark.parametrize('opset', [17, 20])
def test_deploy_backbone(tool, tmp_path, opset):
    """The folded path: with constant folding torch writes Identity nodes of
    shared initializers that ONNX Runtime's optimizer refuses; the tool
    removes them, so the file loads with the default optimizations."""
    result, path = export(tool, tmp_path, RETINANET, '--part', 'backbone',
                          '--dynamic', '--deploy', '--opset', str(opset))
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


@pytest.mark.parametrize('arch', ['caformer_s18', 'convformer_s18',
                                  'poolformerv2_s12'])
def test_metaformer_family_dynamic(tool, tmp_path, arch):
    """CAFormer's attention reshapes by the traced token count, so the file
    holds at other sizes (128x64: more tokens, another batch)."""
    result, _ = export(tool, tmp_path, osp.join(CONFIGS,
                                                f'retinanet_{arch}.py'),
                       '--part', 'backbone', '--dynamic')
    check_rows(result, ['stage1', 'stage2', 'stage3'])


def test_sem_fpn_dynamic_at_another_size(tool, tmp_path):
    result, path = export(tool, tmp_path, SEM_FPN, '--dynamic')
    check_rows(result, ['seg_logits'])
    rows = result['rows']
    assert rows[1][2] == (2, 150, 128, 64)  # logits at the input size
    # The exported graph is MMSegmentation's own inference.
    model = result['graph'].module.model
    x = torch.randn(1, 3, 64, 96)
    meta = [dict(img_shape=(64, 96), ori_shape=(64, 96),
                 pad_shape=(64, 96))]
    with torch.no_grad():
        expected = model.encode_decode(x, meta)
        got = result['graph'].module(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_verify_catches_sizes_recorded_as_constants(tool, tmp_path):
    """Without the tool's upsampling, MMSegmentation's ``Upsample`` sizes
    are Python ints: the dynamic file has the right shape at 128x64 and the
    wrong values, which only the second size of --verify shows."""

    class Naive(torch.nn.Module):

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            logits = self.model.decode_head(self.model.extract_feat(x))
            return F.interpolate(logits, size=x.shape[2:], mode='bilinear')

    cfg = tool.load_cfg(SEM_FPN)
    graph = tool.Graph(Naive(tool.build_model(cfg)).eval(), ['seg_logits'],
                       'naive', 32)
    graph.module.model.backbone.switch_impl('reference')
    path = str(tmp_path / 'naive.onnx')
    tool.export(graph, path, (64, 96), 17, True,
                dict(path='reference', weights='random'))
    with pytest.raises(tool.InputError,
                       match=r"'seg_logits' at input 2x3x128x64"):
        tool.verify(graph, path, [(1, 64, 96), (2, 128, 64)])


def test_retinanet_head_outputs(tool, tmp_path):
    result, _ = export(tool, tmp_path, RETINANET, '--dynamic')
    names = [f'{k}_{i}' for k in ('cls_score', 'bbox_pred') for i in range(5)]
    check_rows(result, names)


def test_mask_rcnn_up_to_rpn(tool, tmp_path):
    result, path = export(tool, tmp_path, MASK_RCNN)
    names = [
        f'rpn_{k}_{i}' for k in ('cls_score', 'bbox_pred') for i in range(5)
    ]
    check_rows(result, names, dynamic=False)
    assert 'RPN' in metadata(path)['graph']


def test_checkpoint(tool, tmp_path):
    """A whole-model checkpoint is loaded strictly; one that does not fit
    is refused in one line."""
    cfg = tool.load_cfg(RETINANET)
    model = tool.build_model(cfg)
    torch.manual_seed(3)
    for p in model.parameters():
        p.data.normal_()
    good = str(tmp_path / 'good.pth')
    torch.save(dict(state_dict=model.state_dict()), good)
    result, path = export(tool, tmp_path, RETINANET, good, '--part',
                          'backbone')
    stem = result['graph'].module.backbone.stem.conv.weight
    torch.testing.assert_close(stem, model.backbone.stem.conv.weight)
    assert metadata(path)['weights'] == good
    bad = str(tmp_path / 'bad.pth')
    state = model.state_dict()
    state.pop('backbone.stem.conv.weight')
    torch.save(dict(state_dict=state), bad)
    with pytest.raises(SystemExit, match='does not fit PoolFormer: 1 '
                       'missing'):
        tool.main([RETINANET, bad, '--part', 'backbone', '--out',
                   str(tmp_path / 'x.onnx')])


def test_corrupted_file(tool, tmp_path):
    path = tmp_path / 'broken.onnx'
    path.write_bytes(b'not a protobuf' * 10)
    with pytest.raises(tool.InputError, match='cannot load .*broken.onnx'):
        tool.open_session(str(path))
    with pytest.raises(tool.InputError, match='not found'):
        tool.open_session(str(tmp_path / 'missing.onnx'))


def test_wrong_input_shape(tool, tmp_path):
    """A static file runs at its export size only; the message names both
    shapes."""
    _, path = export(tool, tmp_path, RETINANET, '--part', 'backbone')
    session = tool.open_session(path)
    image = np.zeros((1, 3, 96, 64), np.float32)
    with pytest.raises(tool.InputError,
                       match=r'exported with shape \[1, 3, 64, 96\].*'
                       r'given \[1, 3, 96, 64\]'):
        tool.run_session(session, image)


def test_sort_graph(tool):
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


@pytest.mark.parametrize('argv, message', [
    (['--opset', '16'], '--opset 16 is not supported'),
    (['--shape', '64', '90'], 'multiples of 32'),
    (['--shape', '0', '64', '--part', 'backbone'], 'must be positive'),
    (['missing.pth'], "checkpoint not found: 'missing.pth'"),
])
def test_input_errors(tool, tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        tool.main([SEM_FPN, '--out', str(tmp_path / 'x.onnx'), *argv])


def test_unsupported_models(tool, tmp_path):
    cascade = tmp_path / 'cascade.py'
    cascade.write_text(f"_base_ = [{MASK_RCNN!r}]\n"
                       "model = dict(type='CascadeRCNN')\n")
    with pytest.raises(SystemExit, match="model type 'CascadeRCNN' with "
                       "head 'RPNHead' is not supported"):
        tool.main([str(cascade), '--out', str(tmp_path / 'x.onnx')])
    resnet = tmp_path / 'resnet.py'
    resnet.write_text(f"_base_ = [{RETINANET!r}]\nmodel = dict(backbone="
                      "dict(_delete_=True, type='ResNet', depth=18))\n")
    with pytest.raises(SystemExit, match="backbone type 'ResNet' is not "
                       "supported"):
        tool.main([str(resnet), '--part', 'backbone', '--out',
                   str(tmp_path / 'x.onnx')])
    with pytest.raises(SystemExit, match='config file not found'):
        tool.main(['nothing.py', '--out', str(tmp_path / 'x.onnx')])


def test_benchmark(tool, tmp_path):
    result, _ = export(tool, tmp_path, RETINANET, '--part', 'backbone',
                       '--benchmark', '2')
    assert set(result['times']) == {'onnxruntime', 'pytorch auto',
                                    'pytorch deploy'}


def test_cli(tmp_path):
    out = tmp_path / 'fpn.onnx'
    result = run_tool('export_onnx.py', SEM_FPN, '--out', out, '--shape',
                      *SHAPE, '--dynamic', '--verify', '--deploy')
    assert 'verify passed' in result.stdout
    assert 'dynamic axes: image batch, height, width' in result.stdout
    assert out.is_file()
    # Errors: one line, no traceback.
    error = subprocess.run(
        [sys.executable, osp.join(TOOLS, 'export_onnx.py'), SEM_FPN,
         '--out', str(out), '--opset', '21'], capture_output=True, text=True,
        cwd=ROOT)
    assert error.returncode != 0
    assert 'Traceback' not in error.stderr
    assert error.stderr.strip().splitlines()[-1].startswith(
        'error: --opset 21')
