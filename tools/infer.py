"""Draw a detector's or segmentor's predictions on images or a video.

The config's default_scope (mmdet or mmseg) decides which framework's
inferencer (``DetInferencer`` / ``MMSegInferencer``) builds the model, its
test pipeline and its visualizer. INPUT is an image, a folder of images (its
files with image extensions, not its subfolders) or a video. Written under
``--out-dir``:

- ``vis/<image name>``: the image with the predictions drawn; for a video
  ``vis/<video stem>.mp4``, every frame drawn, same size and frame rate;
- ``preds/<stem>.json``: the predictions; for a video one file with a list of
  frames. Detection: per instance ``bbox`` (x1, y1, x2, y2 in input pixels),
  ``score``, ``label``, ``class`` (and an RLE ``mask`` for instance
  segmentation), above ``--score-thr``. Segmentation: pixels per predicted
  class and ``label_map``, a PNG of class indices beside the JSON
  (``<stem>_labels.png``; for a video ``<stem>_labels/<frame>.png``).

CHECKPOINT may be a training checkpoint (``tools/train.py``), a whole-model
file (``tools/convert_weights.py --whole-model``) or backbone weights alone
(``tools/convert_weights.py``, any naming it reads); with backbone weights
the neck and heads are random and a warning says that the predictions are
meaningless. A checkpoint that does not fit the config's model is refused.

Example:
    python tools/infer.py configs/demo/retinanet_poolformer_s12_demo.py \
        work_dirs/demo/retinanet/epoch_7.pth data/demo/coco/val/
    python tools/infer.py configs/sem_fpn_poolformer_s12.py \
        sem_fpn_s12_ade20k.pth street.mp4 --out-dir outputs/street \
        --device cpu
"""
import argparse
import copy
import json
import logging
import os
import os.path as osp
import re
import sys
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Tuple

import cv2
import mmcv
import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.utils import ProgressBar

from poolformer_mm.checkpoint import from_plain
from poolformer_mm.engine.hooks import switch_model_to_deploy
from poolformer_mm.apis.runs import load_config
from poolformer_mm.pretrained import (CheckpointError,
                                      convert_backbone_state_dict,
                                      read_checkpoint, unwrap_state_dict)

# MMDetection's list (mmdet.apis.det_inferencer.IMG_EXTENSIONS).
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                  '.tiff', '.webp')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg',
                    '.mpeg', '.wmv', '.flv')
# The backbone's output norms: classification releases have none, and a
# model whose out_indices skip a stage has no norm for it.
OUTPUT_NORM = re.compile(r'backbone\.norm\d+\.')
BACKBONE_BLOCKS = ('backbone.stem.', 'backbone.stages.')


