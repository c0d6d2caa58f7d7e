"""Where the workflow's wall time goes: compute inside jobs versus everything else.

Inputs:

- Snakemake ``benchmark:`` files under ``--benchmarks-dir`` (default
  ``<workdir>/results/default/benchmarks``): the rules write ``benchmarks/<rule>/<stem>.tsv``
  (workflow/rules/*.smk: train, prune, finetune, measure), one TSV per job with Snakemake's columns
  ``s`` (wall seconds of the job), ``max_rss`` (MB), ``cpu_time`` (s), ``mean_load`` (%), ...
- the records the same jobs wrote, ``<benchmarks-dir>/../records/<stem>.json`` (or, for a job that
  wrote several, every ``pruned.json`` / ``finetuned.json`` / record below ``records/<stem>/``), whose
  own timing fields give the compute inside each job: ``train_seconds`` (rule ``train``: the SGD
  epochs incl. per-epoch validation and checkpoints), ``prune_seconds`` (rule ``prune``: scoring +
  selection + surgery, the scoring shared by the ratios counted once; ``saliency_seconds`` is
  reported too), ``finetune_seconds`` (rules ``finetune``/``finetune_widened``, one job per model
  or per (net, seed, method); a fine-tuning reused from its checkpoint folder, ``details.
  finetune_reused``, counts 0) and ``details.measure_seconds`` (rules ``measure``/``measure_widened``:
  loading, parameter/MAC counts and latency timing of each model; records from before it existed
  count the job as no compute). Rules without a ``benchmark:`` file (data, bottleneck's reports,
  runs, tables, figures) are not counted, but the Snakemake log's step count gives every job
  (``planned_jobs``).
- the workflow's wall time, in order of preference: ``--wall SECONDS``; measured by ``--run``
  (runs ``snakemake --cores N --profile workflow/profiles/default [--snakemake-args]`` in
  ``--workdir``, timing it); or read from the newest Snakemake log in ``<workdir>/.snakemake/log``
  that ran jobs (its ``Elapsed time`` line, else its first and last time stamps). With ``--run`` or a
  log, only benchmark files written during that run are counted (modification time).

Output ``results/benchmarks/workflow.csv``: one row per rule, then a row ``rule=ALL`` with the wall
time and the overhead estimate ``overhead_seconds = wall_seconds - compute_seconds`` (all compute
summed: exact for ``--cores 1``; with parallel jobs compute overlaps, so it is a lower bound on the
overhead and can be negative; ``parallelism = job_seconds / wall_seconds`` says how much jobs
overlapped). ``in_job_overhead_seconds = job_seconds - compute_seconds`` is what every job spends
outside its own compute (interpreter start, imports, data loading, final evaluation, saving).

    python benchmarks/workflow.py --quick                 # parse what the last `make workflow` left
    python benchmarks/workflow.py --run --fresh           # run the whole workflow in a fresh copy, timed
    python benchmarks/workflow.py --run --fresh --tier bench --snakemake-args "--configfile bench.yaml"

``--fresh`` copies Snakefile, workflow/ and config/ (and any ``--configfile`` given) into a new
temporary folder and runs there: no earlier output, checkpoint or kept fine-tuning can shorten the
run, and nothing in the checkout is overwritten (``--forceall`` in the checkout would reuse the
fine-tunings kept in ``work/<tier>/checkpoints``).
"""

from __future__ import annotations

import csv
import datetime
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

#: benchmark folder (rules finetune and finetune_widened share finetune/, measure and measure_widened
#: measure/) -> the record field holding the compute of its jobs
COMPUTE_FIELDS = {
    "train": "train_seconds",
    "prune": "prune_seconds",
    "finetune": "finetune_seconds",
    "measure": "measure_seconds",
}
OVERHEAD_RULES = ("train", "prune", "finetune")
EXTRA_FIELDS = {"prune": ["saliency_seconds"]}
#: rule -> the record file name its jobs write (one per model) when a job writes several
STAGE_FILES = {"prune": "pruned.json", "finetune": "finetuned.json"}


