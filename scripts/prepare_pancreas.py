"""Convert NIH Pancreas-CT (NIfTI + TCIA labels) into MC-Net's h5 layout (see
segssl.data.prepare_pancreas).

Why a script: a one-off data step, run once per machine before ``+experiment=pancreas``::

    python scripts/prepare_pancreas.py /data/Pancreas_raw /data/Pancreas
    python scripts/prepare_pancreas.py RAW OUT --overwrite --margin 25
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from segssl.data.conversion import run_conversion
from segssl.data.prepare_pancreas import MARGIN, prepare_pancreas


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "raw_dir", type=Path, help="folder holding imageNNNN.nii.gz and labelNNNN.nii.gz files"
    )
    parser.add_argument(
        "out_dir", type=Path, help="dataset folder to create (Pancreas_h5/, *.list)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty OUT_DIR written before"
    )
    parser.add_argument(
        "--margin",
        type=int,
        default=MARGIN,
        help=f"x/y crop margin around the pancreas, voxels at 1 mm (default {MARGIN}, MC-Net)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-case progress lines")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the conversion; a data error is one line on stderr and exit status 1."""
    args = parse_args(argv)
    return run_conversion(
        prepare_pancreas,
        args.raw_dir,
        args.out_dir,
        overwrite=args.overwrite,
        margin=args.margin,
        log=None if args.quiet else print,
    )


if __name__ == "__main__":
    sys.exit(main())