class InputError(Exception):
    """A bad command line value: reported in one line, without traceback."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Draw and save the predictions of a PoolFormer detector '
        'or segmentor on an image, a folder of images or a video')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        'checkpoint',
        help='training checkpoint, whole-model file or backbone weights')
    parser.add_argument(
        'input', help='an image, a folder of images, or a video file')
    parser.add_argument(
        '--out-dir',
        default=osp.join('outputs', 'infer'),
        help='where vis/ and preds/ are written (default: outputs/infer)')
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.3,
        help='detection: draw and save instances scoring above this '
        '(default: 0.3); ignored for segmentation')
    parser.add_argument(
        '--device',
        default='cuda' if torch.cuda.is_available() else 'cpu',
        help='device to run on, e.g. cpu, cuda, cuda:1 (default: cuda if '
        'available, else cpu)')
    parser.add_argument(
        '--deploy',
        action='store_true',
        help='run on the inference fast path, as tools/test.py --deploy '
        '(switch_to_deploy() on the backbone after loading the checkpoint)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value (e.g. '
        'model.test_cfg.score_thr=0.01)')
    args = parser.parse_args(argv)
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr must be in [0, 1], got {args.score_thr}')
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f'--device: unknown device {args.device!r} (e.g. cpu, '
                     'cuda, cuda:0)')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available here; '
                     'use --device cpu')
    return args


def list_inputs(path: str) -> Tuple[str, List[str]]:
    """Classify INPUT as 'image', 'folder' or 'video' and list its images.

    Args:
        path (str): The INPUT argument.

    Returns:
        tuple: The kind and the image paths (sorted; ``[path]`` for an image
        or a video).

    Raises:
        InputError: No such path, a folder without images, an image that
            OpenCV cannot read, or a file whose extension is neither an
            image's nor a video's.
    """
    if osp.isdir(path):
        images = sorted(
            osp.join(path, name) for name in os.listdir(path)
            if name.lower().endswith(IMG_EXTENSIONS)
            and osp.isfile(osp.join(path, name)))
        if not images:
            raise InputError(
                f'input folder {path!r} holds no images (extensions: '
                f'{", ".join(IMG_EXTENSIONS)})')
        stems = [osp.splitext(osp.basename(p))[0] for p in images]
        twins = sorted({s for s in stems if stems.count(s) > 1})
        if twins:
            # Their JSON files would overwrite each other.
            raise InputError(
                f'input folder {path!r} has images with the same name but '
                f'different extensions: {", ".join(twins)}')
        check_images(images)
        return 'folder', images
    if not osp.isfile(path):
        raise InputError(f'input not found: {path!r}')
    ext = osp.splitext(path)[1].lower()
    if ext in IMG_EXTENSIONS:
        check_images([path])
        return 'image', [path]
    if ext in VIDEO_EXTENSIONS:
        return 'video', [path]
    raise InputError(
        f'input {path!r}: unknown extension {ext or "(none)"!r}; give an '
        f'image ({", ".join(IMG_EXTENSIONS)}), a video '
        f'({", ".join(VIDEO_EXTENSIONS)}) or a folder of images')


def check_images(images: List[str]) -> None:
    """Refuse files that OpenCV cannot decode, before the model is built.

    Only the file header is read (``cv2.haveImageReader``); a file that is
    corrupt further on is reported when it is decoded.
    """
    for path in images:
        if not cv2.haveImageReader(path):
            raise InputError(f'cannot read image {path!r}: not an image file '
                             '(no known image format)')


def _examples(items: List[str], count: int = 3) -> str:
    more = ', ...' if len(items) > count else ''
    return ', '.join(items[:count]) + more


def check_fit(model: torch.nn.Module, loaded: Dict[str, torch.Tensor],
              backbone_only: bool, filename: str) -> List[str]:
    """Refuse a checkpoint that does not define the model, which
    mmengine's ``load_checkpoint`` would only warn about.

    Accepted: every tensor of the model (of its backbone for backbone-only
    weights, output norms excepted) is in the checkpoint, with its shape;
    the checkpoint has no backbone block that the model lacks (a deeper
    arch). Other extra tensors, e.g. output norms of stages the model does
    not emit, are only listed.

    Args:
        model (nn.Module): The detector or segmentor.
        loaded (dict): The checkpoint's tensors under the model's names.
        backbone_only (bool): Whether the file holds backbone weights only.
        filename (str): The checkpoint, for the message.

    Returns:
        list[str]: Checkpoint tensors the model does not use.

    Raises:
        CheckpointError: With how many tensors are missing, unexpected and
            of other shapes, and examples of each.
    """
    own = model.state_dict()
    needed = [
        k for k in own if not backbone_only or (
            k.startswith('backbone.') and not OUTPUT_NORM.match(k))
    ]
    missing = [k for k in needed if k not in loaded]
    mismatched = [
        f'{k}: {tuple(v.shape)} in the checkpoint vs {tuple(own[k].shape)} '
        'in the model' for k, v in loaded.items()
        if k in own and v.shape != own[k].shape
    ]
    unexpected = [k for k in loaded if k not in own]
    foreign_blocks = [k for k in unexpected if k.startswith(BACKBONE_BLOCKS)]
    if missing or mismatched or foreign_blocks:
        problems = []
        if missing:
            part = 'backbone' if backbone_only else 'model'
            problems.append(
                f'{len(missing)} of the {len(needed)} {part} tensors are '
                f'missing (e.g. {_examples(missing)})')
        if mismatched:
            problems.append(f'{len(mismatched)} have other shapes (e.g. '
                            f'{_examples(mismatched, 1)})')
        if unexpected:
            problems.append(f'{len(unexpected)} are not in the model (e.g. '
                            f'{_examples(foreign_blocks or unexpected)})')
        raise CheckpointError(
            f'checkpoint {filename!r} does not fit the config\'s model: ' +
            '; '.join(problems) + '. Is it a checkpoint of another config?')
    return unexpected


class Weights(NamedTuple):
    """A checkpoint read by :func:`read_weights`."""
    filename: str
    tensors: Dict[str, torch.Tensor]  # under the model's names
    backbone_only: bool
    meta: dict
    naming: str  # of the backbone weights, see poolformer_mm.pretrained


def read_weights(filename: str) -> Weights:
    """Read a checkpoint of any accepted kind, before the model is built.

    Backbone weights of any naming that ``tools/convert_weights.py`` reads
    are converted on the way (also under ``backbone.`` in whole-model
    files).

    Args:
        filename (str): The checkpoint.

    Raises:
        CheckpointError: Not a readable checkpoint, or no PoolFormer /
            MetaFormer weights in it.
    """
    raw = read_checkpoint(filename)
    try:
        state_dict = unwrap_state_dict(raw)
        backbone, others, naming = convert_backbone_state_dict(state_dict)
    except CheckpointError as exc:
        raise CheckpointError(f'checkpoint {filename!r}: {exc}') from exc
    # mmpretrain's classifiers keep `head.` beside `backbone.`; anything
    # else beside `backbone.` is a neck or a head of a detector/segmentor.
    prefixed = any(k.startswith('backbone.') for k in state_dict)
    backbone_only = not prefixed or all(
        k.startswith(('backbone.', 'head.')) for k in state_dict)
    tensors = OrderedDict(('backbone.' + k, v) for k, v in backbone.items())
    if not backbone_only:
        tensors.update((k, state_dict[k]) for k in others)
    meta = raw.get('meta') if isinstance(raw.get('meta'), dict) else {}
    meta = from_plain(meta)  # e.g. a palette saved as a numpy array
    return Weights(filename, tensors, backbone_only, dict(meta), naming)


def fit_weights(model: torch.nn.Module, weights: Weights, cfg: Config) -> dict:
    """Check the weights against the model (:func:`check_fit`) and give
    them the form the inferencers load without surprises.

    Args:
        model (nn.Module): The detector or segmentor, freshly built.
        weights (Weights): From :func:`read_weights`.
        cfg (Config): The config, whose test data set gives the class names
            when the checkpoint does not (converted files).

    Returns:
        dict: An mmengine checkpoint: ``state_dict`` with exactly the
        model's tensors, ``meta`` with ``dataset_meta``.
    """
    filename = weights.filename
    unused = check_fit(model, weights.tensors, weights.backbone_only, filename)
    if unused:
        print_log(
            f'{len(unused)} tensors of {filename} are not used by the '
            f'model: {_examples(unused, 6)}',
            logger='current',
            level=logging.WARNING)
    if weights.backbone_only:
        print_log(
            f'{filename} holds backbone weights only '
            f'({len(weights.tensors)} tensors, {weights.naming} naming): '
            'the neck and heads are randomly initialised, so the '
            'predictions are meaningless. Give a checkpoint of the whole '
            'model (tools/train.py, or tools/convert_weights.py '
            '--whole-model) for real predictions.',
            logger='current',
            level=logging.WARNING)
    # The model's own tensors where the file has none (random neck and
    # heads, output norms), so that the framework's loader, which only
    # warns, finds exactly the model's keys.
    state_dict = OrderedDict(
        (k, weights.tensors.get(k, v)) for k, v in model.state_dict().items())
    meta = dict(weights.meta)
    if 'dataset_meta' not in meta:
        # Without it the inferencers fall back to COCO's or Cityscapes'
        # class names, whatever the model predicts.
        meta['dataset_meta'] = config_dataset_meta(cfg)
    return dict(state_dict=state_dict, meta=meta)


def config_dataset_meta(cfg: Config) -> dict:
    """Class names and palette of the config's test data set."""
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import DATASETS
    else:
        from mmseg.registry import DATASETS
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    # Only the metainfo is needed, not the annotations.
    dataset_cfg['lazy_init'] = True
    metainfo = DATASETS.build(dataset_cfg).metainfo
    return dict(
        classes=metainfo.get('classes'), palette=metainfo.get('palette'))


