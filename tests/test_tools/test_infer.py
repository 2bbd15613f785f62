"""poolformer_mm.apis.inference (tools/infer.py): drawn predictions and JSON
for an image, a folder and a video, with every kind of checkpoint it takes,
and the errors for what it refuses; the tool's command line end to end.

The checkpoints come from two-step demo trainings (``trained_demo``), whose
scores sit far below the default threshold: the detection runs keep the five
best boxes whatever their score (``DET_ALL``), so that there is something to
draw and compare, and not a hundred (drawing them takes seconds).
"""
import contextlib
import json
import logging
import os
import os.path as osp
import subprocess
import sys
from collections import OrderedDict

import cv2
import numpy as np
import pytest
import torch
from helpers.commands import ROOT, TOOLS
from mmengine.logging import MMLogger

from poolformer_mm.apis.inference import check_score_thr, infer, list_inputs
from poolformer_mm.checkpoint import (convert_backbone_state_dict,
                                      read_checkpoint)
from poolformer_mm.checkpoint.naming import unwrap_state_dict
from poolformer_mm.errors import CheckpointError, InputError

CLASSES = ('circle', 'square', 'triangle', 'star')
SEG_CLASSES = ('background', ) + CLASSES
DET_OPTIONS = {'model.test_cfg.score_thr': 0, 'model.test_cfg.max_per_img': 5}
DET_ALL = dict(score_thr=0, cfg_options=DET_OPTIONS)
DET_ALL_ARGS = [
    '--score-thr', '0', '--cfg-options', 'model.test_cfg.score_thr=0',
    'model.test_cfg.max_per_img=5'
]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def val_images(demo_data):
    folder = osp.join(str(demo_data), 'coco', 'val')
    return sorted(osp.join(folder, n) for n in os.listdir(folder))


@contextlib.contextmanager
def logged():
    """The messages of the current mmengine logger (which writes to the
    stream of its creation time, not to pytest's capture)."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def converted(checkpoint, path, whole_model):
    """What tools/convert_weights.py writes for ``checkpoint``: the backbone
    in this package's naming, alone or (``whole_model``) with the neck and
    heads as they are."""
    state_dict = unwrap_state_dict(read_checkpoint(checkpoint))
    backbone, others, fmt = convert_backbone_state_dict(state_dict)
    if not whole_model:
        torch.save(backbone, path)
        return path
    out = OrderedDict(('backbone.' + k, v) for k, v in backbone.items())
    out.update((k, state_dict[k]) for k in others
               if not k.startswith('backbone.'))
    torch.save(dict(state_dict=out, meta=dict(source_format=fmt)), path)
    return path


def check_detections(record, image):
    """A detection record of ``image``: its name and size, instances with
    a box inside the image, a score, a label and the label's class."""
    height, width = cv2.imread(image).shape[:2]
    assert record['image'] == osp.basename(image)
    assert (record['height'], record['width']) == (height, width)
    assert record['instances'], 'score threshold 0 keeps the best boxes'
    for instance in record['instances']:
        x1, y1, x2, y2 = instance['bbox']
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert 0 <= instance['score'] <= 1
        assert instance['class'] == CLASSES[instance['label']]


@pytest.fixture(scope='module')
def det_folder(trained_demo, demo_data, tmp_path_factory):
    """The RetinaNet demo checkpoint run on the demo's validation folder:
    (config, checkpoint, out dir, result)."""
    config, checkpoint, _ = trained_demo('retinanet')
    out = tmp_path_factory.mktemp('infer_folder')
    result = infer(config, checkpoint,
                   osp.join(str(demo_data), 'coco', 'val'), out_dir=out,
                   device='cpu', **DET_ALL)
    return config, checkpoint, out, result


def test_detection_on_a_folder(det_folder, demo_data):
    _, _, out, result = det_folder
    images = val_images(demo_data)
    names = [osp.basename(p) for p in images]
    assert sorted(os.listdir(out / 'vis')) == names
    assert sorted(os.listdir(out / 'preds')) == [
        osp.splitext(n)[0] + '.json' for n in names
    ]
    assert result.kind == 'folder' and not result.backbone_only
    assert [osp.basename(p) for p in result.vis] == names
    for image, record, json_file in zip(images, result.records,
                                        result.preds):
        drawn = cv2.imread(str(out / 'vis' / osp.basename(image)))
        assert drawn.shape == cv2.imread(image).shape
        assert not np.array_equal(drawn, cv2.imread(image)), 'boxes drawn'
        assert read_json(json_file) == json.loads(json.dumps(record))
        assert record['score_thr'] == 0
        check_detections(record, image)


