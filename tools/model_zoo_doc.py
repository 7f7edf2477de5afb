#!/usr/bin/env python
"""Write docs/MODEL_ZOO.md from the checkpoint table (eva_det/model_zoo/table.py).

``python tools/model_zoo_doc.py`` (re)writes the file; ``--check`` exits with status 1 when the
file differs from what the table gives; ``--output PATH`` writes or checks another file.
"""

import argparse
import logging
import os
import sys
from typing import List, Optional

from eva_det.config.paths import repo_root
from eva_det.errors import InputError, exit_on_input_error
from eva_det.model_zoo import render_model_zoo_markdown
from eva_det.utils.atomic import atomic_write_text

logger = logging.getLogger("model_zoo_doc")


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` (None: sys.argv); return the process exit code (InputError: bad --output)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.fspath(repo_root() / "docs" / "MODEL_ZOO.md"))
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder) or os.path.isdir(args.output):
        raise InputError(
            f"--output {args.output}: give a file in an existing folder ({folder} "
            + ("is missing)." if not os.path.isdir(folder) else "exists; that path is a folder).")
        )
    text = render_model_zoo_markdown()
    if args.check:
        current = open(args.output).read() if os.path.isfile(args.output) else None
        if current != text:
            logger.error("%s is out of date: run python tools/model_zoo_doc.py", args.output)
            return 1
        logger.info("%s is up to date", args.output)
        return 0
    atomic_write_text(text, args.output)
    logger.info("wrote %s", args.output)
    return 0


def cli(argv: Optional[List[str]] = None) -> int:
    """``main`` as a command: bad input is one message and exit status 2, no traceback."""
    with exit_on_input_error(logger):
        return main(argv)


if __name__ == "__main__":
    sys.exit(cli())
