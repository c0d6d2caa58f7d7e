"""The Snakemake workflow: a dry run of every tier plans the number of jobs its config implies; the
default tier runs end to end on a tiny setting (2 methods and the bottleneck study, 1 epoch) in a
temporary copy, once per session (fixture ``tiny_workflow``, shared by the tests that read or extend
it), and a second call has nothing to do; the report; an added ratio re-fine-tunes only the new one;
records of another config are refused; an interrupted training job leaves no output and resumes from
its checkpoint; tables and figures are rebuilt from committed records alone. The batched fine-tuning
(several models in one `sosp finetune`) resumes and reuses finished models (in-process, no workflow)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TIERS = sorted(p.name for p in (REPO / "config").glob("*.yaml"))

TINY = {
    "tier": "tiny",
    "archs": ["resnet20"],
    "seeds": [0],
    "train": {"epochs": 1, "batch_size": 128, "lr": 0.1},
    "finetune": {"epochs": 1, "batch_size": 128, "lr": 0.01},
    "prune": {
        "methods": ["sosp_h", "magnitude"],
        "ratios": [0.5],
        "target": ["structures", "macs"],
        "min_fraction": 0.05,
        "samples": 128,
        "score_batch_size": 64,
        # the one-shot curve: one more ratio of both targets, BN as pruned and re-estimated, no fine-tuning
        "oneshot_ratios": [0.2],
        "oneshot_bn": ["as_is", "reestimated"],
        "oneshot_bn_images": 256,
    },
    "measure": {"latency_batches": [1, 4], "exclusive": False},  # a timing job may run beside others: quicker
    "bottleneck": {"enabled": True, "archs": ["resnet20"], "ratio": 0.5, "methods": ["sosp_h"]},
    "report": {"figures": ["tradeoff_macs", "layer_ratios", "bottleneck_params"]},
}


def copy_workflow(dest: Path, results: bool = False) -> None:
    """Snakefile, workflow/ and config/ (and results/ if asked) into ``dest``: a fresh clone, no work/."""
    names = ("Snakefile", "workflow", "config") + (("results",) if results else ())
    for name in names:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)


def snakemake(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_counts(output: str) -> dict[str, int]:
    """The dry run's `Job stats` table: rule -> number of jobs (and `total`)."""
    table = output[output.rindex("Job stats:") :]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def merged_config(tier: str) -> dict:
    """The config of a tier as Snakemake sees it: the tier file over config/config.yaml, mappings merged."""

    def merge(base, overlay):
        out = copy.deepcopy(base)
        for k, v in overlay.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return merge(config, yaml.safe_load((REPO / "config" / tier).read_text()))


def expected_jobs(config: dict) -> dict[str, int]:
    """Jobs of a full run, derived from the config (the workflow's data flow, see README.md):
    data once; one training per (net, seed), where the nets are the archs plus two widened variants per
    bottleneck arch (an arch with `base.weights` is built from them instead: one fetch per published
    weights, one base_weights job per seed); one pruning job per (net, seed, method) for all targets and
    ratios (rules prune and prune_widened; widened nets: the first target only); one fine-tuning job per
    (net, seed, method) for all targets and ratios (rules finetune and finetune_widened; `batch.finetune:
    model`: one per model); one measuring job per (net, seed); one bottleneck analysis per arch; runs,
    tables, one job per figure, the one-shot curve's table and figure (with `prune.oneshot_ratios`),
    and `all`."""
    seeds, ratios = len(config["seeds"]), len(config["prune"]["ratios"])
    bottleneck = config.get("bottleneck", {})
    b_archs = len(bottleneck.get("archs", [])) if bottleneck.get("enabled") else 0
    b_methods = len(bottleneck.get("methods", ["sosp_h"]))
    archs, methods = len(config["archs"]), len(config["prune"]["methods"])
    target = config["prune"].get("target", "structures")
    targets = 1 if isinstance(target, str) else len(target)  # widened nets: the first target only
    widened = 2 * b_archs
    base = config.get("base", {})  # base models from weights (rules fetch_weights, base_weights)
    weighted = {a: s for a, s in (base.get("weights") or {}).items() if s and base.get("from") != "scratch"}
    fetched = len({s for s in weighted.values() if not s.startswith("file:")})
    models = seeds * (archs * methods * targets + widened * b_methods) * ratios  # pruned (and fine-tuned) models
    figures = config.get("report", {}).get("figures", [])
    family = config.get("batch", {}).get("finetune", "family") == "family"
    counts = {
        "data": 1,
        "train": seeds * (archs - len(weighted) + widened),
        "fetch_weights": fetched,
        "base_weights": seeds * len(weighted),
        "prune": seeds * archs * methods,
        "prune_widened": seeds * widened * b_methods,
        "finetune": seeds * archs * methods if family else models,
        "finetune_widened": seeds * widened * b_methods if family else 0,
        "measure": seeds * archs,
        "measure_widened": seeds * widened,
        "bottleneck": b_archs,
        "runs": 1,
        "tables": 1,
        "oneshot": 1 if config["prune"].get("oneshot_ratios") else 0,
        "all": 1,
        **{f"figure_{f}": 1 for f in figures},
    }
    counts = {k: v for k, v in counts.items() if v}
    counts["total"] = sum(counts.values())
    return counts


