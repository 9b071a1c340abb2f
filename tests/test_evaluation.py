"""Tests of segssl.evaluation: metric values against hand-computed answers, a brute-force
reference and MONAI; the empty-mask policy; whole-volume inference; the results files."""

from __future__ import annotations

import csv
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)

from segssl.evaluation import (
    EMPTY_MASK_POLICY,
    PER_CASE_COLUMNS,
    RESULTS_KEYS,
    aggregate,
    case_metrics,
    case_rows,
    ensemble_predict_fn,
    format_results_table,
    label_map,
    predict_volume_2d,
    predict_volume_3d,
    probs_to_labels,
    read_results,
    resolve_device,
    stride_to_overlap,
    volume_diagonal,
    write_per_case_csv,
    write_results,
)


def shared_data_dir() -> Path:
    """The read-only shared data folder beside the repo (env SEGSSL_SHARED_DATA overrides)."""
    env = os.environ.get("SEGSSL_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------- brute-force reference


def surface_brute(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a face neighbour outside the mask (outside the array = outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    surface = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            surface |= mask & ~np.roll(padded, step, axis=axis)[inner]
    return surface


def distances_brute(src: np.ndarray, dst: np.ndarray, spacing) -> np.ndarray:
    """For each surface voxel of ``src``, the distance to the nearest surface voxel of ``dst``."""
    a = np.argwhere(surface_brute(src)) * np.asarray(spacing, dtype=float)
    b = np.argwhere(surface_brute(dst)) * np.asarray(spacing, dtype=float)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)


def reference_hd95_asd(pred: np.ndarray, label: np.ndarray, spacing) -> tuple[float, float]:
    d_pl, d_lp = distances_brute(pred, label, spacing), distances_brute(label, pred, spacing)
    hd95 = max(np.percentile(d_pl, 95), np.percentile(d_lp, 95))
    return float(hd95), float(np.concatenate([d_pl, d_lp]).mean())


def random_blobs(shape, seed: int, num_classes: int = 3) -> np.ndarray:
    """A smooth random label map (thresholded noise) with several classes and holes."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.standard_normal((1, 1, *shape)).astype(np.float32))
    pool = torch.nn.functional.avg_pool3d if len(shape) == 3 else torch.nn.functional.avg_pool2d
    smooth = pool(noise, 5, stride=1, padding=2)[0, 0].numpy()
    edges = np.quantile(smooth, np.linspace(0, 1, num_classes + 1)[1:-1])
    return np.digitize(smooth, edges).astype(np.uint8)


def onehot(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """(1, C, *spatial) one-hot tensor, the input format of MONAI's metrics."""
    hot = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), num_classes)
    return hot.movedim(-1, 0)[None]


