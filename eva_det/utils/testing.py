"""Reference implementations and synthetic data for tests and benchmarks (not used by eva_det).

* :func:`soft_nms_sequential_reference`: EVA-01's soft-NMS loop step by step, the reference of
  :func:`eva_det.layers.soft_nms.batched_soft_nms`;
* :func:`make_ground_truth`, :func:`make_detections`: synthetic COCO / LVIS style ground truth
  and detections for evaluator tests and benchmarks.

This module sits above every other layer (it may import any of them; nothing in eva_det imports
it).

Synthetic data:

The data is random but deterministic for a seed, and built to exercise every branch of the COCO
and LVIS protocols:

* ground truth: integer boxes, polygon masks inside them (areas spread over small / medium /
  large), COCO crowd regions stored as uncompressed RLE, non-contiguous COCO category ids;
* LVIS extras: category ``frequency`` r / c / f, per-image ``neg_category_ids`` (verified absent)
  and ``not_exhaustive_category_ids`` (present but not all instances annotated);
* detections: jittered copies of the ground truth (some with the wrong class), duplicates, random
  false positives, detections on crowd regions and, for LVIS, on negative and on unannotated
  categories. Boxes are integers and scores float32 values, so they survive the round trip through
  detectron2 ``Instances`` (float32 tensors) bit for bit.
"""

from typing import Any, Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch

# the argument checks and class offsets are the kernel's, shared with the batched version
from eva_det.layers.soft_nms import _check_args, _empty_result, _offset_boxes

__all__ = ["make_ground_truth", "make_detections", "soft_nms_sequential_reference"]

_FREQUENCIES = ("r", "c", "f")


def _polygon_in_box(rng: np.random.Generator, box: List[float], num_vertices: int = 10) -> List:
    """A star-shaped polygon inside ``box`` (x, y, w, h), as COCO's ``[[x0, y0, x1, ...]]``."""
    x, y, w, h = box
    angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, num_vertices))
    radii = rng.uniform(0.55, 1.0, num_vertices)
    px = x + w / 2.0 + radii * np.cos(angles) * w / 2.0
    py = y + h / 2.0 + radii * np.sin(angles) * h / 2.0
    coords = np.stack([px, py], axis=1).reshape(-1)  # (2 * num_vertices,) as x0, y0, x1, y1, ...
    return [np.round(coords, 2).tolist()]


def _fit_polygon(
    rng: np.random.Generator, polygon: List, source: List[float], target: List[float]
) -> List:
    """Map ``polygon`` from box ``source`` to box ``target`` (x, y, w, h); jitter its vertices."""
    xy = np.asarray(polygon[0]).reshape(-1, 2)  # (num_vertices, 2)
    scale = np.array(target[2:]) / np.array(source[2:])
    xy = (xy - np.array(source[:2])) * scale + np.array(target[:2])
    xy += rng.normal(0.0, 0.015, size=xy.shape) * np.array(target[2:])
    return [np.round(xy.reshape(-1), 2).tolist()]


def _polygon_to_rle(polygon: List, height: int, width: int) -> Dict[str, Any]:
    """Compressed RLE (``counts`` as str, like detectron2's results) of a polygon."""
    rle = mask_util.merge(mask_util.frPyObjects(polygon, height, width))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _uncompressed_rle(mask: np.ndarray) -> Dict[str, Any]:
    """Uncompressed RLE (``counts`` as a list of run lengths, column-major) of a binary mask."""
    flat = mask.reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1  # indices where a new run starts
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:  # RLE always starts with a run of zeros
        counts = [0] + counts
    return {"counts": counts, "size": list(mask.shape)}


def _random_box(rng: np.random.Generator, height: int, width: int) -> List[float]:
    """An integer box (x, y, w, h) with a log-uniform side length, so all COCO area ranges occur."""
    side_max = min(height, width) - 2
    w = int(np.clip(np.exp(rng.uniform(np.log(6), np.log(side_max))), 4, side_max))
    h = int(np.clip(w * np.exp(rng.uniform(-0.4, 0.4)), 4, side_max))
    x = int(rng.integers(0, width - w))
    y = int(rng.integers(0, height - h))
    return [float(x), float(y), float(w), float(h)]


