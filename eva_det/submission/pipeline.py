"""Resumable test-set inference packaged for the COCO / LVIS evaluation servers.

:func:`run_submission` (what ``tools/test_dev_submission.py`` runs):

1. lists the test set's images (``cfg.dataloader.test.dataset`` with the dataset name replaced)
   and cuts them into shards of ``shard_size`` images in dataset order;
2. runs the model from ``cfg`` as :func:`eva_det.engine.build.build_inference_model` builds it
   (weights ``cfg.train.init_checkpoint``, EMA weights, TTA, ``test.amp``,
   ``test.compile_backbone``) on the images of every shard not yet in ``<output_dir>/cache``,
   with :func:`eva_det.evaluation.inference.inference_on_dataset` (progress bar) and the
   mask-RLE postprocessing of :mod:`eva_det.modeling.postprocess` (masks of the kept
   detections only, no full-image masks); results use the dataset's category ids, the
   ``max_dets_per_image`` best-scored detections of each image are kept (how many were dropped
   is logged). Each shard is written atomically to ``cache/shard_<k>.json`` as soon as its last
   image is done, so an interrupted run loses at most the shards in progress, and a rerun with
   the same arguments skips every finished shard;
3. builds the zips of :mod:`.server` from all shards, reads each back and validates it
   (keys and types, image and category ids of the test set, mask sizes, per-image cap), then logs
   the file sizes. Zips are written atomically.

``cache/manifest.json`` records a fingerprint of everything that changes the results (model and
test-mapper config, checkpoint path / size / mtime, dataset, cap, shard size); a rerun with a
different fingerprint stops with an error instead of mixing results (:mod:`.cache`).
"""

import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.utils.file_io import PathManager

from eva_det.engine.build import build_inference_model
from eva_det.errors import InputError
from eva_det.evaluation.inference import inference_on_dataset
from eva_det.modeling.postprocess import FastRCNNPostprocess, supports_fast_postprocess

from .cache import ShardCollector, check_manifest, fingerprint, load_shard
from .server import (
    TASK_KEYS,
    ServerFormat,
    check_alg_name,
    read_zip_results,
    server_format,
    test_set_name,
    valid_category_ids,
    validate_results,
    write_results_zip,
)

__all__ = ["SubmissionReport", "run_submission"]

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 500


@dataclass
class SubmissionReport:
    """What :func:`run_submission` wrote.

    Attributes:
        zips (dict): task -> path of the zip.
        json_names (dict): task -> name of the json inside the zip.
        sizes (dict): task -> (zip bytes, json bytes).
        num_images (int): images of the test set.
        num_results (int): detections written (per task).
        num_dropped (int): detections dropped by the per-image cap.
        shards_computed (list[int]): shards run in this call.
        shards_reused (list[int]): shards read from the cache.
    """

    zips: Dict[str, str] = field(default_factory=dict)
    json_names: Dict[str, str] = field(default_factory=dict)
    sizes: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    num_images: int = 0
    num_results: int = 0
    num_dropped: int = 0
    shards_computed: List[int] = field(default_factory=list)
    shards_reused: List[int] = field(default_factory=list)


def _test_images(cfg, dataset_name: str) -> List[dict]:
    """Dataset dicts of the test set, from ``cfg.dataloader.test.dataset`` renamed."""
    test = cfg.dataloader.test
    if "dataset" not in test or "names" not in test.dataset:
        raise InputError(
            "cfg.dataloader.test.dataset must be a LazyCall with a 'names' argument (e.g. "
            "get_detection_dataset_dicts) so that --dataset can replace it."
        )
    test.dataset.names = dataset_name
    dicts = instantiate(test.dataset)
    ids = [d["image_id"] for d in dicts]
    if len(set(ids)) != len(ids):
        raise InputError(f"Dataset {dataset_name!r} lists some image ids more than once.")
    return dicts


