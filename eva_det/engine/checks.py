"""Checks that run before anything is built: config file and overrides, datasets, checkpoint.

Each failing check raises :class:`eva_det.errors.InputError` with one message that names the key,
dataset, file or variable that is wrong, close matches where they help, and the fix. The checks
are cheap (no dataset json is parsed); problems that only show while a dataset json is read (a
category id missing from its ``categories``) are explained by :func:`explain_dataset_errors`,
which inspects the json only after detectron2's loader failed on it.

Used by every tool after :func:`eva_det.config.load.load_config`: :mod:`eva_det.engine.launch`
(``check_inputs`` before ``main`` builds the model), ``tools/demo.py``,
``tools/test_dev_submission.py`` and the model zoo API. All messages are listed in
``docs/TROUBLESHOOTING.md``.
"""

import contextlib
import difflib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from eva_det.checkpoint.hub import parse_hub_name
from eva_det.config.load import ABSENT as _ABSENT
from eva_det.config.load import select as _select
from eva_det.data.datasets.coco_json import dataset_names
from eva_det.data.datasets.shapes import shapes_root_problem
from eva_det.data.robust_mapper import segmentation_problem
from eva_det.errors import InputError

__all__ = [
    "JsonReport",
    "check_dataset",
    "check_datasets",
    "check_init_checkpoint",
    "check_inputs",
    "configured_datasets",
    "explain_dataset_errors",
    "inspect_coco_json",
]

logger = logging.getLogger(__name__)

#: Config keys that name datasets; the train one is skipped for ``--eval-only``.
_DATASET_KEYS = (
    "dataloader.train.dataset.names",
    "dataloader.test.dataset.names",
    "dataloader.evaluator.dataset_name",
)
_LAYOUT_HINT = (
    "It should be the folder holding coco/, lvis/, Objects365/ (only those your recipe uses) as "
    "laid out in datasets/README.md."
)


# ----------------------------------------------------------------------------- datasets


def configured_datasets(cfg, eval_only: bool = False) -> List[Tuple[str, str]]:
    """``(config key, dataset name)`` for every dataset the run will read.

    Names given as a ``LazyCall`` registration (:func:`eva_det.data.datasets.register_coco_json`)
    are registered by this call.

    Args:
        cfg: a LazyConfig with the usual ``dataloader.{train,test,evaluator}`` nodes.
        eval_only (bool): skip the training datasets.
    """
    out = []
    for key in _DATASET_KEYS:
        if eval_only and key.startswith("dataloader.train"):
            continue
        names = _select(cfg, key)
        if names is _ABSENT:
            continue
        # a LazyCall registration (Custom recipes) registers here and gives its name
        out += [(key, n) for n in dataset_names(names)]
    return out


def check_datasets(cfg, eval_only: bool = False) -> None:
    """Raise InputError if a configured dataset is not registered or its files are missing.

    Checks, without reading any dataset file: each name is registered (else the message lists
    close registered names); the lvis package is installed for LVIS-format datasets;
    ``$DETECTRON2_DATASETS``, when set, is an existing folder if a dataset lives under it; each
    dataset's ``json_file`` and ``image_root`` metadata exist.
    Synthetic shapes datasets are generated on first use: their root (and
    ``$DETECTRON2_DATASETS``) may be missing, but must be creatable and writable unless the
    data is already complete (:func:`eva_det.data.datasets.shapes.shapes_root_problem`).
    """
    configured = configured_datasets(cfg, eval_only)  # registers LazyCall-registered names
    seen = set()
    for key, name in configured:
        if name not in seen:
            seen.add(name)
            check_dataset(name, key)


def check_dataset(name: str, key: str) -> None:
    """Raise InputError if dataset ``name`` is not registered or its files are missing.

    Args:
        name (str): a dataset name.
        key (str): where the name came from (a config key or a command-line option), named in
            the message.
    """
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=5, cutoff=0.5)
        hint = f" Close registered names: {', '.join(close)}." if close else ""
        raise InputError(
            f"{key}: dataset {name!r} is not registered.{hint} Fix the name; for your own "
            "COCO-format json use a projects/ViTDet/configs/Custom/ recipe "
            "(docs/CUSTOM_DATASETS.md), or register it (e.g. detectron2.data.datasets."
            "register_coco_instances) at the top of the script that starts training, so every "
            "process registers it."
        )
    _check_loader_packages(name)
    _check_dataset_files(name)


