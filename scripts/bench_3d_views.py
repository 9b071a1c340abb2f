"""Crops per second per core of the 3-D DSAIF training input, filtered on the fly vs cached.

For ``+experiment=la`` (real LA volumes from the shared data, else synthetic) and
``+experiment=pancreas`` (synthetic volumes of Pancreas-CT's size after MC-Net's crop, about
200x200x120: the data set is not on this machine), the training data module is composed and set
up as ``train`` does it (the experiment's patch, batch 2 labeled + 2 unlabeled, augmentation and
DSAIF views with ``rotate_view_2``), and items of its training streams (the loader's datasets and
transforms, 2 labeled : 2 unlabeled) are drawn in this process, pinned
to one core with one thread: CPU seconds per crop, so ``crops/s/core`` is what one loader worker
delivers. Twice: (a) ``filter.cache=false``, each crop filtered after cropping (the authors'
recipe), (b) ``filter.cache=true``, the views read from the cache (the one-off build, timed on
its own, is reported per volume). The loader workers that feed a VNet step of 100 ms at batch 4
(40 crops/s) are ``ceil(40 / crops_per_s)``.

It also checks whether the cache gives the authors' views: the views of a crop of the filtered
volume against the views of the crop (the quantisation range and the components cut by the crop
border differ), and profiles one crop's filter (tree, area, reconstruction)::

    python scripts/bench_3d_views.py            # 4 volumes per experiment, a few minutes
    python scripts/bench_3d_views.py --quick    # tiny synthetic volumes, a smoke run

Output lines (parsed by tests/test_bench_3d_views.py)::

    crops_per_s EXPERIMENT PATH VALUE workers_for_40 N
    cache_build_s_per_volume EXPERIMENT VALUE
    cache_vs_recipe EXPERIMENT differing_voxels FRACTION mean_abs_diff VALUE
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")

TARGET_CROPS_PER_S = 40.0  # a VNet step of 100 ms at batch 4
LA_TRAIN_DIR = "2018LA_Seg_Training Set"


def pin_to_one_core() -> None:
    """One core and one thread, so that throughput is per core (one loader worker's)."""
    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)


def default_la_root() -> Path:
    env = os.environ.get("SEGSSL_SHARED_DATA")
    return (Path(env) if env else ROOT.parent / "shared" / "data") / "LA"