def build_inferencer(cfg: Config, weights: Weights, device: str):
    """The framework's inferencer for ``cfg``, with ``weights`` loaded.

    Args:
        cfg (Config): From ``load_config``.
        weights (Weights): From :func:`read_weights`.
        device (str): Where the model runs.

    Returns:
        DetInferencer | MMSegInferencer: The inferencer.

    Raises:
        CheckpointError: The weights do not fit the model.
    """
    if cfg.default_scope == 'mmdet':
        from mmdet.apis import DetInferencer as Inferencer
    else:
        from mmseg.apis import MMSegInferencer as Inferencer

    class CheckedInferencer(Inferencer):

        def _load_weights_to_model(self, model, _, cfg):
            # Given weights=None below, mmengine reads no file: the weights
            # come from read_weights, checked here.
            checkpoint = fit_weights(model, weights, cfg)
            super()._load_weights_to_model(model, checkpoint, cfg)

    inferencer = CheckedInferencer(model=cfg, weights=None, device=device)
    if cfg.default_scope == 'mmseg':
        # MMSegInferencer sets this before drawing in its own __call__,
        # which this tool does not use.
        inferencer.visualizer.set_dataset_meta(**inferencer.model.dataset_meta)
    return inferencer


def predict(inferencer, img: np.ndarray):
    """The model's prediction (a data sample) for a BGR image."""
    data = inferencer.collate_fn([inferencer.pipeline(img)])
    return inferencer.forward(data)[0]


