"""Overrides that shrink any eva_det detector config to a CPU-test-sized model."""

import os

from detectron2.config import LazyConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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

# Narrow cascade heads (same module names) so that state dicts are small.
NARROW_HEADS = ["model.roi_heads.mask_head.conv_dims=[64]"] + [
    o
    for k in range(3)
    for o in (
        f"model.roi_heads.box_heads.{k}.conv_dims=[64]",
        f"model.roi_heads.box_heads.{k}.fc_dims=[64]",
        f"model.roi_heads.box_predictors.{k}.input_shape.channels=64",
    )
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


# Narrow pyramid and heads (full width is 256 / 1024) and few ROIs: CLI training runs of the
# full recipes then take about a second per iteration on CPU, 1203 LVIS classes included.
HEAD_SHRINK = [
    "model.backbone.out_channels=32",
    "model.proposal_generator.head.in_channels=32",
    "model.proposal_generator.pre_nms_topk=[200,100]",
    "model.proposal_generator.post_nms_topk=[50,20]",
    "model.proposal_generator.batch_size_per_image=64",
    "model.roi_heads.batch_size_per_image=32",
    "model.roi_heads.mask_head.input_shape.channels=32",
    "model.roi_heads.mask_head.conv_dims=[16,16]",
] + [
    o
    for i in range(3)
    for o in (
        f"model.roi_heads.box_heads.{i}.input_shape.channels=32",
        f"model.roi_heads.box_heads.{i}.conv_dims=[16]",
        f"model.roi_heads.box_heads.{i}.fc_dims=[32]",
        f"model.roi_heads.box_predictors.{i}.input_shape.channels=32",
        f"model.roi_heads.box_predictors.{i}.test_topk_per_image=20",
    )
]


def lsj_data_overrides(image_size: int = 128) -> list:
    """LSJ train / test augmentations of coco_lsj.py at ``image_size`` (recipes use 1024+)."""
    return [
        f"dataloader.train.mapper.augmentations.1.target_height={image_size}",
        f"dataloader.train.mapper.augmentations.1.target_width={image_size}",
        f"dataloader.train.mapper.augmentations.2.crop_size=[{image_size},{image_size}]",
        f"dataloader.test.mapper.augmentations.0.short_edge_length={image_size}",
        f"dataloader.test.mapper.augmentations.0.max_size={image_size}",
    ]


def cli_tiny_overrides(cfg, output_dir=None, max_iter: int = 3) -> list:
    """Everything that turns a full recipe into a few-second CPU run of the training CLI.

    The shrunk backbone (:func:`shrink_overrides`), :data:`HEAD_SHRINK`, 128 px LSJ, 2 images
    per iteration without loader workers, ``max_iter`` iterations, evaluation at the end only,
    and every detection kept (an untrained model scores below the recipes' thresholds).
    ``output_dir`` (None: the config's) receives checkpoints, metrics and evaluator outputs.
    """
    outputs = (
        [f"train.output_dir={output_dir}", f"dataloader.evaluator.output_dir={output_dir}"]
        if output_dir
        else []
    )
    return (
        shrink_overrides(cfg)
        + HEAD_SHRINK
        + lsj_data_overrides(128)
        + [
            "train.device=cpu",
            "train.amp.enabled=False",
            "train.seed=0",
            f"train.max_iter={max_iter}",
            "train.log_period=1",
            "train.eval_period=0",
            f"train.checkpointer.period={max_iter}",
            f"lr_multiplier.scheduler.milestones=[{max_iter - 2},{max_iter - 1}]",
            f"lr_multiplier.scheduler.num_updates={max_iter}",
            "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
            "model.roi_heads.override_score_thresh=0.0",
        ]
        + outputs
    )


EVA02_SHRINK = [
    "model.backbone.net.embed_dim=64",
    "model.backbone.net.depth=4",
    "model.backbone.net.num_heads=4",
    "model.backbone.net.img_size=128",
    "model.backbone.net.window_size=4",
    "model.backbone.net.window_block_indexes=[0,1,3]",
    "model.backbone.square_pad=128",
]
# Few proposals keep the full-width cascade heads cheap on CPU.
FAST_HEADS = [
    "model.proposal_generator.pre_nms_topk=[2000,200]",
    "model.proposal_generator.post_nms_topk=[1000,20]",
]


def zoo_shrink(name: str) -> list:
    """The shrinking overrides for model-zoo checkpoint ``name`` (EVA-01 or EVA-02 backbone)."""
    from eva_det import model_zoo

    family = model_zoo.get_checkpoint(name).family
    return (EVA01_SHRINK if family == "EVA-01" else EVA02_SHRINK) + FAST_HEADS


# The shapes recipe shrunk for evaluation runs (test-dev submission, checkpoint checks).
SHAPES_CONFIG = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"
SHAPES_EVAL = EVA01_SHRINK + [
    "dataloader.test.num_workers=0",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
    "model.proposal_generator.post_nms_topk=[500,15]",
    # EVA's protocol: keep everything, soft-NMS -> up to 75 detections per image here
    "model.roi_heads.use_soft_nms=True",
    "model.roi_heads.method=linear",
    "model.roi_heads.iou_threshold=0.6",
    "model.roi_heads.override_score_thresh=0.0",
]
