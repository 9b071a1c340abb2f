"""The leaderboard's rows: every method with and without DSAIF's views, and named extra rows.

A row is a name and the overrides that make it (``abd+dsaif``: ``method=abd filter=dsaif``).
The grid is every method of ``conf/method/`` (without the shared ``_base`` and ``dsaif``, which
is CPS with DSAIF's views: that row keeps the name ``dsaif`` and is run as ``method=dsaif``, as
the report labels it) times every filter of ``--filters``. ``supervised`` gets no filtered row:
it trains one network on ``image_1`` only, so there is no second view for DSAIF's pair.
Extra rows are ``NAME:OVERRIDES`` (``abd+dsaif/raw-displace:method=abd filter=dsaif
method.displace_on=raw``), separated by ``;`` or new lines, ``#`` starting a comment; a row with
a filter other than ``none`` is compared with its method's plain row.

The plan is written to ``SWEEP/leaderboard.json`` (what ``scripts/leaderboard_table.py`` reads:
the rows, their folders, what each is compared with, the seeds and labeled counts every row
should have, the commit) and the rows are printed one a line, ``FOLDER<TAB>OVERRIDES``, for the
shell scripts. The plan's ``queue`` (one entry per run) is the order
``scripts/leaderboard_runs.py`` starts runs in under a time budget: ``abd`` and its DSAIF
variants with every seed first, then ``dsaif`` and ``cps``, ``abd_bcp``, ``admt`` (each with and
without a filter), then the rest, each of these later rows one seed before any gets a second.

    python scripts/leaderboard_plan.py SWEEP --filters none,dsaif --seeds 0,1 --labeled 3 \\
        --protocol +experiment=acdc_cpu [--methods cps,abd] [--extra-rows TEXT] [-- OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAN_NAME = "leaderboard.json"
FORMAT = "segssl-leaderboard-plan-1"
# methods whose networks all read image_1: a filtered second view would go unused
SINGLE_VIEW = ("supervised",)
# the table's order; methods not named here follow in name order
METHOD_ORDER = ("supervised", "cps", "mean_teacher", "bcp", "unimatch", "abd", "abd_bcp", "admt")
# the queue's tiers: the rows of these methods first, in this order (dsaif's rows are cps's)
PRIORITY = (("abd",), ("cps",), ("abd_bcp",), ("admt",))
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+_./=-]*$")


class PlanError(ValueError):
    """A grid or an extra row that cannot be run as asked."""


@dataclass
class Row:
    """One line of the leaderboard: its name, folder, overrides, method and filter, and the row
    it is compared with (the same method without a filter), if any."""

    name: str
    overrides: list[str]
    method: str
    filter: str
    base: str | None = None
    dir: str = field(default="")

    def __post_init__(self) -> None:
        if not self.dir:
            self.dir = re.sub(r"[^A-Za-z0-9+_.-]", "_", self.name)


def options(group: str) -> list[str]:
    """The options of a config group (files starting with ``_`` are shared parts)."""
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml") if p.stem[0] != "_")


def default_methods() -> list[str]:
    """Every method of ``conf/method/`` but ``dsaif`` (CPS with the views: a filter row)."""
    found = [m for m in options("method") if m != "dsaif"]
    return sorted(found, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))


def grid_rows(methods: list[str], filters: list[str]) -> tuple[list[Row], list[dict[str, str]]]:
    """The rows of ``methods`` x ``filters`` and the pairs left out, with why. ``dsaif`` in
    ``methods`` is the row ``cps`` x ``dsaif`` (its name and command)."""
    known_methods, known_filters = set(options("method")), set(options("filter"))
    for name in methods:
        if name not in known_methods:
            raise PlanError(f"method {name!r} is not in conf/method/ ({sorted(known_methods)})")
    for name in filters:
        if name not in known_filters:
            raise PlanError(f"filter {name!r} is not in conf/filter/ ({sorted(known_filters)})")
    pairs = [(m, f) for m in methods if m != "dsaif" for f in filters]
    if "dsaif" in methods and ("cps", "dsaif") not in pairs:
        pairs.append(("cps", "dsaif"))
    rows, skipped = [], []
    for method, filter_name in pairs:
        if filter_name == "none":
            rows.append(Row(method, [f"method={method}", "filter=none"], method, "none"))
        elif method in SINGLE_VIEW:
            skipped.append(
                {
                    "name": f"{method}+{filter_name}",
                    "why": f"{method} trains one network on image_1 only: there is no second "
                    "view for the filtered pair",
                }
            )
        elif (method, filter_name) == ("cps", "dsaif"):
            rows.append(Row("dsaif", ["method=dsaif", "filter=dsaif"], "cps", "dsaif"))
        else:
            overrides = [f"method={method}", f"filter={filter_name}"]
            rows.append(Row(f"{method}+{filter_name}", overrides, method, filter_name))
    return rows, skipped


def parse_extra_rows(text: str) -> list[Row]:
    """``NAME:OVERRIDES`` entries separated by ``;`` or new lines (``#`` comments)."""
    rows = []
    for entry in re.split(r"[;\n]", text):
        entry = entry.split("#", 1)[0].strip()
        if not entry:
            continue
        name, sep, rest = entry.partition(":")
        name, overrides = name.strip(), rest.split()
        if not sep or not name or not overrides:
            raise PlanError(f"extra row {entry!r}: expected NAME:OVERRIDE [OVERRIDE ...]")
        choices = {}
        for word in overrides:
            key, eq, value = word.lstrip("+").partition("=")
            if key in ("method", "filter") and eq:
                choices[key] = value
        if "method" not in choices:
            raise PlanError(f"extra row {name!r}: its overrides name no method= ({rest.strip()})")
        method = choices["method"]
        default_filter = "dsaif" if method == "dsaif" else "none"
        filter_name = choices.get("filter", default_filter)
        rows.append(Row(name, overrides, "cps" if method == "dsaif" else method, filter_name))
    return rows


def link_bases(rows: list[Row]) -> None:
    """A row with a filter is compared with its method's plain row, when the plan has it."""
    plain = {
        r.method: r.name
        for r in rows
        if r.filter == "none" and r.overrides[:2] == [f"method={r.method}", "filter=none"]
    }
    for row in rows:
        if row.filter != "none" and row.base is None:
            row.base = plain.get(row.method)


def check_rows(rows: list[Row]) -> None:
    for field_name in ("name", "dir"):
        seen: set[str] = set()
        for row in rows:
            value = getattr(row, field_name)
            if value in seen:
                raise PlanError(f"two rows have the {field_name} {value!r}: rename an extra row")
            seen.add(value)
    for row in rows:
        if not NAME.match(row.name) or row.dir.isdigit() or re.fullmatch(r"part\d+", row.dir):
            raise PlanError(f"row name {row.name!r}: use letters, digits and + _ . / = -")


def queue(rows: list[Row], seeds: list[str], labeled: list[str]) -> list[dict[str, str]]:
    """The order a time-budgeted runner starts runs in (see the module text)."""
    tiers = [[r for r in rows if r.method in methods] for methods in PRIORITY]
    first = tiers[0]
    rest = [r for tier in tiers[1:] for r in tier]
    rest += [r for r in rows if r not in first and r not in rest]
    order = []
    for count in labeled:
        order += [(r, count, s) for s in seeds for r in first]
        order += [(r, count, s) for s in seeds for r in rest]
    return [{"row": r.name, "labeled": count, "seed": s} for r, count, s in order]


def commit() -> str:
    """``SEGSSL_COMMIT``, else this checkout's commit (``+changes`` when files differ from it)."""
    given = os.environ.get("SEGSSL_COMMIT")
    if given:
        return given
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git checkout; set SEGSSL_COMMIT)"
    return head + ("+changes" if changed else "")


