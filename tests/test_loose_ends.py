"""Issue 15's loose ends in test / predict / report / results files: ``split=train``, a folder
with one corrupt input, result-file permissions, a broken or missing ``results.json`` in a
report, and the empty run folder a failed command used to leave."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segssl.cli import main
from segssl.commands import test as test_command
from segssl.commands.predict import PartialPredictionError, predict_files
from segssl.commands.report import write_report
from segssl.data.readers import DataError
from segssl.evaluation.results import write_per_case_csv, write_results
from tests.conftest import compose_config
from tests.test_report import aggregate, fake_run
from tests.test_trust import checkpoint, image, write_checkpoint  # noqa: F401 - fixtures


# -- split=train -------------------------------------------------------------------------------
def test_split_train_of_a_slice_layout_is_refused_clearly(checkpoint, tmp_path):  # noqa: F811
    cfg = compose_config("test", [f"ckpt_path={checkpoint}", "split=train"], tmp_path / "run")
    with pytest.raises(DataError, match=r"split=train: data\.layout='ssl4mis' trains on 2-D"):
        test_command.test(cfg)
    assert not (tmp_path / "run" / "results.json").exists()


def test_split_train_of_a_volume_layout_evaluates_the_training_volumes(tmp_path):
    from tests.test_folder_data import make_folder

    root = make_folder(tmp_path / "mydata", cases={f"c{i}": True for i in range(6)})
    train_cfg = compose_config(
        "train",
        ["data=folder", f"data.root={root}", "data.layout_options.dims=3", "data.labeled=1",
         "data.patch_size=[16,16,8]", "model=vnet", "model.features=4", "method=supervised",
         "evaluation=sliding_window", "evaluation.stride=[8,8,8]"],
        tmp_path / "train",
    )  # fmt: skip
    ckpt = write_checkpoint(train_cfg, tmp_path / "vnet.ckpt")
    out = tmp_path / "run"
    test_command.test(compose_config("test", [f"ckpt_path={ckpt}", "split=train"], out))
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "train" and results["checkpoint"] == str(ckpt.resolve())
    assert results["protocol"]["inference"] == "sliding-window"
    assert results["models"]["net"]["num_cases"] == 4  # c0..c3 of train.list
    cases = {line.split(",")[1] for line in (out / "per_case.csv").read_text().splitlines()[1:]}
    assert cases == {"c0", "c1", "c2", "c3"}


# -- predict over a folder with a corrupt input -------------------------------------------------
def test_one_corrupt_input_is_recorded_and_the_others_are_predicted(
    checkpoint,  # noqa: F811
    tmp_path,
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "c"):
        array = np.random.default_rng(len(name)).integers(0, 255, (20, 16), dtype=np.uint8)
        Image.fromarray(array).save(inputs / f"{name}.png")
    (inputs / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"

    with pytest.raises(PartialPredictionError, match=r"1 of 3 inputs .*\(b\.png\).*predictions"):
        predict_files(checkpoint, inputs, out)

    manifest = json.loads((out / "predictions.json").read_text())
    assert manifest["status"] == "partial"
    assert [Path(p["output"]).name for p in manifest["predictions"]] == ["a.png", "c.png"]
    assert [Path(f["input"]).name for f in manifest["failed"]] == ["b.png"]
    assert "b.png" in manifest["failed"][0]["error"]
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a.png", "c.png", "overlays", "predictions.json"]
    assert np.asarray(Image.open(out / "c.png")).shape == (20, 16)


def test_partial_predict_exits_non_zero_on_the_command_line(
    checkpoint,  # noqa: F811
    image,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", f"ckpt_path={checkpoint}", f"input=[{image},broken.png]", "output=m"])
    assert exit_info.value.code not in (0, None)
    manifest = json.loads((tmp_path / "m" / "predictions.json").read_text())
    assert manifest["status"] == "partial" and len(manifest["predictions"]) == 1


# -- result files get the user's normal permissions ----------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_result_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        results = write_results(
            tmp_path / "results.json",
            split="test",
            checkpoint="best.ckpt",
            protocol={"inference": "slice-wise"},
            models={"net": aggregate(0.8, 3.0)},
            config={},
        )
        row = {"model": "net", "case": "p1", "class": "LV", "dice": 0.8, "jaccard": 0.7,
               "hd95": 1.0, "asd": 0.5, "pred_empty": False, "label_empty": False}  # fmt: skip
        per_case = write_per_case_csv(tmp_path / "per_case.csv", [row])
    finally:
        os.umask(old)
    for path in (results, per_case):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- report: a broken results.json, a missing sweep job ------------------------------------------
def test_report_skips_a_broken_results_file_and_lists_a_missing_job(tmp_path, capsys):
    sweep = tmp_path / "multirun" / "2024-01-01_00-00-00"
    fake_run(sweep / "0", "cps", 0, dice=0.80, hd95=3.0)
    fake_run(sweep / "1", "cps", 1, dice=0.90, hd95=5.0)
    broken = fake_run(sweep / "2", "cps", 2, dice=0.10, hd95=9.0) / "results.json"
    broken.write_text(broken.read_text()[:200])  # a run killed while copying
    (sweep / "3" / ".hydra").mkdir(parents=True)  # a job that failed before its results
    (sweep / "multirun.yaml").write_text("hydra: {}\n")

    write_report([sweep])

    err = capsys.readouterr().err
    assert f"skipped {broken}: not a readable results file (invalid JSON" in err
    assert f"sweep job {sweep / '3'} has no results.json" in err
    text = (sweep / "report.md").read_text()
    assert "2 results.json under" in text and "2 not reported (see below)" in text
    assert "## Not reported" in text
    assert "| 2/results.json | skipped: not a readable results file (invalid JSON" in text
    assert "| 3 | sweep job without results.json (failed, killed or still running) |" in text
    assert "| method=cps data.labeled=3 | ensemble | 2 | 0 1 |" in text  # the good two only


def test_report_with_only_broken_results_names_them(tmp_path):
    from segssl.commands.report import ReportError

    broken = tmp_path / "run" / "results.json"
    broken.parent.mkdir()
    broken.write_text("{")
    with pytest.raises(ReportError, match=rf"no readable results\.json .*{broken}: not a"):
        write_report([tmp_path / "run"])


# -- a failed command leaves no empty run folder -------------------------------------------------
@pytest.mark.slow  # a fresh interpreter importing torch and Lightning: 15-40 s on 2 busy cores
def test_failed_test_command_leaves_no_run_folder(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    env.pop("SEGSSL_OUTPUT_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "segssl", "test", "ckpt_path=/nonexistent"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "checkpoint not found: /nonexistent" in done.stderr
    runs = tmp_path / "outputs" / "test" / "runs"
    assert runs.is_dir() and list(runs.iterdir()) == []  # Hydra made one, and it is gone


def test_failed_predict_in_process_leaves_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["predict", "ckpt_path=missing.ckpt", "input=x.png", "output=masks"])
    assert list((tmp_path / "outputs" / "predict" / "runs").iterdir()) == []