@pytest.mark.parametrize("tier", TIERS)
def test_dry_run_plans_the_jobs_of_the_config(tier, tmp_path):
    copy_workflow(tmp_path)
    proc = snakemake(tmp_path, "--dry-run", "--cores", "2", "--configfile", f"config/{tier}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert job_counts(proc.stdout) == expected_jobs(merged_config(tier))


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory) -> Path:
    """The TINY tier run once per session in a fresh copy of the workflow (the folder is returned; tests
    that change it work on a copy). Tests using it carry ``xdist_group("workflow")``: one worker runs it."""
    root = tmp_path_factory.mktemp("tiny")
    copy_workflow(root)
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    proc = snakemake(root, "--profile", "workflow/profiles/default", "--configfile", "tiny.yaml", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root


@pytest.mark.slow
@pytest.mark.xdist_group("workflow")
def test_default_workflow_end_to_end(tiny_workflow):
    tmp_path = tiny_workflow
    out = tmp_path / "results" / "tiny"
    runs = pd.read_csv(out / "runs.csv")
    # originals: base + 2 methods x 2 targets x (pruned, finetuned); 2 widened variants x (widened, pruned,
    # finetuned), the widened nets at the first target only
    assert len(runs) == 9 + 6
    assert set(runs["variant"]) == {"original", "bottleneck-x2", "uniform-x1.1"}
    original = runs[runs["variant"] == "original"]
    assert sorted(original["stage"]) == ["base"] + ["finetuned"] * 4 + ["pruned"] * 4
    assert set(runs["tier"]) == {"tiny"} and set(runs["dataset"]) == {"digits"} and set(runs["seed"]) == {0}
    pruned = runs[~runs["stage"].isin(["base", "widened"])]
    assert set(pruned["ratio"]) == {0.5}
    by_structures = pruned[pruned["target"] == "structures"]
    by_macs = pruned[pruned["target"] == "macs"]
    assert (by_structures["achieved_fraction"] > 0.4).all()
    assert set(by_macs["variant"]) == {"original"} and len(by_macs) == 4
    base_macs = runs.loc[(runs["variant"] == "original") & (runs["stage"] == "base"), "macs"].iloc[0]
    assert ((1 - by_macs["macs"] / base_macs) >= 0.5).all(), "equal-MAC runs remove at least half the MACs"
    assert (pruned["min_fraction"] == 0.05).all() and (pruned["min_kept_fraction"] >= 0.05).all()
    assert pruned["removed_per_layer"].notna().all()
    assert set(original["method"]) == {"none", "sosp_h", "magnitude"}
    base = original[original["stage"] == "base"].iloc[0]
    shrunk = pruned[pruned["variant"] == "original"]
    assert (shrunk["macs"] < base["macs"]).all() and (shrunk["params"] < base["params"]).all()
    assert (runs["macs"] == runs["macs_fvcore"]).all()
    measured = [
        "params",
        "macs",
        "top1",
        "top5",
        "loss",
        "latency_cpu_b1_ms",
        "latency_cpu_b4_ms",
        "latency_cpu_b1_iqr_ms",
        "device_name",
        "threads",
    ]
    assert runs[measured].notna().all().all()
    assert runs["top1"].between(0, 1).all()
    assert pruned[["saliency_seconds", "prune_seconds"]].notna().all().all()
    widened = runs[runs["stage"] == "widened"].set_index("variant")
    assert widened.loc["bottleneck-x2", "params"] > base["params"]
    assert widened.loc["uniform-x1.1", "params"] > base["params"]

    assert (out / "bottleneck" / "resnet20.json").exists()
    table = (out / "tables" / "summary.md").read_text()
    assert "digits / resnet20 (tier tiny)" in table and "widened bottleneck-x2" in table
    for name in ("summary", "timing"):
        assert (out / "tables" / f"{name}.tex").read_text().count("\\begin{tabular}") == 3
    # the paper table compares the originals at each target, the widened nets at the first
    paper = (out / "tables" / "paper.md").read_text()
    assert paper.count("compared at equal structure ratio") == 3 and paper.count("compared at equal MACs") == 1
    assert (out / "tables" / "paper.tex").read_text().count("\\begin{tabular}") == 4
    for name in TINY["report"]["figures"]:
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    for rule in ("train", "prune", "finetune", "measure", "bottleneck"):
        assert list((out / "benchmarks" / rule).rglob("*.tsv")), rule
    # one pruning job per (net, seed, method): every target and ratio (and the one-shot curve) of it
    prune_jobs = out / "benchmarks" / "prune"
    assert sorted(p.relative_to(prune_jobs).as_posix() for p in prune_jobs.rglob("*.tsv")) == [
        "resnet20+bottleneck/s0/sosp_h.tsv",
        "resnet20+uniform/s0/sosp_h.tsv",
        "resnet20/s0/magnitude.tsv",
        "resnet20/s0/sosp_h.tsv",
    ]
    prune_log = (tmp_path / "work/tiny/logs/prune/resnet20/s0/sosp_h.log").read_text()
    assert prune_log.count("scored ") == 1 and prune_log.count("loading data set") == 1, prune_log
    # one fine-tuning job per (net, seed, method): both targets of the original, the first of a widened net
    finetune_jobs = out / "benchmarks" / "finetune"
    assert sorted(p.relative_to(finetune_jobs).as_posix() for p in finetune_jobs.rglob("*.tsv")) == [
        "resnet20+bottleneck/s0/sosp_h.tsv",
        "resnet20+uniform/s0/sosp_h.tsv",
        "resnet20/s0/magnitude.tsv",
        "resnet20/s0/sosp_h.tsv",
    ]
    assert (tmp_path / "work" / "tiny" / "models" / "resnet20+bottleneck" / "s0" / "base.pt").exists()
    # every record carries the config's hash; a fine-tuned model has its pruned model's timing
    assert runs["config_hash"].notna().all() and runs["config_hash"].nunique() == 1
    records = tmp_path / "results" / "tiny" / "records" / "resnet20" / "s0" / "sosp_h" / "macs" / "r0.5"
    tuned, one_shot = (json.loads((records / f"{n}.json").read_text()) for n in ("finetuned", "pruned"))
    assert tuned["details"]["latency_of"].endswith("macs/r0.5/pruned.pt") and "latency_of" not in one_shot
    assert tuned["latency_cpu_b1_ms"] == one_shot["latency_cpu_b1_ms"]
    assert tuned["details"]["measure_seconds"] > 0 and one_shot["details"]["measure_seconds"] > 0

    # the one-shot curve (prune.oneshot_ratios): rows of the originals' pruning jobs, no models, no records
    rows = {m: pd.read_csv(out / "oneshot" / "resnet20" / "s0" / f"{m}.csv") for m in ("sosp_h", "magnitude")}
    assert sorted(p.relative_to(out / "oneshot").as_posix() for p in (out / "oneshot").rglob("*")) == [
        "resnet20",
        "resnet20/s0",
        "resnet20/s0/magnitude.csv",
        "resnet20/s0/sosp_h.csv",
    ]
    for method, frame in rows.items():
        assert sorted(frame["target"]) == ["macs", "structures"] and set(frame["ratio"]) == {0.2}, method
        assert (frame["method"] == method).all() and (frame["net"] == "resnet20").all()
        assert (
            frame[["oneshot_top1_pct", "oneshot_loss", "reestimated_top1_pct", "reestimated_loss"]].notna().all().all()
        )
        assert frame["oneshot_top1_pct"].between(0, 100).all() and (frame["bn_images"] == 256).all()
        assert (frame["base_top1_pct"] - 100 * base["top1"]).abs().max() < 1e-9
    assert not (tmp_path / "work" / "tiny" / "models" / "resnet20" / "s0" / "sosp_h" / "macs" / "r0.2").exists()
    assert set(runs["ratio"]) == {0.0, 0.5}  # the one-shot ratios make no records
    sosp_h = rows["sosp_h"].set_index("target")
    assert (
        sosp_h.loc["macs", "macs_removed_pct"] >= 20 and abs(sosp_h.loc["structures", "achieved_fraction"] - 0.2) < 0.01
    )
    table = pd.read_csv(out / "tables" / "oneshot.csv")
    assert len(table) == 4 and set(table["seeds"]) == {1} and set(table["method"]) == {"sosp_h", "magnitude"}
    merged = table.merge(pd.concat(rows.values()), on=["method", "target", "ratio"])
    assert (merged["oneshot_top1_pct_mean"] - merged["oneshot_top1_pct"]).abs().max() < 1e-3  # 6 digits in the table
    md = (out / "tables" / "oneshot.md").read_text()
    assert md.count("ratio of MACs removed") == 2 and md.count("ratio of structures removed") == 2
    assert "re-estimated on 256 training images" in md
    for fmt in ("png", "pdf"):
        assert (out / "figures" / f"oneshot_curves.{fmt}").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.xdist_group("workflow")
def test_second_run_has_nothing_to_do_and_the_report_builds(tiny_workflow):
    again = snakemake(tiny_workflow, "--dry-run", "--cores", "2", "--configfile", "tiny.yaml")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:] + again.stderr[-3000:]

    report = snakemake(tiny_workflow, "--report", "report.html", "--configfile", "tiny.yaml")
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-3000:]
    assert (tiny_workflow / "report.html").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.xdist_group("workflow")
