"""Validation at device speed (issue 23): Dice counted on the device, HD95/ASD only at tests and
every ``evaluation.distances_every``-th validation; the device path scores exactly what the host
metrics (``segssl.evaluation.metrics``) score on the same predictions."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from segssl.evaluation import evaluator as evaluator_module
from segssl.evaluation import inference
from segssl.evaluation.evaluator import VolumeEvaluator
from segssl.evaluation.inference import predict_volume_2d, probs_to_labels
from segssl.evaluation.metrics import aggregate, case_metrics
from tests.conftest import TINY
from tests.helpers.training import training_only_trainer

NUM_CLASSES = 4
CLASS_NAMES = ["bg", "rv", "myo", "lv"]


def intensity_net(x: torch.Tensor) -> torch.Tensor:
    """A known 'network': class floor(4 x) of each pixel's intensity, as soft probabilities."""
    centres = torch.arange(NUM_CLASSES, device=x.device).view(1, -1, 1, 1) + 0.5
    return torch.softmax(-8 * (x * NUM_CLASSES - centres) ** 2, dim=1)


def shifted_net(x: torch.Tensor) -> torch.Tensor:
    """A second network that errs differently: the image shifted by two pixels."""
    return intensity_net(torch.roll(x, shifts=2, dims=-1))


def volumes() -> list[dict]:
    """Volumes whose predictions hit every case of the empty-mask policy: a class absent from
    both prediction and reference (lv in "absent"), missed (myo, lv in "missed"), hallucinated
    (rv in "hallucinated"), and ordinary imperfect overlap (every volume)."""
    rng = np.random.default_rng(7)
    cases = []
    for name, depth, (h, w) in (("absent", 3, (40, 36)), ("missed", 5, (30, 44)),
                                ("hallucinated", 2, (36, 36))):  # fmt: skip
        label = np.zeros((depth, h, w), dtype=np.uint8)
        label[:, 5:25, 6:20] = 1
        label[:, 8:20, 20:30] = 2
        if name != "absent":
            label[:, 12:16, 8:12] = 3
        image = (label.astype(np.float32) + 0.5) / NUM_CLASSES
        image += rng.normal(0, 0.03, image.shape).astype(np.float32)  # imperfect predictions
        if name == "missed":
            image[label >= 2] = 0.6 / NUM_CLASSES  # myo and lv predicted as background
        if name == "hallucinated":
            label[label == 1] = 0  # rv in the image, not in the reference
        cases.append({"image": image, "label": label, "case": name})
    return cases


def host_reference(cases: list[dict], image_size: int) -> dict[str, dict]:
    """What the host metrics give on the same predictions: per model, aggregate()."""
    per_model: dict[str, list] = {"net1": [], "net2": [], "ensemble": []}
    for sample in cases:
        p1 = predict_volume_2d(intensity_net, sample["image"], image_size)
        p2 = predict_volume_2d(shifted_net, sample["image"], image_size)
        for name, probs in (("net1", p1), ("net2", p2), ("ensemble", (p1 + p2) / 2)):
            labels = probs_to_labels(probs)
            per_model[name].append(
                case_metrics(labels, sample["label"], NUM_CLASSES, class_names=CLASS_NAMES)
            )
    return {name: aggregate(cases) for name, cases in per_model.items()}


def evaluate(evaluator: VolumeEvaluator, cases: list[dict], distances: bool) -> dict:
    evaluator.reset(distances=distances)
    for sample in cases:
        evaluator.add_case(
            {"net1": intensity_net, "net2": shifted_net},
            sample,
            torch.device("cpu"),
            {"ensemble": ["net1", "net2"]},
        )
    return evaluator.summarize()


def test_device_dice_equals_host_metrics_per_class_and_mean_with_empty_classes():
    cases = volumes()
    evaluator = VolumeEvaluator(NUM_CLASSES, CLASS_NAMES, image_size=24, batch_size=2)
    device = evaluate(evaluator, cases, distances=False)
    expected = host_reference(cases, image_size=24)
    for model, reference in expected.items():
        got = device["models"][model]
        assert set(got["mean"]) == {"dice", "jaccard"}  # no distances in this round
        for metric in ("dice", "jaccard"):
            assert got["mean"][metric] == reference["mean"][metric], (model, metric)
            for cls in CLASS_NAMES[1:]:
                assert got["per_class"][cls][metric] == reference["per_class"][cls][metric]
        for cls in CLASS_NAMES[1:]:
            for flag in ("num_pred_empty", "num_label_empty"):
                assert got["per_class"][cls][flag] == reference["per_class"][cls][flag]
    # the volumes do exercise the empty-mask policy: absent (1), missed (0), hallucinated (0)
    net1 = {r["case"]: r for r in device["rows"] if r["model"] == "net1" and r["class"] == "lv"}
    assert net1["absent"]["dice"] == 1.0 and net1["absent"]["pred_empty"]
    myo = {r["case"]: r for r in device["rows"] if r["model"] == "net1" and r["class"] == "myo"}
    assert myo["missed"]["dice"] == 0.0 and myo["missed"]["pred_empty"]
    rv = {r["case"]: r for r in device["rows"] if r["model"] == "net1" and r["class"] == "rv"}
    assert rv["hallucinated"]["dice"] == 0.0 and rv["hallucinated"]["label_empty"]
    assert 0.3 < device["models"]["net2"]["mean"]["dice"] < device["models"]["net1"]["mean"]["dice"]
    # a round with distances (tests): the same Dice, and every metric of the host path
    host = evaluate(evaluator, cases, distances=True)
    for model, reference in expected.items():
        assert host["models"][model] == reference
        assert host["models"][model]["mean"]["dice"] == device["models"][model]["mean"]["dice"]


