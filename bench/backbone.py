#!/usr/bin/env python
"""EVA-01 block speed: eva_det's SDPA attention vs the official-style plain path, side by side.

For B-size (768/12 heads) and 1B-size (1408/16 heads, mlp 6144) blocks, times one windowed
block (window 16, like the 1B recipe; 14 for B) and one global block at each input size, forward
and forward+backward, with the same weights and input for both paths, and checks the outputs are
equal. Whole-backbone time = 30 windowed + 10 global blocks (1B) or 8 + 4 (B).

    python bench/backbone.py                       # CPU, fp32, batch 1
    python bench/backbone.py --device cuda --dtype bfloat16 --sizes 1024 1280 1536
"""

import argparse
import time

import torch

from eva_det.modeling.backbone.eva_vit import Block

SIZES = {
    "B": dict(dim=768, heads=12, mlp_ratio=4.0, window=14, n_win=8, n_glb=4),
    "1B": dict(dim=1408, heads=16, mlp_ratio=6144 / 1408, window=16, n_win=30, n_glb=10),
}


def _time(fn, repeat: int, sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def _plain_attn_bytes(tokens: int, heads: int, itemsize: int) -> int:
    # logits + 5-D bias broadcast + softmax output, per image
    return 3 * heads * tokens * tokens * itemsize


def bench_block(spec, size, global_attn, args, device, dtype, sync):
    grid = size // 16
    torch.manual_seed(0)
    kw = dict(
        dim=spec["dim"],
        num_heads=spec["heads"],
        mlp_ratio=spec["mlp_ratio"],
        use_rel_pos=True,
        rel_pos_zero_init=False,
        window_size=0 if global_attn else spec["window"],
        input_size=(80, 80),
        beit_like_qkv_bias=True,
    )
    blocks = {}
    for impl in ("plain", "sdpa", "augmented"):
        torch.manual_seed(0)
        blocks[impl] = Block(attn_impl=impl, **kw).to(device=device, dtype=dtype)
    x = torch.randn(args.batch, grid, grid, spec["dim"], device=device, dtype=dtype)
    tokens = grid * grid if global_attn else spec["window"] ** 2
    if _plain_attn_bytes(tokens, spec["heads"], x.element_size()) * args.batch > args.max_bytes:
        return None
    res = {}
    with torch.no_grad():
        out = {k: b(x) for k, b in blocks.items()}
    err = ((out["sdpa"] - out["plain"]).abs().max() / out["plain"].abs().max()).item()
    for impl, blk in blocks.items():
        with torch.no_grad():
            fwd = _time(lambda: blk(x), args.repeat, sync)
        xg = x.clone().requires_grad_(True)
        fb = _time(lambda: blk(xg).float().square().mean().backward(), args.repeat, sync)
        res[impl] = (fwd, fb)
    return res, err


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--models", nargs="+", default=["B", "1B"], choices=list(SIZES))
    p.add_argument("--sizes", nargs="+", type=int, default=[1024, 1280, 1536])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument(
        "--max-bytes",
        type=float,
        default=4e9,
        help="skip a plain global block whose attention would exceed this",
    )
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(
        f"# reproduce: python bench/backbone.py --device {args.device} --dtype {args.dtype} "
        f"--models {' '.join(args.models)} --sizes {' '.join(map(str, args.sizes))} "
        f"--batch {args.batch} --repeat {args.repeat}"
    )
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    header = (
        "model",
        "size",
        "block",
        "plain fwd s",
        "sdpa fwd s",
        "fwd x",
        "plain f+b s",
        "sdpa f+b s",
        "f+b x",
        "max rel err",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in args.models:
        spec = SIZES[name]
        for size in args.sizes:
            totals = {"plain": [0.0, 0.0], "sdpa": [0.0, 0.0]}
            complete = True
            for global_attn, count in ((False, spec["n_win"]), (True, spec["n_glb"])):
                r = bench_block(spec, size, global_attn, args, device, dtype, sync)
                kind = "global" if global_attn else f"window{spec['window']}"
                if r is None:
                    print(
                        f"| {name} | {size} | {kind} | skipped (plain attention > "
                        f"{args.max_bytes / 1e9:.0f} GB) |"
                    )
                    complete = False
                    continue
                res, err = r
                for impl in totals:
                    totals[impl][0] += count * res[impl][0]
                    totals[impl][1] += count * res[impl][1]
                pf, pb = res["plain"]
                sf, sb = res["sdpa"]
                print(
                    f"| {name} | {size} | {kind} | {pf:.3f} | {sf:.3f} | {pf / sf:.2f} | "
                    f"{pb:.3f} | {sb:.3f} | {pb / sb:.2f} | {err:.1e} |"
                )
            if complete:
                (pf, pb), (sf, sb) = totals["plain"], totals["sdpa"]
                print(
                    f"| {name} | {size} | whole backbone | {pf:.2f} | {sf:.2f} | {pf / sf:.2f} | "
                    f"{pb:.2f} | {sb:.2f} | {pb / sb:.2f} | |"
                )


if __name__ == "__main__":
    main()
