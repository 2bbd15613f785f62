"""mmcv's CUDA ops that the configs use, against their CPU counterparts.

RetinaNet and Mask R-CNN run NMS, RoIAlign (Mask R-CNN's RoI heads) and
sigmoid focal loss (RetinaNet) through mmcv's CUDA kernels; a build that
compiled but computes wrongly would only show as bad training. Exits non-zero
with the op's name when one differs.
"""
import sys

import torch


def main():
    from mmcv.ops import RoIAlign, nms, sigmoid_focal_loss
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss

    torch.manual_seed(0)
    failed = []

    xy = torch.rand(200, 2) * 100
    boxes = torch.cat([xy, xy + torch.rand(200, 2) * 40 + 1], dim=1)
    scores = torch.rand(200)
    _, keep_cpu = nms(boxes, scores, iou_threshold=0.5)
    _, keep_cuda = nms(boxes.cuda(), scores.cuda(), iou_threshold=0.5)
    if keep_cpu.tolist() != keep_cuda.cpu().tolist():
        failed.append('nms')

    feats = torch.randn(2, 8, 32, 32)
    rois = torch.cat([torch.randint(0, 2, (16, 1)).float(),
                      boxes[:16] / 4], dim=1)
    align = RoIAlign((7, 7), spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)
    if not torch.allclose(align(feats, rois),
                          align(feats.cuda(), rois.cuda()).cpu(),
                          rtol=1e-4, atol=1e-5):
        failed.append('roi_align')

    logits = torch.randn(64, 80)
    labels = torch.randint(0, 81, (64, ))
    one_hot = torch.nn.functional.one_hot(labels, 81)[:, :80].float()
    cuda = sigmoid_focal_loss(logits.cuda(), labels.cuda(), 2.0, 0.25, None,
                              'sum').cpu()
    reference = py_sigmoid_focal_loss(logits, one_hot, None, 2.0, 0.25, 'sum')
    if not torch.allclose(cuda, reference, rtol=1e-4):
        failed.append('sigmoid_focal_loss')

    if failed:
        sys.exit(f'[gpu_e2e] mmcv CUDA ops differ from CPU: {failed}')
    print('[gpu_e2e] mmcv CUDA ops nms, roi_align, sigmoid_focal_loss match '
          'the CPU', file=sys.stderr)


if __name__ == '__main__':
    main()
