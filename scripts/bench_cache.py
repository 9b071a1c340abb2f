"""Peak memory of the DSAIF view cache (``filter.cache=true``) against the number of volumes.

Writes UA-MT (LA) folders of 20 and of 100 synthetic volumes of one shape, then, each in a fresh
process, (1) builds the view cache through the data module (``setup('fit')``, as ``train``
does) and (2) trains a few steps from it: the real training loaders (labeled and unlabeled
streams, UA-MT's 3-D augmentation, DSAIF views read from the cache) feed a 2-layer 3-D
convolutional net, not a VNet (a VNet step costs seconds on this CPU and adds nothing to what
the data path holds). Each phase's peak resident memory is the largest of the process's
VmHWM and its waited-for children's (the build's workers; ``getrusage(RUSAGE_CHILDREN)``).

    python scripts/bench_cache.py                      # 96x96x40, 20 and 100 volumes
    python scripts/bench_cache.py --shape 576 576 88   # LA's real size (hours on 2 cores)
    python scripts/bench_cache.py --baseline HEAD      # also the code of a git revision

Last line: ``rss_ratio R``, the largest peak with 100 volumes over the largest with 20.

Measured here (2 shared cores, 96x96x40, 50 steps, build and loader workers 2; issue 27):
streaming build peak 509 MB with 20 volumes and 510 MB with 100 (flat: 481 MB of imports plus
one case being filtered); training peak 700-870 MB for either count, which varies by about
80 MB from run to run with glibc's per-thread arenas in the training process (repeated runs of
one phase), so ``rss_ratio`` reads 1.0-1.2. The code before (``--baseline 6063759``, the same
view_cache.py and data module as the HEAD this replaced) grows 6-8 MB per volume, six times a
raw volume (raw images, the list of views and the stacked items at once): ratio 1.65 at this
size, and the ratio tends to 100/20 as volumes grow. At LA's size (576x576x88, 111 MiB a raw
volume) that is about 65 GiB for 100 volumes; streaming, each build worker peaks at the imports
plus about 1.6 GB (the filter's working set, measured for one such volume) plus one stacked
case (334 MiB), and each loader worker at the imports plus about 0.7 GB, whatever the count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAIN_DIR = "2018LA_Seg_Training Set"


def write_la_folder(root: Path, count: int, shape: tuple[int, ...], seed: int = 0) -> Path:
    """A UA-MT folder of ``count`` training volumes (and one test volume): smooth random
    intensities with bright blobs, so that the trees have structure to filter."""
    import h5py
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    ids = [f"CASE{i:03d}" for i in range(count + 1)]
    grid = np.indices(shape, dtype=np.float32)
    for case in ids:
        image = gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=1.5)
        label = np.zeros(shape, np.uint8)
        for _ in range(3):
            centre = [rng.uniform(0.2, 0.8) * s for s in shape]
            radius = rng.uniform(0.08, 0.2) * min(shape)
            blob = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < radius**2
            image[blob] += 2.0
            label[blob] = 1
        image = (image - image.mean()) / image.std()
        (root / TRAIN_DIR / case).mkdir(parents=True, exist_ok=True)
        with h5py.File(root / TRAIN_DIR / case / "mri_norm2.h5", "w") as f:
            f["image"] = image.astype(np.float32)
            f["label"] = label
    (root / "train.list").write_text("\n".join(ids[:-1]) + "\n")
    (root / "test.list").write_text(ids[-1] + "\n")
    return root


def peak_rss_mb() -> float:
    """The larger of this process's peak resident set and its waited-for children's."""
    own = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            own = float(line.split()[1]) / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    return max(own, children)


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024
    return 0.0


def make_module(args: argparse.Namespace):
    from segssl.data.datamodule import SemiSupervisedDataModule
    from segssl.filters.views import dsaif_views

    views = dsaif_views(
        area_threshold=args.area_threshold, cache=True, cache_dir=str(args.cache), gamma_p=0.5
    )
    return SemiSupervisedDataModule(
        root=args.root, num_classes=2, class_names=["LA"], labeled=args.labeled,
        image_size=None, batch_size=2, labeled_batch_size=1, name="la", layout="uamt",
        patch_size=list(args.patch), views=views, num_workers=args.workers, pin_memory=False,
    )  # fmt: skip


def run_phase(args: argparse.Namespace) -> None:
    """One measured phase, in this (fresh) process; prints one JSON line."""
    import torch

    torch.set_num_threads(1)
    module = make_module(args)
    base = current_rss_mb()
    start = time.perf_counter()
    module.setup("fit")
    result: dict[str, float] = {"base_mb": base, "setup_s": time.perf_counter() - start}
    if args.phase == "train":
        net = torch.nn.Sequential(
            torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1)
        )
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        loader = module.train_dataloader()
        start, steps = time.perf_counter(), 0
        while steps < args.steps:
            for batch, *_ in loader:
                labeled, unlabeled = batch["labeled"], batch["unlabeled"]
                loss = torch.nn.functional.cross_entropy(
                    net(labeled["image_1"]), labeled["label"][:, 0]
                )
                loss = loss + (net(unlabeled["image_1"]) - net(unlabeled["image_2"])).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
                if steps >= args.steps:
                    break
        result["train_s"] = time.perf_counter() - start
        result["steps"] = steps
    result["peak_mb"] = peak_rss_mb()
    print(json.dumps(result), flush=True)


def measure(args: argparse.Namespace, code: Path, phase: str, root: Path, cache: Path) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--root", str(root),
        "--cache", str(cache), "--patch", *map(str, args.patch), "--steps", str(args.steps),
        "--workers", str(args.workers), "--labeled", str(args.labeled),
        "--area-threshold", str(args.area_threshold),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(code)}
    # a fresh parent per phase: its RUSAGE_CHILDREN peak covers the phase's whole process tree
    # (build workers, loader workers) and nothing measured before
    wrapped = [sys.executable, "-c", WRAPPER, *command]
    done = subprocess.run(wrapped, cwd=code, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{phase} phase failed ({code}):\n{done.stderr[-3000:]}")
    *_, line, tree = done.stdout.strip().splitlines()
    result = json.loads(line)
    result["peak_mb"] = max(result["peak_mb"], float(tree) / 1024)
    return result


WRAPPER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
sys.exit(code)
"""