def smooth_volume(rng: np.random.Generator, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Smooth noise with bright blobs, z-scored: nested extrema for the trees to filter."""
    from scipy.ndimage import gaussian_filter

    image = gaussian_filter(rng.normal(size=tuple(shape)).astype(np.float32), sigma=1.5)
    label = np.zeros(tuple(shape), np.float32)
    grid = np.indices(tuple(shape), dtype=np.float32)
    for _ in range(3):
        centre = [rng.uniform(0.3, 0.7) * s for s in shape]
        radius = rng.uniform(0.1, 0.2) * min(shape)
        blob = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < radius**2
        image[blob] += 2.0
        label[blob] = 1.0
    return ((image - image.mean()) / image.std()).astype(np.float32), label


def la_folder(dest: Path, source: Path | None, count: int, shape: Sequence[int]) -> str:
    """A UA-MT folder of ``count`` training cases (+ one test case): links to real LA cases
    when ``source`` has them, else synthetic volumes of ``shape``. Returns the source's name."""
    import h5py

    train_dir = dest / LA_TRAIN_DIR
    train_dir.mkdir(parents=True)
    if source is not None and (source / "train.list").is_file():
        ids = (source / "train.list").read_text().split()[: count + 1]
        for case in ids:
            os.symlink(source / LA_TRAIN_DIR / case, train_dir / case)
        kind = f"real LA ({source})"
    else:
        rng = np.random.default_rng(0)
        ids = [f"CASE{i:03d}" for i in range(count + 1)]
        for case in ids:
            image, label = smooth_volume(rng, shape)
            (train_dir / case).mkdir()
            with h5py.File(train_dir / case / "mri_norm2.h5", "w") as f:
                f["image"], f["label"] = image, label.astype(np.uint8)
        kind = f"synthetic {'x'.join(map(str, shape))}"
    (dest / "train.list").write_text("\n".join(ids[:-1]) + "\n")
    (dest / "test.list").write_text(ids[-1] + "\n")
    return kind


def pancreas_folder(dest: Path, count: int, shape: Sequence[int]) -> str:
    """MC-Net's Pancreas h5 layout (``Pancreas_h5/<id>_norm.h5``) of synthetic volumes."""
    import h5py

    rng = np.random.default_rng(1)
    ids = [f"image{i + 1:04d}" for i in range(count + 1)]
    (dest / "Pancreas_h5").mkdir(parents=True)
    for case in ids:
        image, label = smooth_volume(rng, shape)
        with h5py.File(dest / "Pancreas_h5" / f"{case}_norm.h5", "w") as f:
            f["image"], f["label"] = image, label
    (dest / "train.list").write_text("\n".join(ids[:-1]) + "\n")
    (dest / "test.list").write_text(ids[-1] + "\n")
    return f"synthetic {'x'.join(map(str, shape))}"


def compose_module(experiment: str, root: Path, run_dir: Path, extra: Sequence[str]):
    """The training data module of ``+experiment=EXPERIMENT`` as ``train`` composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from segssl.runs.hydra_app import config_dir

    overrides = [f"+experiment={experiment}", f"data.root={root}", "data.num_workers=0"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides + list(extra), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(run_dir.parent)
        cfg.hydra.job.num = 0
    run_dir.mkdir(parents=True, exist_ok=True)
    HydraConfig().set_config(cfg)
    return instantiate(cfg.data, views=instantiate(cfg.filter)), cfg


def seconds_per_crop(module, crops: int, warmup: int = 1, seed: int = 0) -> float:
    """CPU seconds (this process) per training crop: items of the training loader's streams
    (the loader's dataset and transforms, views included) drawn in the batch's proportions.

    Items are taken from the streams' datasets, not by iterating the combined loader: with a few
    volumes every step ends an epoch, and the loader then computes items it throws away (a long
    training run's epochs make that negligible)."""
    loaders = list(module._loader_path().iterables.values())
    draws = [loader for loader in loaders for _ in range(loader.batch_size)]
    rng = np.random.default_rng(seed)

    def crop(k: int) -> None:
        dataset = draws[k % len(draws)].dataset
        dataset[int(rng.integers(len(dataset)))]

    for k in range(warmup):
        crop(k)
    start = time.process_time()
    for k in range(crops):
        crop(k)
    return (time.process_time() - start) / max(crops, 1)


def workers_needed(crops_per_s: float) -> int:
    return math.ceil(TARGET_CROPS_PER_S / crops_per_s) if crops_per_s > 0 else -1


def cache_vs_recipe(volume: np.ndarray, patch: Sequence[int], threshold: int, crops: int, seed=0):
    """Views of crops of the filtered volume (the cache) vs views of the crops (the recipe):
    the fraction of voxels that differ and the mean absolute difference over both views."""
    from segssl.filters import dual_tree_filter

    whole = dual_tree_filter(volume, threshold)
    rng = np.random.default_rng(seed)
    differing, diff, total = 0, 0.0, 0
    for _ in range(crops):
        start = [int(rng.integers(0, s - p + 1)) for s, p in zip(volume.shape, patch, strict=True)]
        box = tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))
        for cached, recipe in zip(
            (w[box] for w in whole), dual_tree_filter(volume[box], threshold), strict=True
        ):
            differing += int(np.count_nonzero(cached != recipe))
            diff += float(np.abs(cached - recipe).sum())
            total += recipe.size
    return differing / total, diff / total


def profile_crop(crop: np.ndarray, threshold: int, repeats: int) -> dict[str, float]:
    """Seconds of each part of one crop's two views (ours: one tree per view)."""
    import importlib

    import higra as hg

    tf = importlib.import_module("segssl.filters.tree_filter")  # the module, not the function

    graph = tf.padded_grid_graph(crop.shape, 26)
    parts = dict.fromkeys(("quantise", "tree", "area", "keep+reconstruct", "dequantise"), 0.0)
    for _ in range(repeats):
        t0 = time.process_time()
        lo, hi = crop.min(), crop.max()
        levels = tf._quantise(crop, lo, hi)
        parts["quantise"] += time.process_time() - t0
        for kind in ("max", "min"):
            t0 = time.process_time()
            root_level = levels.min() if kind == "max" else levels.max()
            padded = np.pad(levels, 1, constant_values=root_level)
            tree, altitudes = tf._build_tree(graph, padded, kind)
            t1 = time.process_time()
            area = hg.attribute_area(tree)
            t2 = time.process_time()
            keep = tf.kept_nodes(tree.parents(), tree.num_leaves(), area, threshold)
            out = hg.reconstruct_leaf_data(tree, altitudes, ~keep)
            out = np.asarray(out).reshape(padded.shape)[(slice(1, -1),) * 3]
            t3 = time.process_time()
            tf.dequantise(out, lo, hi)
            t4 = time.process_time()
            parts["tree"] += t1 - t0
            parts["area"] += t2 - t1
            parts["keep+reconstruct"] += t3 - t2
            parts["dequantise"] += t4 - t3
    return {k: v / repeats for k, v in parts.items()}


def bench_experiment(experiment: str, root: Path, work: Path, args: argparse.Namespace) -> None:
    common = [f"data.labeled={args.labeled}", *args.override]
    fly, cfg = compose_module(experiment, root, work / "run_fly", [*common, "filter.cache=false"])
    patch = list(cfg.data.patch_size)
    threshold = int(cfg.filter.area_threshold)
    batch = int(cfg.data.batch_size)
    print(
        f"# {experiment}: patch {'x'.join(map(str, patch))}, batch {batch} "
        f"({cfg.data.labeled_batch_size} labeled), area_threshold {threshold}, "
        f"rotate_view_2 {cfg.filter.rotate_view_2}, augment {cfg.data.augment}",
        flush=True,
    )
    t0 = time.perf_counter()
    fly.setup("fit")
    load_s = time.perf_counter() - t0
    cached, _ = compose_module(
        experiment,
        root,
        work / "run_cache",
        [*common, "filter.cache=true", f"filter.cache_dir={work / 'views'}"],
    )
    t0 = time.perf_counter()
    cached.setup("fit")
    build_s = max(time.perf_counter() - t0 - load_s, 0.0) / args.volumes
    print(f"cache_build_s_per_volume {experiment} {build_s:.2f}", flush=True)
    rates = {}
    for name, module in (("on_the_fly", fly), ("cached", cached)):
        rates[name] = 1.0 / seconds_per_crop(module, args.crops)
    for name, rate in rates.items():
        print(
            f"crops_per_s {experiment} {name} {rate:.2f} workers_for_40 {workers_needed(rate)}",
            flush=True,
        )
    print(f"speedup {experiment} cached/on_the_fly {rates['cached'] / rates['on_the_fly']:.1f}")
    case = fly.layout.ids("train")[0]
    volume = fly.layout.load("train", case, num_classes=2, require_label=False).image
    volume = np.asarray(volume, dtype=np.float32).reshape(volume.shape[-3:])
    fraction, mad = cache_vs_recipe(volume, patch, threshold, args.check_crops)
    print(
        f"cache_vs_recipe {experiment} differing_voxels {fraction:.4f} mean_abs_diff {mad:.4f}",
        flush=True,
    )
    crop = np.ascontiguousarray(volume[tuple(slice(0, p) for p in patch)])
    parts = profile_crop(crop, threshold, args.profile_repeats)
    total = sum(parts.values())
    print(
        f"# {experiment} one crop's two views, CPU ms: "
        + ", ".join(f"{k} {1000 * v:.0f}" for k, v in parts.items())
        + f"; total {1000 * total:.0f}",
        flush=True,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny synthetic volumes")
    parser.add_argument("--experiments", nargs="+", default=["la", "pancreas"])
    parser.add_argument("--la-root", type=Path, default=None, help="real LA (default: shared)")
    parser.add_argument("--volumes", type=int, default=4, help="training volumes per experiment")
    parser.add_argument("--labeled", type=int, default=2)
    parser.add_argument("--crops", type=int, default=32, help="crops timed per path")
    parser.add_argument("--check-crops", type=int, default=4)
    parser.add_argument("--profile-repeats", type=int, default=2)
    parser.add_argument("--pancreas-shape", type=int, nargs=3, default=[200, 200, 120])
    parser.add_argument("--la-shape", type=int, nargs=3, default=[183, 140, 88])
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one core")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.volumes, args.labeled, args.crops, args.check_crops, args.profile_repeats = (
            2,
            1,
            4,
            1,
            1,
        )
        args.la_shape, args.pancreas_shape = [28, 28, 20], [28, 28, 28]
        args.override = [
            *args.override,
            "data.patch_size=[16,16,12]",
            "data.batch_size=2",
            "data.labeled_batch_size=1",
            "dsaif_area_threshold=2",
        ]
    if not args.no_pin:
        pin_to_one_core()
    la_source = None if args.quick else (args.la_root or default_la_root())
    with tempfile.TemporaryDirectory(prefix="bench3d_") as tmp:
        work = Path(tmp)
        for experiment in args.experiments:
            root = work / experiment / "data"
            if experiment == "la":
                kind = la_folder(root, la_source, args.volumes, args.la_shape)
            else:
                kind = pancreas_folder(root, args.volumes, args.pancreas_shape)
            print(f"# {experiment}: {args.volumes} training volumes, {kind}", flush=True)
            bench_experiment(experiment, root, work / experiment, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
