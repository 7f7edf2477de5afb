"""Paste ROI masks into the image and RLE-encode them without building full-image masks.

detectron2 turns the mask head's (M, M) probabilities into results in two steps:
``detector_postprocess`` pastes every mask into an (H, W) bool image with
``paste_masks_in_image`` (on CPU one mask at a time, each in the region around its box), and the
evaluator's ``instances_to_coco_json`` runs pycocotools' ``encode`` on each full-image mask. On
CPU with thousands of detections per image (EVA's score threshold 0 + soft-NMS) the per-mask
overhead of the paste dominates; on GPU the (N, H, W) tensor and its copy to the host do.

Here the pastes of many masks run as one batched ``grid_sample`` over their box regions, and the
RLE is built from the run boundaries inside those regions (``transitions``), so no (H, W) mask is
ever allocated. Both give the same bits as detectron2 + pycocotools:

* the sampling grid of a pixel is computed with the same float32 operations as detectron2's
  ``_do_paste_mask`` (``(x + 0.5 - x0) / (x1 - x0) * 2 - 1``), and ``grid_sample`` computes each
  output pixel from its own grid value only, so batching does not change any value;
* pixels outside detectron2's region ``[floor(x0) - 1, ceil(x1) + 1)`` are below any threshold
  >= 0.5 (bilinear weight < 0.5 on the mask's edge), as in detectron2 on CPU, so they are 0;
* the run lengths are pycocotools' (column-major, starting with a run of zeros, adjacent runs of
  ones merged across columns) and the compressed string is made by pycocotools itself.

``tests/evaluation/test_inference_progress.py`` checks byte equality against detectron2 +
pycocotools.
"""

from typing import Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from torch.nn import functional as F

__all__ = ["paste_masks_in_image", "paste_masks_rle", "rles_from_crops"]

# Upper bound on the float32 working memory of one batched paste (grid + output), in bytes.
_CHUNK_BYTES = 256 * 1024**2


def _paste_regions(boxes: torch.Tensor, image_shape: Tuple[int, int]) -> torch.Tensor:
    """(N, 4) int64 regions ``y0, x0, y1, x1`` that detectron2's CPU paste samples, per box."""
    img_h, img_w = image_shape
    x0 = torch.clamp(boxes[:, 0].floor() - 1, min=0)
    y0 = torch.clamp(boxes[:, 1].floor() - 1, min=0)
    x1 = torch.clamp(boxes[:, 2].ceil() + 1, max=img_w)
    y1 = torch.clamp(boxes[:, 3].ceil() + 1, max=img_h)
    regions = torch.stack([y0, x0, y1, x1], dim=1).to(torch.int64)
    # A region can only be empty for boxes outside the image; give it size 0, not < 0.
    regions[:, 2] = torch.maximum(regions[:, 2], regions[:, 0])
    regions[:, 3] = torch.maximum(regions[:, 3], regions[:, 1])
    return regions