def test_an_added_ratio_finetunes_only_the_new_models(tiny_workflow, tmp_path):
    """Add a ratio: Snakemake reruns the family's pruning job (one for both targets) and fine-tuning job
    (their outputs changed), but the re-pruned models of the old ratio have the same weights, so their
    kept fine-tunings are reused; only the new ratio is fine-tuned. Training is not rerun."""
    shutil.copytree(tiny_workflow, tmp_path, dirs_exist_ok=True, symlinks=True)
    config = copy.deepcopy(TINY)
    config["prune"]["ratios"] = [0.3, 0.5]
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    family = "work/tiny/records/resnet20/s0/sosp_h"
    targets = [f"{family}/{t}/r{r}/finetuned.json" for t in ("structures", "macs") for r in ("0.3", "0.5")]
    plan = snakemake(tmp_path, *targets, "--dry-run", "--cores", "2", "--configfile", "tiny.yaml")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert job_counts(plan.stdout) == {"prune": 1, "finetune": 1, "total": 2}, plan.stdout[-3000:]

    proc = snakemake(tmp_path, *targets, "--cores", "2", "--configfile", "tiny.yaml")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = (tmp_path / "work/tiny/logs/finetune/resnet20/s0/sosp_h.log").read_text()
    assert log.count("reusing the finished fine-tune") == 2 and log.count("fine-tune epoch 1/1") == 2, log
    for target in targets:
        record = json.loads((tmp_path / target).read_text())
        assert record["details"].get("finetune_reused", False) == ("r0.5" in target), target
        assert record["finetune_seconds"] > 0


