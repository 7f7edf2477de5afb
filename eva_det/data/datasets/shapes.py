"""The synthetic "shapes" instance-segmentation dataset: rendering, generation, registration.

Each image is a textured background (linear gradient, stripes or smooth colour noise, plus pixel
noise) with 2..6 filled shapes of ``SHAPES_CLASSES`` drawn back to front in random colours, sizes
16..96 px (at 256 px; sizes scale with ``image_size``) and rotations. Later shapes occlude earlier
ones; an annotation is always the *visible* part of its shape. A shape is only placed where every
earlier shape keeps at least 30% of its area and 64 px (scaled) visible, otherwise it is re-placed
and finally skipped, so every object pixel in an image belongs to exactly one annotation.

Layout under ``root`` (default ``$DETECTRON2_DATASETS/shapes``, ``DETECTRON2_DATASETS`` defaulting
to ``datasets``)::

    <split>/000001.png ...                  RGB images, ids 1..N
    annotations/instances_<split>.json      COCO instances; masks are compressed RLE

Masks are RLE, so detectron2's ``DatasetMapper`` must use ``instance_mask_format="bitmask"``
(``INPUT.MASK_FORMAT = "bitmask"``). Generation is deterministic: image ``i`` of a split depends
only on ``(seed, split, i)``, so the same arguments give byte-identical files.

Registration (``register_shapes``, run by ``import eva_det.data``) does no I/O. The split is
generated lazily, the first time ``DatasetCatalog.get(name)`` runs. Code that reads the JSON file
without going through the DatasetCatalog (e.g. ``COCOEvaluator(name)``, which opens
``MetadataCatalog.get(name).json_file`` in its constructor) must call ``ensure_shapes(name)``
first. Generation holds a per-split file lock and builds into a temporary directory inside
``root`` that is renamed into place, with the JSON file (the completion marker) moved last.
``root`` and its missing parents are created; a root that cannot be created or written raises
:class:`eva_det.errors.InputError` naming it (:func:`shapes_root_problem` finds that before any
work starts, without writing anything).
"""

import contextlib
import functools
import glob
import json
import logging
import os
import re
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from PIL import Image, ImageDraw

from eva_det.errors import InputError

logger = logging.getLogger(__name__)

SHAPES_CLASSES = ("circle", "rectangle", "triangle", "star", "hexagon")
SHAPES_IMAGE_SIZE = 256
SHAPES_NUM_TRAIN = 1000
SHAPES_NUM_VAL = 100
SHAPES_SEED = 20240601
# dataset name -> (split, number of images)
SHAPES_SPLITS: Dict[str, Tuple[str, int]] = {
    "shapes_train": ("train", SHAPES_NUM_TRAIN),
    "shapes_val": ("val", SHAPES_NUM_VAL),
}

# Geometry at the reference size of 256 px; lengths scale with image_size / 256.
_REFERENCE_SIZE = 256
_SHAPE_SIZE_RANGE = (16.0, 96.0)  # diameter of the circumscribed circle, px
_OBJECTS_PER_IMAGE = (2, 6)
_MIN_VISIBLE_FRACTION = 0.3
_MIN_VISIBLE_PIXELS = 64.0
_PLACEMENT_TRIES = 20
_COLOUR_TRIES = 20
_MIN_COLOUR_DISTANCE = 120.0  # L1 distance over RGB between a shape and what it covers
_FORMAT_VERSION = 1
_SPLIT_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
_IMAGE_PATTERN = re.compile(r"^\d{6}\.png$")


