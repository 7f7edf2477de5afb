#!/usr/bin/env python
"""Convert a pretrained EVA / EVA-02 backbone into eva_det's detector layout.

Example (EVA-02 L MIM weights, already patch 16)::

    python tools/convert_pretrained.py --input eva02_L_pt_m38m_p14to16.pt \\
        --output eva02_L_pt_m38m_det.pth

The output holds ``{"model": {"backbone.net....": tensor}}``; pass it as ``train.init_checkpoint``.
The input is read with ``weights_only=True`` (plus the argparse / numpy types official EVA files
pickle); ``--unsafe-load-executes-code`` reads other trusted files, running their pickled code.
All the work is done by :func:`eva_det.checkpoint.convert_file`.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys

from eva_det.checkpoint import FORMATS, convert_file
from eva_det.errors import InputError, exit_on_input_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, metavar="PATH", help="pretrained checkpoint")
    parser.add_argument("--output", required=True, metavar="PATH", help="converted file to write")
    parser.add_argument(
        "--format", default="auto", choices=("auto",) + FORMATS, help="source layout"
    )
    parser.add_argument("--patch-size", type=int, default=16, help="target patch size")
    parser.add_argument(
        "--pretrain-img-size",
        type=int,
        default=224,
        help="image size the target pos_embed describes (grid = size // patch size)",
    )
    parser.add_argument(
        "--prefix", default=None, help="key prefix of the ViT, e.g. 'visual.' (default: infer)"
    )
    parser.add_argument(
        "--keep-gamma", action="store_true", help="keep LayerScale gamma_1/gamma_2 tensors"
    )
    parser.add_argument(
        "--unsafe-load-executes-code",
        action="store_true",
        help="load an input that pickles objects other than tensors (and the argparse / numpy "
        "types official EVA files use) with torch.load(weights_only=False): this EXECUTES the "
        "code pickled in the file; only for files from a trusted source",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; returns the process exit status.

    Raises:
        InputError: the input is missing, not a torch checkpoint or not a convertible ViT, or
            the output name is unusable (see docs/TROUBLESHOOTING.md).
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not os.path.isfile(args.input):
        raise InputError(
            f"--input {args.input}: no such file (working directory {os.getcwd()}). Pass the "
            "downloaded pretrained checkpoint (.pt / .pth)."
        )
    with open(args.input, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..) or, before torch 1.6, a pickle (protocol byte 0x80)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise InputError(
            f"--input {args.input}: not a torch checkpoint (it starts with {head!r}, neither a "
            "zip archive nor a pickle). Pass an EVA / EVA-02 pretrained .pt / .pth file; a "
            "failed download often saves an html or text page instead."
        )
    if os.path.isdir(args.output):
        raise InputError(f"--output {args.output} is a folder; give the file name to write.")
    try:
        convert_file(
            args.input,
            args.output,
            args.format,
            patch_size=args.patch_size,
            pretrain_img_size=args.pretrain_img_size,
            keep_gamma=args.keep_gamma,
            prefix=args.prefix,
            unsafe_load_executes_code=args.unsafe_load_executes_code,
        )
    except InputError:
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError) as e:  # torch.load of a non-checkpoint
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(
            f"--input {args.input}: cannot read it as a torch checkpoint ({type(e).__name__}: "
            f"{first}). Pass an EVA / EVA-02 pretrained .pt / .pth file; download it again if "
            "it may be truncated."
        ) from None
    except ValueError as e:  # the conversion's own checks: the layout is not a known ViT
        named = args.input in str(e) or args.output in str(e)
        raise InputError(str(e) if named else f"--input {args.input}: {e}") from None
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``main`` as a command: bad input is one message and exit status 2, no traceback."""
    with exit_on_input_error():
        return main(argv)


if __name__ == "__main__":
    sys.exit(cli())