def draw(inferencer, img: np.ndarray, pred, score_thr: float) -> np.ndarray:
    """The BGR image with ``pred`` drawn by the framework's visualizer."""
    kwargs = dict(pred_score_thr=score_thr) if 'pred_instances' in pred else {}
    inferencer.visualizer.add_datasample(
        'infer', mmcv.bgr2rgb(img), pred, draw_gt=False, show=False, **kwargs)
    return mmcv.rgb2bgr(inferencer.visualizer.get_image())


def to_json(inferencer, pred, label_file: str, label_ref: str) -> dict:
    """The JSON record of one prediction; writes the segmentation label
    map to ``label_file``.

    Args:
        inferencer: The inferencer that made ``pred``.
        pred (DetDataSample | SegDataSample): The prediction, for detection
            the instances above the score threshold (:func:`keep_above`).
        label_file (str): Segmentation: where the label map goes.
        label_ref (str): Segmentation: its path in the JSON (relative to the
            JSON file).
    """
    classes = inferencer.model.dataset_meta.get('classes') or ()

    def name(label):
        return classes[label] if label < len(classes) else str(label)

    if 'pred_instances' in pred:
        # DetInferencer's conversion: boxes, scores, labels, RLE masks.
        result = inferencer.pred2dict(pred)
        instances = []
        for i, label in enumerate(result['labels']):
            instance = dict(
                bbox=[round(x, 1) for x in result['bboxes'][i]],
                score=round(result['scores'][i], 4),
                label=label,
                **{'class': name(label)})
            if 'masks' in result:
                instance['mask'] = result['masks'][i]
            instances.append(instance)
        return dict(instances=instances)
    label_map = pred.pred_sem_seg.data[0].cpu().numpy()
    dtype = np.uint8 if len(classes) <= 256 else np.uint16
    os.makedirs(osp.dirname(label_file), exist_ok=True)
    mmcv.imwrite(label_map.astype(dtype), label_file)
    labels, counts = np.unique(label_map, return_counts=True)
    return dict(
        label_map=label_ref,
        classes=[
            dict(
                label=int(label), pixels=int(count), **{'class': name(label)})
            for label, count in zip(labels, counts)
        ])


def keep_above(pred, score_thr: float):
    """``pred`` with the instances scoring above ``score_thr`` only, as
    the visualizer draws them."""
    if 'pred_instances' in pred:
        instances = pred.pred_instances
        pred.pred_instances = instances[instances.scores > score_thr]
    return pred


def read_image(path: str) -> np.ndarray:
    img = mmcv.imread(path)
    if img is None:
        raise InputError(f'cannot read image {path!r}: not an image file, '
                         'or a corrupt one')
    return img


def write_json(record: dict, path: str) -> None:
    with open(path, 'w') as f:
        json.dump(record, f, separators=(',', ':'))


def infer_images(inferencer, images: List[str], out_dir: str,
                 score_thr: float) -> None:
    """Predict, draw and save each image (a progress bar for several)."""
    progress = ProgressBar(len(images)) if len(images) > 1 else None
    for folder in ('vis', 'preds'):
        os.makedirs(osp.join(out_dir, folder), exist_ok=True)
    for path in images:
        img = read_image(path)
        pred = keep_above(predict(inferencer, img), score_thr)
        name = osp.basename(path)
        stem = osp.splitext(name)[0]
        mmcv.imwrite(
            draw(inferencer, img, pred, score_thr),
            osp.join(out_dir, 'vis', name))
        record = dict(image=name, height=img.shape[0], width=img.shape[1])
        if inferencer.scope == 'mmdet':
            record['score_thr'] = score_thr
        record.update(
            to_json(inferencer, pred,
                    osp.join(out_dir, 'preds', f'{stem}_labels.png'),
                    f'{stem}_labels.png'))
        write_json(record, osp.join(out_dir, 'preds', f'{stem}.json'))
        if progress is not None:
            progress.update()


