"""``python -m segssl filter INPUT --out FILE.png``: write a DSAIF filter panel for one image."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from segssl.data.image_io import read_slice
from segssl.filters.panel import render_filter_panel


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segssl filter",
        description="Write a PNG panel: original, Max-tree and Min-tree views, and differences.",
    )
    parser.add_argument("input", type=Path, help="h5 (key 'image'), NIfTI or PNG file")
    parser.add_argument("--out", type=Path, required=True, help="output .png path")
    parser.add_argument("--area-threshold", type=int, default=50)
    parser.add_argument("--connectivity", type=int, choices=(4, 8), default=None)
    parser.add_argument(
        "--slice",
        dest="slice_index",
        type=int,
        default=None,
        help="slice of a 3-D volume (default: the middle one)",
    )
    parser.add_argument(
        "--axis",
        type=int,
        default=None,
        help="slice axis of a 3-D volume (default: see segssl.data.image_io.read_slice)",
    )
    parser.add_argument("--title", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    image = read_slice(args.input, args.slice_index, args.axis)
    title = args.title or args.input.name
    out = render_filter_panel(image, args.out, args.area_threshold, args.connectivity, title)
    print(f"wrote {out}")
    return out