def _image_info(
    dataset_name: str, dicts: List[dict], category_ids: Sequence[int]
) -> Dict[int, Tuple[int, int]]:
    """image id -> (height, width) of the test set; checks the categories against its json.

    Reads the image-info json named by the metadata ("json_file") when there is one, as the
    server does; otherwise the dataset dicts.
    """
    json_file = MetadataCatalog.get(dataset_name).get("json_file")
    if not json_file:
        return {d["image_id"]: (d["height"], d["width"]) for d in dicts}
    with PathManager.open(json_file) as f:
        info = json.load(f)
    sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in info["images"]}
    missing = [d["image_id"] for d in dicts if d["image_id"] not in sizes]
    if missing:
        raise InputError(f"{json_file} lacks images {missing[:5]} of {dataset_name!r}.")
    known = {int(c["id"]) for c in info.get("categories", [])}
    unknown = sorted(set(category_ids) - known) if known else []
    if unknown:
        raise InputError(
            f"The metadata of {dataset_name!r} maps classes to category ids {unknown[:5]} that "
            f"{json_file} does not list; the dataset registration does not match its json."
        )
    return sizes


def _build_loader(cfg, dicts: List[dict]):
    """``cfg.dataloader.test`` with its dataset replaced by ``dicts``."""
    test = cfg.dataloader.test
    spec = {k: test[k] for k in test.keys() if k != "dataset"}
    spec["dataset"] = dicts
    return instantiate(spec)


def _build_predictor(model, max_dets: int):
    """``model`` (an :class:`~eva_det.engine.build.InferenceModel`'s ``model``) with the RLE
    postprocessing when it is a plain ``GeneralizedRCNN``."""
    if supports_fast_postprocess(model):
        return FastRCNNPostprocess(model, mask_format="rle", max_dets_per_image=max_dets)
    logger.info(f"{type(model).__name__} is not a plain GeneralizedRCNN: masks encoded one by one.")
    return model


def _assemble(
    fmt: ServerFormat,
    tasks: Sequence[str],
    results: List[dict],
    output_dir: str,
    json_name: str,
    image_sizes: Dict[int, Tuple[int, int]],
    category_ids: Sequence[int],
    max_dets: int,
    report: SubmissionReport,
) -> None:
    for task in tasks:
        keys = TASK_KEYS[task]
        if results and keys[2] not in results[0]:
            raise InputError(
                f"--tasks {task}: the model outputs no {keys[2]!r} (no mask head?); drop that task."
            )
        task_results = [{k: r[k] for k in keys} for r in results]
        path = os.path.join(output_dir, f"{task}.zip")
        write_results_zip(path, json_name, task_results)
        # read back what the server will read
        _, parsed = read_zip_results(path, json_name)
        validate_results(parsed, task, image_sizes, category_ids, max_dets, source=path)
        with zipfile.ZipFile(path) as zf:
            json_bytes = zf.getinfo(json_name).file_size
        zip_bytes = os.path.getsize(path)
        report.zips[task], report.json_names[task] = path, json_name
        report.sizes[task] = (zip_bytes, json_bytes)
        logger.info(
            f"{fmt.name} {task}: {path} holds {json_name} ({len(parsed)} results; "
            f"json {json_bytes / 2**20:.1f} MiB, zip {zip_bytes / 2**20:.1f} MiB)"
        )