def test_whole_model_file_on_one_image(det_folder, demo_data, tmp_path):
    """A whole-model file of tools/convert_weights.py keeps every tensor:
    the same predictions as the training checkpoint, above the chosen
    threshold."""
    config, checkpoint, folder_out, _ = det_folder
    whole = converted(checkpoint, tmp_path / 'whole.pth', whole_model=True)
    image = val_images(demo_data)[1]
    stem = osp.splitext(osp.basename(image))[0]
    everything = read_json(folder_out / 'preds' / f'{stem}.json')
    scores = sorted({i['score'] for i in everything['instances']})
    assert len(scores) >= 2
    # Between two saved (rounded) scores: no instance sits at the border.
    thr = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    out = tmp_path / 'out'
    result = infer(config, whole, image, out_dir=out, score_thr=thr,
                   cfg_options=DET_OPTIONS)
    assert result.kind == 'image'
    assert os.listdir(out / 'vis') == [osp.basename(image)]
    record = read_json(out / 'preds' / f'{stem}.json')
    check_detections(record, image)
    assert record['score_thr'] == pytest.approx(thr)
    assert record['instances'] == [
        i for i in everything['instances'] if i['score'] > thr
    ]


def test_backbone_weights_only_warn(trained_demo, demo_data, tmp_path):
    config, checkpoint, _ = trained_demo('retinanet')
    backbone = converted(checkpoint, tmp_path / 'backbone.pth',
                         whole_model=False)
    image = val_images(demo_data)[0]
    with logged() as messages:
        result = infer(config, backbone, image, out_dir=tmp_path / 'out')
    assert result.backbone_only
    output = '\n'.join(messages)
    assert 'backbone weights only' in output
    assert 'randomly initialised' in output and 'meaningless' in output
    assert osp.isfile(tmp_path / 'out' / 'vis' / osp.basename(image))
    record = read_json(tmp_path / 'out' / 'preds' / '000000.json')
    assert record['image'] == osp.basename(image)


def test_detection_on_a_video(trained_demo, demo_data, tmp_path, capsys):
    config, checkpoint, _ = trained_demo('retinanet')
    frames = val_images(demo_data) + sorted(
        osp.join(str(demo_data), 'coco', 'train', n)
        for n in os.listdir(osp.join(str(demo_data), 'coco', 'train')))[:1]
    video = str(tmp_path / 'clip.mp4')
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*'mp4v'), 5,
                             (96, 96))
    for path in frames:
        writer.write(cv2.imread(path))
    writer.release()
    out = tmp_path / 'out'
    # Also the fast path of tools/test.py --deploy.
    with logged() as messages:
        result = infer(config, checkpoint, video, out_dir=out, deploy=True,
                       **DET_ALL)
    assert 'Switched to the deploy (inference) path: backbone' in messages
    # mmengine's progress bar, finished.
    assert f'{len(frames)}/{len(frames)}' in capsys.readouterr().out
    assert result.kind == 'video'
    assert result.vis == [str(out / 'vis' / 'clip.mp4')]

    capture = cv2.VideoCapture(str(out / 'vis' / 'clip.mp4'))
    assert capture.isOpened()
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(5)
    drawn = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        drawn.append(frame)
    capture.release()
    assert len(drawn) == len(frames)
    assert all(f.shape == (96, 96, 3) for f in drawn)

    record = read_json(out / 'preds' / 'clip.json')
    assert (record['video'], record['fps']) == ('clip.mp4', 5)
    assert (record['height'], record['width']) == (96, 96)
    assert [f['frame'] for f in record['frames']] == list(range(len(frames)))
    for frame in record['frames']:
        assert frame['instances']
        assert {i['class'] for i in frame['instances']} <= set(CLASSES)


