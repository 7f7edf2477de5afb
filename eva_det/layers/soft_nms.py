"""Soft-NMS with the semantics of EVA-01's evaluation.

EVA-01 calls mmcv's CPU ``soft_nms`` once per image on all (box, class) pairs, after shifting each
box by ``class_id * (max_coordinate + 1)`` so that boxes of different classes never overlap. The
mmcv kernel is a single greedy loop over the whole image:

1. pick the remaining box with the highest current score (the first one in the kernel's array
   order on ties) and move it to the output with its current score;
2. multiply the score of every other remaining box by a weight ``w(IoU)`` with the picked box:
   ``naive``: 0 if IoU >= thr else 1; ``linear``: 1 - IoU if IoU >= thr else 1;
   ``gaussian``: exp(-IoU^2 / sigma). IoU uses areas ``(x2 - x1) * (y2 - y1)`` (no +1);
3. drop every remaining box whose score is now below ``min_score``.

So the first box of the image is always kept, and any other box is kept iff its score when picked
is >= ``min_score``; the output score is that decayed score and the output is in pick order, which
is by decayed score, descending.

:func:`eva_det.utils.testing.soft_nms_sequential_reference` (the tests' and benches'
reference) ports that loop step by step (including the kernel's swaps,
which decide ties). :func:`batched_soft_nms` computes the same result with all classes in
parallel: it lays the boxes out as a ``[C, M]`` grid (C classes, at most M boxes per class) and
runs the greedy loop once for every class at the same time.
"""

import logging
from typing import Tuple

import numpy as np
import torch

__all__ = ["batched_soft_nms"]

logger = logging.getLogger(__name__)

_METHODS = ("naive", "linear", "gaussian")

# Fields of the [6, C, M] grid used by batched_soft_nms.
_SCORE, _X1, _Y1, _X2, _Y2, _AREA = range(6)
# Steps of the class-parallel loop between two compactions of its grid.
_COMPACT_EVERY = 8
# Compact only when the classes or the columns still in play drop below this fraction.
_SHRINK = 0.8
_FLOAT32_TINY = torch.finfo(torch.float32).tiny


def _check_args(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    method: str,
    iou_threshold: float,
    sigma: float,
) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    if tuple(scores.shape) != (n,) or tuple(idxs.shape) != (n,):
        raise ValueError(
            f"scores and idxs must have shape ({n},) to match boxes, got "
            f"{tuple(scores.shape)} and {tuple(idxs.shape)}"
        )
    if method not in _METHODS:
        raise ValueError(f"soft-NMS method must be one of {_METHODS}, got {method!r}")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"gaussian soft-NMS needs sigma > 0, got {sigma}")
    if method == "naive" and not iou_threshold > 0:
        # With thr <= 0 mmcv's naive decay also zeroes boxes of other classes (IoU 0 >= thr).
        raise ValueError(f"naive soft-NMS needs iou_threshold > 0, got {iou_threshold}")


def _offset_boxes(boxes: torch.Tensor, idxs: torch.Tensor) -> torch.Tensor:
    """Shift boxes by class as EVA / mmcv ``batched_nms`` do, in float32.

    Args:
        boxes (Tensor): (N, 4) boxes (x1, y1, x2, y2), N >= 1.
        idxs (Tensor): (N,) integer class ids.

    Returns:
        Tensor: (N, 4) float32 boxes ``boxes + idxs * (boxes.max() + 1)``, rounded exactly as mmcv
        rounds them (so that IoUs match the official ones bit for bit).
    """
    boxes = boxes.float()
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return boxes + offsets[:, None]


def _empty_result(device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.zeros(0, dtype=torch.int64, device=device),
        torch.zeros(0, dtype=torch.float32, device=device),
    )