@pytest.mark.slow
@pytest.mark.xdist_group("workflow")
def test_figures_refuse_records_of_another_config(tiny_workflow, tmp_path):
    copy_workflow(tmp_path)
    shutil.copytree(tiny_workflow / "results", tmp_path / "results")
    config = copy.deepcopy(TINY)
    config["finetune"]["epochs"] = 2  # the records were fine-tuned for 1 epoch
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "--cores", "1", "figures", "--configfile", "tiny.yaml")
    assert proc.returncode != 0
    assert "15 of 15 records were made by a different config" in proc.stdout + proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.xdist_group("workflow")
def test_figures_rebuild_the_oneshot_curve_from_its_rows(tiny_workflow, tmp_path):
    """Rule `figures` rebuilds the one-shot table and figure from results/<tier>/oneshot/ alone."""
    copy_workflow(tmp_path)
    shutil.copytree(tiny_workflow / "results", tmp_path / "results")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    out = tmp_path / "results" / "tiny"
    before = pd.read_csv(out / "tables" / "oneshot.csv")
    for path in [*out.glob("tables/oneshot.*"), *out.glob("figures/oneshot_curves.*")]:
        path.unlink()
    proc = snakemake(tmp_path, "--cores", "1", "figures", "--configfile", "tiny.yaml")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(out / "tables" / "oneshot.csv"), before)
    assert (out / "tables" / "oneshot.md").exists() and (out / "figures" / "oneshot_curves.png").exists()
    assert not (tmp_path / "work").exists()


