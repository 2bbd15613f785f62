"""The built-in demo: data generator, demo configs, train / test tools."""
import hashlib
import json
import os
import os.path as osp
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers.commands import CONFIGS, ROOT, TOOLS, run_tool

# The demo data writer and the demo trainings, as tools.
pytestmark = pytest.mark.integration

CLASSES = ('circle', 'square', 'triangle', 'star')


def tree_digest(root):
    """sha256 of every file under root, keyed by relative path."""
    digests = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                digests[osp.relpath(path, root)] = hashlib.sha256(
                    f.read()).hexdigest()
    return digests


def make_data(out, *extra):
    return run_tool('make_demo_data.py', '--out', out, '--num-train', 6,
                    '--num-val', 3, '--size', 80, *extra)


def test_generator_is_deterministic(tmp_path):
    make_data(tmp_path / 'a', '--seed', 3)
    make_data(tmp_path / 'b', '--seed', 3)
    make_data(tmp_path / 'c', '--seed', 4)
    a, b, c = (tree_digest(tmp_path / n) for n in 'abc')
    # Images in both layouts, label maps, two COCO files, the manifest.
    assert len(a) == 3 * (6 + 3) + 2 + 1
    assert a == b
    changed = [k for k in a if k.endswith('.png') and a[k] != c[k]]
    assert changed, 'another seed must give other scenes'


