"""Bad input stops a run before training with a message naming the thing and what was expected;
degenerate but valid data trains."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException

from segssl.data.readers import DataError
from segssl.data.synthetic import ensure_synthetic_dataset
from tests.conftest import TINY


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("clean") / "data", 3, 1, 1, 24, 2)


@pytest.fixture
def root(clean_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(clean_root, copy)
    return copy


def first_slice(root: Path) -> Path:
    slice_id = (root / "train_slices.list").read_text().split()[0]
    return root / "data" / "slices" / f"{slice_id}.h5"


def rewrite(path: Path, **arrays: np.ndarray) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


def break_missing_list(root):
    (root / "val.list").unlink()
    return "split list not found: " + str(root / "val.list")


def break_list_names_missing_file(root):
    first_slice(root).unlink()
    return "names 1 missing file(s)"


def break_corrupt_h5(root):
    first_slice(root).write_bytes(b"not an hdf5 file")
    return "cannot read as HDF5"


def break_wrong_key(root):
    rewrite(first_slice(root), img=np.zeros((8, 8), np.float32), label=np.zeros((8, 8), np.uint8))
    return "missing h5 key 'image'"


def break_shape_mismatch(root):
    rewrite(first_slice(root), image=np.zeros((8, 8), np.float32), label=np.zeros((8, 9), np.uint8))
    return "'label' shape (8, 9) != 'image' shape (8, 8)"


def break_label_range(root):
    rewrite(
        first_slice(root), image=np.zeros((8, 8), np.float32), label=np.full((8, 8), 7, np.uint8)
    )
    return "expected classes 0..3"


def break_nan(root):
    image = np.zeros((8, 8), np.float32)
    image[2, 2] = np.nan
    rewrite(first_slice(root), image=image, label=np.zeros((8, 8), np.uint8))
    return "'image' contains NaN or inf values"


def break_empty_split(root):
    (root / "val.list").write_text("\n")
    return "split list is empty"


BREAKS = [
    break_missing_list,
    break_list_names_missing_file,
    break_corrupt_h5,
    break_wrong_key,
    break_shape_mismatch,
    break_label_range,
    break_nan,
    break_empty_split,
]


@pytest.mark.parametrize("make_bad", BREAKS, ids=lambda f: f.__name__[6:])
def test_bad_data_fails_before_training_naming_the_problem(run_task, root, make_bad):
    expected = make_bad(root)
    with pytest.raises(DataError, match=None) as err:
        run_task([*TINY, f"data.root={root}", "data.synthetic=null"])
    assert expected in str(err.value)
    assert not list(root.parent.glob("run/checkpoints/*"))  # nothing trained, nothing written


def test_missing_root_and_too_many_labeled(run_task, tmp_path, clean_root):
    with pytest.raises(DataError, match="data root not found: .*nowhere"):
        run_task([*TINY, f"data.root={tmp_path / 'nowhere'}", "data.synthetic=null"])
    with pytest.raises(DataError, match=r"data.labeled=9 but the training list has 3 patients"):
        run_task(
            [*TINY, f"data.root={clean_root}", "data.synthetic=null", "data.labeled=9"], name="b"
        )


@pytest.mark.parametrize("group", ["method", "model", "data", "filter"])
def test_unknown_names_list_the_valid_ones(run_task, group):
    with pytest.raises(ConfigCompositionException) as err:
        run_task([*TINY, f"{group}=nonsense"])
    message = str(err.value)
    assert f"Could not find '{group}/nonsense'" in message
    assert "Available options" in message


def test_checkpoint_that_is_not_a_segssl_checkpoint(run_task, tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a segssl checkpoint"):
        run_task([f"ckpt_path={foreign}"], task="test")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match="cannot read as a PyTorch checkpoint"):
        run_task([f"ckpt_path={garbage}"], task="test", name="b")


def test_checkpoint_of_another_model(run_task):
    output_dir, _, _ = run_task([*TINY, "method=supervised", "trainer.max_steps=1"])
    checkpoint = next((output_dir / "checkpoints").glob("last*.ckpt"))
    state = torch.load(checkpoint, weights_only=False)
    state["segssl_config"]["method"]["_target_"] = "segssl.methods.CrossPseudoSupervision"
    torch.save(state, checkpoint)
    with pytest.raises(ValueError, match="weights do not fit the model"):
        run_task([f"ckpt_path={checkpoint}"], task="test", name="t")


def test_degenerate_but_valid_data_trains(run_task, tmp_path):
    """Constant images, slices without foreground, and no unlabeled data at all."""
    root = ensure_synthetic_dataset(tmp_path / "degenerate", 2, 1, 1, 24, 2)
    for path in sorted((root / "data" / "slices").glob("*.h5"))[:3]:
        rewrite(path, image=np.full((24, 24), 0.5, np.float32), label=np.zeros((24, 24), np.uint8))
    output_dir, _, _ = run_task(
        [*TINY, f"data.root={root}", "data.synthetic=null", "data.labeled=2", "method=dsaif"]
    )
    assert (output_dir / "results.json").is_file()