def words(text: str | None) -> list[str]:
    return [w for w in re.split(r"[,\s]+", text or "") if w]


def make_plan(
    methods: list[str],
    filters: list[str],
    seeds: list[str],
    labeled: list[str],
    extra: str = "",
    protocol: list[str] | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """The plan as written to ``leaderboard.json``."""
    if not seeds or not labeled:
        raise PlanError("the plan needs at least one seed and one labeled count")
    rows, skipped = grid_rows(methods, filters)
    rows += parse_extra_rows(extra)
    link_bases(rows)
    check_rows(rows)
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(),
        "protocol": list(protocol or []),
        "overrides": list(overrides or []),
        "seeds": seeds,
        "labeled": labeled,
        "rows": [asdict(r) for r in rows],
        "skipped": skipped,
        "queue": queue(rows, seeds, labeled),
    }


def read_plan(sweep: str | Path) -> dict:
    path = Path(sweep) / PLAN_NAME
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PlanError(f"{path}: no readable leaderboard plan ({err})") from err
    if plan.get("format") != FORMAT:
        raise PlanError(f"{path}: format {plan.get('format')!r}, expected {FORMAT!r}")
    return plan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="OVERRIDEs after -- are recorded as the settings every run gets",
    )
    parser.add_argument("sweep", help="the sweep folder (the plan goes to SWEEP/leaderboard.json)")
    parser.add_argument("--methods", help="comma-separated; default: every method of conf/method")
    parser.add_argument("--filters", default="none,dsaif")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--labeled", default="3")
    parser.add_argument("--extra-rows", default="", help="NAME:OVERRIDES;... (see above)")
    parser.add_argument("--extra-rows-file", help="a file of extra rows, one a line")
    parser.add_argument(
        "--protocol", default="", help="the protocol's overrides, e.g. +experiment=acdc_cpu"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.overrides = argv[cut + 1 :]
    extra = args.extra_rows
    if args.extra_rows_file:
        extra += "\n" + Path(args.extra_rows_file).read_text(encoding="utf-8")
    try:
        plan = make_plan(
            words(args.methods) or default_methods(),
            words(args.filters),
            words(args.seeds),
            words(args.labeled),
            extra,
            args.protocol.split(),
            args.overrides,
        )
    except (PlanError, OSError) as err:
        print(f"leaderboard_plan: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    sweep = Path(args.sweep)
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / PLAN_NAME).write_text(json.dumps(plan, indent=1) + "\n", encoding="utf-8")
    for skipped in plan["skipped"]:
        print(f"leaderboard_plan: no row {skipped['name']}: {skipped['why']}", file=sys.stderr)
    for row in plan["rows"]:
        print(f"{row['dir']}\t{' '.join(row['overrides'])}")


if __name__ == "__main__":
    main()
