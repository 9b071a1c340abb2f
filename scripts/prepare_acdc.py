"""Convert the official ACDC download into the SSL4MIS h5 layout (see segssl.data.prepare_acdc).

Why a script: a one-off data step, run once per machine before training on real ACDC::

    python scripts/prepare_acdc.py /data/ACDC_raw /data/ACDC            # standard split
    python scripts/prepare_acdc.py RAW OUT --overwrite --all-slices     # replace, all slices
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from segssl.data.conversion import run_conversion
from segssl.data.prepare_acdc import prepare_acdc


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path, help="folder holding the patientXXX folders")
    parser.add_argument("out_dir", type=Path, help="dataset folder to create (data/, *.list)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty OUT_DIR written before"
    )
    parser.add_argument(
        "--all-slices",
        action="store_true",
        help="write slice files for every volume, not only the training patients",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-patient progress lines")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the conversion; a data error is one line on stderr and exit status 1."""
    args = parse_args(argv)
    return run_conversion(
        prepare_acdc,
        args.raw_dir,
        args.out_dir,
        overwrite=args.overwrite,
        all_slices=args.all_slices,
        log=None if args.quiet else print,
    )


if __name__ == "__main__":
    sys.exit(main())
