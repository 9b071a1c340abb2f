"""Our loggers on Lightning's public API: the appending CSV log (fresh, new columns, resumed,
cut short, rank zero only) and a W&B logger that is rebuilt from our own record of its
arguments, or dropped, never a crash."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from segssl.utils.loggers import (
    WANDB_KWARGS,
    AppendingCSVLogger,
    appending_csv_logger,
    start_loggers,
    wandb_logger,
)

REPO = Path(__file__).resolve().parents[1]


def read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_fresh_log_then_a_new_column_extends_the_header(tmp_path: Path) -> None:
    logger = appending_csv_logger(tmp_path)
    path = tmp_path / "csv" / "version_0" / "metrics.csv"
    assert logger.metrics_file == path and logger.log_dir == str(path.parent)
    logger.log_metrics({"train/loss": torch.tensor(0.5), "epoch": 0}, step=0)
    logger.log_metrics({"train/loss": 0.25, "epoch": 0}, step=1)
    logger.save()
    header, rows = read(path)
    assert header == ["epoch", "step", "train/loss"]
    assert [(r["step"], r["train/loss"]) for r in rows] == [("0", "0.5"), ("1", "0.25")]

    logger.log_metrics({"val/dice": 0.75, "epoch": 0}, step=1)
    logger.log_metrics({"train/loss": 0.125, "epoch": 0}, step=2)
    logger.save()
    header, rows = read(path)
    assert header == ["epoch", "step", "train/loss", "val/dice"]
    assert [r["val/dice"] for r in rows] == ["", "", "0.75", ""]
    assert [r["train/loss"] for r in rows] == ["0.5", "0.25", "", "0.125"]
    assert not [p for p in path.parent.iterdir() if p.name != "metrics.csv"]  # no temporaries


def test_a_resumed_run_appends_and_keeps_columns(tmp_path: Path) -> None:
    first = AppendingCSVLogger(tmp_path)
    for step in range(3):
        first.log_metrics({"train/loss": 1.0 / (step + 1), "lr": 0.01}, step=step)
    first.save()
    header_before, rows_before = read(first.metrics_file)

    resumed = AppendingCSVLogger(tmp_path)  # a new process on the same run folder
    resumed.log_metrics({"train/loss": 0.2, "lr": 0.01}, step=3)
    resumed.save()
    header, rows = read(resumed.metrics_file)
    assert header == header_before and rows[:3] == rows_before
    assert rows[3]["step"] == "3"
    assert resumed.metrics_file.read_text().count("step") == 1  # one header line

    resumed.log_metrics({"val/dice": 0.5}, step=4)
    resumed.finalize("success")  # Lightning's finalize flushes through save()
    header, rows = read(resumed.metrics_file)
    assert header == ["lr", "step", "train/loss", "val/dice"]
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[:3] == [{**r, "val/dice": ""} for r in rows_before]


def test_a_row_cut_short_by_a_kill_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "csv" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("step,train/loss\n0,0.5\n1,0.2")  # killed while writing row 1
    logger = AppendingCSVLogger(tmp_path)
    logger.log_metrics({"train/loss": 0.3}, step=1)
    logger.save()
    assert path.read_text() == "step,train/loss\n0,0.5\n1,0.3\n"


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = AppendingCSVLogger(tmp_path)
    logger.log_metrics({"train/loss": 0.5}, step=0)
    logger.save()
    logger.finalize("success")
    assert not (tmp_path / "csv").exists()


def test_lightning_fit_twice_continues_one_log(tmp_path: Path) -> None:
    """Through a real Trainer: logged every step, saved by Lightning, the second fit appends."""
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(steps: int) -> None:
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 2)))
        trainer = pl.Trainer(
            max_steps=steps,
            logger=AppendingCSVLogger(tmp_path),
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Tiny(), data)

    fit(3)
    _, rows = read(tmp_path / "csv" / "version_0" / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "1", "2"]
    fit(2)
    header, rows = read(tmp_path / "csv" / "version_0" / "metrics.csv")
    assert header == ["epoch", "step", "train/loss"]
    assert [r["step"] for r in rows] == ["0", "1", "2", "0", "1"]


def test_wandb_logger_keeps_its_own_arguments(tmp_path: Path) -> None:
    logger = wandb_logger(save_dir=str(tmp_path), project="segssl-test", name="n", tags=["a"])
    assert isinstance(logger, WandbLogger)
    assert getattr(logger, WANDB_KWARGS) == {
        "save_dir": str(tmp_path),
        "project": "segssl-test",
        "name": "n",
        "tags": ["a"],
    }


def test_a_wandb_logger_that_cannot_start_is_dropped_not_fatal(tmp_path: Path) -> None:
    class Broken(WandbLogger):
        @property
        def experiment(self):
            raise RuntimeError("no W&B here")

    csv_logger = AppendingCSVLogger(tmp_path)
    # built elsewhere (no arguments of ours to rebuild it from): dropped at the first failure
    assert start_loggers([Broken(save_dir=str(tmp_path)), csv_logger], wait_s=0) == [csv_logger]


def test_a_run_id_that_cannot_be_continued_is_rebuilt_from_our_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import segssl.utils.loggers as loggers

    class Broken(WandbLogger):
        @property
        def experiment(self):
            raise RuntimeError("run cannot be resumed")

    class Started(WandbLogger):
        @property
        def experiment(self):
            return "started"

    built = []

    def rebuild(**kwargs):
        built.append(kwargs)
        return Started(save_dir=str(tmp_path))

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(loggers, "wandb_logger", rebuild)
    monkeypatch.setattr(loggers, "stop_orphaned_wandb_services", lambda: None)
    broken = Broken(save_dir=str(tmp_path))
    given = {"save_dir": str(tmp_path), "project": "p", "id": "abc123", "resume": "allow"}
    setattr(broken, WANDB_KWARGS, given)
    (started,) = start_loggers([broken], wait_s=0)
    assert isinstance(started, Started)
    assert built == [{"save_dir": str(tmp_path), "project": "p"}]  # same run, a new id
    assert given["id"] == "abc123"  # the logger's own record is not changed


def test_no_private_lightning_attributes_in_segssl() -> None:
    private = re.compile(r"\._experiment\b|_wandb_init|_check_log_dir")
    hits = [
        f"{path.relative_to(REPO)}:{number}"
        for path in (REPO / "segssl").rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not hits, f"private Lightning attributes used at {hits}"


# ---------------------------------------------------------------------------------------------
# W&B: runs grouped by what is compared, readable names (issue 24)


def test_group_and_name_say_what_was_compared():
    from segssl.utils.loggers import folder_stamp, method_variant, run_group, run_name

    single_run = "/o/train/runs/2026-12-05_11-10-44-123456"
    assert run_group("acdc", single_run) == "acdc/2026-12-05_11-10-44-123456"  # its own group
    for job in ("0", "3"):  # every job of one multirun: one group
        assert run_group("acdc", f"/o/train/multirun/2026-12-05_11-10-44-1/{job}") == (
            "acdc/2026-12-05_11-10-44-1"
        )
    assert method_variant("dsaif", "none") == "dsaif+none"  # DSAIF without its views
    assert method_variant("dsaif", "max_only") == "dsaif+max_only"
    single = "/o/train/runs/2026-12-05_11-10-44-123456"
    assert folder_stamp(single) == "1205-1110"
    assert folder_stamp("/o/train/multirun/2026-12-05_11-10-44-123456/3") == "1205-1110-j3"
    assert run_name("bcp", "dsaif", 7, 2, single) == "bcp+dsaif-l7-s2-1205-1110"
    assert re.fullmatch(r"cps-l3-s0-\d{4}-\d{4}", run_name("cps", "none", 3, 0, "/elsewhere"))


def test_wandb_group_and_name_come_from_the_identity_unless_given(tmp_path: Path) -> None:
    run_dir = tmp_path / "2026-12-05_11-10-44-123456"
    identity = {"experiment": "acdc", "method": "dsaif", "filter": "dsaif", "labeled": 7, "seed": 0}
    logger = wandb_logger(save_dir=str(run_dir), project="p", identity=identity)
    try:
        (started,) = start_loggers([logger], wait_s=0)  # offline (conftest): no network
        assert started.experiment.group == "acdc/2026-12-05_11-10-44-123456"
        assert started.experiment.name == "dsaif-l7-s0-1205-1110"
    finally:
        logger.experiment.finish()
    chosen = wandb_logger(save_dir=str(run_dir), project="p", identity=identity, group="mine")
    assert getattr(chosen, WANDB_KWARGS)["group"] == "mine"  # the user's own group is kept


@pytest.mark.slow
def test_a_training_run_is_grouped_named_and_summarised_in_its_offline_files(
    run_task, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TINY bcp+dsaif run with the W&B logger, read back from its .wandb file: the group is
    experiment/method+filter/labeled, the name says method, labeled and seed, the comparison
    keys are top-level config (Lightning's module hparams nested under ``module``), the
    summary keeps the best and last validation Dice, and W&B printed nothing."""
    import wandb

    from tests.conftest import TINY
    from tests.wandb_records import records, run_contents

    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [o for o in TINY if not o.startswith("logger=")]
    out, _, _ = run_task([*overrides, "method=bcp", "filter=dsaif", "logger=wandb", "seed=5"])
    wandb.teardown()  # wandb-core may hold the run file's last writes until it stops
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    contents = run_contents(run_dir)
    assert contents["group"] == f"synthetic/{out.name}"  # a single run: its own group
    assert contents["job_type"] == "train"
    (run,) = [r.run for r in records(next(run_dir.glob("*.wandb"))) if r.HasField("run")]
    assert run.display_name.startswith("bcp+dsaif-l1-s5-")
    config = contents["config"]
    expected = {"method": "bcp", "filter": "dsaif", "variant": "bcp+dsaif", "network": "unet2d"}
    assert {k: config[k] for k in expected} == expected
    assert (config["data"], config["labeled"], config["seed"]) == ("synthetic", 1, 5)
    assert config["group"] == contents["group"] and config["sweep"] is None
    assert isinstance(config["module"], dict) and "model" not in config  # hparams nested
    dice = contents["summary"]["val/dice"]
    assert set(dice) == {"max", "last"} and dice["max"] >= dice["last"]
    # the test of the best checkpoint: a per-case table of the selection model, with overlays
    (logged,) = [row for row in contents["history"] if "test/best/per_case/path" in row]
    assert logged["test/best/per_case/_type"] == "table-file"
    table = json.loads((run_dir / "files" / logged["test/best/per_case/path"]).read_text())
    assert table["columns"] == ["case", "class", "dice", "jaccard", "hd95", "asd", "overlay"]
    per_case = list(csv.DictReader((out / "per_case.csv").open()))
    selected = json.loads((out / "results.json").read_text())["selection_model"]
    assert len(table["data"]) == len([r for r in per_case if r["model"] == selected])
    assert {r[1] for r in table["data"]} == {"RV", "Myo", "LV"}
    # an overlay for the first num_cases=3 of the 4 test volumes; offline, W&B keeps the images
    # in the table's artifact and writes "Image" in the run's copy
    shown = {r[0] for r in table["data"] if r[6] == "Image"}
    assert len(shown) == 3 and all(r[6] is None for r in table["data"] if r[0] not in shown)
    pngs = {p.stem for p in (out / "test_overlays" / "test_best").glob("*.png")}
    assert pngs == shown
    # every image reached W&B (none dropped for a step behind W&B's own)
    assert any("train/views/filenames" in row for row in contents["history"])
    assert sum("val/overlays/filenames" in row for row in contents["history"]) >= 1


