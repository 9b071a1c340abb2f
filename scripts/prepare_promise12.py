"""Convert the official PROMISE12 training data (.mhd/.raw) into SLC-Net's h5 layout (see
segssl.data.prepare_promise12).

Why a script: a one-off data step, run once per machine before ``+experiment=promise12``::

    python scripts/prepare_promise12.py /data/PROMISE12_raw /data/PROMISE12
    python scripts/prepare_promise12.py RAW OUT --overwrite
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from segssl.data.conversion import run_conversion
from segssl.data.prepare_promise12 import prepare_promise12


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "raw_dir", type=Path, help="folder holding CaseNN.mhd and CaseNN_segmentation.mhd"
    )
    parser.add_argument("out_dir", type=Path, help="dataset folder to create (data/, *.list)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty OUT_DIR written before"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-case progress lines")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the conversion; a data error is one line on stderr and exit status 1."""
    args = parse_args(argv)
    return run_conversion(
        prepare_promise12,
        args.raw_dir,
        args.out_dir,
        overwrite=args.overwrite,
        log=None if args.quiet else print,
    )


if __name__ == "__main__":
    sys.exit(main())