def make_ground_truth(
    num_images: int = 30,
    num_categories: int = 4,
    *,
    seed: int = 0,
    max_objects: int = 8,
    image_size: Tuple[int, int] = (96, 320),
    crowd_prob: float = 0.05,
    lvis: bool = False,
) -> Dict[str, Any]:
    """Build a COCO (or LVIS) style ground-truth dict.

    Args:
        num_images (int): number of images; ids start at 1001.
        num_categories (int): number of categories. COCO ids are 1, 3, 5, ... (non-contiguous,
            to exercise detectron2's id mapping); LVIS ids are 1..num_categories with frequencies
            cycling r, c, f.
        seed (int): random seed.
        max_objects (int): each image gets 1..max_objects instances.
        image_size (tuple[int, int]): image sides are drawn uniformly from this range.
        crowd_prob (float): chance that a COCO instance is a crowd region (never for LVIS).
        lvis (bool): add LVIS fields (frequency, neg / not-exhaustive category ids) and omit
            ``iscrowd``.

    Returns:
        dict: with "images", "annotations" and "categories", ready for ``json.dump``.
    """
    rng = np.random.default_rng(seed)
    if lvis:
        cat_ids = list(range(1, num_categories + 1))
    else:
        cat_ids = list(range(1, 2 * num_categories, 2))
    categories = []
    for k, cat_id in enumerate(cat_ids):
        cat = {"id": cat_id, "name": f"class_{cat_id}", "supercategory": "thing"}
        if lvis:
            cat.update(frequency=_FREQUENCIES[k % 3], synset=f"class_{cat_id}.n.01")
        categories.append(cat)

    images, annotations = [], []
    for i in range(num_images):
        img_id = 1001 + i
        height, width = (int(v) for v in rng.integers(image_size[0], image_size[1] + 1, size=2))
        image = {"id": img_id, "height": height, "width": width, "file_name": f"{img_id}.jpg"}
        present = set()
        for _ in range(int(rng.integers(1, max_objects + 1))):
            cat_id = int(rng.choice(cat_ids))
            box = _random_box(rng, height, width)
            ann = {"id": len(annotations) + 1, "image_id": img_id, "category_id": cat_id}
            if not lvis and rng.random() < crowd_prob:
                x, y, w, h = (int(v) for v in box)
                mask = np.zeros((height, width), dtype=np.uint8)
                mask[y : y + h, x : x + w] = 1
                ann.update(segmentation=_uncompressed_rle(mask), area=float(w * h), iscrowd=1)
            else:
                polygon = _polygon_in_box(rng, box)
                rle = mask_util.merge(mask_util.frPyObjects(polygon, height, width))
                ann.update(segmentation=polygon, area=float(mask_util.area(rle)))
                if not lvis:
                    ann["iscrowd"] = 0
            ann["bbox"] = box
            annotations.append(ann)
            present.add(cat_id)
        if lvis:
            absent = [c for c in cat_ids if c not in present]
            num_neg = int(rng.integers(0, min(3, len(absent)) + 1))
            image["neg_category_ids"] = sorted(int(c) for c in rng.permutation(absent)[:num_neg])
            image["not_exhaustive_category_ids"] = sorted(c for c in present if rng.random() < 0.3)
        images.append(image)
    return {"images": images, "annotations": annotations, "categories": categories}


def make_detections(
    gt: Dict[str, Any],
    *,
    seed: int = 1,
    miss_prob: float = 0.15,
    wrong_class_prob: float = 0.08,
    duplicate_prob: float = 0.15,
    false_positives_per_image: int = 3,
    with_masks: bool = True,
) -> List[Dict[str, Any]]:
    """Detections in COCO results format for a ground truth made by :func:`make_ground_truth`.

    Args:
        gt (dict): the ground truth.
        seed (int): random seed.
        miss_prob (float): chance that an instance gets no detection.
        wrong_class_prob (float): chance that a detection of an instance has another class.
        duplicate_prob (float): chance of a second, lower-scored detection of an instance.
        false_positives_per_image (int): random boxes per image (uniform class). Their classes
            cover, for LVIS, negative and unannotated categories too.
        with_masks (bool): add a compressed-RLE ``segmentation`` to each detection.

    Returns:
        list[dict]: image_id, category_id (dataset id), bbox (integer x, y, w, h as floats),
        score (a float32 value) and optionally segmentation; grouped by image in image order.
    """
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in gt["categories"]]
    anns_per_image: Dict[int, List[Dict[str, Any]]] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        anns_per_image[ann["image_id"]].append(ann)

    results = []
    for img in gt["images"]:
        height, width = img["height"], img["width"]

        def add(box, cat_id, score, instance=None):
            """Append a detection; ``instance``: the gt annotation whose mask it copies."""
            x = int(np.clip(box[0], 0, width - 2))
            y = int(np.clip(box[1], 0, height - 2))
            w = int(np.clip(box[2], 2, width - x))
            h = int(np.clip(box[3], 2, height - y))
            det = {
                "image_id": img["id"],
                "category_id": int(cat_id),
                "bbox": [float(x), float(y), float(w), float(h)],
                "score": float(np.float32(score)),
            }
            if with_masks:
                if instance is None or not isinstance(instance["segmentation"], list):
                    polygon = _polygon_in_box(rng, det["bbox"])
                else:  # move the instance's polygon into the box, plus a little noise
                    polygon = _fit_polygon(
                        rng, instance["segmentation"], instance["bbox"], det["bbox"]
                    )
                det["segmentation"] = _polygon_to_rle(polygon, height, width)
            results.append(det)

        for ann in anns_per_image[img["id"]]:
            if rng.random() < miss_prob:
                continue
            box = np.array(ann["bbox"])
            for copy_idx in range(2 if rng.random() < duplicate_prob else 1):
                jitter = rng.normal(0.0, 0.07, size=4) * box[[2, 3, 2, 3]]
                cat_id = ann["category_id"]
                if rng.random() < wrong_class_prob:
                    cat_id = rng.choice(cat_ids)
                score = rng.uniform(0.3, 1.0) * (0.5 if copy_idx else 1.0)
                add(np.round(box + jitter), cat_id, score, instance=ann)
        for _ in range(false_positives_per_image):
            add(_random_box(rng, height, width), rng.choice(cat_ids), rng.uniform(0.01, 0.6))
    return results


