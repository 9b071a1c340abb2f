"""The leaderboard: ``scripts/leaderboard_plan.py`` (rows, their order, the plan),
``scripts/leaderboard_table.py`` (the table, made by the report's code from real run folders,
and put between a page's markers), the report's pairing across filters, and the CPU smoke path
of ``scripts/gpu_leaderboard.sh`` / ``scripts/benchmark.sh`` (slow)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

import pytest

from segssl.commands.report.runs import Group, ReportError, baseline_pairs
from tests.conftest import REPO
from tests.helpers.scripts import run_script


def load(name: str):
    sys.path[:0] = [str(REPO / "scripts")]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


plan_script = load("leaderboard_plan")
table_script = load("leaderboard_table")

# two steps on the smallest generated data (its 2 test volumes are the scored split)
TINY = [
    "data.synthetic.num_train_patients=2",
    "data.synthetic.num_val_patients=1",
    "data.synthetic.num_test_patients=1",
    "data.synthetic.image_size=32",
    "data.synthetic.slices_per_volume=4",
    "data.image_size=32",
    "data.batch_size=4",
    "data.labeled_batch_size=2",
    "data.num_workers=0",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.training_views",
    "~callbacks.validation_overlays",
]
EXTRA = "mean_teacher+dsaif/ema:method=mean_teacher filter=dsaif method.ema_decay=0.9"
ROWS = ["cps", "dsaif", "mean_teacher", "mean_teacher+dsaif", "mean_teacher+dsaif/ema"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two methods x two filters x seeds 0, 1 and an extra row with seed 0 only, trained as
    ``scripts/benchmark.sh`` lays them out (a multirun per row), in this process; and one job
    folder without results (a run that failed)."""
    import torch

    from segssl.cli import main

    folder = tmp_path_factory.mktemp("leaderboard") / "sweep"
    data = folder.parent / "synthetic"
    plan_script.main(
        [
            str(folder),
            "--methods",
            "cps,mean_teacher",
            "--seeds",
            "0,1",
            "--labeled",
            "1",
            "--extra-rows",
            EXTRA,
            "--protocol",
            "",
            "--",
            *TINY,
        ]
    )
    plan = plan_script.read_plan(folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for row in plan["rows"]:
            seeds = "0" if "/" in row["name"] else "0,1"
            args = [
                "train",
                "-m",
                *row["overrides"],
                f"seed={seeds}",
                "data.labeled=1",
                f"data.root={data}",
                *TINY,
                f"hydra.sweep.dir={folder / row['dir']}",
            ]
            try:
                main(args)
            except SystemExit as done:  # a refused or failed command
                pytest.fail(f"row {row['name']}: exit {done.code}")
    finally:
        torch.set_num_threads(threads)
    (folder / "mean_teacher" / "2").mkdir()  # a job that left no results.json
    return folder


def table_lines(text: str) -> dict[str, list[str]]:
    """The table's body rows by their first cell."""
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    return {c[0]: c for c in cells}


def test_table_rows_seeds_and_paired_differences(sweep: Path) -> None:
    text = table_script.leaderboard(sweep)
    head = next(line for line in text.splitlines() if line.startswith("| row"))
    columns = [c.strip() for c in head.strip("|").split(" | ")]
    rows = table_lines(text)
    assert list(rows) == ROWS  # the plan's order, every row
    line = {name: dict(zip(columns, cells, strict=True)) for name, cells in rows.items()}
    assert [line[r]["n"] for r in ROWS] == ["2", "2", "2", "2", "1"]
    for name in ROWS:
        assert line[name]["Dice best"] and line[name]["HD95 last"] and line[name]["s/step"]
        # mean ± std over two seeds; one seed: no std
        assert ("±" in line[name]["Dice best"]) == (line[name]["n"] == "2")
    # each filtered row against the same method without the filter; plain rows against nothing
    compared = {name: line[name]["compared with"] for name in ROWS}
    assert compared == {
        "cps": "",
        "dsaif": "cps",
        "mean_teacher": "",
        "mean_teacher+dsaif": "mean_teacher",
        "mean_teacher+dsaif/ema": "mean_teacher",
    }
    for name in ROWS:
        for column in (
            "Δ Dice best [95% CI], p, wins",
            "Δ Dice last [95% CI], p, wins",
            "Δ HD95 best [95% CI], p, wins",
        ):
            assert bool(line[name][column]) == bool(compared[name]), (name, column)
            if compared[name]:  # "+0.0012 [-0.0003, 0.0021] (n.s.), p=0.5, 1/2": 2 volumes
                assert re.match(r"^[+-]\d+\.\d+ \[.*\].*, p=.*, \d/2$", line[name][column])


def test_table_values_are_the_runs_values(sweep: Path) -> None:
    """The cells are the report's mean over seeds of what each run stored."""
    rows = table_lines(table_script.leaderboard(sweep))
    stored = [json.loads(p.read_text()) for p in sorted((sweep / "dsaif").glob("*/results.json"))]
    dice = [
        r["evaluations"]["best"]["models"][r["selection_model"]]["mean"]["dice"] for r in stored
    ]
    assert rows["dsaif"][2] == f"{statistics.mean(dice):.4f} ± {statistics.stdev(dice):.4f}"


def test_each_labeled_count_is_a_line_of_its_own(sweep: Path, tmp_path: Path) -> None:
    """A copy of the sweep where seed 1 of every row was trained with 2 labeled patients (its
    stored config says so): each row gets a line per count, with that count's run's values."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    plan = json.loads((copy / plan_script.PLAN_NAME).read_text())
    plan["labeled"] = ["1", "2"]
    (copy / plan_script.PLAN_NAME).write_text(json.dumps(plan))
    dice = {}
    for path in copy.rglob("results.json"):
        results = json.loads(path.read_text())
        if results["config"]["seed"] == 1:
            results["config"]["data"]["labeled"] = 2
            path.write_text(json.dumps(results))
        best = results["evaluations"]["best"]["models"][results["selection_model"]]["mean"]
        dice[(path.parent.parent.name, str(results["config"]["data"]["labeled"]))] = best["dice"]
    text = table_script.leaderboard(copy)
    lines = [line for line in text.splitlines() if line.startswith("| ")][2:]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    got = {(c[0], c[1]): (c[2], c[3]) for c in cells}
    assert got[("dsaif", "1")] == ("1", f"{dice[('dsaif', '1')]:.4f}")
    assert got[("dsaif", "2")] == ("1", f"{dice[('dsaif', '2')]:.4f}")
    assert got[("mean_teacher+dsaif/ema", "2")][0] == "0"  # its seed 0 only: labeled 1
    assert "labeled 2, no run of `mean_teacher+dsaif/ema`" in text


def test_missing_and_failed_runs_are_listed(sweep: Path) -> None:
    text = table_script.leaderboard(sweep)
    missing = text.split("Missing or not reported", 1)[1]
    assert "labeled 1, `mean_teacher+dsaif/ema`: seed 1 missing" in missing
    assert "`mean_teacher/2`: a sweep job without results.json" in missing


def test_header_names_protocol_split_seeds_date_and_commit(sweep: Path) -> None:
    text = table_script.leaderboard(sweep)
    header = next(line for line in text.splitlines() if line.startswith("**Protocol:**"))
    assert "`trainer.max_steps=2`" in header and "**split:** test, 2 volumes" in header
    assert "**seeds:** 0, 1" in header and "**labeled:** 1" in header
    day = json.loads(next(sweep.rglob("results.json")).read_text())["created"][:10]
    assert f"**runs finished:** {day}" in header and "**commit:** `" in header
    # how and where runs ran is not what they are: no data paths, no logger
    assert str(sweep.parent) not in text and "logger=csv" not in header


def test_into_replaces_only_the_marked_block(sweep: Path, tmp_path: Path) -> None:
    before = "# Benchmarks\n\nHand-typed text stays, ü and trailing spaces  \n\n"
    after = "\n\n## Earlier measurements\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    page = tmp_path / "page.md"
    page.write_text(before + table_script.BEGIN + "\nold table\n" + table_script.END + after)
    out = tmp_path / "leaderboard.md"
    for _ in range(2):  # twice: the second run leaves the page as the first made it
        table_script.main([str(sweep), "--out", str(out), "--into", str(page)])
        text = page.read_text()
        block = out.read_text()
        assert text == before + table_script.BEGIN + "\n" + block + table_script.END + after
    assert "old table" not in text and "| dsaif |" in block


def test_into_a_page_without_markers_is_refused(sweep: Path, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("no markers here\n")
    with pytest.raises(SystemExit) as done:
        table_script.main([str(sweep), "--out", str(tmp_path / "x.md"), "--into", str(page)])
    assert done.value.code == 1 and page.read_text() == "no markers here\n"


def test_a_plan_without_results_lists_every_row_as_not_run(tmp_path: Path) -> None:
    plan_script.main([str(tmp_path), "--methods", "supervised,abd", "--seeds", "0,1"])
    text = table_script.leaderboard(tmp_path)
    rows = table_lines(text)
    assert list(rows) == ["supervised", "abd", "abd+dsaif"]
    assert all(cells[1] == "0" and cells[2] == "not run" for cells in rows.values())
    assert "labeled 3, no run of `supervised`, `abd`, `abd+dsaif` (seeds 0, 1 planned)" in text
    assert "no `supervised+dsaif` row" in text


# -- the plan --------------------------------------------------------------------------------
def test_default_grid_is_every_method_with_and_without_dsaif() -> None:
    methods = plan_script.default_methods()
    assert "_base" not in methods and "dsaif" not in methods
    assert {"supervised", "cps", "abd", "abd_bcp", "admt"} <= set(methods)
    plan = plan_script.make_plan(methods, ["none", "dsaif"], ["0", "1"], ["3"])
    rows = {r["name"]: r for r in plan["rows"]}
    # CPS with DSAIF's views keeps its name and command; supervised has no filtered row
    assert rows["dsaif"]["overrides"] == ["method=dsaif", "filter=dsaif"]
    assert rows["dsaif"]["base"] == "cps" and rows["abd+dsaif"]["base"] == "abd"
    assert "supervised+dsaif" not in rows and "cps+dsaif" not in rows
    assert [s["name"] for s in plan["skipped"]] == ["supervised+dsaif"]
    assert len(rows) == 2 * len(methods) - 1
    # the older spelling METHODS=supervised,cps,dsaif gives the same three rows
    old = plan_script.make_plan(["supervised", "cps", "dsaif"], ["none", "dsaif"], ["0"], ["3"])
    assert [r["name"] for r in old["rows"]] == ["supervised", "cps", "dsaif"]


def test_queue_puts_the_open_questions_first() -> None:
    extra = "abd+dsaif/raw:method=abd filter=dsaif method.top_k=2"
    plan = plan_script.make_plan(
        plan_script.default_methods(), ["none", "dsaif"], ["0", "1"], ["3"], extra
    )
    order = [(q["row"], q["seed"]) for q in plan["queue"]]
    assert order[:6] == [
        ("abd", "0"),
        ("abd+dsaif", "0"),
        ("abd+dsaif/raw", "0"),
        ("abd", "1"),
        ("abd+dsaif", "1"),
        ("abd+dsaif/raw", "1"),
    ]
    rows = [row for row, seed in order[6:] if seed == "0"]
    assert rows[:6] == ["cps", "dsaif", "abd_bcp", "abd_bcp+dsaif", "admt", "admt+dsaif"]
    assert order[6 + len(rows)][1] == "1"  # every row's first seed before a second one
    assert len(order) == 2 * len(plan["rows"])
    assert {r["name"]: r["base"] for r in plan["rows"]}["abd+dsaif/raw"] == "abd"


@pytest.mark.parametrize(
    "extra, message",
    [
        ("abd+dsaif:method=abd", "two rows have the name"),
        ("x method=abd", "expected NAME:OVERRIDE"),
        ("x:filter=dsaif", "name no method="),
        ("a b:method=abd", "row name"),
    ],
)
def test_bad_extra_rows_are_refused(extra: str, message: str) -> None:
    with pytest.raises(plan_script.PlanError, match=message):
        plan_script.make_plan(["abd"], ["none", "dsaif"], ["0"], ["3"], extra)


# -- the report's pairing, across filters -------------------------------------------------------
def group(**parts: str) -> Group:
    made = Group({}, label=" ".join(f"{k}={v}" for k, v in parts.items()))
    made.label_parts = dict(parts)
    return made


def test_baseline_pairs_by_what_the_baselines_differ_in() -> None:
    """The grid's report (--baseline method=supervised) pairs a filtered row with the supervised
    group of its labeled count, though no supervised group has its filter."""
    sup3 = group(method="supervised", **{"data.labeled": "3"}, filter="none")
    sup7 = group(method="supervised", **{"data.labeled": "7"}, filter="none")
    abd3 = group(method="abd", **{"data.labeled": "3"}, filter="dsaif")
    cps7 = group(method="cps", **{"data.labeled": "7"}, filter="none")
    pairs = baseline_pairs([sup3, sup7, abd3, cps7], "method=supervised")
    assert [(g.label, b.label) for g, b in pairs] == [
        (abd3.label, sup3.label),
        (cps7.label, sup7.label),
    ]
    odd = group(method="abd", **{"data.labeled": "5"}, filter="dsaif")
    with pytest.raises(ReportError, match="no matching baseline"):
        baseline_pairs([sup3, sup7, odd], "method=supervised")


# -- the scripts, end to end on the CPU ---------------------------------------------------------
@pytest.mark.slow
def test_gpu_script_smoke_path(tmp_path: Path) -> None:
    """SEGSSL_GPU_SMOKE=1: the device script's whole path on the CPU (generated data, 2 steps):
    plan, cache, runs side by side, report, table and the sweep archive in OUT."""
    out = tmp_path / "out"
    done = run_script(
        "gpu_leaderboard.sh",
        [],
        tmp_path,
        OUT=str(out),
        SEGSSL_GPU_SMOKE="1",
        SEGSSL_GPU_WORK=str(tmp_path / "work"),
        METHODS="cps",
        SEEDS="0",
        EXTRA_ROWS_FILE="",
        SEGSSL_GPU_PARALLEL="2",
        SEGSSL_GPU_THREADS="1",
        SEGSSL_GPU_BUDGET_S="400",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p.name for p in out.iterdir()} >= {
        "summary.txt",
        "leaderboard.md",
        "report.md",
        "runs.tsv",
        "sweep.tar.gz",
    }
    rows = table_lines((out / "leaderboard.md").read_text())
    assert list(rows) == ["cps", "dsaif"] and rows["dsaif"][1] == "1", rows
    assert "finished 2 of 2 queued runs" in (out / "summary.txt").read_text()


@pytest.mark.slow
def test_gpu_script_lists_what_the_budget_left_out(tmp_path: Path) -> None:
    """No run is started that its estimate says cannot finish: all listed as not run."""
    out = tmp_path / "out"
    done = run_script(
        "gpu_leaderboard.sh",
        [],
        tmp_path,
        OUT=str(out),
        SEGSSL_GPU_SMOKE="1",
        SEGSSL_GPU_WORK=str(tmp_path / "work"),
        METHODS="cps",
        SEEDS="0",
        EXTRA_ROWS_FILE="",
        SEGSSL_GPU_RUN_S="100000",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    statuses = (out / "runs.tsv").read_text().splitlines()[1:]
    assert len(statuses) == 2 and all("not started" in s for s in statuses), statuses
    text = (out / "leaderboard.md").read_text()
    assert "labeled 1, no run of `cps`, `dsaif` (seed 0 planned)" in text
    assert "not finished: cps labeled 1 seed 0" in (out / "summary.txt").read_text()


@pytest.mark.slow
def test_benchmark_script_updates_the_docs_page(tmp_path: Path) -> None:
    """benchmark.sh's rows (cps with and without DSAIF) end in the table, put into the page."""
    from segssl.data.synthetic import ensure_synthetic_dataset
    from tests.conftest import SMALL_SYNTHETIC

    root = ensure_synthetic_dataset(tmp_path / "synthetic", **SMALL_SYNTHETIC)
    page = tmp_path / "page.md"
    page.write_text(f"text\n{table_script.BEGIN}\n{table_script.END}\nmore\n")
    overrides = [o for o in TINY if not o.startswith("data.synthetic")]
    done = run_script(
        "benchmark.sh",
        [str(root), "sweep", *overrides],
        tmp_path,
        METHODS="cps",
        SEEDS="0",
        EXTRA_ROWS_FILE="",
        LABELED="1",
        UPDATE_DOCS=str(page),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    block = (tmp_path / "sweep" / "leaderboard.md").read_text()
    assert page.read_text() == f"text\n{table_script.BEGIN}\n{block}{table_script.END}\nmore\n"
    assert list(table_lines(block)) == ["cps", "dsaif"]