@dataclass
class ShapesImage:
    """One rendered image with its instances in drawing order (back to front).

    Attributes:
        image (np.ndarray): (H, W, 3) uint8 RGB pixels.
        category_ids (list[int]): COCO category id (1..len(SHAPES_CLASSES)) of each instance.
        full_masks (np.ndarray): (N, H, W) bool, each shape as drawn, ignoring occlusion.
        visible_masks (np.ndarray): (N, H, W) bool, the part of each shape left visible.
    """

    image: np.ndarray
    category_ids: List[int]
    full_masks: np.ndarray
    visible_masks: np.ndarray


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Random generator of image ``index`` (0-based) of ``split``, independent of other images."""
    return np.random.default_rng([seed, zlib.crc32(split.encode("utf-8")), index])


def _shape_mask(rng: np.random.Generator, name: str, image_size: int, scale: float) -> np.ndarray:
    """Rasterise one randomly sized, placed and rotated shape ``name`` as an (H, W) bool mask."""
    radius = rng.uniform(*_SHAPE_SIZE_RANGE) * scale / 2
    cx, cy = rng.uniform(radius, image_size - radius, size=2)
    theta = rng.uniform(0.0, 2 * np.pi)
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    if name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        return np.asarray(canvas) > 0
    if name == "rectangle":
        half = rng.uniform(np.deg2rad(25), np.deg2rad(45))  # half-diagonal angle sets the aspect
        angles = np.array([half, np.pi - half, np.pi + half, -half])
        radii = np.full(4, radius)
    elif name == "triangle":
        angles = np.deg2rad(np.array([0.0, 120.0, 240.0]) + rng.uniform(-12, 12, size=3))
        radii = np.full(3, radius)
    elif name == "star":
        angles = np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.4, 0.55))
    elif name == "hexagon":
        angles = np.arange(6) * np.pi / 3
        radii = np.full(6, radius)
    else:
        raise ValueError(f"Unknown shape class '{name}'; expected one of {SHAPES_CLASSES}.")
    xs = cx + radii * np.cos(angles + theta)
    ys = cy + radii * np.sin(angles + theta)
    draw.polygon([(float(x), float(y)) for x, y in zip(xs, ys)], fill=1)
    return np.asarray(canvas) > 0


def _background(rng: np.random.Generator, image_size: int, scale: float) -> np.ndarray:
    """A textured (H, W, 3) float32 background with values in [0, 255]."""
    kind = rng.integers(3)
    if kind == 2:  # smooth colour noise: a coarse random grid upsampled bilinearly
        cells = int(rng.integers(3, 9))
        grid = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
        smooth = Image.fromarray(grid).resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(smooth, dtype=np.float32)
    c0 = rng.uniform(0, 255, size=3)
    theta = rng.uniform(0.0, 2 * np.pi)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    proj = xx * np.cos(theta) + yy * np.sin(theta)  # (H, W) px along a random direction
    if kind == 0:  # linear gradient between two random colours
        c1 = rng.uniform(0, 255, size=3)
        t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1.0)
    else:  # stripes of limited contrast
        c1 = np.clip(c0 + rng.uniform(-100, 100, size=3), 0, 255)
        period = rng.uniform(8.0, 32.0) * scale
        t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / period + rng.uniform(0, 2 * np.pi))
    return (c0 + (c1 - c0) * t[..., None]).astype(np.float32)


def _pick_colour(rng: np.random.Generator, avoid: List[np.ndarray]) -> np.ndarray:
    """A random RGB colour (3,), preferring one far (L1) from every colour in ``avoid``."""
    best, best_distance = None, -1.0
    for _ in range(_COLOUR_TRIES):
        colour = rng.uniform(0, 255, size=3)
        distance = min(float(np.abs(colour - a).sum()) for a in avoid)
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= _MIN_COLOUR_DISTANCE:
            break
    return best


def render_shapes_image(
    seed: int, split: str, index: int, image_size: int = SHAPES_IMAGE_SIZE
) -> ShapesImage:
    """Render image ``index`` (0-based) of ``split``; a pure function of its arguments.

    Args:
        seed (int): dataset seed.
        split (str): split name, e.g. "train"; different splits get different images.
        index (int): 0-based image index within the split.
        image_size (int): height and width in pixels.
    """
    rng = image_rng(seed, split, index)
    scale = image_size / _REFERENCE_SIZE
    min_pixels = _MIN_VISIBLE_PIXELS * scale**2
    background = _background(rng, image_size, scale)
    canvas = background.copy()
    category_ids, full, visible, colours = [], [], [], []
    for _ in range(int(rng.integers(_OBJECTS_PER_IMAGE[0], _OBJECTS_PER_IMAGE[1] + 1))):
        category = int(rng.integers(len(SHAPES_CLASSES)))
        for _ in range(_PLACEMENT_TRIES):
            mask = _shape_mask(rng, SHAPES_CLASSES[category], image_size, scale)
            left = [v & ~mask for v in visible]
            if all(
                lv.sum() >= max(min_pixels, _MIN_VISIBLE_FRACTION * f.sum())
                for lv, f in zip(left, full)
            ):
                break
        else:
            continue  # no placement keeps the earlier shapes visible enough: skip this shape
        avoid = [background[mask].mean(axis=0)]
        avoid += [c for c, v in zip(colours, visible) if (v & mask).any()]
        colour = _pick_colour(rng, avoid)
        # linear shading across the shape: +-amp along a random direction
        ys, xs = np.nonzero(mask)
        theta = rng.uniform(0.0, 2 * np.pi)
        proj = xs * np.cos(theta) + ys * np.sin(theta)
        ramp = (proj - proj.mean()) / max(float(np.abs(proj - proj.mean()).max()), 1.0)
        canvas[ys, xs] = colour + rng.uniform(-30, 30) * ramp[:, None]
        category_ids.append(category + 1)
        visible = left + [mask]
        full.append(mask)
        colours.append(colour)
    canvas += rng.normal(0.0, rng.uniform(3.0, 8.0), size=canvas.shape)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    empty = np.zeros((0, image_size, image_size), dtype=bool)
    return ShapesImage(
        image=image,
        category_ids=category_ids,
        full_masks=np.stack(full) if full else empty,
        visible_masks=np.stack(visible) if visible else empty,
    )


def _mask_annotation(mask: np.ndarray) -> Dict:
    """COCO bbox (XYWH, inclusive pixel extent), area and compressed RLE of an (H, W) bool mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"bbox": bbox, "area": int(mask.sum()), "segmentation": rle}


