"""Throughput of the training data pipeline: your own NIfTI folder (``data=folder``) vs h5.

The same cases are written three ways in a temporary folder: as NIfTI (``data=folder``), as
SSL4MIS h5 slices (2-D, ``data=acdc``'s layout) and as UA-MT h5 volumes (3-D, ``data=la``'s
layout). The cases are ACDC volumes from the shared data (``SEGSSL_SHARED_DATA`` or
``../shared/data``), else the built-in synthetic phantom. For each, the data module is set up
as training does (timed: for ``data=folder`` the first set-up includes the one-off
preprocessing, the second reads the cache) and its training loader is iterated (labeled and
unlabeled streams, augmentation, batching; no workers). Also timed: ``layout.load`` of random
training items, which is what a loader that reads items on demand costs per sample::

    python scripts/bench_data.py                # 8 ACDC volumes, about three minutes
    python scripts/bench_data.py --quick        # a smoke run

The last line is ``ratio R``: folder / h5 training samples per second, the lower of the 2-D
and 3-D ratios (the goal is R >= 0.7 once the cache exists).

``--device-path`` instead compares, on the same 2-D slices at ACDC's protocol (256 x 256, batch
24 with 12 labeled, DSAIF views with p=0.5), the per-sample cost of the loader path without and
with the view cache and of the device-resident path (``data.on_device``, run here on this CPU:
an upper bound of its cost on a GPU, where it is a few dozen batched kernels per stream); its last
line is ``device_ratio R``: loader-with-cache / device-path seconds per sample. The functions
``loader_path_seconds_per_batch`` and ``device_path_seconds_per_batch`` measure one data module
and are what other benchmarks build on.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import torch

from segssl.data.datamodule import SemiSupervisedDataModule
from segssl.data.layouts import make_layout
from segssl.data.readers import read_list
from segssl.filters.views import dsaif_views

# the first volumes of ACDC's val.list: the shared data hold whole volumes only for val
ACDC_SPACING_ZYX = (10.0, 1.5, 1.5)


@dataclass
class Case:
    """One volume as stored in SSL4MIS h5: (D, H, W) = NIfTI (z, y, x)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing_zyx: tuple[float, float, float]


