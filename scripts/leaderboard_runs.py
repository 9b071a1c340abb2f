"""Run a leaderboard plan's queue, several runs side by side, inside a hard wall-clock deadline.

For one machine with one accelerator (``scripts/gpu_leaderboard.sh``): small 2-D runs leave a
modern GPU mostly idle, so N training processes share it, each with few threads. Runs start in
the plan's ``queue`` order (``scripts/leaderboard_plan.py``: the ABD rows first). A run starts
only when its estimated wall time fits before the deadline: the longest finished run of its
method, else the longest time a running run of its method has taken so far or
``--estimate-s``, whichever is more. A queued run that does not fit is passed over (a cheaper
one later in the queue may still fit) and listed as not started; a run still going at the
deadline is stopped (SIGTERM: segssl writes a resumable checkpoint; SIGKILL after
``--grace-s``). ``SWEEP/runs.tsv`` says what became of every queued run, rewritten after each
change; each run's output is ``SWEEP/ROW/lL_sS.log`` beside its folder ``SWEEP/ROW/lL_sS/``.

With ``--prebuild-cache`` the DSAIF view cache of the plan's first filtered row is built first,
with every core (``filter.cache=true`` runs otherwise wait for one run that builds it with its
own few workers).

    python scripts/leaderboard_runs.py SWEEP --data-root PATH --deadline EPOCH_S \\
        [--parallel 8] [--threads 1] [--estimate-s 150] [--prebuild-cache]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from leaderboard_plan import read_plan  # noqa: E402

STATUS_NAME = "runs.tsv"


@dataclass
class Job:
    """One queued run: its row, labeled count and seed, and what became of it."""

    row: dict
    labeled: str
    seed: str
    status: str = "queued"
    started: float | None = None
    ended: float | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    stop_sent: float | None = None

    @property
    def name(self) -> str:
        return f"l{self.labeled}_s{self.seed}"

    @property
    def method(self) -> str:
        return self.row["method"]

    def wall(self, now: float) -> float:
        return ((self.ended or now) - self.started) if self.started else 0.0


def command(plan: dict, job: Job, sweep: Path, data_root: str) -> list[str]:
    """The training command of a job: protocol, data, row, seed, labeled count, settings."""
    return [
        sys.executable,
        "-m",
        "segssl",
        "train",
        *plan["protocol"],
        f"data.root={data_root}",
        *job.row["overrides"],
        f"seed={job.seed}",
        f"data.labeled={job.labeled}",
        *plan["overrides"],
        f"hydra.run.dir={sweep / job.row['dir'] / job.name}",
    ]


def estimate(job: Job, jobs: list[Job], prior: float, now: float) -> float:
    """Seconds the job is expected to take (see the module text)."""
    same = [j for j in jobs if j.method == job.method]
    finished = [j.wall(now) for j in same if j.status == "finished"]
    if finished:
        return max(finished)
    running = [j.wall(now) for j in same if j.status == "running"]
    return max([prior, *running])


def write_status(jobs: list[Job], path: Path, now: float) -> None:
    lines = ["row\tlabeled\tseed\tstatus\twall_s\tfolder"]
    for j in jobs:
        wall = f"{j.wall(now):.0f}" if j.started else ""
        lines.append(
            f"{j.row['name']}\t{j.labeled}\t{j.seed}\t{j.status}\t{wall}\t{j.row['dir']}/{j.name}"
        )
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prebuild_cache(plan: dict, data_root: str, workers: int) -> str:
    """Build the view cache of the plan's first filtered row with ``workers`` processes, as
    its runs' data modules would (the same config, so the same cache key)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from segssl.runs.hydra_app import config_dir

    row = next((r for r in plan["rows"] if r["filter"] != "none"), None)
    if row is None:
        return "no filtered row: nothing to build"
    overrides = [
        *plan["protocol"],
        f"data.root={data_root}",
        *row["overrides"],
        f"data.labeled={plan['labeled'][0]}",
        *plan["overrides"],
    ]
    overrides = [o for o in overrides if not o.startswith("data.num_workers=")]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(data_root).parent)
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.data.num_workers = workers
    HydraConfig().set_config(cfg)
    views = instantiate(cfg.filter)
    if not getattr(views, "cache", False):
        return f"row {row['name']}: filter.cache is off, nothing to build"
    datamodule = instantiate(cfg.data, views=views)
    datamodule.setup("fit")
    return f"view cache of row {row['name']} ready in {views.cache_dir}"