def soft_nms_sequential_reference(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    method: str = "linear",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    min_score: float = 1e-3,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step port of mmcv's CPU soft-NMS loop, run once on class-offset boxes.

    This is the baseline that :func:`batched_soft_nms` is tested and benchmarked against. It keeps
    the kernel's in-place array order (picked box swapped to the front, dropped boxes replaced by
    the last remaining one), so even exact score ties resolve as in mmcv. Arithmetic is float32
    as in the kernel; each step is vectorised over the remaining boxes with numpy, so one image
    with N boxes of which K are kept costs O(N * K).

    Args:
        boxes (Tensor): (N, 4) boxes (x1, y1, x2, y2), any float dtype and device.
        scores (Tensor): (N,) scores.
        idxs (Tensor): (N,) integer class ids; boxes of different classes never interact.
        method (str): "linear", "gaussian" or "naive".
        iou_threshold (float): IoU at or above which the linear / naive decay applies.
        sigma (float): width of the gaussian decay.
        min_score (float): boxes whose decayed score falls below this are dropped.

    Returns:
        keep (Tensor): (K,) int64 indices into the inputs, in pick order (decayed score,
            descending).
        scores (Tensor): (K,) float32 decayed scores of the kept boxes.
    """
    _check_args(boxes, scores, idxs, method, iou_threshold, sigma)
    device = boxes.device
    n = boxes.shape[0]
    if n == 0:
        return _empty_result(device)
    b = _offset_boxes(boxes.detach(), idxs.detach()).cpu().numpy()
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    sc = scores.detach().float().cpu().numpy().copy()
    areas = (x2 - x1) * (y2 - y1)
    inds = np.arange(n, dtype=np.int64)
    arrays = (x1, y1, x2, y2, sc, areas, inds)  # permuted together, like the kernel's arrays
    thr, sig, min_sc = np.float32(iou_threshold), np.float32(sigma), np.float32(min_score)
    one, zero = np.float32(1), np.float32(0)

    keep, kept_scores = [], []
    i = 0
    while i < n:
        # Pick: first maximum in the current order. The kernel scans with a strict "<" starting
        # from slot i, so a NaN score (gaussian decay of two empty boxes) is picked only from
        # slot i and otherwise never wins.
        j = i + int(np.argmax(sc[i:n]))
        if np.isnan(sc[j]) and not np.isnan(sc[i]):
            j = i + int(np.nanargmax(sc[i:n]))
        elif np.isnan(sc[i]):
            j = i
        for a in arrays:
            a[i], a[j] = a[j], a[i]
        keep.append(inds[i])
        kept_scores.append(sc[i])

        # Decay every remaining box.
        rest = slice(i + 1, n)
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
            if method == "linear":
                weight = np.where(iou >= thr, one - iou, one)
            elif method == "naive":
                weight = np.where(iou >= thr, zero, one)
            else:
                weight = np.exp(-(iou * iou) / sig)
        sc[rest] *= weight

        # Drop boxes below min_score. The kernel overwrites each dropped slot with the last
        # remaining box and shrinks the array; the net effect is that the holes in the first
        # num_left slots are filled, in ascending order, by the survivors found after them, taken
        # in descending order.
        drop = sc[rest] < min_sc
        if drop.any():
            num_left = int(drop.size - drop.sum())
            holes = np.flatnonzero(drop[:num_left]) + (i + 1)
            movers = (np.flatnonzero(~drop[num_left:]) + (i + 1 + num_left))[::-1]
            for a in arrays:
                a[holes] = a[movers]
            n = i + 1 + num_left
        i += 1

    return (
        torch.as_tensor(np.array(keep, dtype=np.int64), device=device),
        torch.as_tensor(np.array(kept_scores, dtype=np.float32), device=device),
    )
