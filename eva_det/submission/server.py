"""What the COCO and LVIS evaluation servers accept, and checks that a results file meets it.

COCO (test-dev / test-challenge on the COCO server): one upload per task, each a zip holding
exactly one file ``detections_<testset>_<alg>_results.json`` (``<testset>`` e.g.
"test-dev2017"; the name is split on "_", so ``<alg>`` may not contain one). The file is a list
of ``{"image_id", "category_id", "bbox" | "segmentation", "score"}`` with COCO's original
(non-contiguous) category ids, boxes as [x, y, width, height] in pixels of the original image,
masks as compressed RLE with ``counts`` a str, and at most 100 detections per image (the server
scores COCO's AP@100).

LVIS (v1 test-dev / test-challenge server): the same COCO results format with LVIS category ids
(1..1203), masks only (the LVIS challenge scores mask AP), at most 300 detections per image
(LVIS-api's ``max_dets``), uploaded as a zip holding one json. The exact file name inside the
zip is not prescribed by anything we could check offline; eva_det writes
``lvis_<testset>_<alg>_results.json``. Check the current challenge page before uploading.

The segm files carry no "bbox": with a box, the COCO / LVIS apis take the box area as the
instance area when splitting AP by object size, and detectron2's evaluators drop it for segm too.
"""

import io
import json
import logging
import math
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from detectron2.data import MetadataCatalog

from eva_det.errors import InputError
from eva_det.utils.atomic import atomic_path
from eva_det.utils.categories import class_to_category_ids

__all__ = [
    "SERVER_FORMATS",
    "ServerFormat",
    "read_zip_results",
    "server_format",
    "test_set_name",
    "validate_results",
    "write_results_zip",
]

logger = logging.getLogger(__name__)

TASK_KEYS = {
    "bbox": ("image_id", "category_id", "bbox", "score"),
    "segm": ("image_id", "category_id", "segmentation", "score"),
}
_ALG_PATTERN = re.compile(r"^[A-Za-z0-9-]+$")


@dataclass(frozen=True)
class ServerFormat:
    """One evaluation server's rules.

    Attributes:
        name (str): "coco" or "lvis" (the dataset metadata's ``evaluator_type``).
        default_tasks (tuple[str]): tasks the server scores, "bbox" and/or "segm".
        default_max_dets (int): detections per image the server counts.
        file_prefix (str): json name is ``<file_prefix>_<testset>_<alg>_results.json``.
    """

    name: str
    default_tasks: Tuple[str, ...]
    default_max_dets: int
    file_prefix: str

    def json_name(self, test_set: str, alg: str) -> str:
        """Name of the results json inside the zip."""
        check_alg_name(alg)
        return f"{self.file_prefix}_{test_set}_{alg}_results.json"


SERVER_FORMATS = {
    "coco": ServerFormat("coco", ("bbox", "segm"), 100, "detections"),
    "lvis": ServerFormat("lvis", ("segm",), 300, "lvis"),
}


def check_alg_name(alg: str) -> None:
    """Raise ValueError unless ``alg`` is usable in COCO's ``..._<alg>_results.json`` names."""
    if not _ALG_PATTERN.match(alg):
        raise InputError(
            f"--alg {alg!r}: use letters, digits and '-' only (COCO splits the results file "
            "name on '_'), e.g. --alg eva-01."
        )


def server_format(dataset_name: str) -> ServerFormat:
    """The server of a registered test set, from its metadata's ``evaluator_type``."""
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if kind not in SERVER_FORMATS:
        raise InputError(
            f"Dataset {dataset_name!r} has evaluator_type={kind!r} in its metadata; submissions "
            f"are packaged for {sorted(SERVER_FORMATS)} test sets (e.g. coco_2017_test-dev, "
            "lvis_v1_test_dev)."
        )
    return SERVER_FORMATS[kind]


def test_set_name(dataset_name: str) -> str:
    """Test-set part of the results file name, from the image-info json name.

    "image_info_test-dev2017.json" -> "test-dev2017";
    "lvis_v1_image_info_test_dev.json" -> "test_dev"; otherwise the dataset name.
    """
    json_file = MetadataCatalog.get(dataset_name).get("json_file")
    if json_file:
        match = re.search(r"image_info_(.+)\.json$", os.path.basename(json_file))
        if match:
            return match.group(1)
    return dataset_name