def batched_soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    method: str = "linear",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    min_score: float = 1e-3,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-class soft-NMS, equal to mmcv's CPU ``soft_nms`` on class-offset boxes, all classes
    processed in parallel.

    Boxes are shifted by ``idxs * (boxes.max() + 1)`` exactly as EVA does before calling mmcv (the
    shift rounds coordinates in float32, which slightly changes IoUs; this is reproduced), then
    grouped into a ``[C, M]`` grid. The greedy loop runs once for all classes at a time: each step
    picks the best remaining box of every class, decays that class's remaining scores and drops
    those below ``min_score``; classes and grid columns that run empty are compacted away. Boxes
    that start below ``min_score`` can never be kept (except for the image's top box) and are
    skipped up front. Memory is O(N); runtime is O(max kept boxes per class) small tensor steps.

    Differences from the kernel, all in degenerate inputs: exact ties between the current scores
    of two boxes of one class are broken by the lower input index (mmcv breaks them by its
    internal array order, which the other classes also permute); the IoU of two empty boxes
    (0 / 0) counts as 0, which is what mmcv's linear and naive decays amount to, whereas its
    gaussian decay turns such scores into NaN. Inputs must be finite; with more than one class,
    coordinates must be >= 0 (clip boxes to the image) so that the shift separates classes.

    Args:
        boxes (Tensor): (N, 4) boxes (x1, y1, x2, y2), any float dtype, CPU or CUDA.
        scores (Tensor): (N,) scores.
        idxs (Tensor): (N,) integer class ids; boxes of different classes never interact.
            All zeros gives class-agnostic soft-NMS.
        method (str): "linear", "gaussian" or "naive".
        iou_threshold (float): IoU at or above which the linear / naive decay applies.
        sigma (float): width of the gaussian decay.
        min_score (float): boxes whose decayed score falls below this are dropped.

    Returns:
        keep (Tensor): (K,) int64 indices into the inputs, sorted by decayed score, descending.
        scores (Tensor): (K,) float32 decayed scores of the kept boxes.
    """
    _check_args(boxes, scores, idxs, method, iou_threshold, sigma)
    device = boxes.device
    n = boxes.shape[0]
    if n == 0:
        return _empty_result(device)
    boxes, scores, idxs = boxes.detach(), scores.detach().float(), idxs.detach()
    if idxs.min() != idxs.max() and boxes.min() < 0:
        raise ValueError(
            "batched_soft_nms: boxes have negative coordinates (min "
            f"{float(boxes.min()):.4g}), so the per-class offset would not separate classes; "
            "clip boxes to the image first"
        )
    boxes = _offset_boxes(boxes, idxs)

    f32 = dict(dtype=torch.float32, device=device)
    min_sc = torch.tensor(min_score, **f32)
    # "x >= t" for float32 x is "x > (the float32 just below t)", which torch's threshold computes.
    thr_below = _float32_below(iou_threshold)
    min_below = _float32_below(min_score)
    neg_sigma = -float(np.float32(sigma))  # the kernel's sigma is a float32

    # The image's top box is always kept; if it is below min_score, every box is, and only it is.
    top = torch.argmax(scores)
    if scores[top] < min_sc:
        return top.view(1), scores[top].view(1)

    # Candidates: boxes at or above min_score, grouped by class, input order within a class.
    cand = torch.nonzero(~(scores < min_sc)).squeeze(1)  # (K,)
    cand = cand[torch.argsort(idxs[cand], stable=True)]
    _, counts = torch.unique_consecutive(idxs[cand], return_counts=True)  # (C,)
    num_classes, width = counts.numel(), int(counts.max())
    row = torch.repeat_interleave(torch.arange(num_classes, device=device), counts)  # (K,)
    starts = torch.cumsum(counts, 0) - counts
    col = torch.arange(cand.numel(), device=device) - starts[row]

    # (6, C, M) grid of score, x1, y1, x2, y2, area. Removed cells (picked, dropped or padding)
    # hold score -inf. orig (C, M) maps cells to input indices.
    grid = torch.zeros(6, num_classes, width, **f32)
    grid[_SCORE].fill_(float("-inf"))
    b = boxes[cand]
    grid[_SCORE, row, col] = scores[cand]
    grid[_X1 : _Y2 + 1, row, col] = b.t()
    grid[_AREA, row, col] = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    orig = torch.full((num_classes, width), -1, dtype=torch.int64, device=device)
    orig[row, col] = cand

    picked, picked_scores = [], []  # per step: (C, 1) input index and score of each pick
    step = 0
    while True:
        if step % _COMPACT_EVERY == 0:
            grid, orig = _compact(grid, orig)
            if orig.numel() == 0:
                break
        step += 1
        sc, x1, y1, x2, y2, area = grid
        # Pick the best remaining box of every class (first one on ties); -inf: class is done.
        best, j = sc.max(dim=1, keepdim=True)  # (C, 1)
        picked.append(orig.gather(1, j))
        picked_scores.append(best)
        sc.scatter_(1, j, float("-inf"))

        # IoU of each class's picked box with the class's boxes, with the kernel's arithmetic.
        s_x1, s_y1, s_x2, s_y2, s_area = grid[1:].gather(2, j.expand(5, -1, -1))  # 5 x (C, 1)
        iw = (torch.clamp(x2, max=s_x2) - torch.clamp(x1, min=s_x1)).clamp_(min=0)
        ih = (torch.clamp(y2, max=s_y2) - torch.clamp(y1, min=s_y1)).clamp_(min=0)
        inter = iw.mul_(ih)
        # Two empty boxes give 0 / 0; a union floored at the smallest float makes that IoU 0.
        union = (area + s_area).sub_(inter).clamp_(min=_FLOAT32_TINY)
        iou = inter.div_(union)  # (C, M)
        if method == "linear":  # 1 - IoU where IoU >= thr, else 1
            weight = torch.threshold(iou, thr_below, 0.0).neg_().add_(1)
        elif method == "naive":  # 0 where IoU >= thr, else 1 (thr > 0)
            weight = torch.threshold(iou, thr_below, 0.0).sign_().neg_().add_(1)
        else:
            weight = iou.mul_(iou).div_(neg_sigma).exp_()
        # Decay, then drop scores below min_score (-inf * 0 gives NaN, which is dropped too).
        sc.mul_(weight).nan_to_num_(nan=float("-inf"), posinf=float("inf"))
        torch.threshold_(sc, min_below, float("-inf"))

    keep = torch.cat(picked).view(-1)
    kept_scores = torch.cat(picked_scores).view(-1)
    valid = kept_scores > float("-inf")
    keep, kept_scores = keep[valid], kept_scores[valid]
    logger.debug(
        "soft-NMS: %d boxes, %d at or above min_score in %d classes, %d kept after %d steps",
        n,
        cand.numel(),
        num_classes,
        keep.numel(),
        step,
    )
    # Within a class, pick order is already by score; stable sort keeps it on exact ties.
    kept_scores, order = torch.sort(kept_scores, descending=True, stable=True)
    return keep[order], kept_scores


def _float32_below(x: float) -> float:
    """The largest float32 strictly below float32(x), as a Python float."""
    return float(np.nextafter(np.float32(x), np.float32(-np.inf)))


def _compact(grid: torch.Tensor, orig: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Drop classes with no remaining box and pack each class's remaining boxes to the left.

    Args:
        grid (Tensor): (6, C, M) float32 grid; cells with score -inf are removed.
        orig (Tensor): (C, M) int64 input index of each cell.

    Returns:
        The grid and orig restricted to the remaining cells, with shapes (6, C', M') and (C', M'),
        C' the number of classes with a remaining box, M' their most remaining boxes. Each class
        keeps its boxes in the same relative order, so ties still go to the lower input index.
    """
    alive = grid[_SCORE] > float("-inf")  # (C, M)
    counts = alive.sum(dim=1)  # (C,)
    rows = torch.nonzero(counts).squeeze(1)  # (C',)
    width = int(counts.max()) if rows.numel() else 0
    num_classes, old_width = alive.shape
    if rows.numel() > _SHRINK * num_classes and width > _SHRINK * old_width:
        return grid, orig
    grid, orig, alive = grid[:, rows], orig[rows], alive[rows]
    # Column of each remaining cell in the packed grid; removed cells go to a spare last column.
    dest = torch.where(alive, torch.cumsum(alive, dim=1) - 1, width)  # (C', M)
    new_grid = grid.new_full((6, rows.numel(), width + 1), float("-inf"))
    new_grid.scatter_(2, dest.expand(6, -1, -1), grid)
    new_orig = orig.new_empty(rows.numel(), width + 1).scatter_(1, dest, orig)
    return new_grid[:, :, :width].contiguous(), new_orig[:, :width].contiguous()
