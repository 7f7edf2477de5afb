"""Overrides that shrink any eva_det detector config to a CPU-test-sized model."""

import os

from detectron2.config import LazyConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EVA01_SHRINK = [
    "model.backbone.net.embed_dim=64",
    "model.backbone.net.depth=2",
    "model.backbone.net.num_heads=4",
    "model.backbone.net.img_size=128",
    "model.backbone.net.window_size=4",
    "model.backbone.net.window_block_indexes=[0]",
    "model.backbone.net.mlp_ratio=2",
    "model.backbone.net.use_act_checkpoint=False",
    "model.backbone.square_pad=128",
    # few test-time proposals keep the full-width cascade heads cheap on CPU
    "model.proposal_generator.post_nms_topk=[1000,20]",
]


def load_config(relpath: str, overrides=()):
    """Load ``relpath`` (relative to the repository) and apply ``key=value`` overrides."""
    cfg = LazyConfig.load(os.path.join(REPO, relpath))
    return LazyConfig.apply_overrides(cfg, list(overrides))


def shrink_overrides(cfg) -> list:
    """The shrink list that matches the config's backbone."""
    target = cfg.model.backbone.net._target_
    name = getattr(target, "__name__", str(target))
    if "EVA02" in name:
        return [o for o in EVA01_SHRINK if "mlp_ratio" not in o]
    return list(EVA01_SHRINK)
