"""The leaderboard table of a finished sweep, made by the report's own code.

Reads the sweep's plan (``SWEEP/leaderboard.json``, written by ``scripts/leaderboard_plan.py``:
the rows, their folders, what each is compared with, the seeds and labeled counts planned) and
its runs through ``segssl report``'s machinery: the runs are found and checked by
``collect_runs`` / ``check_comparable``, grouped by ``group_and_label`` (a row whose runs differ
in more than the seed is shown once per configuration), summarised over seeds by
``summary_rows`` and compared volume by volume by ``compare_pairs``; this script only names the
lines after the plan's rows and writes them as one Markdown table:

- one line per row (and labeled count): Dice and HD95 of the ``best`` and ``last`` checkpoints,
  mean ± sample std over seeds, n = seeds found, s/step;
- for a row with a filter (``abd+dsaif``), the paired difference from the same method without
  it (``abd``; ``dsaif`` against ``cps``), best and last apart;
- above it, one line naming the protocol, split, checkpoint selection, seeds, dates and commit;
  below it, every planned run that has no result (never left out silently).

    python scripts/leaderboard_table.py SWEEP                # writes SWEEP/leaderboard.md
    python scripts/leaderboard_table.py SWEEP --into docs/benchmarks.md

``--into PAGE`` replaces what stands between ``<!-- leaderboard:begin -->`` and
``<!-- leaderboard:end -->`` in PAGE with the table, byte for byte the same text as
``leaderboard.md``, and leaves the rest of the page as it was.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# run as a script from any folder, installed or not; the plan's reader is the plan script's
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from leaderboard_plan import read_plan  # noqa: E402

from segssl.commands.report.markdown import (  # noqa: E402
    cell,
    difference_cell,
    protocol_text,
    summary_rows,
)
from segssl.commands.report.runs import (  # noqa: E402
    DISPLAY_KEYS,
    LOCATION_KEYS,
    Group,
    ReportError,
    Run,
    check_comparable,
    collect_runs,
    group_and_label,
)
from segssl.commands.report.statistics import compare_pairs  # noqa: E402
from segssl.evaluation.results import RESULTS_FILENAME  # noqa: E402
from segssl.utils.atomic import write_text  # noqa: E402

BEGIN = "<!-- leaderboard:begin -->"
END = "<!-- leaderboard:end -->"
OUTPUT_NAME = "leaderboard.md"
# settings of how runs were run, not of what they are: not in the header
HOW_KEYS = {*DISPLAY_KEYS, "logger", "data.num_workers", "filter.cache"}


@dataclass
class Line:
    """One line of the table: a row of the plan at one labeled count (and configuration)."""

    row: dict[str, Any]
    labeled: str
    group: Group
    runs: list[Run] = field(default_factory=list)
    name: str = ""  # the row's name, and which configuration when its runs differ


def row_of(run: Run, sweep: Path, rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The plan row whose folder holds the run (``SWEEP/[partK/]ROW/...``)."""
    try:
        parts = run.path.relative_to(sweep).parts[:-1]
    except ValueError:
        return None
    return next((r for r in rows if r["dir"] in parts), None)


def labeled_of(run: Run) -> str:
    return str((run.config.get("data") or {}).get("labeled"))


def find_runs(sweep: Path) -> tuple[list[Run], Any]:
    """The sweep's training runs and what ``collect_runs`` found beside them (None: no run)."""
    if not any(sweep.rglob(RESULTS_FILENAME)):
        return [], None
    found = collect_runs([sweep])
    return found.runs, found


