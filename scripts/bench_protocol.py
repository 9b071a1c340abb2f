"""What the full ACDC protocol (``+experiment=acdc``: 256x256, batch 24 with 12 labeled, 30000
steps, validation every 200) costs on a GPU, from parts measured on the current machine.

Measured here, at the protocol's sizes, on one CPU core unless a GPU is present:

- data per training sample on one core: the host loaders with DSAIF filtering on the fly
  (today's default), the same with ``filter.cache=true`` (and the cache's one-off build per
  image), and the device path (``data.on_device``) per batch (on the GPU when present);
- one validation of the val volumes without the network (a fixed intensity-to-class map stands
  in for the two networks, and their mean for the ensemble: three models, as CPS/DSAIF scores),
  once with HD95/ASD on the host (today: every validation) and once Dice on the device only
  (``evaluation.distances_every=0``); with a GPU, also with the real networks there;
- the PNG of validation overlays that conf/callbacks/default.yaml renders after each
  validation (``validation_overlays``), if it is configured;
- one checkpoint write of the two-UNet model with its SGD state, as ``AtomicCheckpointIO``
  writes it (write, read back with a CRC check, rename);
- the GPU step (two UNets forward and backward, bf16) when a GPU is present, else
  ``--gpu-step-ms``.

These are combined into a wall time for the protocol, for this checkout's path (device-resident
batches, Dice-only validation, the checkpoint cadence of the composed ``+experiment=acdc``
config) and for the path before issue 23 (host loaders with on-the-fly DSAIF fed by
``--workers`` processes, HD95/ASD at every validation, ``latest.ckpt`` every 50 steps and
``last.ckpt`` at every validation). Assumptions are printed with the
parts. The last two lines are ``projected_minutes_before Y`` and ``projected_minutes X``::

    python scripts/bench_protocol.py                  # ../shared/data/ACDC, a few minutes
    python scripts/bench_protocol.py --gpu-step-ms 8 --workers 15
    python scripts/bench_protocol.py --quick          # smoke run on tiny synthetic data
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from segssl.data.readers import read_list  # noqa: E402
from segssl.evaluation.evaluator import VolumeEvaluator  # noqa: E402
from segssl.methods.base import build_network  # noqa: E402
from segssl.runs.hydra_app import config_dir  # noqa: E402
from segssl.utils.checkpoint_io import AtomicCheckpointIO  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ACDC"
ACDC_TRAIN_SLICES = 1312  # the protocol's training set (70 patients), for the one-off costs
BEFORE_LATEST_EVERY = 50  # latest.ckpt cadence before issue 23 (steps)


def line(name: str, value: float, unit: str, note: str = "") -> None:
    """One measured or derived part: ``name value unit  # note`` (parsed by the test)."""
    print(f"{name} {value:.3f} {unit}" + (f"  # {note}" if note else ""), flush=True)


# -- data ------------------------------------------------------------------------------------
def subset_folder(source: Path, dest: Path, slices: int, volumes: int) -> Path:
    """An SSL4MIS folder of links to ``source``: the first ``slices`` training slices (whole
    patients from the list's order) and the first ``volumes`` val volumes."""
    train = read_list(source / "train_slices.list")
    patients: list[str] = []
    chosen: list[str] = []
    for item in train:
        patient = item.split("_")[0]
        if patient not in patients:
            if len(chosen) >= slices and len(patients) >= 2:
                break
            patients.append(patient)
        chosen.append(item)
    val = read_list(source / "val.list")[:volumes]
    (dest / "data" / "slices").mkdir(parents=True)
    for item in chosen:
        os.symlink(source / "data" / "slices" / f"{item}.h5", dest / "data/slices" / f"{item}.h5")
    for item in val:
        os.symlink(source / "data" / f"{item}.h5", dest / "data" / f"{item}.h5")
    (dest / "train_slices.list").write_text("\n".join(chosen) + "\n")
    (dest / "val.list").write_text("\n".join(val) + "\n")
    return dest