def signal_group(job: Job, sig: int) -> None:
    """Signal the run and the processes it started (its own process group)."""
    try:
        os.killpg(job.process.pid, sig)
    except ProcessLookupError:  # ended meanwhile: the next poll reaps it
        pass


def run_queue(
    sweep: Path,
    data_root: str,
    deadline: float,
    parallel: int,
    threads: int,
    prior: float,
    grace: float = 20.0,
    poll: float = 1.0,
) -> list[Job]:
    """Start, watch and stop the plan's runs (see the module text); the jobs as they ended."""
    plan = read_plan(sweep)
    data_root = str(Path(data_root).resolve())
    rows = {r["name"]: r for r in plan["rows"]}
    jobs = [Job(rows[q["row"]], str(q["labeled"]), str(q["seed"])) for q in plan["queue"]]
    status = sweep / STATUS_NAME
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
    }
    t0 = time.time()

    def say(text: str) -> None:
        print(f"[{time.time() - t0:5.0f} s] {text}", flush=True)

    say(f"{len(jobs)} runs queued, {parallel} at a time, {deadline - t0:.0f} s to the deadline")
    while True:
        now = time.time()
        for job in (j for j in jobs if j.status == "running"):
            code = job.process.poll()
            if code is None:
                if now >= deadline and job.stop_sent is None:
                    signal_group(job, signal.SIGTERM)
                    job.stop_sent = now
                    say(f"stopping {job.row['name']} {job.name}: the deadline")
                elif job.stop_sent is not None and now >= job.stop_sent + grace:
                    signal_group(job, signal.SIGKILL)
                continue
            job.ended = now
            done = (sweep / job.row["dir"] / job.name / "results.json").is_file()
            if job.stop_sent is not None:
                job.status = "stopped at the deadline"
            else:
                job.status = "finished" if code == 0 and done else f"failed (exit {code})"
            say(f"{job.row['name']} {job.name}: {job.status} after {job.wall(now):.0f} s")
            write_status(jobs, status, now)
        running = [j for j in jobs if j.status == "running"]
        queued = [j for j in jobs if j.status == "queued"]
        started = False
        if len(running) < parallel and now < deadline:
            for job in queued:
                need = estimate(job, jobs, prior, now)
                if now + need > deadline:
                    continue
                folder = sweep / job.row["dir"]
                folder.mkdir(parents=True, exist_ok=True)
                with open(folder / f"{job.name}.log", "w", encoding="utf-8") as log:
                    job.process = subprocess.Popen(
                        command(plan, job, sweep, data_root),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=ROOT,
                        start_new_session=True,
                    )
                job.status, job.started = "running", now
                say(
                    f"start {job.row['name']} {job.name} (estimate {need:.0f} s, "
                    f"{deadline - now:.0f} s left)"
                )
                write_status(jobs, status, now)
                started = True
                break
        if not running and not started:
            fits = [j for j in queued if now + estimate(j, jobs, prior, now) <= deadline]
            if not fits:
                break
        time.sleep(0 if started else poll)
    now = time.time()
    for job in (j for j in jobs if j.status == "queued"):
        job.status = "not started: it would not finish before the deadline"
    write_status(jobs, status, now)
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    say("; ".join(f"{n} {s}" for s, n in counts.items()))
    return jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="a sweep folder with leaderboard.json")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--deadline", type=float, required=True, help="epoch seconds")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--estimate-s", type=float, default=150.0, help="a run's first estimate")
    parser.add_argument("--grace-s", type=float, default=20.0)
    parser.add_argument("--prebuild-cache", action="store_true")
    parser.add_argument("--cache-workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    sweep = Path(args.sweep).resolve()
    if args.prebuild_cache:
        start = time.time()
        try:
            done = prebuild_cache(read_plan(sweep), args.data_root, args.cache_workers)
        except Exception as err:  # the runs build it then, or say themselves why they cannot
            done = f"view cache not built beforehand: {type(err).__name__}: {err}"
        print(f"{done} ({time.time() - start:.0f} s)", flush=True)
    run_queue(
        sweep,
        args.data_root,
        args.deadline,
        args.parallel,
        args.threads,
        args.estimate_s,
        args.grace_s,
    )


if __name__ == "__main__":
    main()