def _check_loader_packages(name: str) -> None:
    """LVIS-format datasets are read by detectron2's ``load_lvis_json``, which imports lvis."""
    if MetadataCatalog.get(name).get("evaluator_type") != "lvis":
        return
    try:
        import lvis  # noqa: F401
    except ImportError:
        raise InputError(
            f"Dataset {name!r} is in LVIS format: detectron2 reads it with the lvis package, "
            "which is not installed. Install it with `pip install --no-deps lvis==0.5.3` "
            "(bash tools/install.sh does; --no-deps keeps the headless OpenCV)."
        ) from None


def _check_dataset_files(name: str) -> None:
    meta = MetadataCatalog.get(name)
    shapes = meta.get("shapes_params")
    if shapes:  # generated on first use: the folder may be missing but must be creatable
        problem = None if os.path.isfile(meta.json_file) else shapes_root_problem(shapes["root"])
        if problem:
            raise InputError(problem)
        return
    paths = [(k, meta.get(k)) for k in ("json_file", "image_root") if meta.get(k)]
    if not paths:
        return  # registered without file metadata: nothing to check before loading it
    root = os.environ.get("DETECTRON2_DATASETS")
    if root is not None and not os.path.isdir(os.path.expanduser(root)):
        under = [p for _, p in paths if _is_under(p, os.path.expanduser(root))]
        if under:
            raise InputError(
                f"DETECTRON2_DATASETS={root} does not exist (dataset {name!r} reads {under[0]}). "
                f"Set DETECTRON2_DATASETS to the folder that holds your datasets. {_LAYOUT_HINT}"
            )
    for what, path in paths:
        if os.path.exists(path):
            continue
        where = (
            f"DETECTRON2_DATASETS={root}"
            if root is not None
            else f"DETECTRON2_DATASETS is not set, so datasets are read from ./datasets under "
            f"the working directory {os.getcwd()}"
        )
        raise InputError(
            f"Dataset {name!r}: its {what} {path} does not exist ({where}). Download the "
            f"dataset or point DETECTRON2_DATASETS at the folder that holds it. {_LAYOUT_HINT}"
        )


def _is_under(path: str, root: str) -> bool:
    path, root = os.path.abspath(path), os.path.abspath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_init_checkpoint(cfg, resume: bool = False, option: str = "train.init_checkpoint") -> None:
    """Raise InputError if ``train.init_checkpoint`` names a local file that does not exist.

    Empty means random weights; URLs (``://``) and hub names (``hf://``, ``timm/...``, model-zoo
    names; :func:`eva_det.checkpoint.hub.parse_hub_name`) are resolved when loading; with
    ``resume`` and a ``last_checkpoint`` in ``train.output_dir`` the file is not read.

    Args:
        cfg: a LazyConfig with ``train.init_checkpoint``.
        resume (bool): the run is started with ``--resume``.
        option (str): how the user gave the path (e.g. ``--weights``), named in the message.
    """
    path = _select(cfg, "train.init_checkpoint")
    if path is _ABSENT or not path or "://" in str(path) or os.path.isfile(str(path)):
        return
    if parse_hub_name(str(path)) is not None:
        return
    output_dir = _select(cfg, "train.output_dir")
    if resume and isinstance(output_dir, str):
        if os.path.isfile(os.path.join(output_dir, "last_checkpoint")):
            return
    raise InputError(
        f"{option}={path}: no such file (working directory {os.getcwd()}). Pass the path of a "
        "downloaded .pth checkpoint (released ones: docs/MODEL_ZOO.md; pretrained EVA / EVA-02 "
        "backbones are converted with tools/convert_pretrained.py), or "
        "train.init_checkpoint='' to start from random weights."
    )


def check_inputs(cfg, eval_only: bool = False, resume: bool = False) -> None:
    """All pre-build checks of a parsed config (overrides are checked in :func:`load_config`):
    datasets (:func:`check_datasets`) and ``train.init_checkpoint``
    (:func:`check_init_checkpoint`)."""
    check_datasets(cfg, eval_only)
    check_init_checkpoint(cfg, resume=resume and not eval_only)


# ----------------------------------------------------------------------------- dataset json files


@dataclass
class JsonReport:
    """Problems found in one COCO-format json by :func:`inspect_coco_json`.

    Attributes:
        json_file (str): the file.
        unknown_category_ids (dict[int, int]): category id used by annotations but absent from
            ``categories`` -> number of such annotations.
        unknown_examples (list[tuple[int, int]]): (image id, annotation id) of some of them.
        bad_polygons (list[tuple[int, int, str]]): (image id, annotation id, reason) of
            annotations without a usable polygon (empty, fewer than 3 points, zero area).
    """

    json_file: str
    unknown_category_ids: dict = field(default_factory=dict)
    unknown_examples: list = field(default_factory=list)
    bad_polygons: list = field(default_factory=list)


