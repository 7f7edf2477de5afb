#!/usr/bin/env python
"""EVA-01 backbone speed: eva_det's attention paths vs the official-style plain path, side by side.

For B-size (768 / 12 heads, window 14 as ViTDet-B) and 1B-size (1408 / 16 heads, mlp 6144,
window 16) blocks, times one windowed and one global block at each input size with the same
weights and input for every ``attn_impl`` ("plain" = official matmul + softmax; "sdpa" = fused
kernel with the bias as mask, eva_det's default on GPU; "blocked" = cache-sized blocks, eva_det's
default on CPU in fp32), forward and forward + backward, and
checks the outputs are equal. Whole backbone = 8 windowed + 4 global blocks (B) or 30 + 10 (1B),
from the block times.

    python bench/backbone.py                     # CPU: B at 1024, fp32, batch 1 (about 2 min)
    python bench/backbone.py --models B 1B --sizes 1024 1280 1536 --no-backward   # CPU, all
    python bench/backbone.py --device cuda --dtype bfloat16   # GPU: B and 1B at 1024/1280/1536

A configuration whose plain attention would need more than ``--max-bytes`` (default: 40% of the
machine's memory, or of the GPU's) is skipped and said so.
"""

import argparse
import os
import time

import torch

from eva_det.modeling.backbone.eva_vit import Block

SIZES = {
    "B": dict(dim=768, heads=12, mlp_ratio=4.0, window=14, n_win=8, n_glb=4),
    "1B": dict(dim=1408, heads=16, mlp_ratio=6144 / 1408, window=16, n_win=30, n_glb=10),
}
FAST = ["sdpa", "blocked"]  # "auto" = blocked on CPU in fp32, sdpa otherwise
ATTN_IMPLS = ["plain"] + FAST


def _time(fns: dict, repeat: int, sync) -> dict:
    """Best time of each function, the functions interleaved in every round (fairer on a noisy
    machine than timing one after the other); one warm-up call each first."""
    for fn in fns.values():
        fn()
    sync()
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def _plain_attn_bytes(tokens: int, heads: int, batch: int, itemsize: int, backward: bool) -> int:
    # logits, logits + rel_h, + rel_w and the softmax, per image; autograd keeps two more
    return (5 if backward else 3) * batch * heads * tokens * tokens * itemsize


