"""pycocotools RLE of full-image masks, as detectron2's evaluators encode them (the reference)."""

from typing import Dict, List, Sequence

import numpy as np
import pycocotools.mask as mask_util


def encode_bitmasks(masks: Sequence[np.ndarray]) -> List[Dict]:
    """pycocotools RLE (``counts`` as str) of (H, W) binary masks, as detectron2 encodes them."""
    rles = [mask_util.encode(np.array(m[:, :, None], order="F", dtype="uint8"))[0] for m in masks]
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")
    return rles
