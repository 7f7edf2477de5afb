"""Tiny COCO / LVIS v1 / custom datasets with polygon masks, in the folder layouts users have.

``write_coco_layout(root)`` writes what detectron2's builtin ``coco_2017_{train,val}`` read
under ``$DETECTRON2_DATASETS``; ``write_lvis_layout(root)`` adds ``lvis/lvis_v1_{train,val}.json``
(images from ``coco/{train,val}2017``, LVIS' federated fields); ``write_coco_json`` writes one
split of any COCO-format dataset. Each image holds a few filled polygons (triangles and
pentagons, a colour per class) on a noisy background; annotations are polygons, as in COCO.
"""

import json
import math
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZES = ((96, 128), (128, 112), (112, 96))  # (height, width), cycled


def coco_categories() -> List[dict]:
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]


def lvis_categories() -> List[dict]:
    """LVIS v1's 1203 categories with the fields of lvis_v1_*.json (counts made up)."""
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    return [
        {
            "id": c["id"],
            "name": c["name"],
            "synonyms": c["synonyms"],
            "def": c["def"],
            "synset": c["synset"],
            "frequency": c["frequency"],
            "image_count": 0,
            "instance_count": 0,
        }
        for c in LVIS_CATEGORIES
    ]


def _polygon(rng, height: int, width: int, sides: int) -> List[float]:
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    radius = rng.uniform(0.15, 0.3) * min(height, width)
    start = rng.uniform(0, 2 * math.pi)
    points = []
    for k in range(sides):
        angle = start + 2 * math.pi * k / sides
        points += [cx + radius * math.cos(angle), cy + radius * math.sin(angle)]
    return [
        round(min(max(v, 0.0), lim - 1.0), 2) for v, lim in zip(points, [width, height] * sides)
    ]


def _area(poly: Sequence[float]) -> float:
    xs, ys = poly[0::2], poly[1::2]
    return abs(sum(xs[i - 1] * ys[i] - xs[i] * ys[i - 1] for i in range(len(xs)))) / 2


def _draw_split(
    image_dir: str, file_names: Sequence[str], category_ids: Sequence[int], seed: int
) -> Tuple[List[dict], List[dict]]:
    """Write the images; returns COCO ``images`` and ``annotations`` (ids from 1)."""
    rng = np.random.default_rng(seed)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index, file_name in enumerate(file_names):
        height, width = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        image_id = index + 1
        for _ in range(int(rng.integers(1, 3))):
            cls = int(rng.integers(0, len(category_ids)))
            poly = _polygon(rng, height, width, sides=3 + 2 * (cls % 2))
            colour = tuple(int(v) for v in (80 + 170 * (cls % 2), 80 + 80 * (cls % 3), 200))
            draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=colour)
            xs, ys = poly[0::2], poly[1::2]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category_ids[cls]),
                    "segmentation": [poly],
                    "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                    "area": _area(poly),
                    "iscrowd": 0,
                }
            )
        image.save(os.path.join(image_dir, file_name), quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    return images, annotations


def write_coco_json(
    json_file: str,
    image_dir: str,
    num_images: int,
    categories: Sequence[dict],
    used_category_ids: Sequence[int],
    seed: int = 0,
) -> dict:
    """Write one COCO-format split (json + jpgs); returns the json content.

    Args:
        json_file (str): annotation file to write.
        image_dir (str): folder for the images (``file_name`` is relative to it).
        num_images (int): images to draw, named ``000000000001.jpg`` ...
        categories (list[dict]): the json's ``categories`` (``id``, ``name``, ...).
        used_category_ids (list[int]): category ids the drawn objects use.
        seed (int): random seed of the drawing.
    """
    names = [f"{i + 1:012d}.jpg" for i in range(num_images)]
    images, annotations = _draw_split(image_dir, names, used_category_ids, seed)
    data = {"images": images, "annotations": annotations, "categories": list(categories)}
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    with open(json_file, "w") as f:
        json.dump(data, f)
    return data


# a few COCO ids (person, bicycle, car, dog) and LVIS ids of each frequency group
COCO_USED_IDS = (1, 2, 3, 18)
LVIS_USED_IDS = (1, 3, 13, 5)  # aerosol_can (c), airplane (f), applesauce (r), alcohol (c)


def write_coco_layout(root: str, num_train: int = 4, num_val: int = 3) -> Dict[str, dict]:
    """``root/coco/{annotations/instances_{train,val}2017.json, train2017/, val2017/}``."""
    out = {}
    for split, count, seed in (("train", num_train, 0), ("val", num_val, 1)):
        out[split] = write_coco_json(
            os.path.join(root, "coco", "annotations", f"instances_{split}2017.json"),
            os.path.join(root, "coco", f"{split}2017"),
            count,
            coco_categories(),
            COCO_USED_IDS,
            seed=seed,
        )
    return out


def write_lvis_layout(root: str, num_train: int = 4, num_val: int = 3) -> Dict[str, dict]:
    """LVIS v1: ``root/lvis/lvis_v1_{train,val}.json`` over images in ``root/coco/*2017``.

    Images carry ``coco_url`` (detectron2 takes the folder and file name from it),
    ``not_exhaustive_category_ids`` and ``neg_category_ids``; categories carry ``frequency``
    and the ``image_count`` / ``instance_count`` of this split.
    """
    out = {}
    for split, count, seed in (("train", num_train, 2), ("val", num_val, 3)):
        categories = lvis_categories()
        data = write_coco_json(
            os.path.join(root, "lvis", f"lvis_v1_{split}.json"),
            os.path.join(root, "coco", f"{split}2017"),
            count,
            categories,
            LVIS_USED_IDS,
            seed=seed,
        )
        by_id = {c["id"]: c for c in categories}
        for image in data["images"]:
            used = {a["category_id"] for a in data["annotations"] if a["image_id"] == image["id"]}
            image["coco_url"] = f"http://images.cocodataset.org/{split}2017/{image['file_name']}"
            image["not_exhaustive_category_ids"] = sorted(used)[:1]
            image["neg_category_ids"] = [i for i in LVIS_USED_IDS if i not in used][:1]
            del image["file_name"]
            for cid in used:
                by_id[cid]["image_count"] += 1
        for ann in data["annotations"]:
            by_id[ann["category_id"]]["instance_count"] += 1
        with open(os.path.join(root, "lvis", f"lvis_v1_{split}.json"), "w") as f:
            json.dump(data, f)
        out[split] = data
    return out