def square(shape, top_left, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[top_left[0] : top_left[0] + size, top_left[1] : top_left[1] + size] = 1
    return mask


# ---------------------------------------------------------------- metrics: known answers


def test_identical_masks_are_perfect():
    label = random_blobs((12, 20, 16), seed=0, num_classes=4)
    result = case_metrics(label, label.copy(), num_classes=4)
    assert list(result) == ["class1", "class2", "class3"]
    for values in result.values():
        assert values == {
            "dice": 1.0,
            "jaccard": 1.0,
            "hd95": 0.0,
            "asd": 0.0,
            "pred_empty": False,
            "label_empty": False,
        }


def test_disjoint_squares_at_known_offset():
    # 4x4 squares 10 columns apart; surface distances: 4 x 7, 2 x 8, 2 x 9, 4 x 10 each way.
    label = square((20, 30), (3, 2), 4)
    pred = square((20, 30), (3, 12), 4)
    m = case_metrics(pred, label, num_classes=2)["class1"]
    assert m["dice"] == 0.0 and m["jaccard"] == 0.0
    assert m["hd95"] == pytest.approx(10.0)
    assert m["asd"] == pytest.approx(102 / 12)
    # anisotropic spacing along the offset axis scales every distance by 2
    m2 = case_metrics(pred, label, num_classes=2, spacing=(1.0, 2.0))["class1"]
    assert m2["hd95"] == pytest.approx(20.0)
    assert m2["asd"] == pytest.approx(2 * 102 / 12)


def test_one_voxel_shift():
    # 6x6 square shifted one column: half of each surface coincides, half is 1 voxel away
    label = square((16, 16), (5, 5), 6)
    pred = square((16, 16), (5, 6), 6)
    m = case_metrics(pred, label, num_classes=2)["class1"]
    assert m["dice"] == pytest.approx(60 / 72)
    assert m["jaccard"] == pytest.approx(30 / 42)
    assert m["hd95"] == pytest.approx(1.0)
    assert m["asd"] == pytest.approx(0.5)
    # 0.5 mm rows, 3 mm columns: the 6 voxels beyond each side are 3 mm away, the 4 inside
    # ones reach a row-surface voxel 0.5, 1, 1, 0.5 mm away: (6 * 3 + 3) / 20 each way
    m_mm = case_metrics(pred, label, num_classes=2, spacing=(0.5, 3.0))["class1"]
    assert m_mm["hd95"] == pytest.approx(3.0) and m_mm["asd"] == pytest.approx(21 / 20)


def test_ring_inner_boundary_counts_as_surface():
    # 9x9 ring with a 3x3 hole vs the filled 9x9 square: the 12 voxels 4-adjacent to the hole
    # are surface (2 voxels from the outer border); the hole's diagonal neighbours are not.
    pred = square((15, 15), (3, 3), 9)
    label = pred.copy()
    label[6:9, 6:9] = 0
    m = case_metrics(pred, label, num_classes=2)["class1"]
    assert m["dice"] == pytest.approx(2 * 72 / (72 + 81))
    assert m["jaccard"] == pytest.approx(72 / 81)
    assert m["hd95"] == pytest.approx(2.0)
    assert m["asd"] == pytest.approx(12 * 2 / (32 + 32 + 12))


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [
        ((24, 20), None),
        ((24, 20), (1.5, 0.4)),
        ((10, 14, 12), None),
        ((10, 14, 12), (2.5, 0.7, 1.3)),
    ],
)
def test_distances_match_brute_force_reference(shape, spacing):
    label = random_blobs(shape, seed=1)
    pred = random_blobs(shape, seed=2)
    result = case_metrics(pred, label, num_classes=3, spacing=spacing)
    voxel = spacing or (1.0,) * len(shape)
    for c, name in ((1, "class1"), (2, "class2")):
        hd95, asd = reference_hd95_asd(pred == c, label == c, voxel)
        assert result[name]["hd95"] == pytest.approx(hd95, rel=1e-5)
        assert result[name]["asd"] == pytest.approx(asd, rel=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI deprecation noise
def test_all_metrics_match_monai():
    spacing = (2.0, 0.8, 1.1)
    label = random_blobs((10, 18, 16), seed=3, num_classes=4)
    pred = random_blobs((10, 18, 16), seed=4, num_classes=4)

    p, y = onehot(pred, 4).float(), onehot(label, 4).float()
    expected = {
        "dice": compute_dice(p, y, include_background=False)[0],
        "jaccard": compute_iou(p, y, include_background=False)[0],
        "hd95": compute_hausdorff_distance(p, y, percentile=95, spacing=spacing)[0],
        "asd": compute_average_surface_distance(p, y, symmetric=True, spacing=spacing)[0],
    }
    result = case_metrics(pred, label, num_classes=4, spacing=spacing)
    for i, name in enumerate(["class1", "class2", "class3"]):
        for metric, values in expected.items():
            assert result[name][metric] == pytest.approx(float(values[i]), rel=1e-5), metric


# ---------------------------------------------------------------- metrics: empty-mask policy


def test_empty_policy_both_empty():
    label = np.zeros((20, 30), dtype=np.uint8)
    label[2:5, 2:5] = 1  # class 1 present, class 2 absent in both
    m = case_metrics(label, label, num_classes=3)["class2"]
    assert m == {
        "dice": 1.0,
        "jaccard": 1.0,
        "hd95": 0.0,
        "asd": 0.0,
        "pred_empty": True,
        "label_empty": True,
    }


@pytest.mark.parametrize("empty", ["pred", "label"])
def test_empty_policy_one_empty_gets_diagonal(empty):
    mask = square((20, 30), (4, 4), 5)
    blank = np.zeros_like(mask)
    pred, label = (blank, mask) if empty == "pred" else (mask, blank)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MONAI empty-mask warnings either
        m = case_metrics(pred, label, num_classes=2, spacing=(2.0, 1.0))["class1"]
    assert volume_diagonal((20, 30), (2.0, 1.0)) == pytest.approx(50.0)
    assert m["dice"] == 0.0 and m["jaccard"] == 0.0
    assert m["hd95"] == pytest.approx(50.0) and m["asd"] == pytest.approx(50.0)
    assert m["pred_empty"] is (empty == "pred")
    assert m["label_empty"] is (empty == "label")
    voxels = case_metrics(pred, label, num_classes=2)["class1"]
    assert voxels["hd95"] == pytest.approx(math.hypot(20, 30))


def test_input_validation_errors():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        case_metrics(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8), num_classes=2)
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8), 2, spacing=(1.0,))
    with pytest.raises(ValueError, match="pred.*integer"):
        case_metrics(np.zeros((4, 5)), np.zeros((4, 5), np.uint8), num_classes=2)
    with pytest.raises(ValueError, match="label.*values"):
        case_metrics(np.zeros((4, 5), np.uint8), np.full((4, 5), 3, np.uint8), num_classes=3)
    with pytest.raises(ValueError, match="class_names"):
        case_metrics(np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8), 3, class_names=["a"])