def _paste_chunk(
    masks: torch.Tensor, boxes: torch.Tensor, regions: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Binary masks of one chunk, each in its region, padded to the chunk's largest region.

    Args:
        masks (Tensor): (n, M, M) float mask probabilities.
        boxes (Tensor): (n, 4) float32 XYXY boxes in image pixels.
        regions (Tensor): (n, 4) int64 ``y0, x0, y1, x1`` from :func:`_paste_regions`.
        threshold (float): pixels with value >= threshold are 1.

    Returns:
        Tensor (n, hmax, wmax) bool; entry [i, r, c] is pixel (y0_i + r, x0_i + c); entries with
        r >= y1_i - y0_i or c >= x1_i - x0_i are False.
    """
    n = masks.shape[0]
    heights = regions[:, 2] - regions[:, 0]
    widths = regions[:, 3] - regions[:, 1]
    hmax, wmax = int(heights.max()), int(widths.max())
    device = masks.device
    if hmax == 0 or wmax == 0:  # only boxes outside the image
        return torch.zeros(n, hmax, wmax, dtype=torch.bool, device=device)
    rows = torch.arange(hmax, device=device, dtype=torch.float32)
    cols = torch.arange(wmax, device=device, dtype=torch.float32)
    # Pixel indices are exact in float32, so these equal detectron2's arange(y0, y1) values.
    img_y = regions[:, 0:1].to(torch.float32) + rows + 0.5  # (n, hmax)
    img_x = regions[:, 1:2].to(torch.float32) + cols + 0.5  # (n, wmax)
    x0, y0, x1, y1 = torch.split(boxes.to(torch.float32), 1, dim=1)  # each (n, 1)
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    gx = img_x[:, None, :].expand(n, hmax, wmax)
    gy = img_y[:, :, None].expand(n, hmax, wmax)
    grid = torch.stack([gx, gy], dim=3)  # (n, hmax, wmax, 2)
    probs = masks[:, None]  # (n, 1, M, M); dtype kept, as in detectron2 (e.g. fp16 under AMP)
    if not probs.dtype.is_floating_point:
        probs = probs.float()
    pasted = F.grid_sample(probs, grid.to(probs.dtype), align_corners=False)[:, 0] >= threshold
    inside = (rows[None, :, None] < heights[:, None, None]) & (
        cols[None, None, :] < widths[:, None, None]
    )
    return pasted & inside


def _chunks(regions: torch.Tensor, max_bytes: int) -> List[torch.Tensor]:
    """Index groups of similar region shape, each padded batch under ``max_bytes``.

    Regions are visited by height, then width; a group closes when padding would make it more
    than 1.5x its pixels (plus a little slack, so tiny regions still batch) or too large.
    """
    heights = (regions[:, 2] - regions[:, 0]).tolist()
    widths = (regions[:, 3] - regions[:, 1]).tolist()
    order = sorted(range(len(heights)), key=lambda i: (heights[i], widths[i]))
    groups, current, hmax, wmax, pixels = [], [], 0, 0, 0
    for i in order:
        h, w = max(hmax, heights[i]), max(wmax, widths[i])
        padded = (len(current) + 1) * h * w
        # grid (2 floats) + output (1 float) + masks (bool) per padded pixel
        too_big = padded * 13 > max_bytes
        wasteful = padded > 1.5 * (pixels + heights[i] * widths[i]) + 4096
        if current and (too_big or wasteful):
            groups.append(current)
            current, h, w, pixels = [], heights[i], widths[i], 0
        current.append(i)
        hmax, wmax, pixels = h, w, pixels + heights[i] * widths[i]
    if current:
        groups.append(current)
    return [torch.as_tensor(g, dtype=torch.int64, device=regions.device) for g in groups]


def _check_inputs(masks: torch.Tensor, boxes: torch.Tensor, threshold: float) -> None:
    if masks.dim() == 4 and masks.shape[1] == 1:
        raise ValueError("pass masks as (N, M, M); squeeze the channel of (N, 1, M, M) first")
    if masks.dim() != 3 or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"masks must have shape (N, M, M), got {tuple(masks.shape)}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes must have shape ({masks.shape[0]}, 4), got {tuple(boxes.shape)}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0 (binary masks), got {threshold}")


def paste_masks_in_image(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_shape: Tuple[int, int],
    threshold: float = 0.5,
    max_chunk_bytes: int = _CHUNK_BYTES,
) -> torch.Tensor:
    """Same result as detectron2's ``paste_masks_in_image`` (threshold >= 0), batched.

    Args:
        masks (Tensor): (N, M, M) mask probabilities.
        boxes (Tensor): (N, 4) XYXY boxes in output-image pixels (already clipped).
        image_shape (tuple[int, int]): output height, width.
        threshold (float): binarisation threshold, >= 0.
        max_chunk_bytes (int): working-memory bound of one batched ``grid_sample``.

    Returns:
        Tensor (N, H, W) bool on ``masks.device``.
    """
    _check_inputs(masks, boxes, threshold)
    img_h, img_w = int(image_shape[0]), int(image_shape[1])
    out = torch.zeros(masks.shape[0], img_h, img_w, dtype=torch.bool, device=masks.device)
    if masks.shape[0] == 0:
        return out
    regions = _paste_regions(boxes, (img_h, img_w))
    for idx in _chunks(regions, max_chunk_bytes):
        crops = _paste_chunk(masks[idx], boxes[idx], regions[idx], threshold)
        for k, i in enumerate(idx.tolist()):
            y0, x0, y1, x1 = regions[i].tolist()
            out[i, y0:y1, x0:x1] = crops[k, : y1 - y0, : x1 - x0]
    return out


def _transitions(crops: torch.Tensor, regions: torch.Tensor, image_h: int) -> torch.Tensor:
    """Column-major full-image indices where each mask switches between 0 and 1.

    Args:
        crops (Tensor): (n, hmax, wmax) bool, as returned by :func:`_paste_chunk`.
        regions (Tensor): (n, 4) int64 ``y0, x0, y1, x1`` of the crops.
        image_h (int): image height H.

    Returns:
        Tensor (K, 2) int64 on the CPU: rows (mask index, full index ``x * H + y``) sorted by
        mask then index. A run of ones that ends at the bottom of a column and one that starts
        at the top of the next appear as the same index twice (merged later).
    """
    n, hmax, wmax = crops.shape
    padded = torch.zeros(n, wmax, hmax + 2, dtype=torch.bool, device=crops.device)
    padded[:, :, 1 : hmax + 1] = crops.transpose(1, 2)  # column-major: (n, columns, rows)
    change = padded[:, :, 1:] != padded[:, :, :-1]  # (n, wmax, hmax + 1)
    det, col, row = change.nonzero(as_tuple=True)
    # a change between padded rows j and j+1 starts or ends a run at image row y0 + j
    full = (regions[det, 1] + col) * image_h + regions[det, 0] + row
    return torch.stack([det, full], dim=1).cpu()


def _encode_transitions(det: np.ndarray, full: np.ndarray, n: int, image_shape) -> List[Dict]:
    """Compressed RLEs from the transitions of n masks (rows of :func:`_transitions`).

    Args:
        det (np.ndarray): (K,) mask index of each transition, any order of masks, but in
            increasing ``full`` order within a mask.
        full (np.ndarray): (K,) column-major image index of each transition.
        n (int): number of masks (masks without transitions are empty).
        image_shape (tuple[int, int]): image height, width.
    """
    img_h, img_w = int(image_shape[0]), int(image_shape[1])
    order = np.argsort(det, kind="stable")
    det, full = det[order], full[order]
    # Runs of ones that continue across a column boundary: the end of one and the start of the
    # next fall on the same index; drop both so the runs merge, as in pycocotools.
    same = (det[1:] == det[:-1]) & (full[1:] == full[:-1])
    keep = np.ones(len(full), dtype=bool)
    keep[1:][same] = False
    keep[:-1][same] = False
    det, full = det[keep], full[keep]
    # Mask i's run boundaries [0, t_1, ..., t_k, H * W] laid out back to back for all masks;
    # its counts (pycocotools: zeros first) are the differences within its block.
    total = img_h * img_w
    first = np.searchsorted(det, np.arange(n)) + 2 * np.arange(n)  # position of each leading 0
    last = np.searchsorted(det, np.arange(n), side="right") + 2 * np.arange(n) + 1
    bounds = np.empty(len(full) + 2 * n, dtype=np.int64)
    bounds[first] = 0
    bounds[last] = total
    bounds[np.arange(len(full)) + 2 * det + 1] = full
    diffs = np.diff(bounds)
    # a mask whose last pixel is 1 ends with t_k = H * W: no trailing run of zeros
    ends = last - (diffs[last - 1] == 0)
    uncompressed = [{"counts": diffs[s:e], "size": [img_h, img_w]} for s, e in zip(first, ends)]
    return mask_util.frPyObjects(uncompressed, img_h, img_w)


def rles_from_crops(
    crops: torch.Tensor, regions: torch.Tensor, image_shape: Tuple[int, int]
) -> List[Dict]:
    """pycocotools-identical compressed RLEs of masks that are zero outside their regions.

    Args:
        crops (Tensor): (n, hmax, wmax) bool; crop i covers image rows ``y0_i:y0_i+hmax`` and
            columns ``x0_i:x0_i+wmax`` and must be False outside ``y1_i - y0_i`` rows and
            ``x1_i - x0_i`` columns.
        regions (Tensor): (n, 4) int64 ``y0, x0, y1, x1`` within the image.
        image_shape (tuple[int, int]): image height, width.

    Returns:
        list[dict]: ``{"size": [H, W], "counts": bytes}`` per mask, equal to
        ``pycocotools.mask.encode`` of the full (H, W) mask.
    """
    if crops.shape[0] == 0:
        return []
    trans = _transitions(crops, regions, int(image_shape[0])).numpy()
    return _encode_transitions(trans[:, 0], trans[:, 1], crops.shape[0], image_shape)


def paste_masks_rle(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_shape: Tuple[int, int],
    threshold: float = 0.5,
    max_chunk_bytes: int = _CHUNK_BYTES,
) -> List[Dict]:
    """RLEs of detectron2's pasted masks, without building (H, W) masks.

    Equal to ``[pycocotools.mask.encode(np.asfortranarray(m[:, :, None]))[0] for m in
    detectron2.layers.paste_masks_in_image(masks, boxes, image_shape, threshold)]``, with
    ``counts`` decoded to str as in detectron2's ``instances_to_coco_json``.

    Args:
        masks (Tensor): (N, M, M) mask probabilities (any device).
        boxes (Tensor): (N, 4) XYXY boxes in output-image pixels (already clipped).
        image_shape (tuple[int, int]): output height, width.
        threshold (float): binarisation threshold, >= 0.
        max_chunk_bytes (int): working-memory bound of one batched ``grid_sample``.

    Returns:
        list[dict]: ``{"size": [H, W], "counts": str}`` per mask, in input order.
    """
    _check_inputs(masks, boxes, threshold)
    if masks.shape[0] == 0:
        return []
    regions = _paste_regions(boxes, image_shape)
    dets, fulls = [], []
    for idx in _chunks(regions, max_chunk_bytes):
        crops = _paste_chunk(masks[idx], boxes[idx], regions[idx], threshold)
        trans = _transitions(crops, regions[idx], int(image_shape[0]))
        dets.append(idx.cpu()[trans[:, 0]].numpy())  # chunk-local -> input index
        fulls.append(trans[:, 1].numpy())
    rles = _encode_transitions(
        np.concatenate(dets), np.concatenate(fulls), masks.shape[0], image_shape
    )
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")
    return rles