def _default_max_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return 0.4 * torch.cuda.get_device_properties(device).total_memory
    return 0.4 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def bench_block(spec, size, global_attn, args, device, dtype, sync):
    """Times of one block per impl, {impl: (fwd s, fwd+bwd s or None)}, and max rel errors vs
    plain; None when the plain attention would exceed --max-bytes."""
    grid = size // 16
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
    tokens = grid * grid if global_attn else spec["window"] ** 2
    batch = args.batch * (1 if global_attn else -((-grid // spec["window"]) ** 2))
    itemsize = torch.finfo(dtype).bits // 8
    if _plain_attn_bytes(tokens, spec["heads"], batch, itemsize, False) > args.max_bytes:
        return None
    torch.manual_seed(0)
    x = torch.randn(args.batch, grid, grid, spec["dim"], device=device, dtype=dtype)
    blocks = {}
    for impl in ATTN_IMPLS:
        torch.manual_seed(0)
        blocks[impl] = Block(attn_impl=impl, **kw).to(device=device, dtype=dtype)
    with torch.no_grad():
        out = {k: b(x) for k, b in blocks.items()}
    scale = out["plain"].abs().max()
    err = {k: ((out[k] - out["plain"]).abs().max() / scale).item() for k in FAST}
    del out
    backward = args.backward and (
        _plain_attn_bytes(tokens, spec["heads"], batch, itemsize, True) <= args.max_bytes
    )
    with torch.no_grad():
        fwd = _time({i: (lambda b=b: b(x)) for i, b in blocks.items()}, args.repeat, sync)
    fb = dict.fromkeys(blocks)
    if backward:
        xg = x.clone().requires_grad_(True)
        fns = {i: (lambda b=b: b(xg).float().square().mean().backward()) for i, b in blocks.items()}
        fb = _time(fns, args.repeat, sync)
    res = {impl: (fwd[impl], fb[impl]) for impl in blocks}
    return res, err


def _fmt(t):
    return "-" if t is None else (f"{t:.3f}" if t < 100 else f"{t:.1f}")


def _ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--models", nargs="+", choices=list(SIZES), help="default: B on CPU, B 1B on GPU"
    )
    p.add_argument(
        "--sizes", nargs="+", type=int, help="default: 1024 on CPU, 1024 1280 1536 on GPU"
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="timed rounds after a warm-up; best kept")
    p.add_argument("--no-backward", dest="backward", action="store_false", help="forward only")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--max-bytes", type=float, default=None, help="skip plain attention above this")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    on_gpu = device.type == "cuda"
    args.models = args.models or (["B", "1B"] if on_gpu else ["B"])
    args.sizes = args.sizes or ([1024, 1280, 1536] if on_gpu else [1024])
    if args.max_bytes is None:
        args.max_bytes = _default_max_bytes(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(
        f"# reproduce: python bench/backbone.py --device {args.device} --dtype {args.dtype} "
        f"--models {' '.join(args.models)} --sizes {' '.join(map(str, args.sizes))} "
        f"--batch {args.batch} --repeat {args.repeat}"
        + ("" if args.backward else " --no-backward")
        + (f" --threads {args.threads}" if args.threads else "")
    )
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPUs"
    print(
        f"# torch {torch.__version__}, {hw}, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}; times in s (best of {args.repeat}), "
        "x = plain / impl"
    )
    header = ["model", "size", "block", "plain fwd"]
    header += [f"{i} fwd (x)" for i in FAST] + ["plain f+b"] + [f"{i} f+b (x)" for i in FAST]
    header += [f"{i} max rel err" for i in FAST]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    t_start = time.perf_counter()
    for name in args.models:
        spec = SIZES[name]
        for size in args.sizes:
            totals = {impl: [0.0, 0.0] for impl in ATTN_IMPLS}
            complete, with_backward = True, args.backward
            for global_attn, count in ((False, spec["n_win"]), (True, spec["n_glb"])):
                kind = "global" if global_attn else f"window{spec['window']}"
                r = bench_block(spec, size, global_attn, args, device, dtype, sync)
                if r is None:
                    print(
                        f"| {name} | {size} | {kind} | skipped: plain attention > "
                        f"{args.max_bytes / 2**30:.1f} GiB (--max-bytes) |"
                    )
                    complete = False
                    continue
                res, err = r
                row = [name, str(size), kind, _fmt(res["plain"][0])]
                row += [f"{_fmt(res[i][0])} ({_ratio(res['plain'][0], res[i][0])})" for i in FAST]
                row += [_fmt(res["plain"][1])]
                row += [f"{_fmt(res[i][1])} ({_ratio(res['plain'][1], res[i][1])})" for i in FAST]
                row += [f"{err[i]:.1e}" for i in FAST]
                print("| " + " | ".join(row) + " |", flush=True)
                for impl in ATTN_IMPLS:
                    totals[impl][0] += count * res[impl][0]
                    if res[impl][1] is None:
                        with_backward = False
                    else:
                        totals[impl][1] += count * res[impl][1]
            if not complete:
                continue
            pf, pb = totals["plain"]
            pb = pb if with_backward else None
            row = [name, str(size), f"backbone ({spec['n_win']}w+{spec['n_glb']}g)", _fmt(pf)]
            row += [f"{_fmt(totals[i][0])} ({_ratio(pf, totals[i][0])})" for i in FAST]
            row += [_fmt(pb)]
            for i in FAST:
                fb = totals[i][1] if with_backward else None
                row += [f"{_fmt(fb)} ({_ratio(pb, fb)})"]
            row += [""] * len(FAST)
            print("| " + " | ".join(row) + " |", flush=True)
    print(f"# wall {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
