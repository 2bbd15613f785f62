"""Write the built-in demo data set: synthetic shapes on textured backgrounds.

The same scenes come out twice, in the layouts the configs expect:

- COCO detection / instance segmentation (boxes and polygon masks of the
  visible part of every shape)::

    OUT/coco/{train,val}/NNNNNN.png
    OUT/coco/annotations/instances_{train,val}.json

- ADE20K-style semantic segmentation (label 0 unlabelled and ignored as in
  ADE20K with ``reduce_zero_label=True``, 1 background, 2.. the shapes)::

    OUT/ade/images/{training,validation}/NNNNNN.png
    OUT/ade/annotations/{training,validation}/NNNNNN.png

Everything is a function of ``--seed`` and the size options, so the same
command always writes the same bytes. ``OUT/manifest.json`` records them: a
second run with the same options does nothing, one with other options
refuses to overwrite unless ``--force`` is given.

Example:
    python tools/make_demo_data.py --out data/demo
"""
import argparse
import json
import math
import os
import os.path as osp
import shutil
import sys

import numpy as np
from mmengine.utils import ProgressBar
from PIL import Image, ImageDraw, ImageFilter
from shapely.geometry import MultiPolygon, Polygon
from shapely.ops import unary_union

CLASSES = ('circle', 'square', 'triangle', 'star')
# Semantic labels: 0 unlabelled (ignored), 1 background, then the shapes.
SEG_CLASSES = ('background', ) + CLASSES
GENERATOR_VERSION = 2
MIN_VISIBLE = 0.6  # an occluded shape keeps at least this much of its area
SPLITS = (('train', 'training'), ('val', 'validation'))


def shape_polygon(kind, cx, cy, radius, angle):
    """Vertices of a shape, as a list of (x, y)."""
    if kind == 'circle':
        n, radii = 48, [radius]
    elif kind == 'square':
        n, radii = 4, [radius]
    elif kind == 'triangle':
        n, radii = 3, [radius]
    elif kind == 'star':
        n, radii = 10, [radius, radius * 0.45]
    else:
        raise ValueError(f'Unknown shape {kind!r}; one of {CLASSES}')
    points = []
    for i in range(n):
        r = radii[i % len(radii)]
        a = angle + 2 * math.pi * i / n
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def textured_background(rng, size):
    """A smooth colour gradient with stripes and noise."""
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / size
    c0, c1 = rng.uniform(40, 215, (2, 3))
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / 2 + 0.5
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    freq, phase = rng.uniform(4, 20), rng.uniform(0, 2 * math.pi)
    direction = rng.uniform(0, math.pi)
    stripes = np.sin(freq * 2 * math.pi *
                     (xx * math.cos(direction) + yy * math.sin(direction)) +
                     phase)
    img += stripes[..., None] * rng.uniform(5, 25)
    img += rng.normal(0, rng.uniform(3, 12), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def polygons_of(geometry):
    """COCO polygon lists ([x0, y0, x1, y1, ...]) of a shapely geometry."""
    parts = geometry.geoms if isinstance(geometry, MultiPolygon) else [
        geometry
    ]
    out = []
    for part in parts:
        if part.is_empty or part.area < 1:
            continue
        coords = np.asarray(part.exterior.coords)[:-1]
        out.append([round(float(v), 2) for v in coords.reshape(-1)])
    return out


def make_scene(rng, size, max_objects):
    """One image, its instances and its semantic label map."""
    img = Image.fromarray(textured_background(rng, size))
    label = Image.new('L', (size, size), 1)
    draw, draw_label = ImageDraw.Draw(img), ImageDraw.Draw(label)
    placed = []  # (class index, full polygon) in drawing order
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            kind = int(rng.integers(len(CLASSES)))
            radius = rng.uniform(size * 0.1, size * 0.24)
            cx, cy = rng.uniform(radius * 0.7, size - radius * 0.7, 2)
            points = shape_polygon(CLASSES[kind], cx, cy, radius,
                                   rng.uniform(0, 2 * math.pi))
            poly = Polygon(points).intersection(
                Polygon([(0, 0), (size, 0), (size, size), (0, size)]))
            # Each earlier shape must stay mostly visible under the shapes
            # drawn after it, this one included.
            if all(
                    prev.difference(
                        unary_union([p for _, p in placed[j + 1:]] +
                                    [poly])).area >= MIN_VISIBLE * prev.area
                    for j, (_, prev) in enumerate(placed)):
                break
        else:
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.polygon(points, fill=colour)
        draw_label.polygon(points, fill=2 + kind)
        placed.append((kind, poly))
    img = img.filter(ImageFilter.GaussianBlur(0.5))

    instances = []
    for i, (kind, poly) in enumerate(placed):
        visible = poly
        if i + 1 < len(placed):
            visible = poly.difference(
                unary_union([p for _, p in placed[i + 1:]]))
        segmentation = polygons_of(visible)
        if not segmentation:
            continue
        x0, y0, x1, y1 = visible.bounds
        instances.append(
            dict(
                category_id=kind + 1,
                bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2),
                      round(y1 - y0, 2)],
                area=round(visible.area, 2),
                segmentation=segmentation,
                iscrowd=0))
    return img, instances, label


