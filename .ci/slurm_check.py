"""Check of the CI's SLURM run (.ci/slurm.sh): every cluster job of the run ran as a SLURM job, COMPLETED,
with the CPUs, memory, time limit and partition its rule asked for (as `scontrol show job` reports them),
and the run's records equal those of the same tier run locally (accuracy, loss, params, MACs; timings
differ by nature). Prints the job table and the comparison; exits 1 on any mismatch."""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import yaml

# rules whose jobs go to the GPU partition in workflow/profiles/slurm (set-resources)
GPU_PARTITION_RULES = {
    "train",
    "base_weights",
    "prune",
    "prune_widened",
    "finetune",
    "finetune_widened",
    "measure",
    "measure_widened",
}
# rules with `slurm_extra: --exclusive` in the profile: the job holds every CPU of its node
EXCLUSIVE_RULES = {"measure", "measure_widened"}
# record fields that must agree between the two runs (numbers of the models, not timings)
FIELDS = ("params", "macs", "macs_fvcore", "flops", "achieved_fraction", "top1", "top5", "loss")
HISTORY = ("train_loss", "val_top1")


def merged_config(run: Path, tier: Path) -> dict:
    def merge(base, overlay):
        out = copy.deepcopy(base)
        for k, v in overlay.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return merge(yaml.safe_load((run / "config" / "config.yaml").read_text()), yaml.safe_load(tier.read_text()))


def run_id(log: str) -> str:
    match = re.search(r"SLURM run ID: (\S+)", log)
    if not match:
        sys.exit("no 'SLURM run ID' in the SLURM run's log: did it use the SLURM executor?")
    return match.group(1)


def planned_cluster_jobs(log: str) -> dict[str, int]:
    """Rule -> jobs of the rules Snakemake submits (not `localrule`s, which run on the submitting node),
    from the first `Job stats` table of the run's log."""
    table = log[log.index("Job stats:") :].split("\n\n", 1)[0]
    local = set(re.findall(r"^localrule (\w+):", log, re.M))
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
        if m.group(1) != "total" and m.group(1) not in local
    }


def slurm_jobs(name: str) -> list[dict[str, str]]:
    """Every job named ``name`` (the plugin names each job of a run by the run ID) that slurmctld still
    holds (MinJobAge), one dict of `scontrol show job` fields per job."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, check=True).stdout
    jobs = []
    for line in out.splitlines():
        # values have no spaces except Comment/Command/WorkDir at worst; split on ' Key=' boundaries
        fields = dict(re.findall(r"(?:^|\s)([A-Za-z/:]+)=(\S*)", line))
        if fields.get("JobName") == name:
            jobs.append(fields)
    return jobs


def minutes(limit: str) -> int:
    """SLURM time limit ([D-]HH:MM:SS or MM:SS) in minutes."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return int(days or 0) * 1440 + h * 60 + m + math.ceil(s / 60)


def megabytes(mem: str) -> int:
    number, unit = re.fullmatch(r"([\d.]+)([KMGT]?)", mem).groups()
    return round(float(number) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[unit])


