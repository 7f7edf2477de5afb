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
import sys

from eva_det.checkpoint import FORMATS, convert_file


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
    """Run the conversion; returns the process exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