def revision_copy(revision: str, folder: Path) -> Path:
    """The ``segssl`` package of a git revision in ``folder`` (the repository is only read)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "segssl"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def bench(args: argparse.Namespace) -> None:
    shape = tuple(args.shape)
    voxels = int(np.prod(shape))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_cache_"))
    codes = {"streaming": REPO}
    if args.baseline:
        folder = Path(tempfile.mkdtemp(prefix="segssl_baseline_"))
        codes = {"before": revision_copy(args.baseline, folder), **codes}
    print(f"volumes {'x'.join(map(str, shape))} float32 ({voxels * 4 / 2**20:.1f} MiB raw, "
          f"{3 * voxels * 4 / 2**20:.1f} MiB with both views), patch "
          f"{'x'.join(map(str, args.patch))}, {args.steps} training steps of a 2-layer Conv3d "
          f"net (batch 1 labeled + 1 unlabeled), build workers {args.workers}, loader workers "
          f"{args.workers}", flush=True)  # fmt: skip
    peaks: dict[str, dict[int, float]] = {}
    for count in args.counts:
        root = work / f"la_{count}"
        if not (root / "train.list").is_file():
            start = time.perf_counter()
            write_la_folder(root, count, shape)
            print(f"wrote {count} volumes in {time.perf_counter() - start:.0f} s", flush=True)
        for name, code in codes.items():
            cache = work / f"cache_{name}_{count}"
            shutil.rmtree(cache, ignore_errors=True)  # the build phase builds, every time
            build = measure(args, code, "build", root, cache)
            train = measure(args, code, "train", root, cache)
            size = sum(p.stat().st_size for p in cache.iterdir()) / 2**20
            print(f"{name:>9} {count:>4} volumes: build peak {build['peak_mb']:7.0f} MB "
                  f"({build['setup_s']:.0f} s), train peak {train['peak_mb']:7.0f} MB "
                  f"(setup {train['setup_s']:.1f} s, {train['steps']} steps "
                  f"{train['train_s']:.0f} s), after imports {build['base_mb']:.0f} MB, cache "
                  f"{size:.0f} MiB", flush=True)  # fmt: skip
            peaks.setdefault(name, {})[count] = max(build["peak_mb"], train["peak_mb"])
            peaks.setdefault(f"{name}_build", {})[count] = build["peak_mb"]
            peaks.setdefault(f"{name}_train", {})[count] = train["peak_mb"]
            peaks.setdefault(f"{name}_base", {})[count] = build["base_mb"]
    low, high = min(args.counts), max(args.counts)
    for name in codes:
        slope = (peaks[name][high] - peaks[name][low]) / (high - low)
        working = peaks[name][low] - peaks[f"{name}_base"][low]
        print(f"{name}: peak grows {slope:.2f} MB per volume; peak above the imports with "
              f"{low} volumes {working:.0f} MB")  # fmt: skip
        if name == "before":
            print(f"rss_ratio_before {peaks[name][high] / peaks[name][low]:.2f}")
    print(f"rss_ratio {peaks['streaming'][high] / peaks['streaming'][low]:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 40])
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--counts", type=int, nargs=2, default=[20, 100])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="build and loader processes")
    parser.add_argument("--labeled", type=int, default=4)
    parser.add_argument("--area-threshold", type=int, default=50)
    parser.add_argument(
        "--baseline", default=None, help="a git revision whose code is measured too (before)"
    )
    parser.add_argument("--work", type=Path, default=None, help="folder for data and caches")
    # internal: one measured phase in a fresh process
    parser.add_argument("--phase", choices=["build", "train"], default=None)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args(argv)
    if any(p > s for p, s in zip(args.patch, args.shape, strict=True)):
        args.patch = [min(p, s) for p, s in zip(args.patch, args.shape, strict=True)]
    run_phase(args) if args.phase else bench(args)


if __name__ == "__main__":
    main()