def test_class_names_with_or_without_background():
    label = random_blobs((16, 16), seed=5)
    assert list(case_metrics(label, label, 3, class_names=["RV", "LV"])) == ["RV", "LV"]
    assert list(case_metrics(label, label, 3, class_names=["bg", "RV", "LV"])) == ["RV", "LV"]


def test_aggregate_means_over_cases_then_classes():
    def case(d1, d2, h1, h2, empty=False):
        return {
            "A": {
                "dice": d1,
                "jaccard": d1,
                "hd95": h1,
                "asd": h1,
                "pred_empty": empty,
                "label_empty": False,
            },
            "B": {
                "dice": d2,
                "jaccard": d2,
                "hd95": h2,
                "asd": h2,
                "pred_empty": False,
                "label_empty": False,
            },
        }

    summary = aggregate([case(1.0, 0.5, 0.0, 4.0), case(0.0, 0.7, 10.0, 2.0, empty=True)])
    assert summary["num_cases"] == 2
    assert summary["per_class"]["A"]["dice"] == pytest.approx(0.5)
    assert summary["per_class"]["B"]["hd95"] == pytest.approx(3.0)
    assert summary["per_class"]["A"]["num_pred_empty"] == 1
    assert summary["mean"] == pytest.approx(
        {"dice": 0.55, "jaccard": 0.55, "hd95": 4.0, "asd": 4.0}
    )
    with pytest.raises(ValueError, match="cases"):
        aggregate([])


