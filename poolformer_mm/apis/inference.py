"""Predictions of a detector or segmentor drawn on images or a video, as
``tools/infer.py`` makes them: :func:`infer`, and the pieces it is made of.

The config's default_scope (mmdet or mmseg) decides which framework's
inferencer (``DetInferencer`` / ``MMSegInferencer``) builds the model, its
test pipeline and its visualizer. The input is an image, a folder of images
(its files with image extensions, not its subfolders) or a video. Written
under ``out_dir``:

- ``vis/<image name>``: the image with the predictions drawn; for a video
  ``vis/<video stem>.mp4``, every frame drawn, same size and frame rate;
- ``preds/<stem>.json``: the predictions; for a video one file with a list of
  frames. Detection: per instance ``bbox`` (x1, y1, x2, y2 in input pixels),
  ``score``, ``label``, ``class`` (and an RLE ``mask`` for instance
  segmentation), above the score threshold. Segmentation: pixels per
  predicted class and ``label_map``, a PNG of class indices beside the JSON
  (``<stem>_labels.png``; for a video ``<stem>_labels/<frame>.png``).

The checkpoint is read and fitted by :mod:`poolformer_mm.checkpoint.fitting`:
a training checkpoint, a whole-model file or backbone weights alone (any
naming it reads); with backbone weights the neck and heads are random and a
warning says that the predictions are meaningless. A checkpoint that does
not fit the config's model is refused.

Example:
    >>> from poolformer_mm.apis.inference import infer
    >>> result = infer('configs/demo/retinanet_poolformer_s12_demo.py',
    ...                'work_dirs/demo/retinanet/epoch_7.pth',
    ...                'data/demo/coco/val/', out_dir='outputs/demo')
    >>> result.records[0]['instances'][0]['class']
"""
import copy
import json
import os
import os.path as osp
import sys
from typing import List, NamedTuple, Optional, Tuple

import cv2
import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.utils import ProgressBar

from ..checkpoint.fitting import Weights, fit_weights, read_weights
from ..errors import InputError
from ..models.execution import switch_model_to_deploy
from .runs import load_config

# MMDetection's list (mmdet.apis.det_inferencer.IMG_EXTENSIONS).
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                  '.tiff', '.webp')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg',
                    '.mpeg', '.wmv', '.flv')


class InferResult(NamedTuple):
    """What :func:`infer` wrote.

    Attributes:
        kind (str): The input's kind: 'image', 'folder' or 'video'.
        vis (list[str]): The drawn images, or the drawn video.
        preds (list[str]): The JSON files: one per image, one for a video.
        records (list[dict]): Their contents, in the same order.
        backbone_only (bool): The checkpoint held backbone weights only, so
            the predictions are meaningless.
    """
    kind: str
    vis: List[str]
    preds: List[str]
    records: List[dict]
    backbone_only: bool


def check_score_thr(score_thr: float, name: str = 'score_thr') -> float:
    """Refuse a score threshold outside [0, 1].

    Args:
        score_thr (float): The threshold.
        name (str): How the message names it. Defaults to 'score_thr'.

    Returns:
        float: ``score_thr``.

    Raises:
        InputError: Not in [0, 1].
    """
    if not 0 <= score_thr <= 1:
        raise InputError(f'{name} must be in [0, 1], got {score_thr}')
    return score_thr


def check_device(device: Optional[str], name: str = 'device') -> str:
    """The device to run on: ``device``, or CUDA where there is one and
    the CPU otherwise.

    Args:
        device (str, optional): e.g. 'cpu', 'cuda', 'cuda:1'.
        name (str): How the message names it. Defaults to 'device'.

    Returns:
        str: The device.

    Raises:
        InputError: Not a device torch knows, or CUDA where there is none.
    """
    if device is None:
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise InputError(f'{name}: unknown device {device!r} (e.g. cpu, '
                         'cuda, cuda:0)') from None
    if kind == 'cuda' and not torch.cuda.is_available():
        raise InputError(f'{name} {device}: CUDA is not available here; use '
                         f'{name} cpu')
    return device