class SyncCounter(TorchDispatchMode):
    """Counts the operators that read a value back to the host (``.item()``, ``float()``,
    ``bool()``) or whose output size depends on values (boolean indexing, ``nonzero``): on a
    GPU each of them waits for the device.

    On the CPU every tensor is a host tensor, so "on the device" is emulated: ``track`` marks
    the tensors that would live on the GPU (the batch, the parameters), and every result of an
    op with a marked input is marked too. Reading a marked tensor counts, and so does indexing
    one with a boolean mask; reading a host tensor (a draw of the host generator) does not.
    Without ``track``, every read counts. (A tensor made on the device by a factory op and
    read back without touching a marked one escapes: the CUDA test below has no such gap.)"""

    SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "item", "is_nonzero")

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.marked: set[int] | None = None  # ids of the marked tensors
        self._alive: list[torch.Tensor] = []  # held, so that no id is reused meanwhile

    def track(self, *tensors: Any) -> None:
        self.marked = self.marked if self.marked is not None else set()
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self.marked.add(id(t))
                self._alive.append(t)

    def _on_device(self, tensors: list[torch.Tensor]) -> bool:
        return self.marked is None or any(id(t) in self.marked for t in tensors)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        name = func.__name__.split(".")[0]
        on_device = self._on_device(inputs)
        if name in self.SYNCING and on_device:
            self.calls[name] += 1
        masks = [t for t in inputs[1:] if t.dtype == torch.bool]
        if name in ("index", "index_put", "index_put_") and on_device and masks:
            self.calls[f"{name} with a boolean mask"] += 1
        out = func(*args, **kwargs)
        if self.marked is not None and on_device:
            self.track(*tree_flatten(out)[0])
        return out


def test_a_validation_round_reads_nothing_back_per_volume(monkeypatch):
    cases = volumes()
    evaluator = VolumeEvaluator(NUM_CLASSES, CLASS_NAMES, image_size=24)
    evaluator.reset(distances=False)

    def no_host_metrics(*args, **kwargs):
        raise AssertionError("case_metrics (host label maps) called in a round without distances")

    monkeypatch.setattr(evaluator_module, "case_metrics", no_host_metrics)
    # on the CPU, label maps are made class by class after one NaN check of the host tensor (no
    # device there to wait for); on a device they are the argmax, as here
    monkeypatch.setattr(inference, "_argmax_classes", lambda p: p.argmax(0).to(torch.uint8))
    seen: list[dict] = []
    with SyncCounter() as counter:
        for sample in cases:
            result = evaluator.add_case(
                {"net1": intensity_net, "net2": shifted_net},
                sample,
                torch.device("cpu"),
                {"ensemble": ["net1", "net2"]},
                observe=seen.append,
            )
            assert result is None  # scored at summarize, from counts kept on the device
    assert counter.calls == Counter()
    assert all(isinstance(m, torch.Tensor) and m.dtype == torch.uint8 for m in seen[0].values())
    summary = evaluator.summarize()
    assert summary["models"]["net1"]["num_cases"] == 3


def test_a_reference_outside_the_classes_is_refused_before_counting():
    evaluator = VolumeEvaluator(NUM_CLASSES, CLASS_NAMES, image_size=24)
    evaluator.reset(distances=False)
    sample = volumes()[0]
    sample["label"] = sample["label"] * 2  # values up to 4 with 4 classes
    with pytest.raises(ValueError, match=r"label: expected values in \[0, 3\]"):
        evaluator.add_case({"net": intensity_net}, sample, torch.device("cpu"))
    sample["label"] = sample["label"].astype(np.float32)
    with pytest.raises(ValueError, match="integer label map"):
        evaluator.add_case({"net": intensity_net}, sample, torch.device("cpu"))


