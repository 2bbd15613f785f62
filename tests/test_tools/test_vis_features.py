"""tools/analysis/vis_features.py draws the four stage outputs of a demo
model and says which weights it used.

The trained demo RetinaNet runs through ``run_tool`` (a subprocess, as a user
runs it); the other runs call the tool's ``main`` in this process, which
saves the start-up of a fresh interpreter each.
"""
import glob
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CONFIGS, TOOLS, load_tool, run_tool
from tiny_demo import state_dict

SCRIPT = osp.join(TOOLS, 'analysis', 'vis_features.py')
SEM_FPN = osp.join(CONFIGS, 'demo', 'sem_fpn_poolformer_s12_demo.py')
COLUMNS = ('stage', 'stride', 'channels', 'size', 'mean', 'std', 'min',
           'max', 'pre_mean', 'pre_std')


def vis(capsys, *args):
    """Run the tool in this process; its printed report."""
    load_tool('analysis/vis_features.py').main([str(a) for a in args])
    return capsys.readouterr().out


def stage_table(report):
    """The printed statistics: one dict per stage, in order."""
    rows = []
    for line in report.splitlines():
        cells = line.split()
        if len(cells) >= len(COLUMNS) and re.fullmatch(
                r'[0-3] (4|8|16|32) \d+ \d+x\d+', ' '.join(cells[:4])):
            row = dict(zip(COLUMNS, cells))
            row.update((k, float(row[k])) for k in COLUMNS[4:])
            row['top'] = cells[len(COLUMNS):]
            rows.append(row)
    assert [r['stage'] for r in rows] == ['0', '1', '2', '3'], report
    return rows


def numbers(rows):
    return [[r[k] for k in COLUMNS[4:]] for r in rows]


def picture(path, report):
    """The written picture as an array; its size is the one reported."""
    image = np.asarray(Image.open(path).convert('RGB'))
    m = re.search(r'wrote .*: (\d+)x(\d+) px, 4 rows \(stages\) x (\d+) '
                  r'columns', report)
    assert m, report
    assert image.shape[:2] == (int(m.group(2)), int(m.group(1)))
    # Heat maps, not a blank or constant canvas.
    assert image.std() > 20
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1000
    return image, int(m.group(3))


@pytest.fixture(scope='module')
def image(demo_data):
    return sorted(glob.glob(f'{demo_data}/coco/val/*.png'))[0]


@pytest.fixture(scope='module')
def trained(trained_demo, image, tmp_path_factory):
    """(config, checkpoint, report, picture) of the trained demo."""
    config, checkpoint, _ = trained_demo('retinanet')
    out = tmp_path_factory.mktemp('vis') / 'trained.png'
    report = run_tool('analysis/vis_features.py', config, checkpoint, image,
                      '--out', out).stdout
    return config, checkpoint, report, out


def test_trained_checkpoint(trained):
    config, checkpoint, report, out = trained
    backbone = [k for k in state_dict(checkpoint) if k.startswith('backbone.')]
    assert f'weights: {checkpoint} (poolformer_mm naming): ' \
        f'{len(backbone)} backbone tensors loaded' in report
    # RetinaNet emits stages 1-3: stage 0's output norm was never trained.
    assert 'missing: norm0.weight, norm0.bias' in report
    assert 'out_indices (1, 2, 3)' in report
    # Neck and head are named as unused, not dropped silently.
    assert re.search(r'\d+ tensors of the file not used .*bbox_head\.\*: '
                     r'\d+, neck\.\*: \d+', report)
    assert 'RANDOM' not in report
    # The demo test pipeline resizes 96x96 to 160x160: stride 4 is 40x40.
    assert '96x96 -> 160x160 (test pipeline Resize' in report
    rows = stage_table(report)
    assert [r['size'] for r in rows] == ['40x40', '20x20', '10x10', '5x5']
    assert [r['channels'] for r in rows] == ['64', '128', '320', '512']
    assert all(len(r['top']) == 4 for r in rows)
    _, columns = picture(out, report)
    assert columns == 6


def test_random_weights_differ(trained, image, tmp_path, capsys):
    config, _, trained_report, trained_out = trained
    out = tmp_path / 'random.png'
    report = vis(capsys, config, image, '--out', out)
    assert 'weights: RANDOM (seed 0)' in report
    assert 'backbone tensors loaded' not in report
    assert numbers(stage_table(report)) != numbers(
        stage_table(trained_report))
    random_image, _ = picture(out, report)
    trained_image, _ = picture(trained_out, trained_report)
    assert random_image.shape == trained_image.shape
    assert (random_image != trained_image).any()


