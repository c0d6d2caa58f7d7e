"""One end-to-end run of the default workflow on a tiny setting (1 seed, 1 ratio, 1 epoch each), in a
temporary copy of the workflow; then a second call must have nothing to do."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "tier": "tiny",
    "seeds": [0],
    "train": {"epochs": 1, "batch_size": 128, "lr": 0.1},
    "finetune": {"epochs": 1, "batch_size": 128, "lr": 0.01},
    "prune": {"methods": ["sosp_h"], "ratios": [0.5], "samples": 128, "score_batch_size": 64},
    "measure": {"latency_batches": [1, 4]},
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "tiny.yaml",
                           *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.xdist_group("workflow")
def test_default_workflow_end_to_end(tmp_path):
    for name in ("Snakefile", "workflow", "config"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))

    proc = snakemake(tmp_path, "--profile", "workflow/profiles/default")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    out = tmp_path / "results" / "tiny"
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 3
    assert sorted(runs["stage"]) == ["base", "finetuned", "pruned"]
    assert set(runs["tier"]) == {"tiny"} and set(runs["dataset"]) == {"digits"}
    assert set(runs["arch"]) == {"resnet20"} and set(runs["seed"]) == {0}
    pruned = runs[runs["stage"] != "base"]
    assert set(pruned["method"]) == {"sosp_h"} and set(pruned["ratio"]) == {0.5}
    assert (pruned["achieved_fraction"] > 0.4).all()
    base = runs[runs["stage"] == "base"].iloc[0]
    assert (pruned["macs"] < base["macs"]).all() and (pruned["params"] < base["params"]).all()
    assert (runs["macs"] == runs["macs_fvcore"]).all()
    assert runs[["top1", "top5", "loss", "latency_cpu_b1_ms", "latency_cpu_b4_ms"]].notna().all().all()
    assert runs["top1"].between(0, 1).all()

    table = (out / "tables" / "summary.md").read_text()
    assert "digits / resnet20 (tier tiny)" in table
    assert all(stage in table for stage in ("| base", "| pruned", "| finetuned"))
    assert (out / "tables" / "summary.tex").read_text().count("\\begin{tabular}") == 1
    for name in ("tradeoff_macs", "tradeoff_params"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    assert (out / "benchmarks" / "train" / "resnet20" / "s0" / "base.tsv").exists()
    assert (tmp_path / "work" / "tiny" / "models" / "resnet20" / "s0" / "base.pt").exists()

    again = snakemake(tmp_path, "--dry-run")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:] + again.stderr[-3000:]