def test_acdc_sized_volume_is_fast():
    # issue: whole-volume evaluation must not dominate a run (10x256x216, 3 classes, <1 s)
    label = np.zeros((10, 256, 216), dtype=np.uint8)
    zz, yy, xx = np.mgrid[:10, :256, :216]
    r = np.hypot(yy - 128, xx - 100)
    label[r < 40] = 2
    label[r < 30] = 3
    label[(np.hypot(yy - 128, xx - 150) < 30) & (label == 0)] = 1
    pred = np.roll(label, (1, 2), axis=(1, 2))
    case_metrics(pred, label, num_classes=4)  # warm-up (imports, first-call overheads)
    start = time.perf_counter()
    result = case_metrics(pred, label, num_classes=4, spacing=(10.0, 1.5, 1.5))
    elapsed = time.perf_counter() - start
    print(f"case_metrics on 10x256x216, 3 classes: {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0
    assert all(0.5 < v["dice"] < 1.0 for v in result.values())


# ---------------------------------------------------------------- inference


def intensity_classes(x: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    """A known 'network': one-hot of the intensity bin (x in [0, 1] -> class floor(x * C))."""
    labels = (x[:, 0] * num_classes).long().clamp(0, num_classes - 1)
    return torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).float()


def test_predict_volume_2d_native_size_non_square_and_batches():
    volume = np.full((7, 30, 50), 0.1, dtype=np.float32)
    volume[:, 8:22, 5:35] = 0.5
    volume[2:5, 10:20, 30:45] = 0.9
    calls: list[tuple[int, ...]] = []

    def predict_fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        assert not torch.is_grad_enabled()
        return intensity_classes(x)

    probs = predict_volume_2d(predict_fn, volume, image_size=(64, 40), batch_size=3, num_classes=3)
    assert calls == [(3, 1, 64, 40), (3, 1, 64, 40), (1, 1, 64, 40)]
    assert probs.shape == (3, 7, 30, 50) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(0), torch.ones(7, 30, 50), atol=1e-5)
    labels = probs_to_labels(probs)
    expected = (volume * 3).astype(np.uint8)
    # resizing only blurs block borders; away from them labels are exact (axis swaps are not)
    assert (labels == expected).mean() > 0.95
    interior = np.zeros_like(expected, dtype=bool)
    interior[:, 10:20, 7:28] = True
    assert (labels[interior] == 1).all()


def test_predict_volume_2d_same_size_is_exact_and_checks_classes():
    volume = np.random.default_rng(0).random((4, 12, 9)).astype(np.float32)
    probs = predict_volume_2d(intensity_classes, volume, image_size=(12, 9), device="cpu")
    np.testing.assert_array_equal(probs_to_labels(probs), (volume * 3).astype(np.uint8))
    with pytest.raises(ValueError, match="num_classes"):
        predict_volume_2d(intensity_classes, volume, image_size=12, num_classes=4)
    with pytest.raises(ValueError, match="volume"):
        predict_volume_2d(intensity_classes, volume[0], image_size=12)


@pytest.mark.parametrize("shape", [(10, 14, 12), (40, 36, 34)])
def test_predict_volume_3d_smaller_and_larger_than_patch(shape):
    volume = np.random.default_rng(1).random(shape).astype(np.float32)
    probs = predict_volume_3d(intensity_classes, volume, patch_size=(16, 16, 16), overlap=0.5)
    assert probs.shape == (3, *shape) and probs.dtype == torch.float32
    np.testing.assert_array_equal(probs_to_labels(probs), (volume * 3).astype(np.uint8))


def test_predict_volume_3d_stride_gives_exact_window_count():
    calls = []

    def predict_fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return intensity_classes(x, 2)

    volume = np.zeros((14, 14, 12), dtype=np.float32)
    predict_volume_3d(predict_fn, volume, patch_size=(8, 8, 8), stride=(3, 3, 2), batch_size=1)
    # windows per axis: ceil((n - p) / s) + 1 = 3, 3, 3 (the UA-MT test_single_case rule)
    assert len(calls) == 27
    # UA-MT's LA protocol: int(patch * (1 - overlap)) must give exactly 18 and 4
    overlap = stride_to_overlap((112, 112, 80), (18, 18, 4))
    assert [int(p * (1 - o)) for p, o in zip((112, 112, 80), overlap, strict=True)] == [18, 18, 4]
    with pytest.raises(ValueError, match="stride"):
        stride_to_overlap((8, 8, 8), (9, 3, 3))
    with pytest.raises(ValueError, match="overlap and stride"):
        predict_volume_3d(predict_fn, volume, (8, 8, 8), overlap=0.5, stride=2)