def make_lines(plan: dict[str, Any], runs: list[Run], sweep: Path) -> tuple[list[Line], list[str]]:
    """The table's lines in the plan's order, each a report group of one row's runs, and notes
    on runs that are in no row."""
    notes: list[str] = []
    groups, _ = group_and_label(runs) if runs else ([], [])
    group_of = {id(r): g for g in groups for r in g.runs}
    lines: dict[tuple[str, str, int], Line] = {}
    outside = []
    for run in runs:
        row = row_of(run, sweep, plan["rows"])
        if row is None:
            outside.append(run)
            continue
        report_group = group_of[id(run)]
        key = (row["name"], labeled_of(run), id(report_group))
        if key not in lines:
            lines[key] = Line(row, labeled_of(run), Group(dict(report_group.settings)))
        lines[key].runs.append(run)
    if outside:
        notes.append(
            f"{len(outside)} run(s) in no row's folder, not in the table: "
            + ", ".join(str(r.path.relative_to(sweep)) for r in outside)
        )
    order = {r["name"]: i for i, r in enumerate(plan["rows"])}
    labeled_order = {str(v): i for i, v in enumerate(plan["labeled"])}
    ordered = sorted(
        lines.values(),
        key=lambda line: (
            order[line.row["name"]],
            labeled_order.get(line.labeled, 99),
            line.labeled,
        ),
    )
    split_rows: dict[tuple[str, str], list[Line]] = {}
    for line in ordered:
        split_rows.setdefault((line.row["name"], line.labeled), []).append(line)
    several_labeled = len({line.labeled for line in ordered}) > 1
    for line in ordered:
        same = split_rows[(line.row["name"], line.labeled)]
        line.group.runs = line.runs
        line.name = line.row["name"]
        if len(same) > 1:
            line.name += f" (configuration {same.index(line) + 1})"
        # the report keys its rows by group label: one per line
        line.group.label = line.name + (f", labeled {line.labeled}" if several_labeled else "")
    for (name, count), same in split_rows.items():
        if len(same) > 1:
            notes.append(
                f"`{name}` (labeled {count}): its runs differ in more than the seed, so each "
                f"configuration is a line of its own ({len(same)} lines)"
            )
    return ordered, notes


def pair_lines(lines: Sequence[Line]) -> tuple[dict[int, list[dict[str, Any]]], list[str]]:
    """Each filtered row against its base row at the same labeled count: the report's paired
    comparison (``compare_pairs``), keyed by the line's id."""
    by_row: dict[tuple[str, str], list[Line]] = {}
    for line in lines:
        by_row.setdefault((line.row["name"], line.labeled), []).append(line)
    paired: dict[int, list[dict[str, Any]]] = {}
    notes: list[str] = []
    for line in lines:
        base = line.row.get("base")
        if not base:
            continue
        bases = by_row.get((base, line.labeled), [])
        if len(bases) != 1:
            why = "has no result" if not bases else "has several configurations"
            notes.append(f"`{line.group.label}` is not compared with `{base}`: `{base}` {why}")
            continue
        try:
            results, more = compare_pairs([(line.group, bases[0].group)])
        except ReportError as err:
            notes.append(f"`{line.group.label}` is not compared with `{base}`: {err}")
            continue
        paired[id(line)] = results
        notes += more
    return paired, notes


def missing_runs(plan: dict[str, Any], lines: Sequence[Line]) -> list[str]:
    """The planned runs without a result: rows with none at all in one line per labeled count,
    then each row that lacks some seeds."""
    found: dict[tuple[str, str], set[str]] = {}
    for line in lines:
        found.setdefault((line.row["name"], line.labeled), set()).update(
            str(r.seed) for r in line.runs
        )
    seeds = [str(s) for s in plan["seeds"]]
    listed = ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(seeds)
    missing = []
    for count in map(str, plan["labeled"]):
        empty = [r["name"] for r in plan["rows"] if not found.get((r["name"], count))]
        if empty:
            names = ", ".join(f"`{name}`" for name in empty)
            missing.append(f"labeled {count}, no run of {names} ({listed} planned)")
        for row in plan["rows"]:
            have = found.get((row["name"], count))
            lacking = [s for s in seeds if have and s not in have]
            if lacking:
                word = "seed" if len(lacking) == 1 else "seeds"
                missing.append(
                    f"labeled {count}, `{row['name']}`: {word} {', '.join(lacking)} missing"
                )
    return missing