def test_distances_every_cadence_protocol_and_bad_values():
    never = VolumeEvaluator(2, ["fg"], image_size=8)
    assert never.distances_every == 0 and not any(never.distances_due(k) for k in range(10))
    assert VolumeEvaluator(2, ["fg"], image_size=8, distances_every=None).distances_every == 0
    third = VolumeEvaluator(2, ["fg"], image_size=8, distances_every=3)
    assert [k for k in range(10) if third.distances_due(k)] == [3, 6, 9]
    assert third.protocol()["val_distances_every"] == 3
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="evaluation.distances_every"):
            VolumeEvaluator(2, ["fg"], image_size=8, distances_every=bad)


def read_csv_log(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_computes_distances_at_every_kth_validation_and_always_at_test(run_task):
    output_dir, _, _ = run_task(
        [
            *TINY,
            "method=cps",
            "trainer.max_steps=4",
            "trainer.val_check_interval=1",
            "evaluation.distances_every=2",
        ]
    )
    val_rows = [r for r in read_csv_log(output_dir) if r.get("val/dice")]
    assert [int(r["step"]) for r in val_rows] == [0, 1, 2, 3]  # validations 1..4
    with_distances = [bool(r.get("val/ensemble/hd95")) for r in val_rows]
    assert with_distances == [False, True, False, True]
    for row in val_rows:  # Dice and the error consensus at every validation
        assert 0.0 <= float(row["val/ensemble/dice"]) <= 1.0
        assert 0.0 <= float(row["val/error_consensus/net1-net2"]) <= 1.0
    results = json.loads((output_dir / "results.json").read_text())
    assert results["protocol"]["val_distances_every"] == 2
    assert set(results["models"]["ensemble"]["mean"]) == {"dice", "jaccard", "hd95", "asd"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_validation_round_on_cuda_never_syncs_and_matches_the_host():
    cases = volumes()
    evaluator = VolumeEvaluator(NUM_CLASSES, CLASS_NAMES, image_size=24)
    evaluator.reset(distances=False)
    device = torch.device("cuda")
    torch.cuda.synchronize()
    # any host sync in the round raises: the volumes and references come from host arrays, as
    # in validation_step, and go to the device asynchronously (pinned memory)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for sample in cases:
            label = evaluator.reference(sample["label"], evaluator.scoring_device(device))
            evaluator.add_case(
                {"net1": intensity_net, "net2": shifted_net},
                {**sample, "label": label},
                device,
                {"ensemble": ["net1", "net2"]},
            )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    summary = evaluator.summarize()
    expected = host_reference(cases, image_size=24)
    for model, reference in expected.items():
        assert summary["models"][model]["mean"]["dice"] == pytest.approx(
            reference["mean"]["dice"], abs=1e-3
        )


# ---------------------------------------------------------------- the training step

METHODS = ["supervised", "cps", "dsaif", "mean_teacher", "bcp", "abd", "unimatch"]


@pytest.mark.parametrize("method", METHODS)
def test_training_losses_read_nothing_back_from_the_device(method, tmp_path, tiny_data_dir):
    """No ``.item()``, ``float(tensor)``, ``bool(tensor)`` or value-sized op (boolean indexing)
    in a method's step: each would wait for the GPU. (BCP's largest connected component goes to
    scipy on the host on purpose, as the published code; it is no aten op and is not counted.)"""
    import pytorch_lightning as pl

    from segssl.commands.train import build_data_and_method
    from tests.conftest import compose_config

    steps = 3
    overrides = [*TINY, f"method={method}", f"trainer.max_steps={steps}"]
    if method == "bcp":
        overrides.append("method.pretrain_steps=1")  # both stages within the steps
    cfg = compose_config("train", overrides, tmp_path / "run", tiny_data_dir)
    pl.seed_everything(0)
    datamodule, module = build_data_and_method(cfg)
    counts: list[Counter[str]] = []
    losses = module.training_losses

    def counted(batch: dict) -> dict:
        with SyncCounter() as counter:
            counter.track(*tree_flatten(batch)[0], *module.parameters(), *module.buffers())
            out = losses(batch)
        counts.append(counter.calls)
        return out

    module.training_losses = counted
    trainer = training_only_trainer(steps)
    trainer.fit(module, datamodule=datamodule)
    assert len(counts) == steps
    assert counts == [Counter()] * steps, counts


# ---------------------------------------------------------------- checkpoints by time

SMALL = [*TINY, "model.features=[4,4,8,8,16,4]"]


def test_time_based_latest_and_last_only_at_the_end(run_task, monkeypatch):
    """conf/experiment/acdc's cadence: latest.ckpt by time, not by step count, and last.ckpt not
    at every validation (only beside a new best, and at the end of training)."""
    from segssl.methods.base import SegmentationMethod
    from segssl.utils.checkpoint_io import AtomicCheckpointIO

    writes: list[tuple[str, int]] = []
    save = AtomicCheckpointIO.save_checkpoint

    def recorded(self, checkpoint, path, storage_options=None):
        writes.append((Path(path).name, int(checkpoint["global_step"])))
        return save(self, checkpoint, path, storage_options)

    original = SegmentationMethod._log_evaluation

    def worsening(self, stage):  # the first validation is the best: one best, then none
        if stage != "val":
            return original(self, stage)
        self.log("val/dice", 1.0 / (1 + self.global_step))

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recorded)
    monkeypatch.setattr(SegmentationMethod, "_log_evaluation", worsening)
    base = [
        *SMALL,
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        "test=false",
        "callbacks.model_checkpoint.save_top_k=1",
    ]
    time_based = [
        "callbacks.latest_checkpoint.every_n_train_steps=0",
        "callbacks.latest_checkpoint.train_time_interval=0.000001",  # every step, by time
        "callbacks.model_checkpoint.last_every_validation=false",
    ]
    run_task([*base, *time_based], name="by_time")
    latest = [step for name, step in writes if name == "latest.ckpt"]
    assert latest == [1, 2, 3, 4, 5, 6]  # by time (any interval elapsed), not every 50 steps
    last = [step for name, step in writes if name == "last.ckpt"]
    assert last == [2, 6]  # beside the best of step 2, and the end; not at steps 4
    best = [name for name, _ in writes if name.startswith("best_")]
    assert best == ["best_step2_dice0.3333.ckpt"]

    writes.clear()
    run_task(base, name="by_steps")  # conf/callbacks/default.yaml: the CPU cadence as before
    assert [s for n, s in writes if n == "last.ckpt"] == [2, 4, 6]
    assert [s for n, s in writes if n == "latest.ckpt"] == []  # every 50 steps


def test_acdc_experiment_sets_the_gpu_cadence_and_trainer_gpu_bf16(tmp_path, tiny_data_dir):
    from hydra.utils import instantiate

    from segssl.utils.checkpoint_io import RunCheckpoint
    from tests.conftest import compose_config

    cfg = compose_config("train", ["+experiment=acdc", "trainer=gpu"], tmp_path / "r")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.channels_last == "auto"
    assert cfg.model.compile is False and cfg.evaluation.distances_every == 0
    latest = instantiate(cfg.callbacks.latest_checkpoint)
    assert latest._train_time_interval.total_seconds() == 120
    assert latest._every_n_train_steps == 0
    assert instantiate(cfg.callbacks.model_checkpoint).last_every_validation is False
    with pytest.raises(ValueError, match="train_time_interval=-1: expected seconds > 0"):
        RunCheckpoint(dirpath=tmp_path, filename="latest", train_time_interval=-1)


# ---------------------------------------------------------------- speed options of the model


def test_channels_last_auto_is_nhwc_on_cuda_for_2d_networks_only():
    from segssl.models.speed import channels_last_option, compile_mode, use_channels_last

    net_2d, net_3d = torch.nn.Conv2d(1, 2, 3), torch.nn.Conv3d(1, 2, 3)
    assert use_channels_last("auto", net_2d, "cuda") is True
    assert use_channels_last("auto", net_3d, "cuda") is False  # 5-D weights: no NHWC
    assert use_channels_last("auto", net_2d, "cpu") is False
    assert use_channels_last(True, net_2d, "cpu") is True
    assert compile_mode(False) is None and compile_mode(True) == "default"
    assert compile_mode("reduce-overhead") == "reduce-overhead"
    with pytest.raises(ValueError, match="model.channels_last='yes'"):
        channels_last_option("yes")
    with pytest.raises(ValueError, match="model.compile='fast'.*reduce-overhead: CUDA graphs"):
        compile_mode("fast")


def test_compile_mode_is_wired_to_torch_compile(tmp_path, tiny_data_dir, monkeypatch):
    """``model.compile=reduce-overhead`` (the CUDA-graphs option) reaches ``torch.compile`` for
    every network, which then runs the forward, and each step is marked for CUDA graphs."""
    from segssl.commands.train import build_data_and_method
    from tests.conftest import compose_config

    modes: list[str] = []
    marks: list[int] = []

    def fake_compile(module: torch.nn.Module, mode: str = "default"):
        modes.append(mode)
        return lambda x: module(x) * 0 + 7.0  # recognisable: the compiled one ran

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    overrides = [*TINY, "method=cps", "model.compile=reduce-overhead"]
    cfg = compose_config("train", overrides, tmp_path / "run", tiny_data_dir)
    _, method = build_data_and_method(cfg)
    assert method.compile_mode == "reduce-overhead" and not method.channels_last  # auto, CPU
    method.on_fit_start()
    assert modes == ["reduce-overhead", "reduce-overhead"]
    out = method.run_network("net1", torch.zeros(1, 1, 32, 32))
    assert torch.all(out == 7.0)
    method.on_train_batch_start({}, 0)
    assert marks == [1]
