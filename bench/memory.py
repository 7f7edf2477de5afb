#!/usr/bin/env python
"""Peak memory per image of the EVA-01 1B detector: training and inference at 1280 and 1536.

With a GPU (``--mode measure``, the default when CUDA is available) the config's model is built
on the GPU and ``torch.cuda.max_memory_allocated`` is read around

* one training step per image (batch 1, as the official recipe: 64 images on 64 GPUs): fp16
  autocast forward + scaled backward + AdamW step (second step reported: the first one also
  creates the optimizer state), activation checkpointing as configured (on) and off;
* one inference per image: fp32 (the official evaluation) and bf16 autocast (``test.amp``).

Without a GPU (``--mode estimate``) it prints an analytic estimate instead, labelled "estimated":
parameter counts are exact (counted from the instantiated config); memory is

* training = weights fp32 (4 B/param) + grads (4 B/trainable param) + AdamW state (8 B/trainable
  param) + fp16 weight copies kept by autocast (2 B/param) + saved activations + the backward
  transient of one block. ViT activations per block (N tokens, C channels, F MLP hidden, h heads,
  attention span A = window^2 or N, 16-bit unless noted): residual-stream inputs of the two
  LayerNorms in fp32 (8NC), Linear inputs (4NC + 2NC proj), MLP hidden before/after GELU (4NF),
  attention per ``attn_impl``: "sdpa" (eva_det default, CUDA memory-efficient kernel) q, k, v,
  out (8NC) + two q copies for the rel-pos einsums (4NC) + the dense relative-position bias (2hNA)
  + logsumexp; "plain" (official) q, k, v (6NC) + one q copy (2NC) + softmax output in fp32 (CUDA
  autocast) and its fp16 copy (6hNA); "blocked" q, k, v, out (8NC) + the two q copies (4NC) + the
  two bias factors rel_h, rel_w (4hNS, S = window or grid side), no N x N tensor. With
  activation checkpointing only every block's fp32 input (4NC) is kept, and one block's
  activations are recomputed during its backward. Detector heads (feature pyramid, RPN, 3 cascade
  stages x 512 RoIs, mask head on 128 RoIs) are counted from their layer shapes;
* inference = fp32 weights (+ 2 B/param of autocast weight copies under bf16, kept for the whole
  evaluation) + the largest transient of one global block (for "sdpa" its N x N bias, built at most
  ``DEFAULT_MAX_MASK_BYTES`` = 1 GiB at a time without autograd; for "blocked" the two bias
  factors and one ``DEFAULT_BLOCK_BYTES`` = 16 MiB block of logits).

    python bench/memory.py                                  # GPU if present, else estimate
    python bench/memory.py --mode estimate --sizes 1280 1536
"""

import argparse
import copy
import os
import sys
from dataclasses import dataclass

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.utils.events import EventStorage

from eva_det.layers.blocked_attention import DEFAULT_BLOCK_BYTES
from eva_det.layers.rel_pos_attention import DEFAULT_MAX_MASK_BYTES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva.py"
GIB = 2**30


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=CONFIG)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1280, 1536])
    parser.add_argument(
        "--mode",
        choices=("auto", "measure", "estimate"),
        default="auto",
        help="measure on CUDA, estimate analytically, or auto (measure when CUDA is present)",
    )
    parser.add_argument("--impls", nargs="+", default=["sdpa", "plain", "blocked"])
    return parser.parse_args()


def load_cfg(path: str, size: int):
    """The config at square input ``size`` (``img_size`` keeps the checkpoint's table shapes)."""
    from eva_det.config import set_lsj_image_size

    cfg = LazyConfig.load(os.path.join(REPO, path) if not os.path.isabs(path) else path)
    set_lsj_image_size(cfg.dataloader, size)
    cfg.model.backbone.square_pad = size
    return cfg


# ----------------------------------------------------------------------------------- estimate