def test_segmentation_on_one_image(trained_demo, demo_data, tmp_path):
    config, checkpoint, _ = trained_demo('sem_fpn')
    image = osp.join(
        str(demo_data), 'ade', 'images', 'validation', '000000.png')
    out = tmp_path / 'out'
    result = infer(config, checkpoint, image, out_dir=out)
    height, width = cv2.imread(image).shape[:2]
    drawn = cv2.imread(str(out / 'vis' / '000000.png'))
    assert drawn.shape[:2] == (height, width)
    record = read_json(out / 'preds' / '000000.json')
    assert result.records == [record]
    assert (record['height'], record['width']) == (height, width)
    assert record['label_map'] == '000000_labels.png'
    labels = cv2.imread(
        str(out / 'preds' / record['label_map']), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (height, width) and labels.dtype == np.uint8
    found, counts = np.unique(labels, return_counts=True)
    assert [c['label'] for c in record['classes']] == found.tolist()
    assert [c['pixels'] for c in record['classes']] == counts.tolist()
    names = [c['class'] for c in record['classes']]
    assert names == [SEG_CLASSES[i] for i in found]


def test_command_line(trained_demo, demo_data, tmp_path):
    """tools/infer.py end to end, side by side: a folder (the progress bar,
    the summary line); a Semantic FPN checkpoint for the RetinaNet config,
    which mmengine's loader would load half and predict with, refused in
    one ``error:`` line (exit status 1). (The options' checks:
    test_bad_options_are_refused.)"""
    config, checkpoint, _ = trained_demo('retinanet')
    _, seg_checkpoint, _ = trained_demo('sem_fpn')
    tool = [sys.executable, osp.join(TOOLS, 'infer.py'), config]
    folder = osp.join(str(demo_data), 'coco', 'val')
    good, bad = tmp_path / 'good', tmp_path / 'bad'
    cmds = [
        tool + [checkpoint, folder, '--out-dir', good, '--device', 'cpu',
                *DET_ALL_ARGS],
        tool + [seg_checkpoint, folder, '--out-dir', bad],
    ]
    procs = [
        subprocess.Popen([str(c) for c in cmd], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for cmd in cmds
    ]
    (ok, _), (_, refused) = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 1], refused[-3000:]
    count = len(val_images(demo_data))
    assert f'{count}/{count}' in ok
    assert f'wrote {count} drawn image(s) to {good / "vis"}' in ok
    assert len(os.listdir(good / 'preds')) == count

    message = refused.strip().splitlines()[-1]
    assert message.startswith('error: ') and 'Traceback' not in refused
    assert seg_checkpoint in message and 'does not fit' in message
    for part in ('missing (e.g. ', 'have other shapes (e.g. neck.',
                 'not in the model (e.g. '):
        assert part in message
    assert not osp.exists(bad / 'vis')


def test_checkpoint_of_another_backbone_is_refused(trained_demo, demo_data,
                                                   tmp_path):
    """Weights without a PoolFormer backbone fit nothing of the model."""
    config, _, _ = trained_demo('retinanet')
    resnet = str(tmp_path / 'resnet.pth')
    torch.save({'layer1.0.conv1.weight': torch.zeros(1)}, resnet)
    out = tmp_path / 'out'
    with pytest.raises(CheckpointError) as exc:
        infer(config, resnet, val_images(demo_data)[0], out_dir=out)
    message = str(exc.value)
    assert resnet in message and 'does not fit' in message
    assert 'not in the model (e.g. layer1.0.conv1.weight)' in message
    assert not osp.exists(out / 'vis')


def bad_input(case, tmp_path):
    """The arguments after the config for ``case``, and what the message
    must name."""
    ckpt = tmp_path / 'model.pth'
    # Never read: the input is refused first.
    ckpt.write_text('')
    image = str(tmp_path / 'image.png')
    cv2.imwrite(image, np.zeros((8, 8, 3), np.uint8))
    if case == 'checkpoint':
        missing = str(tmp_path / 'no.pth')
        return [missing, image], ['checkpoint not found', missing]
    if case == 'input':
        missing = str(tmp_path / 'nowhere.png')
        return [ckpt, missing], ['input not found', missing]
    if case == 'unreadable image':
        text = tmp_path / 'x.jpg'
        text.write_text('not an image')
        return [ckpt, text], ['cannot read image', str(text)]
    if case == 'empty folder':
        empty = tmp_path / 'empty'
        empty.mkdir()
        (empty / 'notes.txt').write_text('no images here')
        (empty / 'sub').mkdir()
        return [ckpt, empty], ['holds no images', str(empty), '.jpg']
    if case == 'unknown extension':
        odd = tmp_path / 'scene.xyz'
        odd.write_text('')
        return [ckpt, odd], ["'.xyz'", str(odd), '.png', '.mp4']
    assert case == 'not a checkpoint'
    text = tmp_path / 'notes.pth'
    text.write_text('hello, not a checkpoint')
    return [text, image], ['not a readable checkpoint', str(text)]


@pytest.mark.parametrize('case', [
    'config', 'checkpoint', 'input', 'unreadable image', 'empty folder',
    'unknown extension', 'not a checkpoint'
])
def test_bad_input_is_refused(case, tmp_path):
    """Refused before any model is built (so in this process: no framework
    state is set), naming the value; the tool prints it as its one
    ``error:`` line."""
    config = osp.join(ROOT, 'configs', 'demo',
                      'retinanet_poolformer_s12_demo.py')
    if case == 'config':
        config = str(tmp_path / 'nothing.py')
        args, named = [tmp_path, tmp_path], [config]
    else:
        args, named = bad_input(case, tmp_path)
    out = tmp_path / 'out'
    with pytest.raises((InputError, CheckpointError)) as exc:
        infer(config, *args, out_dir=out)
    message = str(exc.value)
    for part in named:
        assert part in message, message
    assert not osp.exists(out)


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(InputError,
                       match=r'--score-thr must be in \[0, 1\], got 1.5'):
        check_score_thr(1.5, '--score-thr')
    for options in (dict(score_thr=-0.1), dict(device='gpu:x')):
        with pytest.raises(InputError, match=list(options)[0]):
            infer('a.py', 'b.pth', 'c.png', out_dir=tmp_path, **options)


def test_folder_of_twins_is_refused(tmp_path):
    """a.png and a.jpg would write the same a.json."""
    folder = tmp_path / 'images'
    folder.mkdir()
    image = np.zeros((8, 8, 3), np.uint8)
    for name in ('a.png', 'a.jpg', 'b.png'):
        cv2.imwrite(str(folder / name), image)
    with pytest.raises(InputError, match='same name.*: a$'):
        list_inputs(str(folder))
    os.remove(folder / 'a.jpg')
    assert list_inputs(str(folder)) == ('folder', [
        str(folder / 'a.png'), str(folder / 'b.png')
    ])
