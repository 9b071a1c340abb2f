"""segssl's training step against the same computation as a plain PyTorch loop.

Both run the CPS/DSAIF step (two networks, the same batch of labeled and unlabeled views already
in memory, the same losses, SGD with the poly schedule) in one process, alternating rounds, and
are timed over steady-state steps only (warm-up steps excluded). Prints steps per second and
peak memory of each, and as its last line ``ratio R`` (segssl over the plain loop)::

    python scripts/bench_train.py                      # CPU, 64x64, batch 8+8
    python scripts/bench_train.py --device cuda --image-size 256 --batch-size 24 \\
        --labeled-batch-size 12 --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import copy
import os
import threading
import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from segssl.methods import CrossPseudoSupervision
from segssl.methods.losses import SupervisedLoss, sigmoid_rampup

MODEL = {
    "_target_": "monai.networks.nets.BasicUNet",
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 4,
    "features": [16, 32, 64, 128, 256, 16],
    "upsample": "nontrainable",
    "dropout": 0.0,
}
OPTIMIZER = {"_target_": "torch.optim.SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}


def make_batches(n: int, batch: int, labeled: int, size: int, device: str) -> list[dict]:
    """Batches in the data module's layout, already on the device."""
    g = torch.Generator().manual_seed(0)

    def part(count: int, with_label: bool) -> dict:
        out = {
            "image_1": torch.rand(count, 1, size, size, generator=g),
            "image_2": torch.rand(count, 1, size, size, generator=g),
        }
        if with_label:
            out["label"] = torch.randint(0, 4, (count, 1, size, size), generator=g)
        return {k: v.to(device) for k, v in out.items()}

    return [
        {"labeled": part(labeled, True), "unlabeled": part(batch - labeled, False)}
        for _ in range(n)
    ]


def make_method(max_steps: int) -> CrossPseudoSupervision:
    torch.manual_seed(0)
    return CrossPseudoSupervision(
        model=MODEL,
        num_classes=4,
        class_names=["RV", "Myo", "LV"],
        optimizer=OPTIMIZER,
        evaluation={"mode": "slices", "image_size": 64},
        consistency=0.1,
        rampup_steps=max_steps,
    )


class PeakMemory:
    """Peak device memory on CUDA; on CPU, peak resident memory sampled every millisecond."""

    def __init__(self, device: str) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        else:
            self._stop.clear()

            def sample() -> None:
                while not self._stop.is_set():
                    self.peak = max(self.peak, resident_bytes())
                    time.sleep(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()


def resident_bytes() -> int:
    """Current resident memory of this process (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def plain_loop(
    networks: tuple[torch.nn.Module, torch.nn.Module],
    batches: list[dict],
    steps: int,
    warmup: int,
    max_steps: int,
    autocast: Callable[[], object],
) -> float:
    """The CPS step written directly: seconds for ``steps - warmup`` steady-state steps."""
    net1, net2 = networks
    optimizer = torch.optim.SGD(
        [{"params": net1.parameters()}, {"params": net2.parameters()}],
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: max(1.0 - s / max_steps, 0.0) ** 0.9
    )
    supervised = SupervisedLoss()
    net1.train(), net2.train()
    start = 0.0
    for step in range(steps):
        if step == warmup:
            synchronize(batches[0]["labeled"]["image_1"].device)
            start = time.perf_counter()
        batch = batches[step % len(batches)]
        lab, unl = batch["labeled"], batch["unlabeled"]
        n = lab["image_1"].shape[0]
        with autocast():
            logits_1 = net1(torch.cat([lab["image_1"], unl["image_1"]]))
            logits_2 = net2(torch.cat([lab["image_2"], unl["image_2"]]))
        loss = supervised(logits_1[:n], lab["label"]) + supervised(logits_2[:n], lab["label"])
        u1, u2 = logits_1[n:].float(), logits_2[n:].float()
        cps = F.cross_entropy(u1, u2.argmax(1)) + F.cross_entropy(u2, u1.argmax(1))
        loss = loss + 0.1 * sigmoid_rampup(step, max_steps) * cps
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    synchronize(batches[0]["labeled"]["image_1"].device)
    return time.perf_counter() - start


class StepTimer(pl.Callback):
    """Time steady-state steps inside Lightning, excluding its set-up and tear-down."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        synchronize(pl_module.device)
        self.end = time.perf_counter()


def lightning_loop(
    method: CrossPseudoSupervision,
    batches: list[dict],
    steps: int,
    warmup: int,
    device: str,
    precision: str,
) -> float:
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        max_steps=steps,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(method, train_dataloaders=cycle(batches, steps))
    return timer.end - timer.start


def cycle(batches: list[dict], steps: int) -> DataLoader:
    """The in-memory batches as a loader that yields them unchanged (no collation, no copy)."""
    return DataLoader([batches[i % len(batches)] for i in range(steps)], batch_size=None)


def synchronize(device: torch.device | str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--labeled-batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40, help="steps per round (incl. warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="32-true", help="32-true | bf16-mixed | 16-mixed")
    args = parser.parse_args()

    batches = make_batches(
        8, args.batch_size, args.labeled_batch_size, args.image_size, args.device
    )
    reference = make_method(args.steps)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"

    def autocast() -> object:
        return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)

    timed = args.steps - args.warmup
    results: dict[str, list[float]] = {"plain": [], "segssl": []}
    peaks: dict[str, int] = {"plain": 0, "segssl": 0}
    for _ in range(args.rounds):
        nets = tuple(copy.deepcopy(reference.networks[n]).to(args.device) for n in ("net1", "net2"))
        with PeakMemory(args.device) as memory:
            seconds = plain_loop(nets, batches, args.steps, args.warmup, args.steps, autocast)
        results["plain"].append(timed / seconds)
        peaks["plain"] = max(peaks["plain"], memory.peak)
        del nets
        method = copy.deepcopy(reference)
        with PeakMemory(args.device) as memory:
            seconds = lightning_loop(
                method, batches, args.steps, args.warmup, args.device, args.precision
            )
        results["segssl"].append(timed / seconds)
        peaks["segssl"] = max(peaks["segssl"], memory.peak)
        del method

    unit = "GPU peak allocated" if device_type == "cuda" else "peak RSS"
    print(
        f"CPS step, {args.device}, {args.image_size}x{args.image_size}, batch "
        f"{args.batch_size} ({args.labeled_batch_size} labeled), {args.precision}, "
        f"{args.rounds} alternating rounds of {timed} timed steps"
    )
    for name in ("plain", "segssl"):
        best = max(results[name])
        print(
            f"{name:>7}: {best:7.2f} steps/s (rounds: "
            f"{', '.join(f'{r:.2f}' for r in results[name])}), {unit} "
            f"{peaks[name] / 2**20:.0f} MiB"
        )
    print(f"ratio {max(results['segssl']) / max(results['plain']):.3f}")


if __name__ == "__main__":
    main()