@dataclass
class Vit:
    """Shapes of the config's ViT at one input size."""

    tokens: int  # N = grid^2
    grid: int
    dim: int  # C
    hidden: int  # F
    heads: int
    window: int
    num_global: int
    num_window: int

    @classmethod
    def from_cfg(cls, cfg, size: int) -> "Vit":
        net = cfg.model.backbone.net
        grid = size // net.patch_size
        num_window = len(list(net.window_block_indexes))
        return cls(
            tokens=grid * grid,
            grid=grid,
            dim=net.embed_dim,
            hidden=int(net.embed_dim * net.mlp_ratio),
            heads=net.num_heads,
            window=net.window_size,
            num_global=net.depth - num_window,
            num_window=num_window,
        )


def count_params(cfg) -> tuple:
    """Exact (total, trainable) parameter counts, building only 2 of the ViT's blocks.

    Blocks of one kind have identical shapes, so ``total = rest + n_window * window block +
    n_global * global block``; the 2-block model (one windowed, one global) is small on the CPU.
    """
    small = LazyConfig.apply_overrides(
        copy.deepcopy(cfg),
        ["model.backbone.net.depth=2", "model.backbone.net.window_block_indexes=[0]"],
    )
    model = instantiate(small.model)
    net = model.backbone.net

    def count(module, trainable: bool) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)

    spec = Vit.from_cfg(cfg, cfg.model.backbone.square_pad or cfg.model.backbone.net.img_size)
    out = []
    for trainable in (False, True):
        win, glb = count(net.blocks[0], trainable), count(net.blocks[1], trainable)
        rest = count(model, trainable) - win - glb
        out.append(rest + spec.num_window * win + spec.num_global * glb)
    return tuple(out)


def attention_bytes(v: Vit, span: int, impl: str, side: int) -> int:
    """Saved attention tensors of one block (AMP training), ``span`` keys per query."""
    n, c, h = v.tokens, v.dim, v.heads
    if impl == "sdpa":
        return 12 * n * c + 2 * h * n * span + 4 * h * n
    if impl == "plain":
        return 8 * n * c + 6 * h * n * span
    if impl == "blocked":
        return 12 * n * c + 4 * h * n * side
    raise ValueError(f"unknown attn_impl {impl!r}")


def block_bytes(v: Vit, global_attn: bool, impl: str) -> tuple:
    """(saved activations, largest single saved tensor) of one block, AMP training."""
    n, c, f = v.tokens, v.dim, v.hidden
    span, side = (n, v.grid) if global_attn else (v.window**2, v.window)
    common = 8 * n * c + 6 * n * c + 4 * n * f
    attn = attention_bytes(v, span, impl, side)
    largest = {
        "sdpa": 2 * v.heads * n * span,
        "plain": 4 * v.heads * n * span,
        "blocked": 2 * v.heads * n * side,
    }[impl]
    return common + attn, max(largest, 2 * n * f)


