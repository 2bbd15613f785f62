"""tools/infer.py: drawn predictions and JSON for an image, a folder and a
video, with every kind of checkpoint it takes, and the one-line errors for
what it refuses.

The checkpoints come from two-step demo trainings (``trained_demo``), whose
scores sit far below the default threshold: the detection runs keep the five
best boxes whatever their score (``DET_ALL``), so that there is something to
draw and compare, and not a hundred (drawing them takes seconds).
"""
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, TOOLS, load_tool, run_tool

CLASSES = ('circle', 'square', 'triangle', 'star')
SEG_CLASSES = ('background', ) + CLASSES
DET_OPTIONS = [
    '--cfg-options', 'model.test_cfg.score_thr=0',
    'model.test_cfg.max_per_img=5'
]
DET_ALL = ['--score-thr', '0', *DET_OPTIONS]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def val_images(demo_data):
    folder = osp.join(str(demo_data), 'coco', 'val')
    return sorted(osp.join(folder, n) for n in os.listdir(folder))


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
    (config, checkpoint, out dir, process result)."""
    config, checkpoint, _ = trained_demo('retinanet')
    out = tmp_path_factory.mktemp('infer_folder')
    result = run_tool('infer.py', config, checkpoint,
                      osp.join(str(demo_data), 'coco', 'val'), '--out-dir',
                      out, '--device', 'cpu', *DET_ALL)
    return config, checkpoint, out, result


def test_detection_on_a_folder(det_folder, demo_data):
    _, _, out, result = det_folder
    images = val_images(demo_data)
    assert sorted(os.listdir(out / 'vis')) == [osp.basename(p) for p in images]
    assert sorted(os.listdir(out / 'preds')) == [
        osp.splitext(osp.basename(p))[0] + '.json' for p in images
    ]
    for image in images:
        drawn = cv2.imread(str(out / 'vis' / osp.basename(image)))
        assert drawn.shape == cv2.imread(image).shape
        assert not np.array_equal(drawn, cv2.imread(image)), 'boxes drawn'
        stem = osp.splitext(osp.basename(image))[0]
        record = read_json(out / 'preds' / f'{stem}.json')
        assert record['score_thr'] == 0
        check_detections(record, image)
    # mmengine's progress bar, finished.
    assert f'{len(images)}/{len(images)}' in result.stdout


def test_whole_model_file_on_one_image(det_folder, demo_data, tmp_path):
    """tools/convert_weights.py --whole-model keeps every tensor: the same
    predictions as the training checkpoint, above the chosen threshold."""
    config, checkpoint, folder_out, _ = det_folder
    whole = tmp_path / 'whole.pth'
    load_tool('convert_weights.py').main(
        [checkpoint, str(whole), '--whole-model'])
    image = val_images(demo_data)[1]
    stem = osp.splitext(osp.basename(image))[0]
    everything = read_json(folder_out / 'preds' / f'{stem}.json')
    scores = sorted({i['score'] for i in everything['instances']})
    assert len(scores) >= 2
    # Between two saved (rounded) scores: no instance sits at the border.
    thr = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    out = tmp_path / 'out'
    run_tool('infer.py', config, whole, image, '--out-dir', out, '--score-thr',
             thr, *DET_OPTIONS)
    assert os.listdir(out / 'vis') == [osp.basename(image)]
    record = read_json(out / 'preds' / f'{stem}.json')
    check_detections(record, image)
    assert record['score_thr'] == pytest.approx(thr)
    assert record['instances'] == [
        i for i in everything['instances'] if i['score'] > thr
    ]


def test_backbone_weights_only_warn(trained_demo, demo_data, tmp_path):
    config, checkpoint, _ = trained_demo('retinanet')
    backbone = tmp_path / 'backbone.pth'
    load_tool('convert_weights.py').main([checkpoint, str(backbone)])
    image = val_images(demo_data)[0]
    result = run_tool('infer.py', config, backbone, image, '--out-dir',
                      tmp_path / 'out')
    output = result.stdout + result.stderr
    assert 'backbone weights only' in output
    assert 'randomly initialised' in output and 'meaningless' in output
    assert osp.isfile(tmp_path / 'out' / 'vis' / osp.basename(image))
    record = read_json(tmp_path / 'out' / 'preds' / '000000.json')
    assert record['image'] == osp.basename(image)


def test_detection_on_a_video(trained_demo, demo_data, tmp_path):
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
    result = run_tool('infer.py', config, checkpoint, video, '--out-dir', out,
                      '--deploy', *DET_ALL)
    output = result.stdout + result.stderr
    assert 'Switched to the deploy (inference) path: backbone' in output
    assert f'{len(frames)}/{len(frames)}' in result.stdout

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
    run_tool('infer.py', config, checkpoint, image, '--out-dir', out)
    height, width = cv2.imread(image).shape[:2]
    drawn = cv2.imread(str(out / 'vis' / '000000.png'))
    assert drawn.shape[:2] == (height, width)
    record = read_json(out / 'preds' / '000000.json')
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


def test_checkpoint_of_another_model_is_refused(trained_demo, demo_data,
                                                tmp_path):
    """A Semantic FPN checkpoint for the RetinaNet config: mmengine's loader
    would warn and predict with a half-random model; the tool stops."""
    config, _, _ = trained_demo('retinanet')
    _, checkpoint, _ = trained_demo('sem_fpn')
    out = tmp_path / 'out'
    cmd = [
        sys.executable,
        osp.join(TOOLS, 'infer.py'), config, checkpoint,
        val_images(demo_data)[0], '--out-dir',
        str(out)
    ]
    result = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith('error: ') and 'Traceback' not in result.stderr
    assert checkpoint in message and 'does not fit' in message
    for part in ('missing (e.g. ', 'have other shapes (e.g. neck.',
                 'not in the model (e.g. '):
        assert part in message
    assert not osp.exists(out / 'vis')


@pytest.fixture
def infer():
    return load_tool('infer.py')


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
    if case == 'not a checkpoint':
        text = tmp_path / 'notes.pth'
        text.write_text('hello, not a checkpoint')
        return [text, image], ['not a readable checkpoint', str(text)]
    assert case == 'no PoolFormer in checkpoint'
    resnet = str(tmp_path / 'resnet.pth')
    torch.save({'layer1.0.conv1.weight': torch.zeros(1)}, resnet)
    return [resnet, image], ['No PoolFormer weights', resnet]


@pytest.mark.parametrize('case', [
    'config', 'checkpoint', 'input', 'unreadable image', 'empty folder',
    'unknown extension', 'not a checkpoint', 'no PoolFormer in checkpoint'
])
def test_bad_input_is_one_line_error(infer, case, tmp_path):
    """Refused before any model is built (so in this process: no framework
    state is set), in one line naming the value."""
    config = osp.join(ROOT, 'configs', 'demo',
                      'retinanet_poolformer_s12_demo.py')
    if case == 'config':
        config = str(tmp_path / 'nothing.py')
        args, named = [tmp_path, tmp_path], [config]
    else:
        args, named = bad_input(case, tmp_path)
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as exc:
        infer.main([config, *map(str, args), '--out-dir', str(out)])
    message = exc.value.code
    # sys.exit(str): printed to stderr, exit status 1.
    assert isinstance(message, str) and message.startswith('error: ')
    assert '\n' not in message
    for part in named:
        assert part in message, message
    assert not osp.exists(out)


def test_bad_options_are_refused(infer, capsys):
    with pytest.raises(SystemExit) as exc:
        infer.main(['a.py', 'b.pth', 'c.png', '--score-thr', '1.5'])
    assert exc.value.code == 2
    assert '--score-thr must be in [0, 1], got 1.5' in capsys.readouterr().err


def test_folder_of_twins_is_refused(infer, tmp_path):
    """a.png and a.jpg would write the same a.json."""
    folder = tmp_path / 'images'
    folder.mkdir()
    image = np.zeros((8, 8, 3), np.uint8)
    for name in ('a.png', 'a.jpg', 'b.png'):
        cv2.imwrite(str(folder / name), image)
    with pytest.raises(infer.InputError, match='same name.*: a$'):
        infer.list_inputs(str(folder))
    os.remove(folder / 'a.jpg')
    assert infer.list_inputs(str(folder)) == ('folder', [
        str(folder / 'a.png'), str(folder / 'b.png')
    ])