def list_inputs(path: str) -> Tuple[str, List[str]]:
    """Classify an input as 'image', 'folder' or 'video' and list its
    images.

    Args:
        path (str): An image, a folder of images or a video.

    Returns:
        tuple: The kind and the image paths (sorted; ``[path]`` for an image
        or a video).

    Raises:
        InputError: No such path, a folder without images or with two
            images of one name (their JSON files would be one), an image
            that OpenCV cannot read, or a file whose extension is neither
            an image's nor a video's.
    """
    path = str(path)
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

    Args:
        images (list[str]): Image files.

    Raises:
        InputError: Naming the first file that is not an image.
    """
    for path in images:
        if not cv2.haveImageReader(path):
            raise InputError(f'cannot read image {path!r}: not an image file '
                             '(no known image format)')


def config_dataset_meta(cfg: Config) -> dict:
    """Class names and palette of the config's test data set.

    Args:
        cfg (Config): From :func:`~poolformer_mm.apis.runs.load_config`.
    """
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
    """The framework's inferencer for ``cfg``, with ``weights`` fitted to
    its model (backbone weights alone allowed, with the policy's warning).

    Args:
        cfg (Config): From :func:`~poolformer_mm.apis.runs.load_config`.
        weights (Weights): From
            :func:`~poolformer_mm.checkpoint.fitting.read_weights`.
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
            # come from read_weights, fitted here.
            meta = dict(weights.meta)
            if 'dataset_meta' not in meta:
                # Without it the inferencers fall back to COCO's or
                # Cityscapes' class names, whatever the model predicts.
                meta['dataset_meta'] = config_dataset_meta(cfg)
            state_dict = fit_weights(model, weights, allow_backbone_only=True)
            super()._load_weights_to_model(
                model, dict(state_dict=state_dict, meta=meta), cfg)

    inferencer = CheckedInferencer(model=cfg, weights=None, device=device)
    if cfg.default_scope == 'mmseg':
        # MMSegInferencer sets this before drawing in its own __call__,
        # which is not used here.
        inferencer.visualizer.set_dataset_meta(**inferencer.model.dataset_meta)
    return inferencer


def predict(inferencer, img: np.ndarray, score_thr: Optional[float] = None):
    """The model's prediction for a BGR image; for detection with a
    ``score_thr``, only the instances scoring above it, as the visualizer
    draws them.

    Args:
        inferencer: From :func:`build_inferencer`.
        img (np.ndarray): The image, BGR.
        score_thr (float, optional): Detection score threshold; every
            instance the model keeps when None.

    Returns:
        DetDataSample | SegDataSample: The prediction.
    """
    data = inferencer.collate_fn([inferencer.pipeline(img)])
    pred = inferencer.forward(data)[0]
    if score_thr is not None and 'pred_instances' in pred:
        instances = pred.pred_instances
        pred.pred_instances = instances[instances.scores > score_thr]
    return pred


def draw(inferencer, img: np.ndarray, pred, score_thr: float) -> np.ndarray:
    """The BGR image with ``pred`` drawn by the framework's visualizer.

    Args:
        inferencer: From :func:`build_inferencer`.
        img (np.ndarray): The image, BGR.
        pred (DetDataSample | SegDataSample): From :func:`predict`.
        score_thr (float): Detection score threshold.
    """
    kwargs = dict(pred_score_thr=score_thr) if 'pred_instances' in pred else {}
    inferencer.visualizer.add_datasample(
        'infer', mmcv.bgr2rgb(img), pred, draw_gt=False, show=False, **kwargs)
    return mmcv.rgb2bgr(inferencer.visualizer.get_image())


def to_json(inferencer, pred, label_file: str, label_ref: str) -> dict:
    """The JSON record of one prediction; writes the segmentation label
    map to ``label_file``.

    Args:
        inferencer: The inferencer that made ``pred``.
        pred (DetDataSample | SegDataSample): From :func:`predict`.
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


def _read_image(path: str) -> np.ndarray:
    img = mmcv.imread(path)
    if img is None:
        raise InputError(f'cannot read image {path!r}: not an image file, '
                         'or a corrupt one')
    return img


def _write_json(record: dict, path: str) -> None:
    with open(path, 'w') as f:
        json.dump(record, f, separators=(',', ':'))


def _progress(count: int) -> ProgressBar:
    # The bar's default stream is the sys.stdout of mmengine's import time.
    return ProgressBar(count, file=sys.stdout)


def infer_images(inferencer, images: List[str], out_dir: str,
                 score_thr: float) -> InferResult:
    """Predict, draw and save each image (a progress bar for several).

    Args:
        inferencer: From :func:`build_inferencer`.
        images (list[str]): Image files, e.g. from :func:`list_inputs`.
        out_dir (str): Where ``vis/`` and ``preds/`` are written.
        score_thr (float): Detection score threshold.

    Returns:
        InferResult: What was written (``kind`` 'folder' for several
        images; ``backbone_only`` False: the caller knows its weights).

    Raises:
        InputError: An image that cannot be decoded.
    """
    progress = _progress(len(images)) if len(images) > 1 else None
    for folder in ('vis', 'preds'):
        os.makedirs(osp.join(out_dir, folder), exist_ok=True)
    result = InferResult('folder' if len(images) > 1 else 'image', [], [],
                         [], False)
    for path in images:
        img = _read_image(path)
        pred = predict(inferencer, img, score_thr)
        name = osp.basename(path)
        stem = osp.splitext(name)[0]
        result.vis.append(osp.join(out_dir, 'vis', name))
        mmcv.imwrite(draw(inferencer, img, pred, score_thr), result.vis[-1])
        record = dict(image=name, height=img.shape[0], width=img.shape[1])
        if inferencer.scope == 'mmdet':
            record['score_thr'] = score_thr
        record.update(
            to_json(inferencer, pred,
                    osp.join(out_dir, 'preds', f'{stem}_labels.png'),
                    f'{stem}_labels.png'))
        result.preds.append(osp.join(out_dir, 'preds', f'{stem}.json'))
        result.records.append(record)
        _write_json(record, result.preds[-1])
        if progress is not None:
            progress.update()
    return result


def open_video(path: str) -> Tuple[cv2.VideoCapture, np.ndarray]:
    """Open a video and decode its first frame.

    Args:
        path (str): The video file.

    Returns:
        tuple: The capture and the first frame (BGR).

    Raises:
        InputError: Not a video OpenCV can decode.
    """
    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        raise InputError(f'cannot read video {path!r}: no frame could be '
                         'decoded (not a video file, or a corrupt one)')
    return capture, frame


def infer_video(inferencer, path: str, capture: cv2.VideoCapture,
                frame: np.ndarray, out_dir: str,
                score_thr: float) -> InferResult:
    """Predict and draw every frame of a video; write the drawn video and
    one JSON file with all frames. Releases ``capture``.

    Args:
        inferencer: From :func:`build_inferencer`.
        path (str): The video file.
        capture (cv2.VideoCapture): Its capture, from :func:`open_video`.
        frame (np.ndarray): The first frame, already read.
        out_dir (str): Where ``vis/`` and ``preds/`` are written.
        score_thr (float): Detection score threshold.

    Returns:
        InferResult: What was written (``backbone_only`` False: the caller
        knows its weights).
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
        capture.release()
        raise RuntimeError(f'OpenCV cannot write {out_file} (mp4v)')
    record = dict(
        video=osp.basename(path), fps=fps, height=height, width=width)
    if inferencer.scope == 'mmdet':
        record['score_thr'] = score_thr
    record['frames'] = []
    progress = _progress(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    index, ok = 0, True
    try:
        while ok:
            pred = predict(inferencer, frame, score_thr)
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
    json_file = osp.join(out_dir, 'preds', f'{stem}.json')
    _write_json(record, json_file)
    return InferResult('video', [out_file], [json_file], [record], False)


def infer(config: str,
          checkpoint: str,
          input: str,
          out_dir: str = osp.join('outputs', 'infer'),
          score_thr: float = 0.3,
          device: Optional[str] = None,
          deploy: bool = False,
          cfg_options: Optional[dict] = None) -> InferResult:
    """Draw and save the predictions of a detector or segmentor on an
    image, a folder of images or a video (see the module docstring).

    The options, the config and the files are checked before the model is
    built, the checkpoint's fit to the model after.

    Args:
        config (str): Detector or segmentor config.
        checkpoint (str): A training checkpoint, a whole-model file or
            backbone weights (any naming
            :func:`~poolformer_mm.checkpoint.fitting.read_weights` reads).
        input (str): An image, a folder of images or a video file.
        out_dir (str): Where ``vis/`` and ``preds/`` are written. Defaults
            to 'outputs/infer'.
        score_thr (float): Detection: draw and save the instances scoring
            above this; ignored for segmentation. Defaults to 0.3.
        device (str, optional): e.g. 'cpu', 'cuda:1'; CUDA where there is
            one, else the CPU, when None.
        deploy (bool): Run the backbones' folded inference path
            (:func:`~poolformer_mm.models.execution.switch_model_to_deploy`
            after the checkpoint is loaded). Defaults to False.
        cfg_options (dict, optional): Config overrides, as
            ``--cfg-options``.

    Returns:
        InferResult: What was written, and whether the predictions are
        meaningless (backbone weights only).

    Raises:
        InputError: A bad option, config, input, or a missing checkpoint.
        CheckpointError: A checkpoint that cannot be read or does not fit
            the config's model.
    """
    check_score_thr(score_thr)
    device = check_device(device)
    checkpoint, input = str(checkpoint), str(input)
    cfg = load_config(str(config), cfg_options)
    if not osp.isfile(checkpoint):
        raise InputError(f'checkpoint not found: {checkpoint!r}')
    kind, images = list_inputs(input)
    video = open_video(input) if kind == 'video' else None
    try:
        weights = read_weights(checkpoint)
        inferencer = build_inferencer(cfg, weights, device)
        if deploy:
            names = switch_model_to_deploy(inferencer.model)
            print_log(
                'Switched to the deploy (inference) path: ' +
                ', '.join(n or type(inferencer.model).__name__
                          for n in names),
                logger='current')
    except BaseException:
        if video is not None:
            video[0].release()
        raise
    out_dir = str(out_dir)
    if video is not None:
        result = infer_video(inferencer, input, *video, out_dir, score_thr)
    else:
        result = infer_images(inferencer, images, out_dir, score_thr)
        result = result._replace(kind=kind)
    return result._replace(backbone_only=weights.backbone_only)


__all__ = [
    'IMG_EXTENSIONS', 'InferResult', 'VIDEO_EXTENSIONS', 'build_inferencer',
    'check_device', 'check_images', 'check_score_thr', 'config_dataset_meta',
    'draw', 'infer', 'infer_images', 'infer_video', 'list_inputs',
    'open_video', 'predict', 'to_json'
]