def test_probs_to_labels_threshold_and_ensemble():
    fg = torch.tensor([[0.2, 0.6], [0.51, 0.9]])
    probs = torch.stack([1 - fg, fg])
    np.testing.assert_array_equal(probs_to_labels(probs), [[0, 1], [1, 1]])
    np.testing.assert_array_equal(probs_to_labels(probs, threshold=0.7), [[0, 0], [0, 1]])
    np.testing.assert_array_equal(probs_to_labels(fg[None]), [[0, 1], [1, 1]])
    with pytest.raises(ValueError, match="threshold"):
        probs_to_labels(torch.ones(3, 2, 2) / 3, threshold=0.5)

    mean_fn = ensemble_predict_fn(lambda x: x * 0 + 0.2, lambda x: x * 0 + 0.6)
    assert torch.allclose(mean_fn(torch.ones(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 0.4))
    with pytest.raises(ValueError, match="fns"):
        ensemble_predict_fn()


def test_label_maps_are_the_argmax_with_its_ties_and_nans():
    # the CPU label map is made class by class (5x faster than argmax over the outer axis):
    # the first maximal class must win a tie and a NaN must count as the maximum, as argmax does
    probs = torch.randint(0, 3, (5, 4, 9, 11)).float()  # many ties
    probs[2, 0, 0, :3] = float("nan")
    probs[0, 1, 1, 1] = float("nan")
    probs[4, 2, 2, 2] = float("nan")
    probs[1:3, 3, 3, 3] = float("nan")  # two NaNs: the first one wins
    expected = probs.argmax(0).to(torch.uint8)
    assert torch.equal(label_map(probs), expected)
    np.testing.assert_array_equal(probs_to_labels(probs), expected.numpy())
    random = torch.rand(4, 3, 16, 12)
    assert torch.equal(label_map(random), random.argmax(0).to(torch.uint8))


def test_device_follows_module_and_outputs_stay_on_cpu():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.Softmax(dim=1))
    assert resolve_device(net, None) == torch.device("cpu")
    assert resolve_device(lambda x: x, "cpu") == torch.device("cpu")
    probs = predict_volume_2d(net, np.zeros((3, 8, 6), np.float32), image_size=4)
    assert probs.device.type == "cpu" and probs.shape == (2, 3, 8, 6)
    assert not probs.requires_grad and not probs.is_inference()  # usable outside inference mode


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inference_on_cuda_matches_cpu():
    volume = np.random.default_rng(2).random((5, 20, 18)).astype(np.float32)
    seen = []

    def predict_fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.device.type)
        return intensity_classes(x)

    cpu = predict_volume_2d(predict_fn, volume, image_size=(16, 24), device="cpu")
    gpu = predict_volume_2d(predict_fn, volume, image_size=(16, 24), device="cuda")
    assert seen == ["cpu", "cuda"] and gpu.device.type == "cpu"
    assert torch.allclose(cpu, gpu, atol=1e-5)
    gpu3d = predict_volume_3d(predict_fn, volume, patch_size=(4, 8, 8), device="cuda")
    assert gpu3d.device.type == "cpu"
    np.testing.assert_array_equal(probs_to_labels(gpu3d), (volume * 3).astype(np.uint8))


# ---------------------------------------------------------------- results files


def make_results(tmp_path: Path, **kwargs) -> Path:
    label = random_blobs((12, 12), seed=6)
    pred = random_blobs((12, 12), seed=7)
    cases = [case_metrics(pred, label, 3, class_names=["RV", "LV"])] * 2
    return write_results(
        tmp_path,
        split="val",
        checkpoint=tmp_path / "best.ckpt",
        protocol={"inference": "slice-wise", "image_size": 256, "units": "voxels"},
        models={"net1": aggregate(cases), "ensemble": aggregate(cases[:1])},
        config={"seed": np.int64(3), "spacing": np.array([1.0, 2.0]), "out": tmp_path},
        **kwargs,
    )