def read_benchmark(path: Path) -> dict:
    """The last data row of a Snakemake benchmark TSV (``repeat()`` writes several; we take the last)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "s" not in rows[-1]:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column)")
    return rows[-1]


def _float(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v


def collect(bench_dir: Path, since: float | None = None) -> list[dict]:
    """One dict per job: rule, stem, the TSV's columns, and the compute fields of its record."""
    records_dir = bench_dir.parent / "records"
    jobs = []
    for path in sorted(bench_dir.rglob("*.tsv")):
        if since is not None and path.stat().st_mtime < since:
            continue
        rel = path.relative_to(bench_dir)
        rule, stem = rel.parts[0], rel.relative_to(rel.parts[0]).with_suffix("")
        try:
            b = read_benchmark(path)
        except (ValueError, OSError) as err:
            common.log(f"skipping {path}: {err}")
            continue
        job = {
            "rule": rule,
            "stem": str(stem),
            "s": _float(b.get("s")),
            "cpu_time": _float(b.get("cpu_time")),
            "max_rss": _float(b.get("max_rss")),
            "mean_load": _float(b.get("mean_load")),
        }
        field = COMPUTE_FIELDS.get(rule)
        record = _record(records_dir / stem.with_suffix(".json"))
        if rule.startswith("measure"):
            record = _measured(records_dir / stem)
        elif not record and rule == "prune":
            record = _multi_ratio_prune(records_dir / stem)
        elif not record and rule in STAGE_FILES:
            record = _summed(records_dir / stem, STAGE_FILES[rule], field)
        job["compute"] = _compute(record, field) if field else None
        job["record_found"] = bool(record)
        for extra in EXTRA_FIELDS.get(rule, []):
            job[extra] = _float(record.get(extra))
        jobs.append(job)
    return jobs