def _build_split(out_dir: str, split: str, num_images: int, image_size: int, seed: int) -> Dict:
    """Write ``num_images`` PNGs into ``out_dir``; return the COCO dict describing them."""
    images, annotations = [], []
    for index in range(num_images):
        image_id = index + 1
        rendered = render_shapes_image(seed, split, index, image_size)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(rendered.image).save(os.path.join(out_dir, file_name), format="PNG")
        images.append(
            {"id": image_id, "file_name": file_name, "height": image_size, "width": image_size}
        )
        for category_id, mask in zip(rendered.category_ids, rendered.visible_masks):
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id}
            ann.update(_mask_annotation(mask))
            ann["iscrowd"] = 0
            annotations.append(ann)
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(SHAPES_CLASSES)
    ]
    info = {"description": "eva_det synthetic shapes", "version": _FORMAT_VERSION}
    info.update(split=split, num_images=num_images, image_size=image_size, seed=seed)
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


@contextlib.contextmanager
def _split_lock(root: str, split: str) -> Iterator[None]:
    """Exclusive inter-process lock on generating ``split`` under ``root`` (POSIX flock)."""
    import fcntl

    with open(os.path.join(root, f".{split}.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_existing(json_path: str, expected: Dict) -> None:
    """Raise if the complete split at ``json_path`` was generated with other parameters."""
    with open(json_path) as f:
        info = json.load(f).get("info", {})
    found = {k: info.get(k) for k in expected}
    if found != expected:
        raise ValueError(
            f"{json_path} was generated with {found} but {expected} was requested. Delete that "
            "file and its image folder to regenerate, or pass a different root."
        )


def _remove_leftovers(root: str, split: str) -> None:
    """Delete what an interrupted generation of ``split`` left behind (caller holds the lock)."""
    for tmp in glob.glob(os.path.join(root, f".tmp-{split}-*")):
        logger.info("Removing leftover temporary directory %s", tmp)
        shutil.rmtree(tmp)
    image_dir = os.path.join(root, split)
    if os.path.lexists(image_dir):
        names = os.listdir(image_dir) if os.path.isdir(image_dir) else [split]
        foreign = [n for n in names if not _IMAGE_PATTERN.match(n)]
        if foreign:
            raise ValueError(
                f"{image_dir} exists without its annotation file and holds files the shapes "
                f"generator did not write (e.g. {foreign[0]!r}). Move it away or choose another "
                "root."
            )
        logger.info("Removing incomplete image directory %s", image_dir)
        shutil.rmtree(image_dir)


def generate_shapes(
    root: str,
    split: str,
    num_images: int,
    image_size: int = SHAPES_IMAGE_SIZE,
    seed: int = SHAPES_SEED,
) -> str:
    """Generate one split of the dataset under ``root`` unless it is already complete.

    Args:
        root (str): dataset directory; ``root/<split>/`` and ``root/annotations/`` are written.
        split (str): split name (letters, digits, underscore), e.g. "train" or "val".
        num_images (int): number of images, >= 1.
        image_size (int): height and width of every image in pixels, >= 32.
        seed (int): dataset seed; image i depends only on (seed, split, i).

    Returns:
        str: path of the COCO json file ``root/annotations/instances_<split>.json``.
    """
    if not _SPLIT_PATTERN.match(split):
        raise ValueError(f"split={split!r} must be non-empty and use only [A-Za-z0-9_].")
    if num_images < 1 or image_size < 32:
        raise ValueError(
            f"Need num_images >= 1 and image_size >= 32, got {num_images}, {image_size}."
        )
    json_path = os.path.join(root, "annotations", f"instances_{split}.json")
    expected = {"version": _FORMAT_VERSION, "split": split, "num_images": num_images}
    expected.update(image_size=image_size, seed=seed)
    if os.path.isfile(json_path):  # complete (moved in last): no lock, so read-only roots work
        _check_existing(json_path, expected)
        return json_path
    _make_root(root)
    with _split_lock(root, split):
        if os.path.isfile(json_path):
            _check_existing(json_path, expected)
            return json_path
        _remove_leftovers(root, split)
        logger.info("Generating %d shapes images (%s) under %s ...", num_images, split, root)
        start = time.perf_counter()
        tmp = tempfile.mkdtemp(prefix=f".tmp-{split}-", dir=root)
        try:
            os.mkdir(os.path.join(tmp, split))
            coco = _build_split(os.path.join(tmp, split), split, num_images, image_size, seed)
            with open(os.path.join(tmp, "instances.json"), "w") as f:
                json.dump(coco, f, separators=(",", ":"))
            os.replace(os.path.join(tmp, split), os.path.join(root, split))
            os.replace(os.path.join(tmp, "instances.json"), json_path)  # completion marker
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "Wrote %s: %d images, %d instances in %.1f s",
        json_path,
        num_images,
        len(coco["annotations"]),
        time.perf_counter() - start,
    )
    return json_path


def _nearest_existing(path: str) -> str:
    """``path`` or its closest ancestor that exists (as a file, folder or anything else)."""
    path = os.path.abspath(path)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _unwritable_message(root: str, reason: str) -> str:
    return (
        f"The shapes dataset is generated on first use under {root}, but {reason}. Set "
        "DETECTRON2_DATASETS to a folder you can write to (it is created if missing; the data "
        "goes into its shapes/ subfolder), e.g. DETECTRON2_DATASETS=$HOME/datasets."
    )


def shapes_root_problem(root: str) -> Optional[str]:
    """Why shapes data cannot be generated under ``root``, or None if it can; writes nothing.

    ``root`` may not exist yet: its closest existing ancestor must then be a folder this
    process may create entries in. (The superuser passes permission checks, but not a parent
    that is a regular file or a read-only file system.)

    Args:
        root (str): dataset directory, e.g. ``$DETECTRON2_DATASETS/shapes``.

    Returns:
        str or None: a complete InputError message naming the folder and what to do.
    """
    existing = _nearest_existing(root)
    if not os.path.isdir(existing):
        return _unwritable_message(root, f"{existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "it is" if existing == os.path.abspath(root) else f"its parent {existing} is"
        return _unwritable_message(root, f"{what} not writable by this user")
    return None


def _make_root(root: str) -> None:
    """Create ``root/annotations`` (and missing parents); InputError if that is impossible."""
    problem = shapes_root_problem(root)
    if problem is None:
        try:
            os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
            return
        except OSError as e:  # e.g. a read-only file system
            problem = _unwritable_message(root, f"creating {e.filename or root} failed ({e})")
    raise InputError(problem)


def ensure_shapes(dataset_name: str) -> str:
    """Generate the files of a registered shapes dataset if missing; return its json path.

    Args:
        dataset_name (str): a name registered by ``register_shapes``, e.g. "shapes_val".
    """
    if dataset_name not in MetadataCatalog.list():
        raise KeyError(f"Dataset '{dataset_name}' is not registered; call register_shapes().")
    params = MetadataCatalog.get(dataset_name).get("shapes_params")
    if params is None:
        raise ValueError(
            f"Dataset '{dataset_name}' is not a shapes dataset (its metadata has no "
            "'shapes_params'); only names registered by register_shapes() can be generated."
        )
    return generate_shapes(**params)


def _load_shapes(dataset_name: str) -> List[Dict]:
    """DatasetCatalog function: generate if needed, then load with detectron2's COCO loader."""
    ensure_shapes(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    return load_coco_json(meta.json_file, meta.image_root, dataset_name)


def default_shapes_root() -> str:
    """``$DETECTRON2_DATASETS/shapes``, with ``DETECTRON2_DATASETS`` defaulting to "datasets"."""
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "shapes")


def register_shapes(
    root: Optional[str] = None,
    splits: Optional[Dict[str, Tuple[str, int]]] = None,
    image_size: int = SHAPES_IMAGE_SIZE,
    seed: int = SHAPES_SEED,
) -> List[str]:
    """Register shapes datasets in detectron2's catalogs without touching the disk.

    Args:
        root (str or None): dataset directory; None means ``default_shapes_root()``.
        splits (dict or None): dataset name -> (split, number of images); None means
            ``SHAPES_SPLITS`` (shapes_train: 1000 images, shapes_val: 100 images).
        image_size (int): image height and width in pixels.
        seed (int): dataset seed.

    Returns:
        list[str]: the names newly registered; names already in the DatasetCatalog are skipped.
    """
    root = default_shapes_root() if root is None else root
    splits = SHAPES_SPLITS if splits is None else splits
    registered = []
    for name, (split, num_images) in splits.items():
        if name in DatasetCatalog.list():
            logger.debug("Dataset '%s' is already registered; skipping it.", name)
            continue
        DatasetCatalog.register(name, functools.partial(_load_shapes, name))
        MetadataCatalog.get(name).set(
            json_file=os.path.join(root, "annotations", f"instances_{split}.json"),
            image_root=os.path.join(root, split),
            evaluator_type="coco",
            thing_classes=list(SHAPES_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))},
            shapes_params=dict(
                root=root, split=split, num_images=num_images, image_size=image_size, seed=seed
            ),
        )
        registered.append(name)
    return registered