def valid_category_ids(dataset_name: str) -> Dict[int, int]:
    """Model class index (contiguous) -> dataset category id, as detectron2's evaluators map it.

    COCO-style sets carry ``thing_dataset_id_to_contiguous_id``; LVIS sets do not and use
    ``index + 1`` (LVIS ids are 1..num_classes).
    """
    mapping = class_to_category_ids(MetadataCatalog.get(dataset_name))
    if mapping is None:
        raise InputError(
            f"Dataset {dataset_name!r} has neither thing_dataset_id_to_contiguous_id nor "
            "thing_classes in its metadata; cannot map predicted classes to category ids."
        )
    return mapping


def _result_problems(
    r, keys: Sequence[str], image_sizes: Mapping[int, Tuple[int, int]], category_ids: Set[int]
) -> Iterable[str]:
    """Reasons why one result does not match the server format (empty when it does)."""
    if not isinstance(r, dict) or tuple(sorted(r)) != tuple(sorted(keys)):
        yield f"keys {sorted(r) if isinstance(r, dict) else type(r).__name__} != {sorted(keys)}"
        return
    image_id, category_id, score = r["image_id"], r["category_id"], r["score"]
    if not isinstance(image_id, int) or image_id not in image_sizes:
        yield f"image_id {image_id!r} is not an image of the test set"
    if not isinstance(category_id, int) or category_id not in category_ids:
        yield f"category_id {category_id!r} is not a category of the test set"
    if isinstance(score, bool) or not isinstance(score, float) or not math.isfinite(score):
        yield f"score {score!r} is not a finite float"
    if "bbox" in r:
        box = r["bbox"]
        ok = isinstance(box, list) and len(box) == 4
        ok = ok and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
        if not ok or box[2] < 0 or box[3] < 0:
            yield f"bbox {box!r} is not [x, y, w, h] with finite values and w, h >= 0"
    if "segmentation" in r:
        seg = r["segmentation"]
        if not isinstance(seg, dict) or sorted(seg) != ["counts", "size"]:
            yield "segmentation is not an RLE dict with 'size' and 'counts'"
        elif not isinstance(seg["counts"], str) or not seg["counts"]:
            yield "segmentation counts is not a non-empty str (compressed RLE)"
        elif image_id in image_sizes and list(seg["size"]) != list(image_sizes[image_id]):
            yield f"segmentation size {seg['size']} != image size {list(image_sizes[image_id])}"


def validate_results(
    results: List[dict],
    task: str,
    image_sizes: Mapping[int, Tuple[int, int]],
    category_ids: Iterable[int],
    max_dets_per_image: int,
    source: str = "results",
) -> None:
    """Raise ValueError unless ``results`` is a valid submission for ``task``.

    Args:
        results (list[dict]): the parsed results file.
        task (str): "bbox" or "segm" (decides the required keys).
        image_sizes (dict): image id -> (height, width) of every test image.
        category_ids (iterable[int]): the test set's category ids.
        max_dets_per_image (int): most results allowed per image.
        source (str): file name used in the error message.
    """
    if not isinstance(results, list):
        raise ValueError(f"{source}: expected a json list of results, got {type(results).__name__}")
    keys, cats, problems = TASK_KEYS[task], set(category_ids), []
    for i, r in enumerate(results):
        problems.extend(f"result {i}: {p}" for p in _result_problems(r, keys, image_sizes, cats))
        if len(problems) >= 5:
            break
    per_image = Counter(r["image_id"] for r in results)
    over = [(i, n) for i, n in per_image.items() if n > max_dets_per_image]
    if over:
        problems.append(
            f"{len(over)} images have more than {max_dets_per_image} results, e.g. "
            f"(image_id, count) {over[:3]}"
        )
    if problems:
        raise ValueError(f"{source} is not a valid {task} submission:\n  " + "\n  ".join(problems))


def write_results_zip(path: str, json_name: str, results: List[dict]) -> None:
    """Write ``results`` as ``json_name``, the only file of the zip ``path``, atomically."""
    with atomic_path(path) as tmp_path:
        with zipfile.ZipFile(tmp_path, "x", compression=zipfile.ZIP_DEFLATED) as zf:
            with zf.open(json_name, "w", force_zip64=True) as raw:
                with io.TextIOWrapper(raw, encoding="utf-8") as text:
                    json.dump(results, text)


def read_zip_results(path: str, expected_name: Optional[str] = None) -> Tuple[str, List[dict]]:
    """(name, parsed results) of the single json in the zip ``path``.

    Raises ValueError when the zip holds anything other than exactly one file (named
    ``expected_name`` when given).
    """
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if len(names) != 1 or (expected_name is not None and names != [expected_name]):
            want = expected_name or "one results json"
            raise ValueError(f"{path} must hold exactly {want!r}, found {names}")
        with zf.open(names[0]) as f:
            return names[0], json.load(f)
