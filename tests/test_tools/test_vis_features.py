"""Pictures of the four stage outputs of a demo model, and which weights
were used: :mod:`poolformer_mm.apis.features`.

The trained demo RetinaNet runs through tools/analysis/vis_features.py in a
subprocess (``run_tool``, as a user runs it); the other runs call the
package's functions in this process, which saves the start-up of a fresh
interpreter each.
"""
import glob
import os.path as osp
import re

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.commands import CONFIGS, run_tool
from helpers.tiny_demo import state_dict

from poolformer_mm.apis import features
from poolformer_mm.apis.common import exit_on_error
from poolformer_mm.apis.runs import load_config

# Trained demo checkpoints and the real configs.
pytestmark = pytest.mark.integration

SEM_FPN = osp.join(CONFIGS, 'demo', 'sem_fpn_poolformer_s12_demo.py')
COLUMNS = ('stage', 'stride', 'channels', 'size', 'mean', 'std', 'min',
           'max', 'pre_mean', 'pre_std')


def vis(config, image, out, checkpoint=None, **kwargs):
    """Run :func:`features.visualize` in this process: the report as the
    tool prints it, the picture's (width, height) and its columns."""
    result, size = features.visualize(
        str(config), str(image), str(out),
        None if checkpoint is None else str(checkpoint), **kwargs)
    return features.format_features(result), size, result.columns


def printed_picture(report):
    """(width, height) and columns of the picture the tool says it wrote."""
    m = re.search(r'wrote .*: (\d+)x(\d+) px, 4 rows \(stages\) x (\d+) '
                  r'columns', report)
    assert m, report
    return (int(m.group(1)), int(m.group(2))), int(m.group(3))


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


def picture(path, size):
    """The written picture as an array; its size is the one reported."""
    image = np.asarray(Image.open(path).convert('RGB'))
    assert image.shape[:2] == (size[1], size[0])
    # Heat maps, not a blank or constant canvas.
    assert image.std() > 20
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1000
    return image


@pytest.fixture(scope='module')
def image(demo_data):
    return sorted(glob.glob(f'{demo_data}/coco/val/*.png'))[0]


@pytest.fixture(scope='module')
def trained(trained_demo, image, tmp_path_factory):
    """(config, checkpoint, report, picture) of the trained demo, drawn by
    the command line tool."""
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
    size, columns = printed_picture(report)
    picture(out, size)
    assert columns == 6


def test_random_weights_differ(trained, image, tmp_path):
    config, _, trained_report, trained_out = trained
    out = tmp_path / 'random.png'
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    report, size, _ = vis(config, image, out)
    # Seeded inside, the caller's random state kept.
    assert torch.equal(torch.random.get_rng_state(), state)
    assert 'weights: RANDOM (seed 0)' in report
    assert 'backbone tensors loaded' not in report
    assert numbers(stage_table(report)) != numbers(
        stage_table(trained_report))
    random_image = picture(out, size)
    trained_image = picture(trained_out, printed_picture(trained_report)[0])
    assert random_image.shape == trained_image.shape
    assert (random_image != trained_image).any()


def test_backbone_only_weights(trained, image, tmp_path):
    config, checkpoint, trained_report, trained_out = trained
    weights = {
        k[len('backbone.'):]: v
        for k, v in state_dict(checkpoint).items()
        if k.startswith('backbone.')
    }
    path = tmp_path / 'backbone.pth'
    torch.save(weights, path)
    out = tmp_path / 'backbone.png'
    report, size, columns = vis(config, image, out, path, topk=2)
    assert (f'weights: {path} (poolformer_mm naming): {len(weights)} '
            'backbone tensors loaded') in report
    assert 'tensors of the file not used' not in report
    # The same weights as the whole training checkpoint: the same numbers.
    assert numbers(stage_table(report)) == numbers(
        stage_table(trained_report))
    assert all(len(r['top']) == 2 for r in stage_table(report))
    # Two channels fewer: two panel columns fewer, rows unchanged.
    small = picture(out, size)
    large = picture(trained_out, printed_picture(trained_report)[0])
    assert columns == 4
    assert small.shape[0] == large.shape[0]
    assert small.shape[1] * 6 == large.shape[1] * 4


