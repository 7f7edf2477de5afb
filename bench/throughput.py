#!/usr/bin/env python
"""End-to-end inference images/s: fp32 vs autocast (test.amp), tiny shapes and ViTDet-B detectors.

Each image goes through :class:`eva_det.demo.LazyPredictor` (the demo's path: the config's test
resize, model, postprocessing to the original size), so the time covers everything after decoding
the image. Models have random weights with ``model.roi_heads.override_score_thresh=0.0``: every
image then gets the per-image maximum of detections (100, each with a mask), which is what a
trained detector returns on busy images. Precisions run side by side on the same model and images;
the first image of each run is a warm-up and not timed (best of ``--repeat`` runs). The first row
of each model ("fp32 plain attn") is the official setting: fp32 with the official matmul + softmax
attention (``attn_impl="plain"``); the others use eva_det's default ``attn_impl="auto"`` and are
given as speed-ups over it.

* ``tiny``: projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py, 256-px images;
* ``B``: projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py (EVA-01 ViT-B, Cascade
  Mask R-CNN, 80 classes), COCO-shaped images with a long edge of ``--b-size`` px (resized to
  1024 and padded to 1024 x 1024 by the config).

On GPU (``--device cuda``, default when one is present) fp32, bfloat16 and float16 are timed and,
with ``--compile``, a bf16 run with ``test.compile_backbone=True`` (compile time excluded).

    python bench/throughput.py --models tiny B --images 3 --threads 2
    python bench/throughput.py --device cuda --models tiny B --images 20 --compile
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
from detectron2.config import LazyConfig

from eva_det.demo import LazyPredictor
from eva_det.modeling.backbone.eva_vit import Attention as EVAAttention

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "tiny": ("projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py", 256, 256),
    "B": ("projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py", 768, 1024),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "B"], choices=sorted(MODELS))
    parser.add_argument("--images", type=int, default=3, help="images per run (first = warm-up)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per precision (best kept)")
    parser.add_argument("--b-size", type=int, default=1024, help="long edge of the B images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true", help="also time test.compile_backbone")
    return parser.parse_args()


def images_for(name: str, count: int, b_size: int):
    """Random BGR uint8 images (height, width) as the model's test loader would see them."""
    _, height, width = MODELS[name]
    if name == "B":
        height, width = b_size * 3 // 4, b_size
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_run(predictor, images, device: str, repeat: int):
    """Best seconds/image over ``repeat`` runs (first image of each run untimed); detections."""
    best, dets = float("inf"), 0
    for _ in range(repeat):
        predictor(images[0])  # warm-up: caches, allocator, cuDNN / inductor
        sync(device)
        start = time.perf_counter()
        dets = 0
        for image in images[1:]:
            dets += len(predictor(image)["instances"])
        sync(device)
        best = min(best, (time.perf_counter() - start) / max(len(images) - 1, 1))
    return best, dets / max(len(images) - 1, 1)


def variants(device: str, compile_backbone: bool):
    """(label, test.amp dtype or None, compile, attn_impl) to time on ``device``."""
    out = [
        ("fp32 plain attn", None, False, "plain"),
        ("fp32", None, False, "auto"),
        ("bf16 autocast", "bfloat16", False, "auto"),
    ]
    if device.startswith("cuda"):
        out.append(("fp16 autocast", "float16", False, "auto"))
    if compile_backbone:
        out.append(("bf16 + compile", "bfloat16", True, "auto"))
    return out


def set_attn_impl(model, impl: str) -> None:
    """Switch every EVA-01 ViT attention module of ``model`` to ``impl`` (same weights)."""
    for module in model.modules():
        if isinstance(module, EVAAttention):
            module.attn_impl = impl


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.images < 2:
        sys.exit("--images must be >= 2 (the first image of each run is a warm-up)")
    cmd = "python bench/throughput.py " + " ".join(sys.argv[1:])
    print(f"# {cmd}")
    print(
        f"# torch {torch.__version__}, device {args.device}, "
        f"{torch.get_num_threads()} CPU thread(s)"
        + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else "")
    )
    header = f"{'model':<6} {'image':>9} {'precision':<15} {'s/img':>8} {'img/s':>7}"
    header += f" {'vs plain':>8}"
    print(header + f" {'dets/img':>8}")
    for name in args.models:
        relpath, _, _ = MODELS[name]
        cfg = LazyConfig.load(os.path.join(REPO, relpath))
        cfg = LazyConfig.apply_overrides(
            cfg, ["model.roi_heads.override_score_thresh=0.0", f"train.device={args.device}"]
        )
        torch.manual_seed(0)
        predictor = LazyPredictor(cfg, load_weights=False)
        images = images_for(name, args.images, args.b_size)
        size = f"{images[0].shape[1]}x{images[0].shape[0]}"
        baseline = None
        for label, dtype, compiled, impl in variants(args.device, args.compile):
            set_attn_impl(predictor.detector, impl)
            cfg.test.amp.enabled = dtype is not None
            cfg.test.amp.dtype = dtype or "bfloat16"
            cfg.test.compile_backbone = compiled
            seconds, dets = time_run(predictor, images, args.device, args.repeat)
            baseline = baseline or seconds
            print(
                f"{name:<6} {size:>9} {label:<15} {seconds:8.3f} {1 / seconds:7.2f} "
                f"{baseline / seconds:7.2f}x {dets:8.0f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