def check_jobs(args, config: dict, log: str) -> list[str]:
    errors = []
    name = run_id(log)
    jobs = slurm_jobs(name)
    planned = planned_cluster_jobs(log)
    seen: dict[str, int] = {}
    print(f"SLURM jobs of run {name} (scontrol show job):")
    header = ("jobid", "rule", "wildcards", "state", "exit", "partition", "cpus/task", "cpus", "mem_mb", "time_min")
    rows = [header]
    for job in sorted(jobs, key=lambda j: int(j["JobId"])):
        match = re.fullmatch(r"rule_(\w+?)(?:_wildcards_(.*))?", job.get("Comment", ""))
        rule, wildcards = (match.group(1), match.group(2) or "") if match else ("?", job.get("Comment", ""))
        seen[rule] = seen.get(rule, 0) + 1
        cpt = int(job.get("CPUs/Task", "0"))
        cpus, mem, limit = int(job["NumCPUs"]), megabytes(job["MinMemoryNode"]), minutes(job["TimeLimit"])
        rows.append(
            (job["JobId"], rule, wildcards, job["JobState"], job["ExitCode"], job["Partition"], cpt, cpus, mem, limit)
        )
        if rule not in planned:
            errors.append(f"job {job['JobId']}: rule {rule!r} is not one of the planned cluster rules {planned}")
            continue
        want = config["resources"][rule.removesuffix("_widened")]
        partition = args.gpu_partition if rule in GPU_PARTITION_RULES else args.cpu_partition
        expected = {
            "state": ("COMPLETED", job["JobState"]),
            "exit code": ("0:0", job["ExitCode"]),
            "partition": (partition, job["Partition"]),
            "CPUs per task": (want["threads"], cpt),
            "CPUs": (args.node_cpus if rule in EXCLUSIVE_RULES else want["threads"], cpus),
            "memory (MB)": (want["mem_mb"], mem),
            "time limit (min)": (want["runtime"], limit),
        }
        errors += [
            f"job {job['JobId']} ({rule} {wildcards}): {what} {got!r}, expected {exp!r}"
            for what, (exp, got) in expected.items()
            if exp != got
        ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    if seen != planned:
        errors.append(f"SLURM jobs per rule {seen} differ from the cluster jobs Snakemake planned {planned}")
    return errors


def check_records(args) -> list[str]:
    errors = []
    local = sorted((args.local_run / "results").rglob("records/**/*.json"))
    if not local:
        return [f"no records under {args.local_run / 'results'}"]
    names = ["/".join(p.parts[p.parts.index("records") + 1 :]) for p in local]
    width = max(map(len, names))
    print(f"\nrecords, SLURM run against local run ({len(local)} records):")
    print(f"  {'record':{width}} {'top1':>8} {'top5':>8} {'loss':>10} {'params':>8} {'macs':>9}  equal")
    for path, short in zip(local, names):
        rel = path.relative_to(args.local_run)
        other = args.slurm_run / rel
        if not other.exists():
            errors.append(f"{rel}: missing in the SLURM run")
            continue
        a, b = json.loads(path.read_text()), json.loads(other.read_text())
        diffs = [f"{k}: local {a.get(k)!r} != SLURM {b.get(k)!r}" for k in FIELDS if a.get(k) != b.get(k)]
        ha, hb = a.get("details", {}).get("history", {}), b.get("details", {}).get("history", {})
        diffs += [f"history.{k}: local {ha.get(k)} != SLURM {hb.get(k)}" for k in HISTORY if ha.get(k) != hb.get(k)]
        print(
            f"  {short:{width}} {b.get('top1', 0):8.4f} {b.get('top5', 0):8.4f} {b.get('loss', 0):10.6f}"
            f" {b.get('params', 0):8d} {b.get('macs', 0):9d}  {'yes' if not diffs else 'NO'}"
        )
        errors += [f"{rel}: {d}" for d in diffs]
    extra = {p.relative_to(args.slurm_run) for p in (args.slurm_run / "results").rglob("records/**/*.json")}
    extra -= {p.relative_to(args.local_run) for p in local}
    errors += [f"{rel}: only in the SLURM run" for rel in sorted(extra)]
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tier", type=Path, required=True, help="the tier file both runs were given")
    parser.add_argument("--slurm-run", type=Path, required=True, help="workflow copy run through SLURM")
    parser.add_argument("--local-run", type=Path, required=True, help="workflow copy run locally")
    parser.add_argument("--cpu-partition", required=True)
    parser.add_argument("--gpu-partition", required=True)
    parser.add_argument("--node-cpus", type=int, required=True, help="CPUs of the node (exclusive jobs get all)")
    args = parser.parse_args()
    config = merged_config(args.slurm_run, args.tier)
    log = (args.slurm_run / "snakemake.log").read_text()
    errors = check_jobs(args, config, log) + check_records(args)
    if errors:
        print("\nFAILED:\n  " + "\n  ".join(errors))
        sys.exit(1)
    print("\nOK: every cluster job ran under SLURM with its rule's resources; records equal the local run's")


if __name__ == "__main__":
    main()