def test_generator_refuses_to_overwrite_another_data_set(tmp_path):
    out = tmp_path / 'demo'
    make_data(out, '--seed', 0)
    before = tree_digest(out)
    # Same options: nothing to do, nothing rewritten.
    result = make_data(out, '--seed', 0)
    assert 'nothing to do' in result.stdout
    cmd = [sys.executable, osp.join(TOOLS, 'make_demo_data.py'), '--out',
           str(out), '--num-train', '6', '--num-val', '3', '--size', '80',
           '--seed', '1']
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode != 0
    assert 'different demo data set' in refused.stderr
    assert tree_digest(out) == before
    # A folder with foreign content is not touched either.
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'mine.txt').write_text('keep me')
    refused = subprocess.run(cmd[:3] + [str(foreign)] + cmd[4:],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and 'no demo data set' in refused.stderr
    assert (foreign / 'mine.txt').read_text() == 'keep me'
    # --force replaces it.
    subprocess.run(cmd + ['--force'], check=True, capture_output=True)
    assert tree_digest(out) != before


def test_generator_rejects_bad_sizes(tmp_path):
    cmd = [sys.executable, osp.join(TOOLS, 'make_demo_data.py'), '--out',
           str(tmp_path / 'x'), '--size', '16']
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 2 and '--size must be >= 32' in result.stderr


def test_annotations_are_valid(demo_data):
    from pycocotools import mask as mask_utils
    for split, ade_split in (('train', 'training'), ('val', 'validation')):
        with open(demo_data / 'coco' / 'annotations' /
                  f'instances_{split}.json') as f:
            coco = json.load(f)
        assert [c['name'] for c in coco['categories']] == list(CLASSES)
        images = {im['id']: im for im in coco['images']}
        assert coco['annotations'], 'scenes must hold shapes'
        ids = [a['id'] for a in coco['annotations']]
        assert len(set(ids)) == len(ids)
        for ann in coco['annotations']:
            im = images[ann['image_id']]
            h, w = im['height'], im['width']
            x, y, bw, bh = ann['bbox']
            assert 1 <= ann['category_id'] <= len(CLASSES)
            assert bw > 0 and bh > 0
            assert x >= 0 and y >= 0 and x + bw <= w + 1e-6 and (
                y + bh <= h + 1e-6)
            # The polygons are the visible part of the shape: their extent
            # is the box, their area the annotated area.
            points = np.concatenate(
                [np.asarray(p).reshape(-1, 2) for p in ann['segmentation']])
            assert np.allclose(points.min(0), [x, y], atol=0.02)
            assert np.allclose(points.max(0), [x + bw, y + bh], atol=0.03)
            rle = mask_utils.merge(
                mask_utils.frPyObjects(ann['segmentation'], h, w))
            assert mask_utils.area(rle) == pytest.approx(
                ann['area'], rel=0.15, abs=8)
            # The semantic label map shows the same shape where the mask is.
            mask = mask_utils.decode(rle).astype(bool)
            label = np.asarray(
                Image.open(demo_data / 'ade' / 'annotations' / ade_split /
                           im['file_name']))
            assert label.shape == (h, w)
            agree = (label[mask] == ann['category_id'] + 1).mean()
            assert agree > 0.85, (ann, agree)
        for im in coco['images']:
            with Image.open(demo_data / 'coco' / split /
                            im['file_name']) as img:
                assert img.size == (im['width'], im['height'])
                assert img.mode == 'RGB'
            label = np.asarray(
                Image.open(demo_data / 'ade' / 'annotations' / ade_split /
                           im['file_name']))
            # 1 background, 2.. shapes; 0 (ignored) is never written.
            assert set(np.unique(label)) <= set(range(1, len(CLASSES) + 2))


METRIC = {'retinanet': 'coco/bbox_mAP', 'mask_rcnn': 'coco/segm_mAP',
          'sem_fpn': 'mIoU'}


@pytest.mark.parametrize('model', ['retinanet', 'mask_rcnn', 'sem_fpn'])
def test_demo_backbone_starts_layer_scales_at_one(model):
    """The demos train S12 from scratch: the arch by name, its layer scales
    started at 1 by the backbone argument, no pretrained weights; the shared
    settings of configs/demo/_base_ are merged, not left as a `demo` key."""
    from mmengine.config import Config

    from poolformer_mm import PoolFormer
    cfg = Config.fromfile(
        osp.join(CONFIGS, 'demo', f'{model}_poolformer_s12_demo.py'))
    assert 'demo' not in cfg
    backbone = cfg.model.backbone.copy()
    assert backbone.pop('type') == 'PoolFormer'
    assert backbone.arch == 's12' and backbone.init_cfg is None
    assert backbone.layer_scale_init_value == 1.0
    scales = {
        name: value
        for name, value in PoolFormer(**backbone).state_dict().items()
        if name.endswith(('layer_scale1.scale', 'layer_scale2.scale'))
    }
    assert len(scales) == 2 * 12  # two per block, 2 + 2 + 6 + 2 blocks
    assert all(bool((value == 1).all()) for value in scales.values())


@pytest.mark.parametrize('model', ['retinanet', 'mask_rcnn', 'sem_fpn'])
def test_demo_config_trains_and_tests(model, trained_demo, tmp_path):
    config, checkpoint, options = trained_demo(model)
    scope = 'mmseg' if model == 'sem_fpn' else 'mmdet'
    if scope == 'mmseg':
        from mmengine.config import Config
        cfg = Config.fromfile(config)
        assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    assert osp.isfile(checkpoint)

    out = tmp_path / ('results.pkl' if scope == 'mmdet' else 'pred_masks')
    run_tool('test.py', config, checkpoint, '--work-dir', tmp_path / 'test',
             '--out', out, '--show-dir', 'drawn', '--cfg-options', *options)
    if scope == 'mmdet':
        with open(out, 'rb') as f:
            results = pickle.load(f)
        assert len(results) == 4  # the fixture's validation images
    else:
        assert len(os.listdir(out)) == 4
    picture = tmp_path / 'predictions.png'
    result = run_tool('demo_summary.py', tmp_path / 'test', '--metric',
                      METRIC[model], '--goal', '0', '--out', picture)
    assert 'goal 0.00: reached' in result.stdout
    assert f'{METRIC[model]} = ' in result.stdout
    with Image.open(picture) as img:
        assert img.width >= 96 and img.height >= 96


def test_run_demo_rejects_unknown_model():
    result = subprocess.run(['bash', osp.join(TOOLS, 'run_demo.sh'), 'yolo'],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown demo model 'yolo'" in result.stderr
