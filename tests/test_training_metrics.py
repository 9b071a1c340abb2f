"""On-device training/validation metrics: known answers on tiny tensors, sums across two gloo
ranks, and the columns a TINY cps run writes to its CSV log."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segssl.evaluation.evaluator import VolumeEvaluator
from segssl.evaluation.overlap_metrics import Agreement, ErrorConsensus, ForegroundDice
from segssl.utils.trust import load_checkpoint
from tests.conftest import TINY


def t(*values: int) -> torch.Tensor:
    return torch.tensor(values)


# (pred_a, pred_b, expected agreement)
AGREEMENT_CASES = [
    ("identical", t(0, 1, 2, 3), t(0, 1, 2, 3), 1.0),
    ("all differ", t(0, 1, 2, 3), t(1, 2, 3, 0), 0.0),
    ("3 of 4", t(0, 1, 1, 2), t(0, 1, 2, 2), 0.75),
]


@pytest.mark.parametrize(("name", "a", "b", "expected"), AGREEMENT_CASES)
def test_agreement_known_answers(name, a, b, expected):
    metric = Agreement()
    metric.update(a, b)
    assert metric.compute().item() == pytest.approx(expected)


# (pred_a, pred_b, label, expected consensus 2|Ea & Eb| / (|Ea| + |Eb|))
CONSENSUS_CASES = [
    ("disjoint errors", t(1, 0, 0, 0), t(0, 1, 0, 0), t(0, 0, 0, 0), 0.0),
    ("identical errors", t(1, 2, 0, 0), t(1, 2, 0, 0), t(0, 0, 0, 0), 1.0),
    # same error pixels with different wrong classes: still shared errors
    ("same pixels, other class", t(1, 1, 0, 0), t(2, 2, 0, 0), t(0, 0, 0, 0), 1.0),
    # Ea = {0, 1, 2}, Eb = {2, 3}: 2 * 1 / (3 + 2)
    ("partial", t(1, 1, 1, 0, 0, 0), t(0, 0, 2, 2, 0, 0), t(0, 0, 0, 0, 0, 0), 0.4),
    ("no errors at all", t(0, 1, 2), t(0, 1, 2), t(0, 1, 2), 0.0),
]


@pytest.mark.parametrize(("name", "a", "b", "label", "expected"), CONSENSUS_CASES)
def test_error_consensus_known_answers(name, a, b, label, expected):
    metric = ErrorConsensus()
    metric.update(a, b, label, case="v")
    assert metric.compute().item() == pytest.approx(expected)


def test_error_consensus_pools_counts_and_counts_a_repeated_volume_once():
    metric = ErrorConsensus()
    zeros = torch.zeros(2, 3, dtype=torch.long)
    # volume 1: Ea = {0, 1}, Eb = {1, 2}: 1 shared of 2 + 2 errors (ratio 0.5)
    metric.update(t(1, 1, 0, 0, 0, 0).view(2, 3), t(0, 1, 1, 0, 0, 0).view(2, 3), zeros, "one")
    # volume 2: Ea = {0, 1, 2}, Eb = {3, 4, 5}: 0 shared of 6 errors (ratio 0)
    metric.update(t(1, 1, 1, 0, 0, 0).view(2, 3), t(0, 0, 0, 1, 1, 1).view(2, 3), zeros, "two")
    pooled = 2 * 1 / (4 + 6)
    assert metric.compute().item() == pytest.approx(pooled)  # not the mean ratio 0.25
    metric.update(t(1, 1, 0, 0, 0, 0).view(2, 3), t(0, 1, 1, 0, 0, 0).view(2, 3), zeros, "one")
    assert metric.compute().item() == pytest.approx(pooled)  # "one" again: sampler padding
    metric.reset()
    metric.update(t(1, 0), t(1, 0), t(0, 0), "three")
    assert metric.compute().item() == pytest.approx(1.0)  # reset forgets earlier volumes


def test_foreground_dice_known_answer():
    label = t(0, 1, 1, 2, 2, 2, 0, 0)
    pred = t(0, 1, 2, 2, 2, 0, 0, 1)
    # class 1: TP 1, |P| 2, |T| 2 -> 0.5; class 2: TP 2, |P| 3, |T| 3 -> 2/3; background ignored
    metric = ForegroundDice(num_classes=3)
    metric.update(pred.view(1, 2, 4), label.view(1, 2, 4))
    assert metric.compute().item() == pytest.approx((0.5 + 2 / 3) / 2)
    # pooled over batches: a second, perfect batch adds counts, it is not averaged with the first
    metric.update(t(1, 2).view(1, 1, 2), t(1, 2).view(1, 1, 2))
    assert metric.compute().item() == pytest.approx((2 * 2 / 6 + 2 * 3 / 8) / 2)


def test_foreground_dice_absent_class_scores_one_and_matches_torchmetrics():
    metric = ForegroundDice(num_classes=4)
    metric.update(t(0, 1, 1, 2), t(0, 1, 2, 2))  # class 3 in neither: Dice 1
    assert metric.compute().item() == pytest.approx((2 / 3 + 2 / 3 + 1.0) / 3)
    segmentation = pytest.importorskip("torchmetrics.segmentation")
    if not hasattr(segmentation, "DiceScore"):
        pytest.skip("torchmetrics.segmentation.DiceScore needs torchmetrics >= 1.6")
    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (3, 16, 16), generator=generator)
    label = torch.randint(0, 4, (3, 16, 16), generator=generator)
    ours = ForegroundDice(num_classes=4)
    ours.update(pred, label)
    theirs = segmentation.DiceScore(
        num_classes=4,
        include_background=False,
        average="macro",
        aggregation_level="global",
        input_format="index",
    )
    theirs.update(pred, label)
    assert ours.compute().item() == pytest.approx(theirs.compute().item(), abs=1e-6)


@pytest.mark.parametrize(
    ("metric", "args", "match"),
    [
        (Agreement(), (torch.rand(4), torch.rand(4)), "integer label maps.*float32"),
        (Agreement(), (t(0, 1), t(0, 1, 2)), r"one shape.*\(2,\).*\(3,\)"),
        (ErrorConsensus(), (t(0, 1), t(0, 1), t(0, 1, 1), "v"), "ErrorConsensus: .*one shape"),
        (ForegroundDice(3), (t(0, 1), torch.zeros(2)), "ForegroundDice: .*integer"),
    ],
)
def test_bad_inputs_are_refused_with_the_metric_named(metric, args, match):
    with pytest.raises(ValueError, match=match):
        metric.update(*args)


def test_evaluator_hands_each_models_label_maps_to_observe_without_predicting_twice():
    calls = {"a": 0, "b": 0}

    def thresholding(x: torch.Tensor) -> torch.Tensor:  # foreground where the image is bright
        calls["a"] += 1
        fg = (x > 0.5).float()
        return torch.cat([1 - fg, fg], dim=1)

    def background(x: torch.Tensor) -> torch.Tensor:
        calls["b"] += 1
        return torch.cat([torch.ones_like(x), torch.zeros_like(x)], dim=1)

    image = np.zeros((2, 8, 8), dtype=np.float32)
    image[:, :, :4] = 1.0  # network a predicts columns 0-3
    label = np.zeros((2, 8, 8), dtype=np.uint8)
    label[:, :, :2] = 1  # the reference: columns 0-1; a errs on 2-3, b on 0-1
    seen: dict[str, np.ndarray] = {}
    evaluator = VolumeEvaluator(2, ["bg", "fg"], image_size=8, use_spacing=False)
    per_model = evaluator.add_case(
        {"a": thresholding, "b": background},
        {"image": image, "label": label, "case": "v"},
        torch.device("cpu"),
        {"ens": ["a", "b"]},
        observe=seen.update,
    )
    assert calls == {"a": 1, "b": 1}  # one batch of slices each, the ensemble reuses them
    assert set(seen) == {"a", "b", "ens"}
    np.testing.assert_array_equal(seen["a"], (image > 0.5).astype(np.uint8))
    assert per_model["a"]["fg"]["dice"] == pytest.approx(2 * 32 / (64 + 32))
    consensus = ErrorConsensus()
    consensus.update(
        torch.as_tensor(seen["a"]), torch.as_tensor(seen["b"]), torch.as_tensor(label), "v"
    )
    assert consensus.compute().item() == 0.0  # disjoint errors


def _two_rank_worker(rank: int, folder: Path) -> None:
    init = f"file://{folder / 'init'}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        zeros = torch.zeros(4, dtype=torch.long)
        dice, agreement, consensus = ForegroundDice(3), Agreement(), ErrorConsensus()
        if rank == 0:
            dice.update(t(1, 1, 0, 0), t(1, 0, 0, 0))
            agreement.update(t(0, 1, 2, 2), t(0, 1, 2, 2))
            consensus.update(t(1, 1, 0, 0), t(1, 0, 0, 0), zeros, "a")
        else:
            dice.update(t(2, 2, 0, 0), t(2, 2, 0, 0))
            agreement.update(t(0, 0, 0, 0), t(1, 1, 1, 1))
            consensus.update(t(0, 0, 1, 1), t(0, 0, 0, 1), zeros, "b")
            consensus.update(t(1, 1, 0, 0), t(1, 0, 0, 0), zeros, "a")  # padded repeat of "a"
        values = [m.compute().item() for m in (dice, agreement, consensus)]
        (folder / f"rank{rank}.json").write_text(json.dumps(values))
    finally:
        dist.destroy_process_group()


def test_metrics_sum_their_counts_across_two_gloo_ranks(tmp_path):
    # fork: the children need no fresh interpreter importing torch (seconds, not a minute)
    mp.start_processes(_two_rank_worker, args=(tmp_path,), nprocs=2, start_method="fork")
    # dice: class 1 TP 1, |P| 2, |T| 1 -> 2/3; class 2: TP 2, |P| 2, |T| 2 -> 1
    # agreement: 4 of 8; consensus: "a" (1 shared, 2 + 1 errors) once, "b" (1 shared, 2 + 1)
    expected = [(2 / 3 + 1.0) / 2, 0.5, 2 * 2 / 6]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == pytest.approx(expected)


def read_csv_log(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_cps_run_logs_dice_agreement_and_error_consensus(run_task):
    output_dir, _, _ = run_task(
        [*TINY, "method=cps", "trainer.max_steps=4", "trainer.log_every_n_steps=2"]
    )
    rows = read_csv_log(output_dir)
    train_keys = ("train/dice_net1", "train/dice_net2", "train/agreement")
    train_rows = [r for r in rows if r.get("train/agreement")]
    # one row per logging interval (steps 2 and 4, logged as step 1 and 3), each with all three
    assert [int(r["step"]) for r in train_rows] == [1, 3]
    for row in train_rows:
        for key in train_keys:
            assert 0.0 <= float(row[key]) <= 1.0, (key, row)
    val_rows = [r for r in rows if r.get("val/dice")]
    assert len(val_rows) == 2  # validations at steps 2 and 4
    for row in val_rows:
        assert 0.0 <= float(row["val/error_consensus/net1-net2"]) <= 1.0, row
    # metric states are not saved: the checkpoint still loads with weights_only=True and holds
    # the same keys as before these metrics existed, so older checkpoints load strictly too
    results = json.loads((output_dir / "results.json").read_text())
    checkpoint = load_checkpoint(results["checkpoint"])
    assert all(k.startswith("networks.") for k in checkpoint["state_dict"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_updates_read_nothing_back_from_the_gpu():
    device = torch.device("cuda")
    dice, agreement = ForegroundDice(4).to(device), Agreement().to(device)
    logits = torch.randn(4, 4, 32, 32, device=device)
    label = torch.randint(0, 4, (4, 1, 32, 32), device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync in the updates raises
    try:
        for _ in range(3):
            dice.update(logits.argmax(1), label[:, 0])
            agreement.update(logits.argmax(1), logits.flip(0).argmax(1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert 0.0 <= dice.compute().item() <= 1.0
    assert 0.0 <= agreement.compute().item() <= 1.0
