"""Generate the synthetic shapes dataset ahead of training (otherwise it is built on first use).

Example::

    python datasets/prepare_shapes.py --root datasets/shapes

writes ``<root>/{train,val}/*.png`` and ``<root>/annotations/instances_{train,val}.json``.
Splits that already exist are left as they are.
"""

import argparse
import logging
import time
from typing import List, Optional

from eva_det.data.datasets.shapes import (
    SHAPES_IMAGE_SIZE,
    SHAPES_NUM_TRAIN,
    SHAPES_NUM_VAL,
    SHAPES_SEED,
    default_shapes_root,
    generate_shapes,
)

logger = logging.getLogger("prepare_shapes")


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv`` (None: sys.argv) and generate the requested splits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=default_shapes_root(), help="output directory")
    parser.add_argument("--num-train", type=int, default=SHAPES_NUM_TRAIN, help="0 skips")
    parser.add_argument("--num-val", type=int, default=SHAPES_NUM_VAL, help="0 skips")
    parser.add_argument("--image-size", type=int, default=SHAPES_IMAGE_SIZE)
    parser.add_argument("--seed", type=int, default=SHAPES_SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for split, num_images in (("train", args.num_train), ("val", args.num_val)):
        if num_images <= 0:
            continue
        start = time.perf_counter()
        path = generate_shapes(args.root, split, num_images, args.image_size, args.seed)
        logger.info("%s ready: %s (%.1f s)", split, path, time.perf_counter() - start)


if __name__ == "__main__":
    main()
