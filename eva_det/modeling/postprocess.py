"""detectron2's R-CNN postprocessing with the batched mask paste of :mod:`eva_det.layers.mask_rle`.

``GeneralizedRCNN.forward`` at test time is ``inference(inputs)``: the network, then
``detector_postprocess`` per image (rescale and clip boxes to the input's "height"/"width", drop
empty boxes, paste the (M, M) masks into full-image bitmasks one by one on CPU).
:class:`FastRCNNPostprocess` runs ``inference(inputs, do_postprocess=False)`` and does the same
steps, calling detectron2's ``detector_postprocess`` for everything except the masks, which go
through :func:`eva_det.layers.mask_rle.paste_masks_in_image` (same bits, batched) or, with
``mask_format="rle"``, straight to pycocotools RLE
(:func:`eva_det.layers.mask_rle.paste_masks_rle`) without (H, W) masks. With
``mask_format="bitmask"`` and no cap the outputs equal ``model(inputs)``.
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances, ROIMasks
from torch import nn

from eva_det.layers.mask_rle import paste_masks_in_image, paste_masks_rle
from eva_det.utils.modules import unwrap_ddp

__all__ = ["FastRCNNPostprocess", "supports_fast_postprocess", "top_scoring"]

logger = logging.getLogger(__name__)

MASK_FORMATS = ("bitmask", "rle")
_INDEX_FIELD = "_raw_index"


def supports_fast_postprocess(model) -> bool:
    """True for a ``GeneralizedRCNN`` (maybe DDP-wrapped) with detectron2's forward/postprocess.

    Subclasses that override ``forward`` or ``_postprocess`` are not supported: their outputs
    could differ from what :class:`FastRCNNPostprocess` computes.
    """
    net = unwrap_ddp(model)
    return (
        isinstance(net, GeneralizedRCNN)
        and type(net).forward is GeneralizedRCNN.forward
        and type(net)._postprocess is GeneralizedRCNN._postprocess
    )


def top_scoring(instances: Instances, max_dets: Optional[int]) -> Instances:
    """The ``max_dets`` highest-scored detections (ties keep their order); all if None."""
    if max_dets is None or len(instances) <= max_dets:
        return instances
    order = torch.sort(instances.scores, descending=True, stable=True).indices
    return instances[order[:max_dets]]


class FastRCNNPostprocess(nn.Module):
    """Callable like the wrapped R-CNN at test time, with batched mask pasting.

    Args:
        model (nn.Module): a ``GeneralizedRCNN`` (see :func:`supports_fast_postprocess`).
        mask_format (str): "bitmask": ``pred_masks`` is (N, H, W) bool exactly as detectron2's;
            "rle": instead of ``pred_masks`` the instances carry ``pred_masks_rle``, a list of
            pycocotools RLE dicts (``counts`` as str) equal to encoding detectron2's masks.
        max_dets_per_image (int or None): keep only the highest-scored detections per image
            (after dropping empty boxes, before pasting masks); None keeps all. When set, each
            output dict also has "num_before_cap", the number of detections before the cap.
        mask_threshold (float): binarisation threshold (detectron2's default 0.5).
    """

    def __init__(
        self,
        model: nn.Module,
        mask_format: str = "bitmask",
        max_dets_per_image: Optional[int] = None,
        mask_threshold: float = 0.5,
    ):
        super().__init__()
        if not supports_fast_postprocess(model):
            raise TypeError(
                f"FastRCNNPostprocess needs a detectron2 GeneralizedRCNN without a custom forward "
                f"or _postprocess; got {type(unwrap_ddp(model)).__name__}."
            )
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        if max_dets_per_image is not None and max_dets_per_image < 1:
            raise ValueError(f"max_dets_per_image must be >= 1 or None, got {max_dets_per_image}")
        self.model = model
        self.mask_format = mask_format
        self.max_dets_per_image = max_dets_per_image
        self.mask_threshold = mask_threshold

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """Inputs and outputs as ``GeneralizedRCNN.forward`` in eval mode (see class docs)."""
        net = unwrap_ddp(self.model)
        raw = net.inference(batched_inputs, do_postprocess=False)
        outputs = []
        for inst, inp in zip(raw, batched_inputs):
            height = inp.get("height", inst.image_size[0])
            width = inp.get("width", inst.image_size[1])
            result, num_before_cap = self._postprocess_one(inst, height, width)
            out = {"instances": result}
            if self.max_dets_per_image is not None:
                out["num_before_cap"] = num_before_cap
            outputs.append(out)
        return outputs

    def _postprocess_one(self, inst: Instances, height: int, width: int) -> Tuple[Instances, int]:
        """detector_postprocess of one image, masks pasted in batches; also the count before the
        per-image cap."""
        fields = dict(inst.get_fields())
        probs = fields.pop("pred_masks", None)  # (N, 1, M, M) probabilities
        if isinstance(probs, ROIMasks):
            probs = probs.tensor[:, None]
        boxes_only = Instances(inst.image_size, **fields)
        boxes_only.set(_INDEX_FIELD, torch.arange(len(inst), device=inst.pred_boxes.device))
        result = detector_postprocess(boxes_only, height, width)
        num_before_cap = len(result)
        result = top_scoring(result, self.max_dets_per_image)
        index = result.get(_INDEX_FIELD)
        result.remove(_INDEX_FIELD)
        if probs is None:
            return result, num_before_cap
        masks = probs[index, 0]  # (N', M, M)
        boxes = result.pred_boxes.tensor
        shape = result.image_size
        if self.mask_format == "bitmask":
            result.pred_masks = paste_masks_in_image(masks, boxes, shape, self.mask_threshold)
        else:
            result.pred_masks_rle = paste_masks_rle(masks, boxes, shape, self.mask_threshold)
        return result, num_before_cap
