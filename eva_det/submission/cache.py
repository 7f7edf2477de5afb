"""The shard cache of :mod:`.pipeline`: fingerprints, shard files and the evaluator writing them.

``<output_dir>/cache/manifest.json`` holds the fingerprint of the run (model and test-mapper
config, checkpoint path / size / mtime, dataset, cap, shard size); ``shard_<k>.json`` holds the
results of shard k's images with that fingerprint. Every file is written atomically, so a file
that exists is complete; a shard written for other settings is ignored and recomputed.
"""

import functools
import hashlib
import json
import logging
import os
import re
from typing import Callable, Dict, List, Optional, Sequence

from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Instances
from detectron2.utils.file_io import PathManager
from omegaconf import OmegaConf

from eva_det.checkpoint.hub import resolve_weights
from eva_det.errors import InputError
from eva_det.evaluation.coco_json import instances_to_coco_json
from eva_det.modeling.postprocess import top_scoring
from eva_det.utils.atomic import atomic_write_json

__all__ = ["ShardCollector", "check_manifest", "fingerprint", "instances_to_results", "load_shard"]

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


def _canonical(obj):
    """A json-able, process-independent form of a resolved config value (for fingerprints)."""
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, functools.partial):
        return {
            "partial": _canonical(obj.func),
            "args": _canonical(obj.args),
            "kwargs": _canonical(obj.keywords),
        }
    if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__"):
        return f"{obj.__module__}.{obj.__qualname__}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def fingerprint(cfg, dataset_name: str, max_dets: int, shard_size: int) -> str:
    """sha256 of everything that changes the cached results (see the module docstring)."""
    ckpt = cfg.train.init_checkpoint
    local = PathManager.get_local_path(resolve_weights(ckpt).path)  # hub names: cached file
    if not os.path.isfile(local):
        raise InputError(f"train.init_checkpoint={ckpt!r}: no such file.")
    stat = os.stat(local)

    def resolved(node):
        return _canonical(OmegaConf.to_container(node, resolve=True) if node is not None else None)

    parts = {
        "version": CACHE_VERSION,
        "model": resolved(cfg.model),
        "mapper": resolved(cfg.dataloader.test.mapper),
        # EMA weights for eval and test-time augmentation change the outputs too
        "model_ema": resolved(cfg.train.get("model_ema")),
        "test_aug": resolved(cfg.get("test")),
        "checkpoint": [os.path.abspath(local), stat.st_size, stat.st_mtime_ns],
        "dataset": dataset_name,
        "max_dets_per_image": max_dets,
        "shard_size": shard_size,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def instances_to_results(
    instances: Instances, image_id: int, class_to_category: Dict[int, int]
) -> List[dict]:
    """COCO-format results (dataset category ids) of one image's ``Instances`` on the CPU.

    Masks come from ``pred_masks_rle`` (FastRCNNPostprocess "rle") or are encoded from
    ``pred_masks`` (:func:`.coco_json.instances_to_coco_json`).
    """
    results = instances_to_coco_json(instances, image_id)
    for r in results:
        if r["category_id"] not in class_to_category:
            raise InputError(
                f"The model predicted class {r['category_id']}, but the test set has "
                f"{len(class_to_category)} classes: set model.roi_heads.num_classes to match."
            )
        r["category_id"] = class_to_category[r["category_id"]]
    return results


class ShardCollector(DatasetEvaluator):
    """Evaluator that turns outputs into results and writes each shard when it is complete.

    Args:
        shards (dict[int, list[int]]): shard index -> image ids of the shards to compute.
        shard_path (callable): shard index -> path of its cache file.
        fingerprint (str): run fingerprint stored in every shard.
        class_to_category (dict[int, int]): model class -> dataset category id.
        max_dets (int): per-image cap (best scores kept).
        on_shard_written (callable or None): called with the shard index after each write.
    """

    def __init__(
        self,
        shards: Dict[int, List[int]],
        shard_path: Callable[[int], str],
        fingerprint: str,
        class_to_category: Dict[int, int],
        max_dets: int,
        on_shard_written: Optional[Callable[[int], None]],
    ):
        self._shards = shards
        self._shard_path = shard_path
        self._fingerprint = fingerprint
        self._class_to_category = class_to_category
        self._max_dets = max_dets
        self._on_shard_written = on_shard_written
        self._shard_of = {i: k for k, ids in shards.items() for i in ids}

    def reset(self):
        self._pending = {k: {} for k in self._shards}  # shard -> image id -> results
        self._dropped = {k: 0 for k in self._shards}
        self.written: List[int] = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            image_id = inp["image_id"]
            instances = out["instances"].to("cpu")
            before = out.get("num_before_cap", len(instances))
            instances = top_scoring(instances, self._max_dets)
            k = self._shard_of[image_id]
            self._dropped[k] += before - len(instances)
            self._pending[k][image_id] = instances_to_results(
                instances, image_id, self._class_to_category
            )
            if len(self._pending[k]) == len(self._shards[k]):
                self._write(k)

    def _write(self, k: int) -> None:
        ids = self._shards[k]
        per_image = self._pending.pop(k)
        shard = {
            "version": CACHE_VERSION,
            "fingerprint": self._fingerprint,
            "image_ids": ids,
            "num_dropped": self._dropped[k],
            "results": [r for i in ids for r in per_image[i]],
        }
        atomic_write_json(shard, self._shard_path(k))
        self.written.append(k)
        logger.info(f"Wrote shard {k} ({len(ids)} images, {len(shard['results'])} results)")
        if self._on_shard_written is not None:
            self._on_shard_written(k)

    def evaluate(self):
        if self._pending:
            raise RuntimeError(f"Shards {sorted(self._pending)} did not receive all their images.")
        return {}


def load_shard(path: str, fingerprint: str, ids: Sequence[int]) -> Optional[dict]:
    """A finished shard from the cache, or None when missing, unreadable or from another run."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            shard = json.load(f)
    except (OSError, ValueError) as e:
        logger.warning(f"Ignoring unreadable cache file {path} ({e}); recomputing it.")
        return None
    if shard.get("fingerprint") != fingerprint or shard.get("image_ids") != list(ids):
        logger.warning(f"Ignoring {path}: written for other images or settings; recomputing it.")
        return None
    return shard


def check_manifest(cache_dir: str, manifest: dict) -> None:
    """Write ``manifest`` into a new cache; raise ValueError if the cache has another one."""
    path = os.path.join(cache_dir, "manifest.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("fingerprint") != manifest["fingerprint"]:
            raise InputError(
                f"{path} belongs to a run with other settings (config, overrides, checkpoint, "
                f"dataset, cap or shard size): {old}. Use another --output-dir, or delete "
                f"{cache_dir} to start over."
            )
        return
    atomic_write_json(manifest, path)