def compose_train(overrides: list[str], run_dir: Path) -> DictConfig:
    """The training config as ``python -m segssl train OVERRIDES`` composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(run_dir.parent)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def make_module(cfg: DictConfig):
    module = instantiate(cfg.data, views=instantiate(cfg.filter))
    module.prepare_data()
    module.setup("fit")
    return module


def forever(iterable) -> Iterator:
    while True:
        yield from iterable


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ms_per_batch(batches: Iterator, count: int, device: torch.device) -> float:
    """Milliseconds per batch drawn from ``batches`` (one warm-up batch first)."""
    next(batches)
    sync(device)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    sync(device)
    return (time.perf_counter() - start) * 1000 / count


# -- validation ------------------------------------------------------------------------------
def intensity_model(centres: tuple[float, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A stand-in network: class probabilities from the intensity's distance to a centre per
    class, so label maps have the shapes (and boundaries) of the image's structures."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        c = torch.tensor(centres, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return torch.softmax(-50.0 * (x - c) ** 2, dim=1)

    return predict


def network_model(net: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            return torch.softmax(net(x).float(), dim=1)

    return predict


def validation_ms(
    evaluator: VolumeEvaluator,
    fns: dict[str, Callable],
    volumes: list[dict],
    device: torch.device,
    distances: bool,
) -> float:
    """One validation round as ``SegmentationMethod`` runs it: milliseconds."""
    ensembles = {"mean": list(fns)}
    sync(device)
    start = time.perf_counter()
    evaluator.reset(distances=distances)
    where = evaluator.scoring_device(device)
    for volume in volumes:
        sample = {**volume, "label": evaluator.reference(volume["label"], where)}
        evaluator.add_case(fns, sample, device, ensembles)
    evaluator.summarize()
    sync(device)
    return (time.perf_counter() - start) * 1000


# -- checkpoint and GPU step -----------------------------------------------------------------
def checkpoint_ms(cfg: DictConfig, folder: Path, repeats: int) -> tuple[float, float]:
    """Milliseconds of one checkpoint write of the two networks with SGD momentum, and MiB."""
    torch.manual_seed(0)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    nets = torch.nn.ModuleDict({"net_a": build_network(model), "net_b": build_network(model)})
    optimizer = torch.optim.SGD(nets.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for p in nets.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # momentum buffers exist, as in a real checkpoint
    checkpoint = {
        "state_dict": nets.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "global_step": 0,
    }
    io, path = AtomicCheckpointIO(), folder / "bench.ckpt"
    io.save_checkpoint(checkpoint, path)
    start = time.perf_counter()
    for _ in range(repeats):
        io.save_checkpoint(checkpoint, path)
    seconds = (time.perf_counter() - start) / repeats
    return seconds * 1000, path.stat().st_size / 2**20


def overlays_enabled(cfg: DictConfig) -> bool:
    """Whether the composed config renders validation overlays after each validation."""
    return bool((cfg.get("callbacks") or {}).get("validation_overlays"))


def overlay_render_ms(volumes: list[dict], folder: Path) -> float:
    """Milliseconds of ``render_overlays`` for three middle slices (the network part of the
    overlays, three volumes predicted, is small next to a validation and not counted)."""
    from segssl.utils.callbacks import render_overlays

    panels = []
    for volume in volumes[:3]:
        image, label = np.asarray(volume["image"]), np.asarray(volume["label"])
        index = image.shape[0] // 2
        panels.append(
            {"case": str(volume["case"]), "title": str(volume["case"]), "image": image[index],
             "label": label[index], "pred": label[index]}
        )  # fmt: skip
    render_overlays(panels, folder / "warm.png", "ensemble")
    start = time.perf_counter()
    render_overlays(panels, folder / "overlays.png", "ensemble")
    return (time.perf_counter() - start) * 1000


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_step_ms(batch: int, labeled: int, size: int) -> tuple[float, tuple]:
    """The CPS step of scripts/bench_train.py (two UNets, bf16) on the GPU: ms per step."""
    bench = load_script("bench_train")
    method = bench.make_method(30000).cuda()
    nets = (method.networks["net_a"], method.networks["net_b"])
    batches = bench.make_batches(4, batch, labeled, size, "cuda")

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16)

    steps, warmup = 60, 10
    seconds = bench.plain_loop(nets, batches, steps, warmup, 30000, autocast)
    return seconds * 1000 / (steps - warmup), nets


def checkpoint_plan(cfg: DictConfig) -> dict:
    """How the composed config writes checkpoints: latest.ckpt every N steps or S seconds, and
    whether last.ckpt is written at every validation (else beside each new best and at the
    end)."""
    callbacks = cfg.get("callbacks") or {}
    latest = callbacks.get("latest_checkpoint") or {}
    best = callbacks.get("model_checkpoint") or {}
    plan = {"last_every_validation": bool(best.get("last_every_validation", True))}
    seconds = latest.get("train_time_interval")
    if seconds:
        plan["seconds"] = float(seconds)
    elif latest.get("every_n_train_steps"):
        plan["steps"] = int(latest["every_n_train_steps"])
    return plan


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SSL4MIS ACDC folder")
    parser.add_argument("--gpu-step-ms", type=float, default=15.0, help="used without a GPU")
    parser.add_argument("--workers", type=int, default=15, help="loader processes (before)")
    parser.add_argument("--steps", type=int, default=30000)
    parser.add_argument("--val-every", type=int, default=200)
    parser.add_argument("--test-volumes", type=int, default=20, help="final test (val here)")
    parser.add_argument("--test-checkpoints", type=int, default=2, help="best and last")
    parser.add_argument("--train-slices", type=int, default=ACDC_TRAIN_SLICES)
    parser.add_argument(
        "--device-batch-ms",
        type=float,
        default=1.0,
        help="device-path batch on a GPU when none is present (assumed: a few dozen kernels)",
    )
    parser.add_argument(
        "--device-val-ms-per-volume",
        type=float,
        default=2.0,
        help="without a GPU: device-side resize/argmax/count work per val volume (assumed)",
    )
    parser.add_argument("--h2d-gbps", type=float, default=20.0, help="host-to-device copy")
    parser.add_argument(
        "--best-share", type=float, default=0.25, help="validations with a new best"
    )
    parser.add_argument(
        "--latest-every-s",
        type=float,
        default=None,
        help="what if latest.ckpt were written every S seconds (default: this checkout's config)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny synthetic smoke run")
    parser.add_argument("--synthetic", action="store_true", help="ignore --data")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # per core: the loaders' workers each have one
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    size, batch, labeled = (32, 8, 4) if args.quick else (256, 24, 12)
    measured_batch = batch
    samples_batches = 1 if args.quick else 2

    with tempfile.TemporaryDirectory(prefix="bench_protocol_") as tmp_name:
        tmp = Path(tmp_name)
        if args.quick or args.synthetic or not (args.data / "train_slices.list").is_file():
            from segssl.data.synthetic.dataset import ensure_synthetic_dataset

            why = "--quick" if args.quick else "--synthetic" if args.synthetic else "not found"
            print(
                f"data: SYNTHETIC phantom at {size}x{size} ({args.data}: {why}); real ACDC "
                "slices differ in size and content, so read the data parts as indicative only"
            )
            root = ensure_synthetic_dataset(
                tmp / "synthetic",
                num_train_patients=4 if args.quick else 8,
                num_val_patients=2 if args.quick else 4,
                num_test_patients=1,
                image_size=size,
                slices_per_volume=4 if args.quick else 10,
            )
        else:
            root = subset_folder(args.data, tmp / "acdc", slices=72, volumes=20)
            print(f"data: {args.data} (the first 72+ training slices, all 20 val volumes)")
        print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if gpu else ""))
        base = [
            "+experiment=acdc",
            f"data.root={root}",
            "data.labeled=1",
            "data.num_workers=0",
            "++data.pin_memory=false",
            f"data.image_size={size}",
            f"data.batch_size={batch}",
            f"data.labeled_batch_size={labeled}",
            f"filter.cache_dir={tmp / 'view_cache'}",
            "logger=csv",
        ]

        # data: loaders with on-the-fly DSAIF (before), with the cache, and the device path
        cfg = compose_train([*base, "filter.cache=false", "data.on_device=false"], tmp / "run")
        start = time.perf_counter()
        module = make_module(cfg)
        n_train = sum(len(items) for items in module._train.values())
        read_ms = (time.perf_counter() - start) * 1000 / n_train  # val volumes included: upper
        onfly = ms_per_batch(forever(module.train_dataloader()), samples_batches, device) / batch
        line("data_loader_onfly_ms_per_sample", onfly, "ms", "one core, DSAIF p=0.5 on the fly")
        line("data_read_ms_per_slice", read_ms, "ms", "set-up: reading and checking a slice")

        cfg_cache = compose_train([*base, "filter.cache=true", "data.on_device=false"], tmp / "r2")
        start = time.perf_counter()
        cached_module = make_module(cfg_cache)
        build_ms = (time.perf_counter() - start) * 1000 / n_train - read_ms
        cached = forever(cached_module.train_dataloader())
        cache_ms = ms_per_batch(cached, samples_batches, device) / batch
        line("data_loader_cache_ms_per_sample", cache_ms, "ms", "one core, filter.cache=true")
        line("view_cache_build_ms_per_slice", max(build_ms, 0.0), "ms", "one core, one-off")

        batches = forever(cached_module.device_batches(device))
        device_ms = ms_per_batch(batches, 3 * samples_batches, device)
        line(
            "data_device_ms_per_batch",
            device_ms,
            "ms",
            f"{device}, batch {batch}" + ("" if gpu else "; one CPU core, not used below"),
        )
        line("data_device_ms_per_sample", device_ms / batch, "ms", str(device))

        # validation without the network, three models (two stand-ins and their mean)
        volumes = module.volumes(module.val_split)
        n_vol = len(volumes)
        n_val_slices = sum(int(np.shape(v["image"])[0]) for v in volumes)
        evaluator = VolumeEvaluator(
            cfg.data.num_classes,
            list(cfg.data.class_names),
            mode="slices",
            image_size=size,
            batch_size=int(cfg.evaluation.batch_size),
        )
        fns = {
            "net_a": intensity_model((0.0, 0.3, 0.5, 0.8)),
            "net_b": intensity_model((0.05, 0.35, 0.55, 0.75)),
        }
        val_dice = validation_ms(evaluator, fns, volumes, device, distances=False)
        val_dist = validation_ms(evaluator, fns, volumes, device, distances=True)
        line("val_dice_ms", val_dice, "ms", f"{n_vol} volumes, {n_val_slices} slices, {device}")
        line("val_distances_ms", val_dist, "ms", "with HD95/ASD of 3 models on the host")
        host_distances = max(val_dist - val_dice, 0.0)
        line("val_host_distances_ms", host_distances, "ms", "the difference: host-only work")

        # the PNG of validation overlays written after every validation (callbacks config)
        overlay_ms = overlay_render_ms(volumes, tmp) if overlays_enabled(cfg) else 0.0
        line("overlay_render_ms", overlay_ms, "ms", "val_overlays PNG per validation (3 cases)")

        # checkpoint
        ckpt_ms, ckpt_mib = checkpoint_ms(cfg, tmp, repeats=1 if args.quick else 3)
        line("checkpoint_write_ms", ckpt_ms, "ms", f"{ckpt_mib:.1f} MiB, write + CRC read-back")

        # the GPU step, and validation with the real networks when a GPU is here
        if gpu:
            step_ms, nets = gpu_step_ms(batch, labeled, size)
            line("gpu_step_ms", step_ms, "ms", "measured: CPS step, two UNets, bf16")
            for net in nets:
                net.eval()
            real = {"net_a": network_model(nets[0]), "net_b": network_model(nets[1])}
            val_net_dice = validation_ms(evaluator, real, volumes, device, distances=False)
            val_net_dist = validation_ms(evaluator, real, volumes, device, distances=True)
            line("val_network_dice_ms", val_net_dice, "ms", "real networks on the GPU")
            line("val_network_distances_ms", val_net_dist, "ms", "real networks, HD95/ASD")
        else:
            step_ms = args.gpu_step_ms
            line("gpu_step_ms", step_ms, "ms", "assumed (--gpu-step-ms): no GPU here")
            # forward of both networks ~ 1/3 of their forward and backward, per slice
            forward = n_val_slices / 24 * step_ms / 3
            device_part = args.device_val_ms_per_volume * n_vol * 3
            val_net_dice = forward + device_part
            val_net_dist = forward + device_part + host_distances * 256**2 / size**2
            line("val_network_dice_ms", val_net_dice, "ms", "estimated: forward + device work")
            line("val_network_distances_ms", val_net_dist, "ms", "estimated: + host distances")

    # -- projection -------------------------------------------------------------------------
    steps, validations = args.steps, args.steps // args.val_every
    scale = 256 * 256 / (size * size)  # --quick measures at 32x32: per-pixel parts scaled
    batch = 24  # the protocol's, whatever was measured
    n_slices = args.train_slices
    copy_ms = batch * 2 * 256 * 256 * 4 / (args.h2d_gbps * 1e9) * 1000  # two views, float32
    # the test evaluates the best and the last checkpoint, each with HD95/ASD
    test_ms = args.test_checkpoints * val_net_dist * args.test_volumes / max(n_vol, 1)

    before_data = onfly * scale * batch / args.workers
    before_step = max(step_ms, before_data) + copy_ms
    device_batch_ms = device_ms / measured_batch * batch * scale if gpu else args.device_batch_ms
    after_step = step_ms + device_batch_ms
    train_before, train_after = steps * before_step, steps * after_step

    plan = checkpoint_plan(cfg)
    if args.latest_every_s:
        plan = {**plan, "seconds": args.latest_every_s}
        plan.pop("steps", None)
    best = args.best_share * validations
    # before: latest every 50 steps, last.ckpt at every validation, each new best
    writes_before = steps / BEFORE_LATEST_EVERY + validations + best
    if plan.get("seconds"):
        latest_after = (train_after / 1000) / plan["seconds"]
        cadence_note = f"latest every {plan['seconds']:.0f} s"
    elif plan.get("steps"):
        latest_after = steps / plan["steps"]
        cadence_note = f"latest every {plan['steps']} steps"
    else:
        latest_after, cadence_note = 0.0, "no latest.ckpt"
    if plan["last_every_validation"]:
        writes_after = latest_after + validations + best
        cadence_note += ", last.ckpt at every validation"
    else:
        writes_after = latest_after + 2 * best + 1  # last.ckpt beside each new best, and at the end
        cadence_note += ", last.ckpt beside each new best"
    setup_before = n_slices * read_ms
    setup_after = setup_before + n_slices * max(build_ms, 0.0) * scale / args.workers

    val_before = validations * (val_net_dist + overlay_ms)
    val_after = validations * (val_net_dice + overlay_ms)
    parts_before = {
        "train": train_before,
        "validation": val_before,
        "test": test_ms,
        "checkpoints": writes_before * ckpt_ms,
        "setup": setup_before,
    }
    parts_after = {
        "train": train_after,
        "validation": val_after,
        "test": test_ms,
        "checkpoints": writes_after * ckpt_ms,
        "setup": setup_after,
    }
    print(
        f"projection: {steps} steps, {validations} validations, batch {batch} at 256x256, "
        f"{args.workers} loader workers (before), step {step_ms:.1f} ms, H2D {copy_ms:.2f} ms"
        + (f", per-pixel parts x{scale:.0f} from {size}x{size}" if scale != 1 else "")
    )
    print(
        f"  before: loader feeds a step in {before_data:.1f} ms, HD95/ASD every validation, "
        f"latest every {BEFORE_LATEST_EVERY} steps ({writes_before:.0f} writes)"
    )
    print(
        f"  now: device batches ({device_batch_ms:.1f} ms a batch), Dice-only validation, "
        f"{cadence_note} ({writes_after:.0f} writes), view cache built once"
    )
    for name in parts_before:
        print(
            f"  {name:<12s} before {parts_before[name] / 60000:7.2f} min   "
            f"now {parts_after[name] / 60000:7.2f} min"
        )
    share = parts_after["validation"] / max(sum(parts_after.values()), 1e-9)
    line("validation_share", share, "fraction", "of the projected wall time, now")
    print(f"projected_minutes_before {sum(parts_before.values()) / 60000:.2f}")
    print(f"projected_minutes {sum(parts_after.values()) / 60000:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