def write_split(out, split, ade_split, count, seed, size, max_objects,
                progress):
    coco_dir = osp.join(out, 'coco', split)
    ade_img_dir = osp.join(out, 'ade', 'images', ade_split)
    ade_ann_dir = osp.join(out, 'ade', 'annotations', ade_split)
    for d in (coco_dir, ade_img_dir, ade_ann_dir):
        os.makedirs(d, exist_ok=True)
    images, annotations = [], []
    split_id = [s for s, _ in SPLITS].index(split)
    for idx in range(count):
        rng = np.random.default_rng([seed, split_id, idx])
        img, instances, label = make_scene(rng, size, max_objects)
        name = f'{idx:06d}.png'
        img.save(osp.join(coco_dir, name))
        shutil.copyfile(osp.join(coco_dir, name), osp.join(ade_img_dir, name))
        label.save(osp.join(ade_ann_dir, name))
        images.append(dict(id=idx, file_name=name, height=size, width=size))
        for inst in instances:
            annotations.append(
                dict(id=len(annotations) + 1, image_id=idx, **inst))
        progress.update()
    coco = dict(
        info=dict(description='poolformer_mm synthetic shapes demo',
                  version=str(GENERATOR_VERSION)),
        images=images,
        annotations=annotations,
        categories=[
            dict(id=i + 1, name=name, supercategory='shape')
            for i, name in enumerate(CLASSES)
        ])
    ann_dir = osp.join(out, 'coco', 'annotations')
    os.makedirs(ann_dir, exist_ok=True)
    with open(osp.join(ann_dir, f'instances_{split}.json'), 'w') as f:
        json.dump(coco, f)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/demo', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=int, default=600)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--size', type=int, default=160,
                        help='image height and width in pixels')
    parser.add_argument('--max-objects', type=int, default=4,
                        help='most shapes in one image')
    parser.add_argument('--force', action='store_true',
                        help='replace a different data set in --out')
    args = parser.parse_args(argv)
    for name in ('num_train', 'num_val', 'size', 'max_objects'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got '
                         f'{getattr(args, name)}')
    if args.size < 32:
        parser.error(f'--size must be >= 32 pixels, got {args.size}')
    return args


def main(argv=None):
    args = parse_args(argv)
    manifest = dict(
        generator_version=GENERATOR_VERSION,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        size=args.size,
        max_objects=args.max_objects,
        classes=list(CLASSES))
    manifest_path = osp.join(args.out, 'manifest.json')
    if osp.isfile(manifest_path):
        with open(manifest_path) as f:
            existing = json.load(f)
        if existing == manifest:
            print(f'{args.out}: demo data already generated with these '
                  'settings, nothing to do')
            return
        if not args.force:
            sys.exit(f'error: {args.out} holds a different demo data set '
                     f'({existing}); use another --out or --force')
    elif osp.isdir(args.out) and os.listdir(args.out) and not args.force:
        sys.exit(f'error: {args.out} exists, is not empty and is no demo '
                 'data set of this tool; use another --out or --force')
    for sub in ('coco', 'ade', 'manifest.json'):
        path = osp.join(args.out, sub)
        if osp.isdir(path):
            shutil.rmtree(path)
        elif osp.exists(path):
            os.remove(path)

    total = args.num_train + args.num_val
    print(f'writing {total} synthetic scenes to {args.out}')
    progress = ProgressBar(total)
    for (split, ade_split), count in zip(SPLITS,
                                         (args.num_train, args.num_val)):
        write_split(args.out, split, ade_split, count, args.seed, args.size,
                    args.max_objects, progress)
    # Written last: its presence means the data set is complete.
    with open(manifest_path, 'w') as f:
        json.dump(manifest, f, indent=1)
    print(f'\ndone: {args.out}')


if __name__ == '__main__':
    main()