def test_backbone_only_weights(trained, image, tmp_path, capsys):
    config, checkpoint, trained_report, trained_out = trained
    weights = {
        k[len('backbone.'):]: v
        for k, v in state_dict(checkpoint).items()
        if k.startswith('backbone.')
    }
    path = tmp_path / 'backbone.pth'
    torch.save(weights, path)
    out = tmp_path / 'backbone.png'
    report = vis(capsys, config, path, image, '--out', out, '--topk', 2)
    assert (f'weights: {path} (poolformer_mm naming): {len(weights)} '
            'backbone tensors loaded') in report
    assert 'tensors of the file not used' not in report
    # The same weights as the whole training checkpoint: the same numbers.
    assert numbers(stage_table(report)) == numbers(
        stage_table(trained_report))
    assert all(len(r['top']) == 2 for r in stage_table(report))
    # Two channels fewer: two panel columns fewer, rows unchanged.
    small, columns = picture(out, report)
    large, _ = picture(trained_out, trained_report)
    assert columns == 4
    assert small.shape[0] == large.shape[0]
    assert small.shape[1] * 6 == large.shape[1] * 4


def test_shape_override(trained, image, tmp_path, capsys):
    report = vis(capsys, trained[0], image, '--out', tmp_path / 'wide.png',
                 '--shape', 64, 96)
    assert '96x96 -> 64x96 (--shape 64 96)' in report
    assert 'weights: RANDOM (seed 0)' in report
    assert [r['size'] for r in stage_table(report)] == [
        '16x24', '8x12', '4x6', '2x3'
    ]
    wide, _ = picture(tmp_path / 'wide.png', report)
    square, _ = picture(trained[3], trained[2])
    # Panels follow the input's aspect ratio: as wide, less high.
    assert wide.shape[1] == square.shape[1]
    assert wide.shape[0] < square.shape[0]


def test_segmentation_test_pipeline(image):
    """Resize, then ResizeToMultiple, then the data preprocessor's
    normalisation, as the segmentation demo's test pipeline does."""
    from mmengine.config import Config
    tool = load_tool('analysis/vis_features.py')
    cfg = Config.fromfile(SEM_FPN)
    args = tool.parse_args([SEM_FPN, image])
    img = np.zeros((50, 100, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    resized, how = tool.resize_image(img, cfg, args)
    # 100x50 into 160x160 keeping the ratio: 160x80, 80 rounds up to 96.
    assert resized.shape == (96, 160, 3)
    assert how == ('test pipeline Resize(scale=(160, 160), keep_ratio=True)'
                   ', ResizeToMultiple(32)')
    x, how = tool.preprocess(resized, cfg)
    assert x.shape == (1, 3, 96, 160)
    assert how.startswith('BGR->RGB, mean [123.675')
    # RGB order after the flip: blue is the last channel.
    torch.testing.assert_close(
        x[0, :, 0, 0], torch.tensor([-123.675 / 58.395, -116.28 / 57.12,
                                     (255 - 103.53) / 57.375]))


def bad_inputs(tmp_path, config, checkpoint, image):
    text = tmp_path / 'text.png'
    text.write_text('not an image\n')
    resnet = tmp_path / 'resnet.py'
    resnet.write_text("default_scope = 'mmdet'\nmodel = dict(type='RetinaNet',"
                      " backbone=dict(type='ResNet', depth=50))\n")
    hello = tmp_path / 'hello.pth'
    hello.write_text('hello\n')
    other = tmp_path / 'other.pth'
    torch.save({'fc.weight': torch.zeros(2, 2)}, other)
    return [
        ((tmp_path / 'none.py', image), "config not found: '"),
        ((config, tmp_path / 'none.pth', image), "checkpoint not found: '"),
        ((config, tmp_path / 'none.png'), "image not found: '"),
        ((config, text), f"cannot read image '{text}'"),
        ((resnet, image), "model.backbone.type 'ResNet'; this tool draws"),
        ((config, other, image), f"cannot use checkpoint '{other}': No "
         'PoolFormer weights'),
        # Whatever torch.load raises on text: one line naming the file.
        ((config, hello, image), f"cannot use checkpoint '{hello}': "),
        ((config, checkpoint, image, '--cfg-options',
          'model.backbone.arch=m36'), 'Shape mismatch'),
        ((config, image, '--shape', 8, 8), '--shape H W must be at least'),
    ]


def test_bad_inputs(trained, image, tmp_path, capsys):
    config, checkpoint, _, _ = trained
    tool = load_tool('analysis/vis_features.py')
    for args, message in bad_inputs(tmp_path, config, checkpoint, image):
        with pytest.raises(SystemExit) as exc:
            tool.main([str(a) for a in (*args, '--out', tmp_path / 'x.png')])
        text = str(exc.value.code)
        assert text.startswith('error: ') and message in text, (args, text)
        assert '\n' not in text
    assert not osp.exists(tmp_path / 'x.png')


def test_bad_input_exits_without_traceback(trained, tmp_path):
    config = trained[0]
    text = tmp_path / 'text.png'
    text.write_text('not an image\n')
    result = subprocess.run(
        [sys.executable, SCRIPT, config, text, '--out', tmp_path / 'x.png'],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    errors = [line for line in result.stderr.splitlines()
              if line.startswith('error: ')]
    assert errors == [f"error: cannot read image '{text}'; give an image "
                      "file that OpenCV reads (.jpg, .png, ...)"]