def test_results_file_keys_and_no_overwrite(tmp_path):
    path = make_results(tmp_path)
    assert path == tmp_path / "results.json"
    data = json.loads(path.read_text())
    assert tuple(data) == RESULTS_KEYS
    assert data["protocol"]["empty_mask_policy"] == EMPTY_MASK_POLICY
    assert set(data["models"]["net1"]) == {"mean", "per_class", "num_cases"}
    assert data["models"]["ensemble"]["num_cases"] == 1
    assert data["config"] == {"seed": 3, "spacing": [1.0, 2.0], "out": str(tmp_path)}
    assert read_results(tmp_path) == data
    with pytest.raises(FileExistsError, match="results.json"):
        make_results(tmp_path)
    assert json.loads(path.read_text())["created"] == data["created"]  # untouched
    make_results(tmp_path, overwrite=True, extra={"seconds": 1.5})
    assert json.loads(path.read_text())["extra"] == {"seconds": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp files left


def test_per_case_csv_columns(tmp_path):
    label = random_blobs((12, 12), seed=8)
    rows = case_rows("net1", "patient001", case_metrics(label, label, 3, class_names=["RV", "LV"]))
    path = write_per_case_csv(tmp_path / "per_case.csv", rows)
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert tuple(read[0]) == PER_CASE_COLUMNS
    assert [(r["case"], r["class"], float(r["dice"])) for r in read] == [
        ("patient001", "RV", 1.0),
        ("patient001", "LV", 1.0),
    ]
    with pytest.raises(FileExistsError):
        write_per_case_csv(path, rows)
    with pytest.raises(ValueError, match="missing.*asd"):
        write_per_case_csv(tmp_path / "bad.csv", [{k: 0 for k in PER_CASE_COLUMNS[:-3]}])


def test_format_results_table(tmp_path):
    text = format_results_table(read_results(make_results(tmp_path)))
    lines = text.splitlines()
    assert "split: val" in lines[0] and "best.ckpt" in lines[0] and "voxels" in lines[0]
    assert lines[1].split()[:4] == ["model", "cases", "Dice", "Jaccard"]
    assert "Dice RV" in lines[1] and "Dice LV" in lines[1]
    assert lines[2].startswith("net1") and lines[3].startswith("ensemble")
    assert len({len(line) for line in lines[1:]}) == 1  # fixed width
    print(text)


# ---------------------------------------------------------------- real ACDC data


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI deprecation noise
def test_acdc_val_volumes_sanity():
    root = shared_data_dir() / "ACDC"
    if not (root / "val.list").is_file():
        pytest.skip(f"shared ACDC data not found at {root} (set SEGSSL_SHARED_DATA)")
    h5py = pytest.importorskip("h5py")
    ids = (root / "val.list").read_text().split()
    assert len(ids) == 20
    elapsed = 0.0
    for i, case in enumerate(ids):
        with h5py.File(root / "data" / f"{case}.h5", "r") as f:
            label = f["label"][:]
        shifted = np.zeros_like(label)
        shifted[:, :, 1:] = label[:, :, :-1]  # one pixel along W, no wrap-around
        start = time.perf_counter()
        same = case_metrics(label, label, 4, class_names=["RV", "Myo", "LV"])
        moved = case_metrics(shifted, label, 4, class_names=["RV", "Myo", "LV"])
        elapsed += time.perf_counter() - start
        for name in ("RV", "Myo", "LV"):
            assert same[name]["dice"] == 1.0 and same[name]["hd95"] == 0.0
            assert 0.5 < moved[name]["dice"] < 1.0
            assert 0.0 < moved[name]["asd"] < 1.0
            assert moved[name]["hd95"] <= 1.0 + 1e-6  # every surface voxel is <= 1 voxel away
        if i == 0:  # one real volume, anisotropic spacing: same numbers as MONAI
            spacing = (10.0, 1.4, 1.4)
            ours = case_metrics(shifted, label, 4, spacing=spacing)
            p, y = onehot(shifted, 4).float(), onehot(label, 4).float()
            hd = compute_hausdorff_distance(p, y, percentile=95, spacing=spacing)[0]
            asd = compute_average_surface_distance(p, y, symmetric=True, spacing=spacing)[0]
            for c in (1, 2, 3):
                assert ours[f"class{c}"]["hd95"] == pytest.approx(float(hd[c - 1]), rel=1e-5)
                assert ours[f"class{c}"]["asd"] == pytest.approx(float(asd[c - 1]), rel=1e-5)
    print(f"ACDC val: {elapsed / (2 * len(ids)) * 1000:.0f} ms per volume (3 classes, all metrics)")