def header(
    plan: dict[str, Any],
    lines: Sequence[Line],
    runs: Sequence[Run],
    volumes: int | None,
    units: str,
    protocol: dict[str, Any] | None,
    split: str | None,
) -> str:
    """The line above the table: what was run, scored and selected, when and from which code."""
    shown = [w for w in plan["protocol"] + plan["overrides"] if not _is_location(w)]
    words = " ".join(f"`{w}`" for w in shown) or "the default config"
    parts = [f"**Protocol:** {words}"]
    if protocol is not None:
        parts[0] += f" ({protocol_text(protocol, [line.group for line in lines])}; HD95 in {units})"
    if split is not None:
        val_splits = {str((r.config.get("data") or {}).get("val_split")) for r in runs}
        count = f", {volumes} volumes" if volumes else ""
        selected = (
            "the split that also selected `best`, so `best` is optimistic and `last` is not"
            if val_splits == {split}
            else "`best` was selected on the validation split"
        )
        parts.append(f"**split:** {split}{count}, {selected}")
    parts.append("**checkpoints:** `best` on validation Dice and `last`, never mixed")
    parts.append(
        "**seeds:** "
        + ", ".join(map(str, plan["seeds"]))
        + " (n = seeds with a result); **labeled:** "
        + ", ".join(map(str, plan["labeled"]))
    )
    days = sorted({str(r.results.get("created", ""))[:10] for r in runs} - {""})
    if days:
        parts.append(
            "**runs finished:** " + (days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}")
        )
    devices = sorted({_device(r) for r in runs} - {""})
    if devices:
        parts.append("**trained on:** " + ", ".join(devices))
    parts.append(f"**commit:** `{plan['commit']}`")
    return "; ".join(parts) + "."


def table(
    lines: Sequence[Line],
    paired: dict[int, list[dict[str, Any]]],
    split: str | None,
    several_labeled: bool,
    plan: dict[str, Any],
) -> list[str]:
    """The Markdown table: every planned row, with or without results."""
    rows = summary_rows([line.group for line in lines], "default", split or "") if lines else []
    overall = {(r["group"], r["checkpoint"]): r for r in rows if r["class"] == "overall"}
    head = (
        ["row"]
        + (["labeled"] if several_labeled else [])
        + [
            "n",
            "Dice best",
            "Dice last",
            "HD95 best",
            "HD95 last",
            "s/step",
            "compared with",
            "Δ Dice best [95% CI], p, wins",
            "Δ Dice last [95% CI], p, wins",
            "Δ HD95 best [95% CI], p, wins",
        ]
    )
    body = []
    present = {(line.row["name"], line.labeled) for line in lines}
    planned = [(row, str(count)) for row in plan["rows"] for count in plan["labeled"]]
    by_key: dict[tuple[str, str], list[Line]] = {}
    for line in lines:
        by_key.setdefault((line.row["name"], line.labeled), []).append(line)
    keys = [(row["name"], count) for row, count in planned]
    keys += [k for k in by_key if k not in keys]
    rows_by_name = {r["name"]: r for r in plan["rows"]}
    for name, count in keys:
        labeled_cell = [count] if several_labeled else []
        if (name, count) not in present:
            base = rows_by_name[name].get("base") or ""
            body.append([name, *labeled_cell, "0", *["not run"] * 4, "", base, "", "", ""])
            continue
        for line in by_key[(name, count)]:
            best = overall.get((line.group.label, "best"))
            last = overall.get((line.group.label, "last"))
            n = str(best["n"] if best else last["n"] if last else 0)
            if best and last and best["n"] != last["n"]:
                n = f"{best['n']} (last {last['n']})"
            cost = next((r["seconds_per_step"] for r in (best, last) if r), None)
            results = {(p["checkpoint"], p["metric"]): p for p in paired.get(id(line), [])}
            body.append(
                [
                    line.name,
                    *labeled_cell,
                    n,
                    _metric(best, "dice"),
                    _metric(last, "dice"),
                    _metric(best, "hd95"),
                    _metric(last, "hd95"),
                    "" if cost is None else f"{cost:.2f}",
                    line.row.get("base") or "",
                    _difference(results.get(("best", "dice"))),
                    _difference(results.get(("last", "dice"))),
                    _difference(results.get(("best", "hd95"))),
                ]
            )
    text = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return text + [
        "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in body
    ]


