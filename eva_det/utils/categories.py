"""Model class index (contiguous, 0..K-1) -> dataset category id, as detectron2 maps them."""

from typing import Dict, Optional

__all__ = ["class_to_category_ids"]


def class_to_category_ids(metadata, lvis_fallback: bool = True) -> Optional[Dict[int, int]]:
    """Class index -> category id from a dataset's metadata.

    COCO-style sets carry ``thing_dataset_id_to_contiguous_id`` (category id -> class index),
    which is inverted. LVIS sets do not: their ids are the class index + 1 (1..K).

    Args:
        metadata: a detectron2 ``Metadata`` (or anything with ``.get``).
        lvis_fallback (bool): without ``thing_dataset_id_to_contiguous_id``, map the
            ``thing_classes`` indices to index + 1 (the LVIS rule); False: return None.

    Returns:
        dict or None: the mapping; None when the metadata has no mapping (and, with
        ``lvis_fallback``, no ``thing_classes`` either).

    Raises:
        ValueError: ``thing_dataset_id_to_contiguous_id`` does not map onto 0..K-1 one to one.
    """
    mapping = metadata.get("thing_dataset_id_to_contiguous_id")
    if mapping is not None:
        num_classes = len(mapping)
        if sorted(mapping.values()) != list(range(num_classes)):
            name = metadata.get("name", "the dataset")
            raise ValueError(
                f"thing_dataset_id_to_contiguous_id of {name!r} must map onto "
                f"0..{num_classes - 1}, got values {sorted(mapping.values())}."
            )
        return {int(v): int(k) for k, v in mapping.items()}
    classes = metadata.get("thing_classes") if lvis_fallback else None
    if classes:
        return {i: i + 1 for i in range(len(classes))}
    return None