def shared_acdc() -> Path:
    env = os.environ.get("SEGSSL_SHARED_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return base / "ACDC"


def source_cases(count: int, synthetic_dir: Path, force_synthetic: bool) -> tuple[list[Case], str]:
    """``count`` volumes: ACDC's if present, else synthetic ones."""
    acdc = shared_acdc()
    if not force_synthetic and (acdc / "val.list").is_file():
        root, names, spacing, origin = acdc, read_list(acdc / "val.list"), ACDC_SPACING_ZYX, "ACDC"
    else:
        from segssl.data.synthetic import ensure_synthetic_dataset

        root = ensure_synthetic_dataset(
            synthetic_dir, num_train_patients=1, num_val_patients=(count + 1) // 2 + 1,
            num_test_patients=1, image_size=192, slices_per_volume=10,
        )  # fmt: skip
        names, spacing, origin = read_list(root / "val.list"), (5.0, 1.5, 1.5), "synthetic"
    if len(names) < count:
        raise SystemExit(f"{root} has {len(names)} volumes, fewer than --cases {count}")
    cases = []
    for name in names[:count]:
        with h5py.File(root / "data" / f"{name}.h5", "r") as f:
            image = np.asarray(f["image"][()], np.float32)
            label = np.asarray(f["label"][()], np.uint8)
        # one volume = one patient (SSL4MIS's labeled subset counts patients, the others cases)
        cases.append(Case(name.replace("_", ""), image, label, spacing))
    return cases, origin


def write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    """gzip-compressed, as the SSL4MIS and UA-MT files are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        f.create_dataset("label", data=label, compression="gzip")


def write_layouts(out: Path, cases: list[Case]) -> dict[str, Path]:
    """The cases as a NIfTI folder, SSL4MIS h5 slices and UA-MT h5 volumes; the last case is
    the validation (test) case, the others train."""
    train, held_out = cases[:-1], cases[-1]
    nifti, slices, volumes = out / "nifti", out / "h5_slices", out / "h5_volumes"
    for case in cases:
        xyz = case.image.transpose(2, 1, 0)  # NIfTI (x, y, z), as prepare_acdc reads it
        zooms = case.spacing_zyx[::-1]
        for folder, array in (("imagesTr", xyz), ("labelsTr", case.label.transpose(2, 1, 0))):
            image = nib.Nifti1Image(np.ascontiguousarray(array), np.diag([*zooms, 1.0]))
            image.header.set_zooms(zooms)
            (nifti / folder).mkdir(parents=True, exist_ok=True)
            nib.save(image, str(nifti / folder / f"{case.name}.nii.gz"))
        write_h5(
            volumes / "2018LA_Seg_Training Set" / case.name / "mri_norm2.h5",
            xyz,
            case.label.transpose(2, 1, 0),
        )
    slice_ids = []
    for case in train:
        for k in range(case.image.shape[0]):
            slice_id = f"{case.name}_slice_{k + 1}"
            write_h5(slices / "data" / "slices" / f"{slice_id}.h5", case.image[k], case.label[k])
            slice_ids.append(slice_id)
    write_h5(slices / "data" / f"{held_out.name}.h5", held_out.image, held_out.label)
    (slices / "train_slices.list").write_text("\n".join(slice_ids) + "\n")
    for root, train_list, held_list in (
        (nifti, "train.list", "val.list"),
        (slices, None, "val.list"),
        (volumes, "train.list", "test.list"),
    ):
        if train_list:
            (root / train_list).write_text("".join(f"{c.name}\n" for c in train))
        (root / held_list).write_text(f"{held_out.name}\n")
    return {"nifti": nifti, "h5_slices": slices, "h5_volumes": volumes}


def in_memory_mib(module: SemiSupervisedDataModule) -> float:
    """What the data module holds in RAM: its training items' and validation volumes' arrays,
    except memory maps (the OS pages those in and out, so they do not bound the dataset)."""
    items = [item for stream in module._train.values() for item in stream]
    items += module.volumes(module.val_split)
    arrays = [a for item in items for k, a in item.items() if k in ("image", "label")]
    owned = [a for a in arrays if isinstance(a, np.ndarray) and not isinstance(a, np.memmap)]
    return sum(a.nbytes for a in owned) / 2**20


@dataclass
class Pipeline:
    name: str
    root: Path
    layout: str
    options: dict
    dims: int


def make_module(p: Pipeline, args: argparse.Namespace) -> SemiSupervisedDataModule:
    return SemiSupervisedDataModule(
        root=p.root, num_classes=4, class_names=["RV", "Myo", "LV"], labeled=args.labeled,
        image_size=args.image_size, layout=p.layout,
        # 3-D items are whole volumes: a labeled half-batch of 2 needs 2 labeled volumes
        batch_size=8 if p.dims == 2 else 4, labeled_batch_size=4 if p.dims == 2 else 2,
        num_workers=0, pin_memory=False, layout_options=p.options,
        patch_size=args.patch_size if p.dims == 3 else None,
    )  # fmt: skip


def time_setup(p: Pipeline, args: argparse.Namespace) -> tuple[SemiSupervisedDataModule, float]:
    start = time.perf_counter()
    module = make_module(p, args)
    module.setup("fit")
    seconds = time.perf_counter() - start
    held = in_memory_mib(module)
    print(f"  set-up  {p.name:<34s} {seconds:7.2f} s, {held:6.1f} MiB held in RAM", flush=True)
    return module, seconds


def loader_throughput(module: SemiSupervisedDataModule, samples: int) -> tuple[float, float]:
    """Training samples per second through the data module's own loader (2 batches warm-up),
    per wall-clock second and per CPU second of this process (steadier on a shared machine)."""
    loader = module.train_dataloader()
    batch = module.batch_size
    steps = max(1, samples // batch)

    def batches():  # epochs back to back, as training draws them
        while True:
            yield from loader

    iterator = batches()
    for _ in range(2):
        next(iterator)
    start, cpu, count = time.perf_counter(), time.process_time(), 0
    for _ in range(steps):
        streams = next(iterator)[0]  # (batch, batch_idx, dataloader_idx)
        count += sum(len(stream["image"]) for stream in streams.values())
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_batch(batches_of, batches: int, warmup: int, clock, device) -> float:
    """Mean seconds per step over ``batches`` steps after ``warmup``, epochs back to back."""

    def steps():
        while True:
            yield from batches_of()

    iterator = steps()
    for _ in range(warmup):
        next(iterator)
    _synchronize(device)
    start = clock()
    for _ in range(batches):
        next(iterator)
    _synchronize(device)
    return (clock() - start) / max(batches, 1)


def loader_path_seconds_per_batch(
    module: SemiSupervisedDataModule, batches: int = 5, warmup: int = 2, clock=time.perf_counter
) -> float:
    """Seconds per training step (both streams, ``module.batch_size`` items) of the host
    loaders of a set-up data module, in this process (``data.num_workers`` as configured; 0 for
    per-core numbers). ``clock=time.process_time`` counts this process's CPU time only."""
    loader = module._loader_path()
    return _seconds_per_batch(lambda: loader, batches, warmup, clock, torch.device("cpu"))


def device_path_seconds_per_batch(
    module: SemiSupervisedDataModule,
    device: torch.device | str = "cpu",
    batches: int = 5,
    warmup: int = 2,
    clock=time.perf_counter,
) -> float:
    """Seconds per training step (both streams) of the device-resident path
    (``data.on_device``) of a set-up 2-D data module on ``device``, the slices already held there
    (the one-off copy is not counted); CUDA work is waited for before each reading."""
    device = torch.device(device)
    batches_of = module.device_batches(device)
    return _seconds_per_batch(lambda: batches_of, batches, warmup, clock, device)


def slice_module(
    root: Path, cache_dir: Path, cache: bool, image_size: int = 256, labeled: int = 2, **options
) -> SemiSupervisedDataModule:
    """A set-up 2-D data module at ACDC's protocol batch (24, 12 labeled) with DSAIF views."""
    views = dsaif_views(p=0.5, cache=cache, cache_dir=str(cache_dir))
    module = SemiSupervisedDataModule(
        root=root, num_classes=4, class_names=["RV", "Myo", "LV"], labeled=labeled,
        image_size=image_size, batch_size=24, labeled_batch_size=12, views=views,
        num_workers=0, pin_memory=False, **options,
    )  # fmt: skip
    module.setup("fit")
    return module


def compare_device_path(root: Path, cache_dir: Path, args: argparse.Namespace) -> float:
    """Per-sample CPU seconds of the loader path (without and with the view cache) and of the
    device path on this CPU; returns loader-with-cache / device path."""
    on_the_fly = slice_module(root, cache_dir, False, args.image_size, args.labeled)
    cached = slice_module(root, cache_dir, True, args.image_size, args.labeled, on_device=False)
    device = slice_module(root, cache_dir, True, args.image_size, args.labeled, on_device=True)
    per_sample, cpu = {}, time.process_time  # CPU seconds: steadier on a shared machine
    for _ in range(args.repeats):  # interleaved, best of N: others share the CPUs
        for name, measure in (
            (
                "loader, filter on the fly",
                lambda: loader_path_seconds_per_batch(on_the_fly, 3, clock=cpu),
            ),
            (
                "loader, filter.cache=true",
                lambda: loader_path_seconds_per_batch(cached, 3, clock=cpu),
            ),
            (
                "device path on this CPU",
                lambda: device_path_seconds_per_batch(device, "cpu", 5, clock=cpu),
            ),
        ):
            seconds = measure() / 24
            per_sample[name] = min(per_sample.get(name, seconds), seconds)
    for name, seconds in per_sample.items():
        print(f"  {name:<28s} {1000 * seconds:8.2f} CPU ms/sample", flush=True)
    base = per_sample["loader, filter.cache=true"]
    device_seconds = per_sample["device path on this CPU"]
    print(
        f"  ratios: on the fly / cache {per_sample['loader, filter on the fly'] / base:.2f}, "
        f"cache / device path {base / device_seconds:.2f}",
        flush=True,
    )
    return base / device_seconds


def random_reads(p: Pipeline, count: int) -> float:
    """``layout.load`` of random training items per second (a fresh layout each time)."""
    layout = make_layout(p.layout, p.root, **p.options)
    ids = layout.ids("train")
    if p.layout == "folder":
        layout.prepare_all()  # the cache exists by now; this only opens it
    rng = random.Random(0)
    chosen = [rng.choice(ids) for _ in range(count)]
    start = time.perf_counter()
    for item in chosen:
        sample = layout.load("train", item, num_classes=4, require_label=False)
        float(sample.image.sum())  # touch the data (a memory map is read lazily)
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=8, help="volumes (the last one validates)")
    parser.add_argument("--samples-2d", type=int, default=400)
    parser.add_argument("--samples-3d", type=int, default=64)
    parser.add_argument("--reads", type=int, default=30, help="random layout.load calls")
    parser.add_argument("--repeats", type=int, default=3, help="best of N loader passes")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--patch-size", type=int, nargs=3, default=[112, 112, 8])
    parser.add_argument("--labeled", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None, help="preprocessing processes")
    parser.add_argument("--synthetic", action="store_true", help="synthetic data even if ACDC")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer of everything")
    parser.add_argument(
        "--device-path", action="store_true",
        help="compare the loader path (with/without view cache) with the device path instead",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.cases, args.samples_2d, args.samples_3d, args.reads, args.repeats = 4, 48, 16, 8, 1
        args.image_size = 128
    torch.set_num_threads(1)  # per-core numbers, stable on a shared machine
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp_dir = Path(tmp)
        cases, origin = source_cases(args.cases, tmp_dir / "synthetic", args.synthetic)
        roots = write_layouts(tmp_dir, cases)
        shape = cases[0].image.shape
        if args.device_path:
            print(
                f"{origin}: {len(cases) - 1} training volumes, 2-D slices resized to "
                f"{args.image_size}, batch 24 (12 labeled), DSAIF p=0.5, 1 torch thread",
                flush=True,
            )
            ratio = compare_device_path(roots["h5_slices"], tmp_dir / "views", args)
            print(f"device_ratio {ratio:.2f}")
            return 0
        print(
            f"{origin}: {len(cases) - 1} training volumes + 1 validation, (D, H, W) = {shape}; "
            f"2-D slices resized to {args.image_size}, 3-D patches {args.patch_size}; "
            f"batch 8 (4 labeled) / 4 (2 labeled), 1 torch thread, {os.cpu_count()} CPUs",
            flush=True,
        )
        workers = {} if args.workers is None else {"workers": args.workers}
        ratios = {}
        h5_pipelines = {
            2: Pipeline("h5 slices (SSL4MIS)", roots["h5_slices"], "ssl4mis", {}, 2),
            3: Pipeline("h5 volumes (UA-MT)", roots["h5_volumes"], "uamt", {}, 3),
        }
        for dims, h5 in h5_pipelines.items():
            samples = args.samples_2d if dims == 2 else args.samples_3d
            nifti = roots["nifti"]
            folder = Pipeline(
                "NIfTI folder",
                nifti,
                "folder",
                {"dims": dims, "normalize": "none", **workers},
                dims,
            )
            decoded = Pipeline(
                "NIfTI folder, cache=false", nifti, "folder",
                {"dims": dims, "normalize": "none", "cache": False}, dims,
            )  # fmt: skip
            kind = "2-D slices" if dims == 2 else "3-D patches"
            print(f"\n{kind}", flush=True)
            h5_module, _ = time_setup(h5, args)
            first = Pipeline(
                folder.name + " (1st: preprocess)", nifti, "folder", folder.options, dims
            )
            time_setup(first, args)
            second = Pipeline(folder.name + " (2nd: cached)", nifti, "folder", folder.options, dims)
            folder_module, _ = time_setup(second, args)
            decoded_module, _ = time_setup(decoded, args)
            modules = {h5.name: h5_module, folder.name: folder_module, decoded.name: decoded_module}
            best = {name: (0.0, 0.0) for name in modules}
            for _ in range(args.repeats):  # interleaved, best of N: others share the CPUs
                for name, module in modules.items():
                    wall, cpu = loader_throughput(module, samples)
                    best[name] = (max(best[name][0], wall), max(best[name][1], cpu))
            for name, (wall, cpu) in best.items():
                print(
                    f"  loader  {name:<34s} {wall:7.1f} samples/s ({cpu:.1f} per CPU-second)",
                    flush=True,
                )
            for p in (h5, decoded, folder):
                rate = random_reads(p, args.reads)
                print(f"  random layout.load  {p.name:<22s} {1000 / rate:8.1f} ms/item", flush=True)
            ratios[kind] = best[folder.name][0] / best[h5.name][0]
            cpu_ratio = best[folder.name][1] / best[h5.name][1]
            print(
                f"  ratio {kind}: {ratios[kind]:.2f} (folder / h5 loader samples/s; "
                f"{cpu_ratio:.2f} per CPU-second)",
                flush=True,
            )
    print()
    print("  ".join(f"{k}: {v:.2f}" for k, v in ratios.items()))
    print(f"ratio {min(ratios.values()):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