def leaderboard(sweep: str | Path) -> str:
    """The leaderboard's Markdown for the sweep folder (what ``--into`` puts in a page)."""
    sweep = Path(sweep).expanduser().resolve()
    plan = read_plan(sweep)
    runs, found = find_runs(sweep)
    split = protocol = None
    units = "unknown units"
    if runs:
        split, protocol = check_comparable(runs)
        units = protocol.get("distance_units", units)
    lines, notes = make_lines(plan, runs, sweep)
    paired, pair_notes = pair_lines(lines)
    volumes = next((p["volumes"] for results in paired.values() for p in results), None)
    if volumes is None and lines:
        volumes = _volume_count(lines[0])
    several = len(plan["labeled"]) > 1 or len({line.labeled for line in lines}) > 1
    out = [
        "<!-- made by scripts/leaderboard_table.py from the sweep's results: regenerate it, "
        "do not edit it -->",
        "",
        header(plan, lines, runs, volumes, units, protocol, split),
        "",
        *table(lines, paired, split, several, plan),
        "",
        "Dice and HD95: mean ± sample std over the seeds of a row (no std for one seed), the mean "
        "over classes of each volume's score, averaged over the volumes. Δ: the row minus the "
        "row it is compared with (the same method without the filter), each volume's score "
        "first averaged over the seeds, with a 95% BCa bootstrap interval over the volumes, "
        "the Wilcoxon signed-rank p and the volumes where the row is better; (n.s.): the "
        "interval crosses zero. s/step: seconds per training step on the machine and load the "
        "run had (several runs shared it).",
    ]
    for skipped in plan.get("skipped", []):
        notes.append(f"no `{skipped['name']}` row: {skipped['why']}")
    notes += pair_notes
    missing = missing_runs(plan, lines)
    if found is not None:
        missing += [f"`{_rel(f, sweep)}`: {why}" for f, why in found.skipped]
        missing += [f"`{_rel(f, sweep)}`: {why} (left out)" for f, why in found.invalid]
        missing += [
            f"`{_rel(j, sweep)}`: a sweep job without {RESULTS_FILENAME} (failed, "
            "killed or still running)"
            for j in found.missing
        ]
    if missing:
        out += ["", "Missing or not reported (planned runs without a result):", ""]
        out += [f"- {m}" for m in missing]
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def replace_block(page: str, block: str) -> str:
    """``page`` with the text between the markers replaced by ``block`` (the rest untouched)."""
    if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
        raise ValueError(f"the page needs one {BEGIN} and, after it, one {END}")
    before, rest = page.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    return before + BEGIN + "\n" + block + END + after


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="a sweep folder with leaderboard.json (scripts/benchmark.sh)")
    parser.add_argument("--out", help=f"where to write the table (default SWEEP/{OUTPUT_NAME})")
    parser.add_argument("--into", help="a page whose leaderboard markers get the table")
    args = parser.parse_args(argv)
    try:
        text = leaderboard(args.sweep)
        page = None
        if args.into:
            page = replace_block(Path(args.into).read_text(encoding="utf-8"), text)
    except (ReportError, ValueError, OSError) as err:
        print(f"leaderboard_table: error: {err}", file=sys.stderr)
        raise SystemExit(1) from err
    out = Path(args.out) if args.out else Path(args.sweep) / OUTPUT_NAME
    write_text(out, text)
    print(f"wrote {out}")
    if page is not None:
        write_text(Path(args.into), page)
        print(f"updated {args.into}")


# -- helpers -----------------------------------------------------------------------------------
def _metric(row: dict[str, Any] | None, metric: str) -> str:
    return "" if row is None else cell(metric, row[f"{metric}_mean"], row[f"{metric}_std"])


def _difference(result: dict[str, Any] | None) -> str:
    if result is None:
        return ""
    return (
        f"{difference_cell(result)}, p={result['p_value']:.2g}, "
        f"{result['wins']}/{result['volumes']}"
    )


def _is_location(word: str) -> bool:
    """An override that says where things go or how the run is watched (not in the header)."""
    key = word.split("=", 1)[0].lstrip("+~")
    return (
        key in HOW_KEYS
        or key.split(".")[-1] in LOCATION_KEYS
        or key.split(".")[0] in ("hydra", "paths")
    )


def _device(run: Run) -> str:
    training = (run.results.get("extra") or {}).get("training") or {}
    accelerator = str(training.get("accelerator") or "").removesuffix("Accelerator")
    precision = (run.config.get("trainer") or {}).get("precision")
    return f"{accelerator} ({precision})" if accelerator and precision else accelerator


def _volume_count(line: Line) -> int | None:
    run = line.runs[0]
    label = next(iter(run.evaluations()), None)
    model = run.selection_model
    if label is None or model is None:
        return None
    try:
        return len(run.per_volume(label, model, "dice"))
    except ReportError:
        return None


def _rel(path: Path, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