def _ctrl_c_deliverable() -> None:
    """In the child before exec: SIGINT handled by default and not blocked, as in a terminal. A child
    inherits its parent's ignored signals and signal mask, and a pytest-xdist worker's may differ (once
    in a quiet full run the interrupt reached neither Snakemake nor its job, and training finished)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


@pytest.mark.slow
def test_interrupted_training_leaves_no_output_and_resumes(tmp_path):
    """Kill the workflow during training: the job's outputs are gone, its checkpoint stays; the rerun
    resumes from it and finishes."""
    copy_workflow(tmp_path)
    config = {
        **TINY,
        "tier": "cut",
        "train": {"epochs": 12, "batch_size": 64, "lr": 0.1},
        "bottleneck": {"enabled": False},
    }
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(config))
    target = "work/cut/models/resnet20/s0/base.pt"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", target, "--cores", "1", "--configfile", "cut.yaml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_ctrl_c_deliverable,
    )
    checkpoints = tmp_path / "work" / "cut" / "checkpoints" / "resnet20" / "s0" / "base"
    deadline = time.time() + 120
    while not list(checkpoints.rglob("last.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert list(checkpoints.rglob("last.pt")), "no checkpoint appeared"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: Snakemake stops the job and removes its outputs
    proc.wait(timeout=60)
    models = tmp_path / "work" / "cut" / "models" / "resnet20" / "s0"
    assert not (models / "base.pt").exists() and not list(models.glob("*.tmp")) and not list(models.glob(".*"))
    assert not (tmp_path / "work" / "cut" / "records" / "resnet20" / "s0" / "base.json").exists()
    assert list(checkpoints.rglob("last.pt"))

    done = snakemake(tmp_path, target, "--cores", "1", "--rerun-incomplete", "--configfile", "cut.yaml")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    log = (tmp_path / "work" / "cut" / "logs" / "train" / "resnet20" / "s0" / "base.log").read_text()
    assert "resuming from the checkpoint" in log and "train epoch 12/12" in log
    assert "train epoch 1/12:" not in log  # the epochs before the interruption were not redone
    assert (models / "base.pt").exists() and not list(checkpoints.rglob("last.pt"))


@pytest.mark.slow
def test_figures_rebuild_from_committed_records_on_a_fresh_clone(tmp_path):
    """Copy Snakefile, workflow, config and results (no work/, no checkpoints), delete the tables and
    figures, and rebuild them: the plan holds only the figures job, and nothing is trained."""
    copy_workflow(tmp_path, results=True)
    out = tmp_path / "results" / "default"
    assert (out / "records").is_dir(), "the default tier's records are committed under results/default/records"
    shutil.rmtree(out / "tables")
    shutil.rmtree(out / "figures")
    (out / "runs.csv").unlink()

    plan = snakemake(tmp_path, "--dry-run", "--cores", "1", "figures")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert job_counts(plan.stdout) == {"figures": 1, "total": 1}

    proc = snakemake(tmp_path, "--cores", "1", "figures")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert not re.search(r"rule (train|prune|finetune|measure|bottleneck|data)\b", log), log[-3000:]
    assert not (tmp_path / "work").exists()
    config = merged_config("config.yaml")
    for name in config["report"]["figures"]:
        for fmt in config["report"]["formats"]:
            assert (out / "figures" / f"{name}.{fmt}").stat().st_size > 1000, (name, fmt)
    for name in config["report"]["tables"]:
        assert (out / "tables" / f"{name}.md").read_text().startswith("# ")
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == len(list((out / "records").rglob("*.json")))
    committed = pd.read_csv(REPO / "results" / "default" / "runs.csv")
    # the same rows; columns added to the records since (sosp.results.COLUMNS) are empty until the tier reruns
    assert len(runs) == len(committed) and set(committed.columns) <= set(runs.columns)


# ---------------------------------------------------------------------------------------------------
# the batched fine-tuning of one family, in-process (what a `finetune` job runs)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned_family(tmp_path_factory) -> Path:
    """An (untrained) resnet20 on digits pruned by SOSP-H to 0.3 and 0.6 in one `sosp prune`."""
    from sosp import cli

    d = tmp_path_factory.mktemp("family")
    train = ["train", "--dataset", "digits", "--arch", "resnet20", "--epochs", "0", "--threads", "1", "--quiet"]
    assert cli.main([*train, "--out", str(d / "base.pt"), "--record", str(d / "base.json")]) == 0
    assert (
        cli.main(
            [
                *_prune(d, "0.3", "0.6"),
                "--out",
                *_paths(d, "p3.pt", "p6.pt"),
                "--record",
                *_paths(d, "p3.json", "p6.json"),
            ]
        )
        == 0
    )
    return d


def _prune(d: Path, *ratios: str) -> list[str]:
    return ["prune", "--model", str(d / "base.pt"), "--method", "sosp_h", "--ratio", *ratios, "--samples", "64",
            "--score-batch-size", "32", "--threads", "1", "--quiet"]  # fmt: skip


def _paths(d: Path, *names: str) -> list[str]:
    return [str(d / n) for n in names]


FINETUNE = ["finetune", "--epochs", "1", "--batch-size", "256", "--lr", "0.01", "--threads", "1"]


def test_batched_finetune_resumes_an_interrupted_family(pruned_family, tmp_path, capsys):
    """A family job died after its first model: Snakemake removed its outputs, but the finished
    fine-tuning stayed in the checkpoint folder, so the rerun writes it again without training and
    fine-tunes only the second model; without --keep-checkpoint the folders go once all are done."""
    from sosp import cli

    d, ck = pruned_family, ["--checkpoint-dir", str(tmp_path / "ck")]
    first = [*FINETUNE, *ck, "--keep-checkpoint", "--model", str(d / "p3.pt")]
    assert cli.main([*first, "--out", *_paths(tmp_path, "a.pt"), "--record", *_paths(tmp_path, "a.json")]) == 0
    done = json.loads((tmp_path / "a.json").read_text())
    (tmp_path / "a.pt").unlink()
    (tmp_path / "a.json").unlink()
    capsys.readouterr()

    both = [*FINETUNE, *ck, "--model", *_paths(d, "p3.pt", "p6.pt")]
    assert (
        cli.main([*both, "--out", *_paths(tmp_path, "a.pt", "b.pt"), "--record", *_paths(tmp_path, "a.json", "b.json")])
        == 0
    )
    log = capsys.readouterr().err
    assert log.count("loading data set") == 1  # once for the family
    assert log.count("reusing the finished fine-tune") == 1 and log.count("fine-tune epoch 1/1") == 1, log
    again, second = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert again["details"]["finetune_reused"] and "finetune_reused" not in second["details"]
    assert (again["top1"], again["finetune_seconds"]) == (done["top1"], done["finetune_seconds"])
    assert (again["ratio"], second["ratio"], second["stage"], second["finetune_epochs"]) == (0.3, 0.6, "finetuned", 1)
    assert not list((tmp_path / "ck").iterdir())


def test_a_repruned_model_is_recognised_by_its_weights(pruned_family, tmp_path):
    """Pruning again (e.g. the family's rerun after a ratio was added) writes another file (other
    timings) with the same weights: the checkpoint key, by weights, is the same."""
    from sosp import cli
    from sosp.cli.common import load, weights_digest

    assert (
        cli.main([*_prune(pruned_family, "0.3"), "--out", str(tmp_path / "p.pt"), "--record", str(tmp_path / "p.json")])
        == 0
    )
    assert (tmp_path / "p.pt").read_bytes() != (pruned_family / "p3.pt").read_bytes()
    assert weights_digest(load(str(tmp_path / "p.pt"))[0]) == weights_digest(load(str(pruned_family / "p3.pt"))[0])
    assert weights_digest(load(str(pruned_family / "p6.pt"))[0]) != weights_digest(load(str(tmp_path / "p.pt"))[0])


def test_finetune_needs_one_out_and_record_per_model(pruned_family, tmp_path, capsys):
    from sosp import cli

    args = [*FINETUNE, "--model", *_paths(pruned_family, "p3.pt", "p6.pt"), "--out", str(tmp_path / "a.pt")]
    assert cli.main([*args, "--record", str(tmp_path / "a.json")]) == 2
    assert "one --out and one --record per --model: 2 model(s), 1 --out, 1 --record" in capsys.readouterr().err
