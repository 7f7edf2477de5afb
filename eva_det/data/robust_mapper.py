"""``DatasetMapper`` that survives bad samples in training and names them in evaluation.

:class:`RobustDatasetMapper` takes detectron2's ``DatasetMapper`` arguments (configs switch to it
by changing only ``_target_``, so every ``dataloader.*.mapper.*`` key stays valid) and adds:

* **unreadable images** (missing, truncated, not an image): in training the sample is skipped
  with a warning naming the file and a running count, and detectron2's ``MapDataset`` retries
  another index (a mapper returning None means "skip"); more than ``max_bad_images`` distinct
  bad files in one process is an error (the image folder is probably wrong). In evaluation every
  image counts, so the error names the file, the dataset image id and the fix. Errors that are
  not about reading the image (e.g. a size that disagrees with the json) are re-raised as is.
* **annotations without a usable mask** (empty segmentation, polygons with fewer than 3 points or
  zero area) when masks are used: dropped with a warning naming the image id, file, annotation
  index (and id when the loader kept it), once per annotation and process. detectron2's COCO
  loader already drops annotations whose polygons all have fewer than 3 points (it only logs
  their count); :func:`eva_det.engine.checks.inspect_coco_json` names those.
"""

import logging
from collections.abc import Mapping
from typing import Optional, Sequence

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils

from eva_det.errors import InputError

__all__ = ["RobustDatasetMapper", "polygon_problem", "segmentation_problem"]

logger = logging.getLogger(__name__)


def polygon_problem(polygon: Sequence[float]) -> Optional[str]:
    """Why a flat ``[x0, y0, x1, y1, ...]`` polygon cannot be a mask, or None if it can."""
    if len(polygon) < 6:
        return f"polygon with {len(polygon) // 2} point(s) (needs 3)"
    if len(polygon) % 2:
        return f"polygon with an odd number ({len(polygon)}) of coordinates"
    xs, ys = polygon[0::2], polygon[1::2]
    twice_area = sum(xs[i - 1] * ys[i] - xs[i] * ys[i - 1] for i in range(len(xs)))
    if twice_area == 0:
        return "polygon of zero area"
    return None


def segmentation_problem(segmentation) -> Optional[str]:
    """Why an annotation's ``segmentation`` gives no mask (None if at least one part does).

    Args:
        segmentation: COCO polygons (list of flat lists), an RLE dict, or None / [] (none).
    """
    if isinstance(segmentation, Mapping):
        return None  # RLE: decoded by pycocotools; an all-zero RLE is a valid (empty) mask
    if not segmentation:
        return "no segmentation (empty)"
    problems = [polygon_problem(p) for p in segmentation]
    return None if any(p is None for p in problems) else "; ".join(problems)


class RobustDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` plus bad-image and bad-annotation handling (module doc)."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        skip_bad_images: Optional[bool] = None,
        max_bad_images: int = 100,
        max_bad_annotations: int = 1000,
        **kwargs,
    ):
        """
        Args:
            is_train (bool): as in ``DatasetMapper``.
            skip_bad_images (bool or None): skip unreadable images (True) or raise (False);
                None = skip in training, raise in evaluation.
            max_bad_images (int): distinct unreadable files one process may skip before it
                raises InputError.
            max_bad_annotations (int): distinct annotations without a usable mask one process
                may drop before it raises InputError (a box-only dataset with masks enabled).
            **kwargs: the other ``DatasetMapper`` arguments (augmentations, image_format, ...).
        """
        super().__init__(is_train, **kwargs)
        self.skip_bad_images = is_train if skip_bad_images is None else bool(skip_bad_images)
        self.max_bad_images = int(max_bad_images)
        self.max_bad_annotations = int(max_bad_annotations)
        self._bad_images = set()
        self._bad_annotations = set()

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        """Map one dataset dict; None (= skip, training only) if its image cannot be read."""
        if self.is_train and self.use_instance_mask and dataset_dict.get("annotations"):
            dataset_dict = self._drop_maskless_annotations(dataset_dict)
        try:
            return super().__call__(dataset_dict)
        except Exception as error:
            reason = self._read_problem(dataset_dict["file_name"])
            if reason is None:
                raise  # not a problem with reading the image
            return self._bad_image(dataset_dict, reason, error)

    def _read_problem(self, file_name: str) -> Optional[str]:
        """Why ``file_name`` cannot be read as an image, or None if it reads fine."""
        try:
            utils.read_image(file_name, format=self.image_format)
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    def _bad_image(self, dataset_dict: dict, reason: str, error: Exception) -> None:
        file_name = dataset_dict["file_name"]
        image_id = dataset_dict.get("image_id")
        if not self.skip_bad_images:
            raise InputError(
                f"Cannot read image {file_name} (image id {image_id}): {reason}. Evaluation "
                "needs every image of the dataset: restore the file (or fix the image folder / "
                "DETECTRON2_DATASETS), or remove the image from the dataset json."
            ) from error
        self._bad_images.add(file_name)
        count = len(self._bad_images)
        if count > self.max_bad_images:
            raise InputError(
                f"{count} training images could not be read in this process (the latest: "
                f"{file_name}: {reason}); more than max_bad_images={self.max_bad_images}. Check "
                "the image folder (DETECTRON2_DATASETS) or raise "
                "dataloader.train.mapper.max_bad_images."
            ) from error
        logger.warning(
            "Skipping unreadable training image %s (image id %s): %s. Using another image "
            "instead; %d unreadable image(s) skipped so far in this process.",
            file_name,
            image_id,
            reason,
            count,
        )
        return None

    def _drop_maskless_annotations(self, dataset_dict: dict) -> dict:
        """A shallow copy of ``dataset_dict`` without annotations that give no mask."""
        kept = []
        image_id = dataset_dict.get("image_id")
        for index, ann in enumerate(dataset_dict["annotations"]):
            problem = (
                None if ann.get("iscrowd", 0) else segmentation_problem(ann.get("segmentation"))
            )
            if problem is None:
                kept.append(ann)
                continue
            key = (dataset_dict["file_name"], index)
            if key not in self._bad_annotations:
                self._bad_annotations.add(key)
                if len(self._bad_annotations) > self.max_bad_annotations:
                    raise InputError(
                        f"More than max_bad_annotations={self.max_bad_annotations} annotations "
                        f"have no usable mask (the latest: image id {image_id}, "
                        f"{dataset_dict['file_name']}: {problem}). For a dataset without masks "
                        "set dataloader.train.mapper.use_instance_mask=False (and "
                        "recompute_boxes=False); otherwise fix the dataset json."
                    )
                ann_id = f", id {ann['id']}" if "id" in ann else ""
                logger.warning(
                    "Dropping annotation #%d%s (category %s, bbox %s) of image id %s (%s): %s. "
                    "Fix it in the dataset json; the image is used without it.",
                    index,
                    ann_id,
                    ann.get("category_id"),
                    ann.get("bbox"),
                    image_id,
                    dataset_dict["file_name"],
                    problem,
                )
        if len(kept) == len(dataset_dict["annotations"]):
            return dataset_dict
        return {**dataset_dict, "annotations": kept}
