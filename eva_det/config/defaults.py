"""Defaults of the config section ``test`` (test-time augmentation, inference precision).

They live here, in code, so that evaluation works for every config (one without a ``test``
section gets these) and for an installed package; ``configs/common/test.py`` is the config-side
view built from :func:`test_defaults`, so recipes can import and override it::

    test = get_config("common/test.py").test

``test.aug`` (read by :func:`eva_det.modeling.tta.build_tta_model`)::

    --eval-only --config-file CFG ... test.aug.enabled=True test.aug.min_sizes=[1024,1280,1536]

Each min size gives one pass (two with ``flip``): short edge resized to it, long edge capped at
``max_size``. ``max_size`` (one int, or one per min size) may not exceed
``model.backbone.square_pad``; None means "= model.backbone.square_pad". The default sizes suit
the ``*_1536`` configs on COCO-shaped (4:3) images: 1152 is their plain test scale (long edge
1536).

``test.amp`` (read by :mod:`eva_det.engine.precision`, for evaluation and the demo):
``test.amp.enabled=True`` runs the model under ``torch.autocast`` in ``test.amp.dtype``
("bfloat16" or "float16"); the official code evaluates in float32 (the default here).

``test.compile_backbone``: ``torch.compile(model.backbone.net, dynamic=False)`` while evaluating
(the first batch compiles).
"""

__all__ = ["test_defaults"]


def test_defaults() -> dict:
    """A fresh copy of the ``test`` section's defaults (nested plain dicts and lists)."""
    return {
        "aug": {
            "enabled": False,
            "min_sizes": [768, 960, 1152],
            "max_size": None,
            "flip": True,
        },
        "amp": {"enabled": False, "dtype": "bfloat16"},
        "compile_backbone": False,
    }