def head_bytes(size: int, dim: int, rois: int = 512, fg: int = 128) -> int:
    """Saved activations of pyramid, RPN, 3 cascade box heads and the mask head (16-bit units).

    Each conv saves its input; each LayerNorm (detectron2's, over channels) about 4 units per
    element (centred input, normalised output, fp32 affine output); ReLU/GELU one more.
    """
    p4, p8, p16, p32, p64 = [(size // s) ** 2 for s in (4, 8, 16, 32, 64)]
    units = 0
    units += p8 * (dim // 2) * (1 + 4 + 1 + 1)  # deconv-LN-GELU-deconv (stride 4 branch)
    units += p4 * (dim // 4) + p4 * 256 * (4 + 1 + 4)  # 1x1 conv, LN, 3x3 conv, LN
    units += p8 * (dim // 2) + p8 * 256 * 9  # stride 8 branch after its deconv
    units += p16 * dim + p16 * 256 * 9 + p32 * dim + p32 * 256 * 9  # strides 16, 32
    units += (p4 + p8 + p16 + p32 + p64) * 256 * 5  # RPN: 2 convs + ReLUs + 2 predictors
    box_head = 49 * 256 * (4 * 6) + 49 * 256 + 1024 * 2  # 4 conv+LN+ReLU, flatten, fc
    units += 3 * rois * box_head
    units += fg * 196 * 256 * (4 * 6 + 1) + fg * 784 * 256 * 2  # 4 conv+LN+ReLU, deconv
    return 2 * units


def estimate(cfg, size: int, impl: str, counts: tuple) -> dict:
    """Estimated peak bytes per image: training (checkpointing on / off) and inference.

    Args:
        counts (tuple): (total, trainable) parameters, from :func:`count_params`.
    """
    v = Vit.from_cfg(cfg, size)
    total, trainable = counts
    states = 4 * total + 4 * trainable + 8 * trainable + 2 * total
    win, win_max = block_bytes(v, False, impl)
    glb, glb_max = block_bytes(v, True, impl)
    heads = head_bytes(size, v.dim)
    # backward of one block: its activations (recomputed or kept) + gradients of the largest
    backward = max(win + win_max, glb + glb_max)
    no_ckpt = v.num_window * win + v.num_global * glb + heads + max(win_max, glb_max)
    ckpt = (v.num_window + v.num_global) * 4 * v.tokens * v.dim + heads + backward
    n, c, h = v.tokens, v.dim, v.heads
    attn_peak = {  # fp32 no-grad transient of one global block
        "sdpa": min(4 * h * n * n, DEFAULT_MAX_MASK_BYTES),  # mask built in row blocks
        "plain": 3 * 4 * h * n * n,
        "blocked": 2 * 4 * h * n * v.grid + DEFAULT_BLOCK_BYTES,
    }[impl]
    block_peak = 4 * n * c * 5 + max(attn_peak, 8 * n * v.hidden)
    infer32 = 4 * total + block_peak
    infer16 = 4 * total + 2 * total + block_peak // 2
    return {
        "params": total,
        "trainable": trainable,
        "states": states,
        "train_ckpt": states + ckpt,
        "train_no_ckpt": states + no_ckpt,
        "infer_fp32": infer32,
        "infer_bf16": infer16,
        "global_bias": 2 * h * n * n,
    }


def print_estimates(args) -> None:
    print("# estimated (no GPU in this process): analytic model, see bench/memory.py docstring")
    cfg = load_cfg(args.config_file, args.sizes[0])
    total, trainable = count_params(cfg)
    print(f"# {args.config_file}: {total / 1e6:.1f}M parameters, {trainable / 1e6:.1f}M trainable")
    print(
        f"{'size':>5} {'attn_impl':<10} {'train ckpt':>11} {'train no-ckpt':>14} "
        f"{'infer fp32':>11} {'infer bf16':>11}  (GiB per image, estimated)"
    )
    for size in args.sizes:
        cfg = load_cfg(args.config_file, size)
        for impl in args.impls:
            e = estimate(cfg, size, impl, (total, trainable))
            print(
                f"{size:>5} {impl:<10} {e['train_ckpt'] / GIB:11.1f} "
                f"{e['train_no_ckpt'] / GIB:14.1f} {e['infer_fp32'] / GIB:11.1f} "
                f"{e['infer_bf16'] / GIB:11.1f}"
            )
        e = estimate(cfg, size, "sdpa", (total, trainable))
        print(
            f"      model states (weights, grads, AdamW, fp16 copies): {e['states'] / GIB:.1f} GiB;"
            f" one global block's bias (fp16): {e['global_bias'] / GIB:.2f} GiB"
        )


# ------------------------------------------------------------------------------------ measure


def synthetic_input(size: int, num_boxes: int = 10, num_classes: int = 80) -> dict:
    """A training input: random image and ``num_boxes`` random boxes with rectangle masks."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(0)
    xy = torch.randint(0, size // 2, (num_boxes, 2), generator=g).float()
    wh = torch.randint(32, size // 2, (num_boxes, 2), generator=g).float()
    boxes = torch.cat([xy, xy + wh], dim=1).clamp(max=size - 1)
    masks = torch.zeros(num_boxes, size, size, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        masks[i, y0:y1, x0:x1] = True
    inst = Instances((size, size))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.randint(0, num_classes, (num_boxes,), generator=g)
    inst.gt_masks = BitMasks(masks)
    image = torch.randint(0, 256, (3, size, size), generator=g).float()
    return {"image": image, "height": size, "width": size, "instances": inst}


def reset_peak(device: str) -> None:
    """Start a peak-memory measurement on ``device`` (CUDA: the caching allocator's peak)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def read_peak(device: str) -> int:
    """Peak bytes since :func:`reset_peak`: ``torch.cuda.max_memory_allocated`` on CUDA; on the
    CPU the process's peak resident set size (``ru_maxrss``, never reset: an upper bound)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure_training(
    cfg, size: int, checkpointing: bool, device: str, amp_dtype=torch.float16
) -> int:
    """Peak bytes of the second AMP training step on one image.

    Args:
        amp_dtype: autocast dtype (float16 as the official recipe; bfloat16 for CPU autocast).
    """
    cfg.model.backbone.net.use_act_checkpoint = checkpointing
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    device_type = torch.device(device).type
    scaler = torch.amp.GradScaler(device_type, enabled=amp_dtype == torch.float16)
    batch = [synthetic_input(size)]
    peak = 0
    with EventStorage(0):  # detectron2's training forward logs into the current storage
        for _ in range(2):
            reset_peak(device)
            with torch.autocast(device_type, dtype=amp_dtype):
                losses = model(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(sum(losses.values())).backward()
            scaler.step(optimizer)
            scaler.update()
            peak = read_peak(device)
    del model, optimizer, scaler
    if device_type == "cuda":
        torch.cuda.empty_cache()
    return peak


def measure_inference(cfg, size: int, dtype, device: str) -> int:
    """Peak bytes of one no-grad forward on one image (``dtype`` None = fp32)."""
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device).eval()
    batch = [{k: v for k, v in synthetic_input(size).items() if k != "instances"}]
    peak = 0
    for _ in range(2):
        torch.cuda.reset_peak_memory_stats()
        with (
            torch.no_grad(),
            torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            model(batch)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    del model
    torch.cuda.empty_cache()
    return peak


def print_measurements(args) -> None:
    device = "cuda"
    print(f"# measured on {torch.cuda.get_device_name()} (torch.cuda.max_memory_allocated)")
    print(
        f"{'size':>5} {'train ckpt':>11} {'train no-ckpt':>14} {'infer fp32':>11} "
        f"{'infer bf16':>11}  (GiB per image, measured; OOM = out of memory)"
    )
    for size in args.sizes:
        row = []
        for run in (
            lambda c: measure_training(c, size, True, device),
            lambda c: measure_training(c, size, False, device),
            lambda c: measure_inference(c, size, None, device),
            lambda c: measure_inference(c, size, torch.bfloat16, device),
        ):
            try:
                row.append(f"{run(load_cfg(args.config_file, size)) / GIB:.1f}")
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                row.append("OOM")
        print(f"{size:>5} {row[0]:>11} {row[1]:>14} {row[2]:>11} {row[3]:>11}", flush=True)


def main() -> int:
    args = parse_args()
    print("# python bench/memory.py " + " ".join(sys.argv[1:]))
    mode = args.mode
    if mode == "auto":
        mode = "measure" if torch.cuda.is_available() else "estimate"
    if mode == "measure":
        if not torch.cuda.is_available():
            sys.exit("--mode measure needs a CUDA GPU; use --mode estimate on this machine")
        print_measurements(args)
    else:
        print_estimates(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