def _record(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _compute(record: dict, field: str) -> float | None:
    """A record's compute seconds in ``field`` (a top-level column, or ``details.measure_seconds``);
    0 for a fine-tuning reused from its checkpoint folder."""
    details = record.get("details") or {}
    if field == "finetune_seconds" and details.get("finetune_reused"):
        return 0.0
    return _float(record.get(field, details.get(field)))


def _summed(folder: Path, name: str, field: str) -> dict:
    """One job wrote a record ``name`` per model below ``folder`` (a fine-tuning family): its compute
    is their sum."""
    seconds = [_compute(_record(p), field) for p in sorted(folder.rglob(name))]
    seconds = [s for s in seconds if s is not None]
    return {field: sum(seconds)} if seconds else {}


def _measured(folder: Path) -> dict:
    """A measuring job of one (net, seed) completed every record below ``folder``: the sum of their
    ``details.measure_seconds``."""
    seconds = [_compute(_record(p), "measure_seconds") for p in sorted(folder.rglob("*.json"))]
    seconds = [s for s in seconds if s is not None]
    return {"measure_seconds": sum(seconds)} if seconds else {}


def _multi_ratio_prune(folder: Path) -> dict:
    """One prune job scores once and writes a record per target and ratio below ``folder``
    (``<target>/r<ratio>/pruned.json``), each ``prune_seconds`` = shared scoring + its own selection
    and surgery: count the scoring once."""
    records = [_record(p) for p in sorted(folder.rglob("pruned.json"))]
    seconds = [(_float(r.get("prune_seconds")), _float(r.get("saliency_seconds"))) for r in records if r]
    seconds = [(p, s or 0.0) for p, s in seconds if p is not None]
    if not seconds:
        return {}
    scoring = max(s for _, s in seconds)
    return {"prune_seconds": scoring + sum(p - s for p, s in seconds), "saliency_seconds": scoring}


def summarise(
    jobs: list[dict], wall: float | None, wall_source: str, env: dict, planned_jobs: int | None = None
) -> list[dict]:
    rows = []
    for rule in sorted({j["rule"] for j in jobs}):
        js = [j for j in jobs if j["rule"] == rule]
        s = [j["s"] for j in js if j["s"] is not None]
        field = COMPUTE_FIELDS.get(rule)
        compute = [j["compute"] for j in js if j["compute"] is not None]
        compute_sum = sum(compute) if field else 0.0
        row = {
            "rule": rule,
            "jobs": len(js),
            "job_seconds": sum(s),
            "job_seconds_median": statistics.median(s) if s else None,
            "job_seconds_max": max(s) if s else None,
            "compute_field": field or "",
            "compute_jobs": len(compute) if field else 0,
            "compute_seconds": compute_sum,
            "in_job_overhead_seconds": sum(s) - compute_sum,
            "in_job_overhead_per_job_seconds": (sum(s) - compute_sum) / len(s) if s else None,
            "compute_fraction_of_job": compute_sum / sum(s) if s and sum(s) > 0 else None,
            "cpu_seconds": sum(j["cpu_time"] or 0 for j in js),
            "max_rss_mb": max((j["max_rss"] or 0 for j in js), default=None),
        }
        for extra in EXTRA_FIELDS.get(rule, []):
            row[extra] = sum(j.get(extra) or 0 for j in js)
        if field and len(compute) < len(js):
            row["note"] = f"{len(js) - len(compute)} job(s) without a record {field}: counted as overhead"
        rows.append(row)
    job_total = sum(r["job_seconds"] for r in rows)
    # the compute that the overhead is measured against: training, pruning and fine-tuning (measuring is
    # reported on its own, measure_compute_seconds, as records before details.measure_seconds lack it)
    compute_total = sum(r["compute_seconds"] for r in rows if r["rule"] in OVERHEAD_RULES)
    total = {
        "rule": "ALL",
        "jobs": sum(r["jobs"] for r in rows),
        "planned_jobs": planned_jobs,
        "job_seconds": job_total,
        "compute_field": "+".join(COMPUTE_FIELDS[r] for r in OVERHEAD_RULES),
        "compute_seconds": compute_total,
        "measure_compute_seconds": sum(r["compute_seconds"] for r in rows if r["rule"] == "measure"),
        "in_job_overhead_seconds": job_total - compute_total,
        "compute_fraction_of_job": compute_total / job_total if job_total else None,
        "cpu_seconds": sum(r["cpu_seconds"] for r in rows),
        "wall_seconds": wall,
        "wall_source": wall_source,
    }
    if wall:
        total.update(
            overhead_seconds=wall - compute_total,
            overhead_fraction=(wall - compute_total) / wall,
            parallelism=job_total / wall,
        )
    rows.append(total)
    return [{**r, **env} for r in rows]


# ---------------------------------------------------------------------------------------------
# Wall time


_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_ELAPSED = re.compile(r"^Elapsed time: (?:(\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)")


def planned_from_log(path: str | Path) -> int | None:
    """Jobs of a run, from its Snakemake log's last ``i of N steps`` line (every rule, local ones too)."""
    found = re.findall(r"\d+ of (\d+) steps", Path(path).read_text(errors="replace"))
    return int(found[-1]) if found else None


def wall_from_log(workdir: Path) -> tuple[float, float, str] | None:
    """``(wall seconds, start epoch seconds, log path)`` of the newest Snakemake log that ran jobs."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"), reverse=True)
    for log in logs:
        text = log.read_text(errors="replace").splitlines()
        if not any(re.search(r"\d+ of \d+ steps", line) for line in text):
            continue  # "Nothing to be done" or a dry run
        stamps = [
            datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            for line in text
            if (m := _STAMP.match(line.strip()))
        ]
        start = None
        for line in text:
            if line.strip().startswith("Date:"):
                start = datetime.datetime.strptime(line.split("Date:", 1)[1].strip(), "%Y-%m-%d %H:%M:%S")
                break
        start = start or (stamps[0] if stamps else None)
        wall = None
        for line in text:
            m = _ELAPSED.match(line.strip())
            if m:
                days, h, mnt, s = m.groups()
                wall = int(days or 0) * 86400 + int(h) * 3600 + int(mnt) * 60 + float(s)
        if wall is None and start and stamps:
            wall = (stamps[-1] - start).total_seconds()
        if wall is None or start is None:
            continue
        return wall, start.timestamp() - 1, str(log)  # local time, as Snakemake writes it
    return None


def run_snakemake(workdir: Path, cores: int, extra: str) -> tuple[float, float]:
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [
        str(exe) if exe.exists() else "snakemake",
        "--cores",
        str(cores),
        "--profile",
        "workflow/profiles/default",
        *shlex.split(extra),
    ]
    common.log(f"running in {workdir}: {' '.join(cmd)}")
    start = time.time()
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, check=True)
    return time.perf_counter() - t0, start


def fresh_copy(workdir: Path, extra: str) -> Path:
    """A new temporary folder holding ``workdir``'s Snakefile, workflow/ and config/ and every
    ``--configfile`` of ``extra`` (same relative path): a fresh clone without outputs or checkpoints."""
    dest = Path(tempfile.mkdtemp(prefix="sosp-workflow-"))
    for name in ("Snakefile", "workflow", "config"):
        src = workdir / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    words = shlex.split(extra)
    for i, word in enumerate(words[:-1]):
        if word in ("--configfile", "--configfiles") and not (dest / words[i + 1]).exists():
            target = dest / words[i + 1]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(workdir / words[i + 1], target)
    return dest


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=common.ROOT, help="the workflow's directory")
    parser.add_argument("--tier", default="default", help="tier whose benchmarks are read")
    parser.add_argument("--benchmarks-dir", type=Path, default=None, help="default <workdir>/results/<tier>/benchmarks")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="with --run: run in a fresh temporary copy of the workflow (kept; its path is logged)",
    )
    parser.add_argument("--wall", type=float, default=None, help="the workflow's wall time in seconds")
    parser.add_argument("--run", action="store_true", help="run snakemake in --workdir and time it")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores for --run")
    parser.add_argument("--snakemake-args", default="", help="extra snakemake arguments for --run, e.g. --forceall")
    args = parser.parse_args(argv)
    if args.fresh and args.run:
        args.workdir = fresh_copy(args.workdir, args.snakemake_args)
        common.log(f"fresh copy of the workflow: {args.workdir}")
    bench_dir = args.benchmarks_dir or args.workdir / "results" / args.tier / "benchmarks"
    since, source, planned = None, "none", None
    wall = args.wall
    if wall is not None:
        source = "--wall"
    elif args.run:
        wall, since = run_snakemake(args.workdir, args.cores, args.snakemake_args)
        source = f"measured: snakemake --cores {args.cores} {args.snakemake_args}".strip()
        found = wall_from_log(args.workdir)
        planned = planned_from_log(found[2]) if found else None
    else:
        found = wall_from_log(args.workdir)
        if found:
            wall, since, log = found
            source = f"log: {Path(log).name}"
            planned = planned_from_log(log)
    if not bench_dir.is_dir():
        raise SystemExit(f"no benchmark folder {bench_dir}; run the workflow first or pass --benchmarks-dir")
    jobs = collect(bench_dir, since)
    if not jobs and since is not None:
        common.log("no benchmark file was written during that run; counting all of them")
        jobs = collect(bench_dir)
    env = common.environment()
    rows = summarise(jobs, wall, source, env, planned)
    for r in rows:
        common.log(
            f"  {r['rule']:9s} jobs {r['jobs']:3d}{'/' + str(r['planned_jobs']) if r.get('planned_jobs') else ''}"
            f"  job {r['job_seconds']:8.1f} s  compute "
            f"{r['compute_seconds']:8.1f} s  in-job overhead {r['in_job_overhead_seconds']:7.1f} s"
            + (
                f"  wall {r['wall_seconds']:.1f} s ({r['wall_source']}), overhead {r['overhead_seconds']:.1f} s"
                f", parallelism {r['parallelism']:.2f}"
                if r.get("wall_seconds")
                else ""
            )
        )
    common.log(f"wrote {common.write_csv(args.out_dir / 'workflow.csv', rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