def test_classifier_head_counted_as_unused(trained, tmp_path):
    """Backbone weights beside a classifier head (as timm's): the head is
    not loaded and is counted as unused."""
    config, checkpoint, _, _ = trained
    cfg = load_config(config)
    weights = {
        k[len('backbone.'):]: v
        for k, v in state_dict(checkpoint).items()
        if k.startswith('backbone.')
    }
    path = str(tmp_path / 'with_head.pth')
    torch.save(dict(weights, **{'head.fc.weight': torch.zeros(2, 512)}),
               path)
    lines, label = features.load_weights(features.build_backbone(cfg), cfg,
                                         path)
    assert label == 'with_head.pth'
    assert f'{len(weights)} backbone tensors loaded' in lines[1]
    assert lines[-1] == ('  1 tensors of the file not used (not backbone '
                         'weights): 1 beside the backbone weights (e.g. a '
                         'classifier head)')


def test_shape_override(trained, image, tmp_path):
    report, size, _ = vis(trained[0], image, tmp_path / 'wide.png',
                          shape=(64, 96))
    assert '96x96 -> 64x96 (--shape 64 96)' in report
    assert 'weights: RANDOM (seed 0)' in report
    assert [r['size'] for r in stage_table(report)] == [
        '16x24', '8x12', '4x6', '2x3'
    ]
    wide = picture(tmp_path / 'wide.png', size)
    square = picture(trained[3], printed_picture(trained[2])[0])
    # Panels follow the input's aspect ratio: as wide, less high.
    assert wide.shape[1] == square.shape[1]
    assert wide.shape[0] < square.shape[0]


def test_segmentation_test_pipeline():
    """Resize, then ResizeToMultiple, then the data preprocessor's
    normalisation, as the segmentation demo's test pipeline does."""
    from mmengine.config import Config
    cfg = Config.fromfile(SEM_FPN)
    img = np.zeros((50, 100, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    resized, how = features.resize_image(img, cfg)
    # 100x50 into 160x160 keeping the ratio: 160x80, 80 rounds up to 96.
    assert resized.shape == (96, 160, 3)
    assert how == ('test pipeline Resize(scale=(160, 160), keep_ratio=True)'
                   ', ResizeToMultiple(32)')
    x, how = features.preprocess(resized, cfg)
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
    # (config, image, checkpoint, options), what the one error line says
    return [
        ((tmp_path / 'none.py', image, None, {}), "config file not found: '"),
        ((config, image, tmp_path / 'none.pth', {}),
         "checkpoint not found: '"),
        ((config, tmp_path / 'none.png', None, {}), "image not found: '"),
        ((config, text, None, {}), f"cannot read image '{text}'; give an "
         'image file that OpenCV reads (.jpg, .png, ...)'),
        ((resnet, image, None, {}), "model.backbone.type 'ResNet'; only this "
         "package's backbones are drawn"),
        ((config, image, other, {}), f"cannot use checkpoint '{other}': No "
         'PoolFormer weights'),
        # Whatever torch.load raises on text: one line naming the file.
        ((config, image, hello, {}), f"cannot use checkpoint '{hello}': "),
        ((config, image, checkpoint,
          dict(cfg_options={'model.backbone.arch': 'm36'})),
         "does not fit the config's model"),
        ((config, image, None, dict(shape=(8, 8))),
         '--shape H W must be at least'),
        ((config, image, None, dict(alpha=2.)), '--alpha must be in 0..1'),
        ((config, image, None, dict(topk=-1)), '--topk must be 0 or more'),
    ]


def test_bad_inputs(trained, image, tmp_path, capsys):
    """Each refused with one line, ``error: ...``, and exit status 1 as the
    tool prints it; nothing is drawn."""
    config, checkpoint, _, _ = trained
    out = tmp_path / 'x.png'
    for args, message in bad_inputs(tmp_path, config, checkpoint, image):
        config_, image_, checkpoint_, options = args
        with pytest.raises(SystemExit) as exc, exit_on_error(status=1):
            vis(config_, image_, out, checkpoint_, **options)
        assert exc.value.code == 1
        # Beside it stderr may hold warnings of lazy imports.
        errors = [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith('error: ')]
        assert len(errors) == 1 and message in errors[0], (args, errors)
    assert not osp.exists(out)