def test_without_an_account_wandb_starts_offline_at_once_and_prints_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd
) -> None:
    """No WANDB_MODE, no key, no netrc: offline from the first try (no failed online start
    to fall back from), and no "anonymous setting has no effect" on the terminal."""
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    logger = wandb_logger(save_dir=str(tmp_path), project="p", identity={"method": "cps"})
    try:
        (started,) = start_loggers([logger], wait_s=0)
        assert started.experiment.offline
    finally:
        logger.experiment.finish()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    printed = capfd.readouterr()
    assert "anonymous" not in printed.err + printed.out


def test_jobs_of_a_sweep_share_the_sweep_folder_and_are_told_apart(tmp_path: Path) -> None:
    """run_hyperparameters under a multirun: the sweep folder is top-level config (one filter
    finds the sweep's runs), each job's name carries its job number."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from segssl.runs.results import resolved_config
    from segssl.utils.loggers import run_hyperparameters
    from tests.conftest import compose_config

    sweep = tmp_path / "multirun" / "2026-12-05_11-10-44-123456"
    names = []
    for job, seed in enumerate((0, 1)):
        cfg = compose_config("train", ["method=cps", f"seed={seed}"], sweep / str(job))
        OmegaConf.set_readonly(cfg.hydra, False)
        with open_dict(cfg):
            cfg.hydra.mode = "MULTIRUN"
            cfg.hydra.sweep.dir = str(sweep)
        HydraConfig().set_config(cfg)
        params = run_hyperparameters(resolved_config(cfg))
        assert params["sweep"] == str(sweep) and params["run_dir"] == str(sweep / str(job))
        assert params["group"] == f"synthetic/{sweep.name}" and params["seed"] == seed
        assert (params["network"], params["data"]) == ("unet2d", "synthetic")
        identity = {k: params[k] for k in ("experiment", "method", "filter", "labeled", "seed")}
        logger = wandb_logger(save_dir=params["run_dir"], project="p", identity=identity)
        names.append(loggers_name(logger))
    assert names == ["cps-l2-s0-1205-1110-j0", "cps-l2-s1-1205-1110-j1"]
    identity = {"experiment": "synthetic"}
    loggers = [wandb_logger(save_dir=str(sweep / j), project="p", identity=identity) for j in "01"]
    groups = {loggers_group(logger) for logger in loggers}
    assert groups == {f"synthetic/{sweep.name}"}  # one group holds the sweep's jobs


def loggers_group(logger: WandbLogger) -> str:
    """The run group our factory chose, without starting a run."""
    from segssl.utils.loggers import _identity_names

    return _identity_names(dict(getattr(logger, WANDB_KWARGS)))["group"]


def loggers_name(logger: WandbLogger) -> str:
    """The run name our factory chose (W&B would show it), without starting a run."""
    from segssl.utils.loggers import _identity_names

    return _identity_names(dict(getattr(logger, WANDB_KWARGS)))["name"]


def test_a_logger_built_by_hand_keeps_wandb_defaults() -> None:
    from segssl.utils.loggers import _identity_names

    assert _identity_names({"project": "p", "group": "auto", "name": "auto"}) == {"project": "p"}


@pytest.mark.slow
def test_a_2x2_multirun_is_one_wandb_group_of_four_named_jobs(tmp_path: Path) -> None:
    """``train -m method=cps,supervised seed=0,1 logger=wandb``, read back from the offline
    .wandb files: one group holds the sweep's 4 jobs, each run's name says method and seed,
    the group choices are top-level config, the summary keeps best and last validation Dice,
    and each run logged a per-case table at test."""
    import subprocess
    import sys

    from tests.conftest import TINY, segssl_env
    from tests.wandb_records import records, run_contents

    sweep = tmp_path / "multirun" / "2026-12-05_11-10-44-123456"
    overrides = [o for o in TINY if not o.startswith("logger=")]
    done = subprocess.run(
        [sys.executable, "-m", "segssl", "train", "-m", *overrides, "logger=wandb",
         "method=cps,supervised", "seed=0,1", f"hydra.sweep.dir={sweep}",
         f"paths.data_dir={tmp_path / 'data'}"],  # fmt: skip
        cwd=tmp_path, env=segssl_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    seen = {}
    for job in sorted(sweep.glob("[0-9]")):
        (run_dir,) = (job / "wandb").glob("offline-run-*")
        contents = run_contents(run_dir)
        (run,) = [r.run for r in records(next(run_dir.glob("*.wandb"))) if r.HasField("run")]
        config = contents["config"]
        seen[(config["method"], config["seed"])] = (contents["group"], run.display_name)
        assert set(contents["summary"]["val/dice"]) == {"max", "last"}
        assert any("test/best/per_case/path" in row for row in contents["history"])
    assert set(seen) == {("cps", 0), ("cps", 1), ("supervised", 0), ("supervised", 1)}
    assert {group for group, _ in seen.values()} == {f"synthetic/{sweep.name}"}
    for (method, seed), (_, name) in seen.items():
        assert name.startswith(f"{method}-l1-s{seed}-"), name