def inspect_coco_json(json_file: str) -> JsonReport:
    """Read a COCO-format json and list unknown category ids and unusable polygons.

    Reads the whole file (seconds to minutes for COCO / LVIS train): meant for diagnosis after
    a failure and for checking a dataset by hand, e.g.
    ``python -c "from eva_det.engine.checks import inspect_coco_json as i; print(i('x.json'))"``.
    """
    with open(json_file) as f:
        data = json.load(f)
    report = JsonReport(json_file=json_file)
    known = {c["id"] for c in data.get("categories", [])}
    unknown: Counter = Counter()
    for ann in data.get("annotations", []):
        if ann.get("category_id") not in known:
            unknown[ann.get("category_id")] += 1
            if len(report.unknown_examples) < 5:
                report.unknown_examples.append((ann.get("image_id"), ann.get("id")))
        if "segmentation" in ann and not ann.get("iscrowd", 0):
            problem = segmentation_problem(ann["segmentation"])
            if problem:
                report.bad_polygons.append((ann.get("image_id"), ann.get("id"), problem))
    report.unknown_category_ids = dict(sorted(unknown.items(), key=lambda kv: str(kv[0])))
    return report


def _empty_dataset_problem(cfg, eval_only: bool) -> Optional[str]:
    """A message if a configured dataset (or the training set after dropping images without
    annotations) is empty; None otherwise."""
    for split in ("test",) if eval_only else ("train", "test"):
        key = f"dataloader.{split}.dataset.names"
        names = _select(cfg, key)
        if names is _ABSENT or names is None:
            continue
        names = [names] if isinstance(names, str) else [str(n) for n in names]
        sizes = {n: DatasetCatalog.get(n) for n in names if n in DatasetCatalog.list()}
        files = {n: MetadataCatalog.get(n).get("json_file", "") for n in sizes}
        for name, dicts in sizes.items():
            if not dicts:
                where = f" ({files[name]})" if files[name] else ""
                return (
                    f"{key}: dataset {name!r}{where} has no images. Check its json's "
                    "'images' list (or the registration), or use another dataset."
                )
        filter_empty = _select(cfg, f"dataloader.{split}.dataset.filter_empty")
        if split == "train" and filter_empty is not False:
            annotated = sum(
                any(not a.get("iscrowd", 0) for a in d.get("annotations", []))
                for dicts in sizes.values()
                for d in dicts
            )
            if sizes and annotated == 0:
                total = sum(len(d) for d in sizes.values())
                return (
                    f"{key}: the training set {list(sizes)} is empty: none of its {total} "
                    "images has a (non-crowd) annotation, and images without one are dropped "
                    "(dataloader.train.dataset.filter_empty). Check that the json's "
                    "annotations use the images' ids, or train on another dataset."
                )
    return None


@contextlib.contextmanager
def explain_dataset_errors(cfg, eval_only: bool = False) -> Iterator[None]:
    """Turn detectron2's dataset-loading errors into InputError.

    detectron2's COCO loader stops at the first unknown category id without naming the file
    (a KeyError "category_id=... does not exist in 'categories'"): on that error the configured
    datasets' json files are inspected and every unknown id is reported. An empty dataset (an
    AssertionError in ``get_detection_dataset_dicts``) is reported with the dataset's name, file
    and why it is empty.
    """
    try:
        yield
    except AssertionError as e:  # detectron2's get_detection_dataset_dicts on an empty dataset
        # its messages: "Dataset 'X' is empty!" / "No valid data found in X."; other assertions
        # are passed on without reading any dataset
        text = str(e)
        if not ("is empty!" in text or "No valid data found" in text):
            raise
        problem = _empty_dataset_problem(cfg, eval_only)
        if problem is None:
            raise
        raise InputError(problem) from None
    except KeyError as e:
        if "does not exist in 'categories'" not in str(e):
            raise
        reports = []
        for _, name in configured_datasets(cfg, eval_only):
            json_file = MetadataCatalog.get(name).get("json_file")
            if json_file and os.path.isfile(json_file):
                report = inspect_coco_json(json_file)
                if report.unknown_category_ids:
                    reports.append((name, report))
        if not reports:
            raise
        lines = [
            f"dataset {name!r}, {r.json_file}: category ids {list(r.unknown_category_ids)} "
            f"(annotation counts {list(r.unknown_category_ids.values())}; e.g. (image id, "
            f"annotation id) {r.unknown_examples}) are not in its 'categories'"
            for name, r in reports
        ]
        raise InputError(
            "Annotations use category ids their json file does not define:\n  "
            + "\n  ".join(lines)
            + "\nAdd those categories to 'categories', or fix / remove the annotations."
        ) from None
