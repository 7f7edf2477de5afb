"""``Instances`` -> COCO results json, accepting masks already RLE-encoded.

detectron2's ``instances_to_coco_json`` encodes every (H, W) mask in ``pred_masks`` with
pycocotools. :class:`eva_det.modeling.postprocess.FastRCNNPostprocess` with ``mask_format="rle"``
outputs the same RLEs directly, in ``pred_masks_rle``; :func:`instances_to_coco_json` takes them as
they are and gives detectron2's output otherwise.
"""

from typing import List

from detectron2.evaluation.coco_evaluation import instances_to_coco_json as _d2_instances_to_json
from detectron2.structures import Instances

__all__ = ["instances_to_coco_json", "prediction_from_output"]


def instances_to_coco_json(instances: Instances, img_id: int) -> List[dict]:
    """detectron2's ``instances_to_coco_json``, with masks from ``pred_masks_rle`` if present.

    Args:
        instances (Instances): one image's detections on the CPU (``pred_boxes``, ``scores``,
            ``pred_classes``; optionally ``pred_masks`` (N, H, W), ``pred_masks_rle`` (list of
            N RLE dicts with str ``counts``) or ``pred_keypoints``).
        img_id (int): the image id.

    Returns:
        list[dict]: COCO results with contiguous class ids in "category_id".
    """
    if not instances.has("pred_masks_rle"):
        return _d2_instances_to_json(instances, img_id)
    fields = {k: v for k, v in instances.get_fields().items() if k != "pred_masks_rle"}
    results = _d2_instances_to_json(Instances(instances.image_size, **fields), img_id)
    for result, rle in zip(results, instances.pred_masks_rle):
        result["segmentation"] = rle
    return results


def prediction_from_output(inp: dict, out: dict, cpu_device) -> dict:
    """The record detectron2's evaluators keep per image, built with :func:`instances_to_coco_json`.

    Args:
        inp (dict): one model input (needs ``image_id``).
        out (dict): the model's output for it (``instances`` and/or ``proposals``).
        cpu_device: device the outputs are moved to.

    Returns:
        dict with ``image_id`` and, when present, ``instances`` (COCO json list) and ``proposals``.
    """
    prediction = {"image_id": inp["image_id"]}
    if "instances" in out:
        instances = out["instances"].to(cpu_device)
        prediction["instances"] = instances_to_coco_json(instances, inp["image_id"])
    if "proposals" in out:
        prediction["proposals"] = out["proposals"].to(cpu_device)
    return prediction