def run_submission(
    cfg,
    dataset_name: str,
    alg: str,
    output_dir: str,
    *,
    max_dets_per_image: Optional[int] = None,
    tasks: Optional[Sequence[str]] = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: Optional[bool] = None,
    on_shard_written: Optional[Callable[[int], None]] = None,
) -> SubmissionReport:
    """Run the model of ``cfg`` on a test set and write server-ready zips (see module docs).

    Args:
        cfg: LazyConfig with ``model``, ``dataloader.test`` and ``train.init_checkpoint``.
        dataset_name (str): registered test set, e.g. "coco_2017_test-dev", "lvis_v1_test_dev".
        alg (str): algorithm name in the results file name (letters, digits, '-').
        output_dir (str): where ``<task>.zip`` and ``cache/`` go.
        max_dets_per_image (int or None): per-image cap; None = the server's (COCO 100, LVIS 300).
        tasks (list[str] or None): "bbox" and/or "segm"; None = what the server scores
            (COCO both, LVIS segm).
        shard_size (int): images per cache shard.
        progress (bool or None): progress bar; None = on the main process.
        on_shard_written (callable or None): called with the shard index after each shard is
            saved (e.g. to stop a test run midway).

    Returns:
        SubmissionReport
    """
    check_alg_name(alg)
    fmt = server_format(dataset_name)
    tasks = tuple(tasks or fmt.default_tasks)
    unknown = [t for t in tasks if t not in TASK_KEYS]
    if unknown:
        raise InputError(f"Unknown tasks {unknown}; choose from {sorted(TASK_KEYS)}.")
    max_dets = int(max_dets_per_image or fmt.default_max_dets)
    if shard_size < 1 or max_dets < 1:
        raise InputError(
            f"shard_size ({shard_size}) and max_dets_per_image ({max_dets}) must be >= 1."
        )
    if not cfg.train.init_checkpoint:
        raise InputError(
            "train.init_checkpoint is empty: pass train.init_checkpoint=/path/to/model.pth"
        )

    dicts = _test_images(cfg, dataset_name)
    class_to_category = valid_category_ids(dataset_name)
    category_ids = sorted(class_to_category.values())
    image_sizes = _image_info(dataset_name, dicts, category_ids)
    ids = [d["image_id"] for d in dicts]
    shards = {k: ids[s : s + shard_size] for k, s in enumerate(range(0, len(ids), shard_size))}

    cache_dir = os.path.join(output_dir, "cache")
    PathManager.mkdirs(cache_dir)
    run_fingerprint = fingerprint(cfg, dataset_name, max_dets, shard_size)
    check_manifest(
        cache_dir,
        {
            "fingerprint": run_fingerprint,
            "dataset": dataset_name,
            "num_images": len(ids),
            "shard_size": shard_size,
            "max_dets_per_image": max_dets,
        },
    )

    def shard_path(k: int) -> str:
        return os.path.join(cache_dir, f"shard_{k:05d}.json")

    report = SubmissionReport(num_images=len(ids))
    done = {k: load_shard(shard_path(k), run_fingerprint, shards[k]) for k in shards}
    report.shards_reused = [k for k, s in done.items() if s is not None]
    todo = {k: shards[k] for k, s in done.items() if s is None}
    logger.info(
        f"{dataset_name}: {len(ids)} images in {len(shards)} shards; "
        f"{len(report.shards_reused)} cached, {len(todo)} to run"
    )
    if todo:
        todo_ids = {i for ids_k in todo.values() for i in ids_k}
        loader = _build_loader(cfg, [d for d in dicts if d["image_id"] in todo_ids])
        collector = ShardCollector(
            todo, shard_path, run_fingerprint, class_to_category, max_dets, on_shard_written
        )
        # EMA weights, TTA, test.amp and test.compile_backbone as --eval-only runs them
        built = build_inference_model(cfg)
        with built.precision():
            inference_on_dataset(
                _build_predictor(built.model, max_dets),
                loader,
                collector,
                progress=progress,
                fast_postprocess=False,
            )
        report.shards_computed = list(collector.written)
        for k in todo:
            done[k] = load_shard(shard_path(k), run_fingerprint, shards[k])

    results = [r for k in sorted(done) for r in done[k]["results"]]
    report.num_results = len(results)
    report.num_dropped = sum(done[k]["num_dropped"] for k in done)
    with_results = {r["image_id"] for r in results}
    logger.info(
        f"{len(results)} detections on {len(with_results)}/{len(ids)} images; the cap of "
        f"{max_dets} per image dropped {report.num_dropped}"
    )
    json_name = fmt.json_name(test_set_name(dataset_name), alg)
    _assemble(
        fmt, tasks, results, output_dir, json_name, image_sizes, category_ids, max_dets, report
    )
    return report