def open_video(path: str) -> Tuple[cv2.VideoCapture, np.ndarray]:
    """Open a video and decode its first frame.

    Raises:
        InputError: Not a video OpenCV can decode.
    """
    capture = cv2.VideoCapture(path)
    ok, frame = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        raise InputError(f'cannot read video {path!r}: no frame could be '
                         'decoded (not a video file, or a corrupt one)')
    return capture, frame


def infer_video(inferencer, path: str, capture: cv2.VideoCapture,
                frame: np.ndarray, out_dir: str, score_thr: float) -> None:
    """Predict and draw every frame of a video; write the drawn video and
    one JSON file with all frames.

    Args:
        inferencer: From :func:`build_inferencer`.
        path (str): The video file.
        capture (cv2.VideoCapture): Its capture, from :func:`open_video`.
        frame (np.ndarray): The first frame, already read.
        out_dir (str): ``--out-dir``.
        score_thr (float): ``--score-thr``.
    """
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not fps > 0:  # some containers do not say
        fps = 25.0
    height, width = frame.shape[:2]
    stem = osp.splitext(osp.basename(path))[0]
    out_file = osp.join(out_dir, 'vis', f'{stem}.mp4')
    os.makedirs(osp.dirname(out_file), exist_ok=True)
    os.makedirs(osp.join(out_dir, 'preds'), exist_ok=True)
    writer = cv2.VideoWriter(out_file, cv2.VideoWriter_fourcc(*'mp4v'), fps,
                             (width, height))
    if not writer.isOpened():
        raise RuntimeError(f'OpenCV cannot write {out_file} (mp4v)')
    record = dict(
        video=osp.basename(path), fps=fps, height=height, width=width)
    if inferencer.scope == 'mmdet':
        record['score_thr'] = score_thr
    record['frames'] = []
    progress = ProgressBar(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    index, ok = 0, True
    try:
        while ok:
            pred = keep_above(predict(inferencer, frame), score_thr)
            drawn = draw(inferencer, frame, pred, score_thr)
            if drawn.shape[:2] != (height, width):
                drawn = mmcv.imresize(drawn, (width, height))
            writer.write(drawn)
            label_ref = osp.join(f'{stem}_labels', f'{index:06d}.png')
            record['frames'].append(
                dict(
                    frame=index,
                    **to_json(inferencer, pred,
                              osp.join(out_dir, 'preds', label_ref),
                              label_ref)))
            progress.update()
            index += 1
            ok, frame = capture.read()
    finally:
        writer.release()
        capture.release()
    write_json(record, osp.join(out_dir, 'preds', f'{stem}.json'))


def run(args) -> None:
    try:
        cfg = load_config(args.config, args.cfg_options)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from exc
    # Every file before the model is built: a typo should not cost that.
    if not osp.isfile(args.checkpoint):
        raise InputError(f'checkpoint not found: {args.checkpoint!r}')
    kind, images = list_inputs(args.input)
    video = open_video(args.input) if kind == 'video' else None
    weights = read_weights(args.checkpoint)
    inferencer = build_inferencer(cfg, weights, args.device)
    if args.deploy:
        names = switch_model_to_deploy(inferencer.model)
        print_log(
            'Switched to the deploy (inference) path: ' +
            ', '.join(n or type(inferencer.model).__name__ for n in names),
            logger='current')
    if video is not None:
        infer_video(inferencer, args.input, *video, args.out_dir,
                    args.score_thr)
        drawn = 'the drawn video'
    else:
        infer_images(inferencer, images, args.out_dir, args.score_thr)
        drawn = f'{len(images)} drawn image(s)'
    print(f'\nwrote {drawn} to {osp.join(args.out_dir, "vis")} and the '
          f'predictions to {osp.join(args.out_dir, "preds")}')
    if weights.backbone_only:
        print('warning: backbone weights only, the predictions are '
              'meaningless (see above)')


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (InputError, CheckpointError) as exc:
        # One line, also where the message quotes torch's.
        sys.exit('error: ' + str(exc).replace('\n', ' '))


if __name__ == '__main__':
    main()
