"""Turn an h5 benchmark copy (SSL4MIS ACDC or UA-MT LA) into a ``data=folder`` NIfTI dataset,
so that ``segssl plan`` can be compared with the published protocols on data whose right
answer is known.

The h5 copies store no voxel spacing, so ``--spacing`` (x y z, mm) is written into every header:
the documented acquisition spacing of the dataset (ACDC: about 1.5 mm in-plane, 5-10 mm
between slices; LA: 0.625 mm isotropic). Their intensities are already normalised (min-max for
ACDC, z-score for LA): the plan's intensity figures describe those values, not raw scans.

    python scripts/h5_to_folder.py acdc ../shared/data/ACDC OUT --spacing 1.5625 1.5625 10
    python scripts/h5_to_folder.py la ../shared/data/LA OUT --spacing 0.625 0.625 0.625 --val 4

ACDC's training volumes are stored as slices (``data/slices/<case>_slice_<k>.h5``): they are
stacked back in slice order.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np


def cases_and_paths(kind: str, root: Path) -> dict[str, dict[str, Path]]:
    """split -> case -> h5 file, from the benchmark's own lists."""
    if kind == "acdc":
        lists = {"train": "train.list", "val": "val.list", "test": "test.list"}
        paths = {s: root / n for s, n in lists.items() if (root / n).is_file()}
        return {
            split: {c: root / "data" / f"{c}.h5" for c in _read(path)}
            for split, path in paths.items()
        }
    folder = root / "2018LA_Seg_Training Set"
    return {
        split: {c: folder / c / "mri_norm2.h5" for c in _read(root / f"{split}.list")}
        for split in ("train", "test")
    }


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A volume's image and label; an ACDC training volume from its slice files."""
    if not path.is_file():
        slices = sorted(
            path.parent.glob(f"slices/{path.stem}_slice_*.h5"),
            key=lambda p: int(p.stem.rsplit("_", 1)[1]),
        )
        if not slices:
            raise FileNotFoundError(f"{path}: neither the volume nor its slices exist")
        pairs = [read_volume(s) for s in slices]
        return np.stack([i for i, _ in pairs]), np.stack([lab for _, lab in pairs])
    with h5py.File(path, "r") as handle:
        return handle["image"][()], handle["label"][()]


def _read(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def convert(kind: str, root: Path, out: Path, spacing: Sequence[float], val: int) -> None:
    splits = cases_and_paths(kind, root)
    if val and "val" not in splits:  # LA has no validation list: the last N training cases
        train = list(splits["train"])
        splits["val"] = {c: splits["train"].pop(c) for c in train[-val:]}
    affine = np.diag([*map(float, spacing), 1.0])
    for folder in ("imagesTr", "labelsTr"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for split, cases in splits.items():
        for case, path in cases.items():
            image, label = read_volume(path)
            if kind == "acdc":  # stored (slices, H, W): NIfTI's x, y, z is (H, W, slices)
                image, label = image.transpose(1, 2, 0), label.transpose(1, 2, 0)
            nib.save(
                nib.Nifti1Image(image.astype(np.float32), affine),
                out / "imagesTr" / f"{case}.nii.gz",
            )
            nib.save(
                nib.Nifti1Image(label.astype(np.uint8), affine), out / "labelsTr" / f"{case}.nii.gz"
            )
        (out / f"{split}.list").write_text("\n".join(cases) + "\n")
        print(f"{split}: {len(cases)} cases")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["acdc", "la"])
    parser.add_argument("root", type=Path, help="the h5 dataset folder")
    parser.add_argument("out", type=Path, help="the NIfTI folder to write (must not exist)")
    parser.add_argument("--spacing", type=float, nargs=3, required=True, metavar=("X", "Y", "Z"))
    parser.add_argument("--val", type=int, default=0, help="LA: training cases moved to val")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists: choose a new folder")
    convert(args.kind, args.root, args.out, args.spacing, args.val)


if __name__ == "__main__":
    main()
