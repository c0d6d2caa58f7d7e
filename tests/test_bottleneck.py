"""The bottleneck study (docs/method.md section 7): layer-wise ratios -> bottlenecks -> widened widths, as the
`sosp bottleneck` verb writes them and `sosp train --widths/--width-multiplier` uses them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sosp import bottleneck, models

REPO = Path(__file__).resolve().parents[1]


def run_sosp(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SOSP_DEBUG": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sosp.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )


def test_blocks_of_width_keys():
    assert bottleneck.block_of("layer2.1") == "layer2" and bottleneck.block_of("stage3") == "layer3"
    assert bottleneck.block_of("conv4") == "conv4"
    model = models.create("resnet20", num_classes=10)
    keys = list(model.width_spec())
    assert sorted(bottleneck.block_keys(keys, ["layer2"])) == ["layer2.0", "layer2.1", "layer2.2", "stage2"]
    ratios = {k: (0.1 if bottleneck.block_of(k) == "layer1" else 0.6) for k in keys}
    assert bottleneck.block_ratios(ratios) == pytest.approx({"layer1": 0.1, "layer2": 0.6, "layer3": 0.6})
    assert bottleneck.choose_bottlenecks(bottleneck.block_ratios(ratios), "fraction", 0.3) == ["layer1"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """An untrained resnet20 on digits and its magnitude-pruned records at ratios 0.3 and 0.5 (one
    `sosp prune` call: the scores are computed once for both ratios)."""
    d = tmp_path_factory.mktemp("bottleneck")
    proc = run_sosp(
        "train",
        "--dataset",
        "digits",
        "--arch",
        "resnet20",
        "--epochs",
        "0",
        "--quiet",
        "--out",
        str(d / "base.pt"),
        "--record",
        str(d / "base.json"),
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_sosp(
        "prune",
        "--model",
        str(d / "base.pt"),
        "--method",
        "magnitude",
        "--ratio",
        "0.3",
        "0.5",
        "--samples",
        "64",
        "--quiet",
        "--out",
        str(d / "p3.pt"),
        str(d / "p5.pt"),
        "--record",
        str(d / "p3.json"),
        str(d / "p5.json"),
    )
    assert proc.returncode == 0, proc.stderr
    return d


def test_prune_at_several_ratios_shares_the_scores(pruned):
    r3, r5 = (json.loads((pruned / f"p{r}.json").read_text()) for r in (3, 5))
    assert (r3["ratio"], r5["ratio"]) == (0.3, 0.5) and r3["variant"] == "original"
    assert r3["saliency_seconds"] == r5["saliency_seconds"]  # one scoring for both
    assert r3["achieved_fraction"] < r5["achieved_fraction"] and r5["params"] < r3["params"]
    assert r3["details"]["prune_report"]["shared_scoring"] is True


def test_bottleneck_analysis_and_widened_training(pruned, tmp_path):
    out = tmp_path / "analysis.json"
    proc = run_sosp(
        "bottleneck",
        "--model",
        str(pruned / "base.pt"),
        "--report",
        str(pruned / "p3.json"),
        str(pruned / "p5.json"),
        "--ratio",
        "0.5",
        "--value",
        "0.25",
        "--factor",
        "2",
        "--uniform-factor",
        "1.1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    a = json.loads(out.read_text())
    base = models.create("resnet20", num_classes=10, in_channels=1)
    spec = base.width_spec()
    assert a["arch"] == "resnet20" and a["ratio"] == 0.5 and set(a["by_ratio"]) == {"0.3", "0.5"}
    assert set(a["by_ratio"]["0.5"]["layers"]) == set(spec) and set(a["layer_ratios"]) == set(spec)
    # the chosen keys are the quarter with the lowest ratios at 0.5
    assert len(a["bottlenecks"]) == round(0.25 * len(spec))
    cut = max(a["layer_ratios"][k] for k in a["bottlenecks"])
    assert all(a["layer_ratios"][k] >= cut for k in spec if k not in a["bottlenecks"])
    widened = a["variants"]["bottleneck"]
    assert widened["label"] == "bottleneck-x2"
    assert all(widened["widths"][k] == (2 * spec[k] if k in a["bottlenecks"] else spec[k]) for k in spec)
    assert a["variants"]["uniform"]["widths"] == bottleneck.uniform_widths(base, 1.1)
    assert a["params"] < a["variants"]["uniform"]["params"] and a["params"] < widened["params"]

    # sosp train --widths <analysis> --variant bottleneck: the widened network, stage widened
    proc = run_sosp(
        "train",
        "--dataset",
        "digits",
        "--arch",
        "resnet20",
        "--epochs",
        "0",
        "--quiet",
        "--widths",
        str(out),
        "--variant",
        "bottleneck",
        "--out",
        str(tmp_path / "w.pt"),
        "--record",
        str(tmp_path / "w.json"),
    )
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((tmp_path / "w.json").read_text())
    assert rec["stage"] == "widened" and rec["variant"] == "bottleneck-x2"
    assert rec["params"] == widened["params"] and rec["details"]["widths"] == widened["widths"]
    # --width-multiplier 1.1 gives exactly the uniform baseline's widths
    proc = run_sosp(
        "train",
        "--dataset",
        "digits",
        "--arch",
        "resnet20",
        "--epochs",
        "0",
        "--quiet",
        "--width-multiplier",
        "1.1",
        "--out",
        str(tmp_path / "u.pt"),
        "--record",
        str(tmp_path / "u.json"),
    )
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((tmp_path / "u.json").read_text())
    assert rec["variant"] == "uniform-x1.1" and rec["details"]["widths"] == a["variants"]["uniform"]["widths"]


def test_bottleneck_user_errors(pruned, tmp_path):
    analysis = tmp_path / "a.json"
    proc = run_sosp(
        "bottleneck",
        "--model",
        str(pruned / "base.pt"),
        "--report",
        str(pruned / "p5.json"),
        "--ratio",
        "0.7",
        "--out",
        str(analysis),
    )
    assert proc.returncode == 2 and "no record at that ratio" in proc.stderr and "Traceback" not in proc.stderr
    assert not analysis.exists()
    proc = run_sosp(
        "bottleneck", "--model", str(pruned / "base.pt"), "--report", str(pruned / "base.json"), "--out", str(analysis)
    )
    assert proc.returncode == 2 and "prune_report" in proc.stderr
    run_sosp(
        "bottleneck", "--model", str(pruned / "base.pt"), "--report", str(pruned / "p5.json"), "--out", str(analysis)
    )
    proc = run_sosp(
        "train",
        "--dataset",
        "digits",
        "--arch",
        "resnet20",
        "--epochs",
        "0",
        "--widths",
        str(analysis),
        "--out",
        str(tmp_path / "m.pt"),
        "--record",
        str(tmp_path / "m.json"),
    )
    assert proc.returncode == 2 and "--variant" in proc.stderr.strip().splitlines()[-1]
    proc = run_sosp(
        "train",
        "--dataset",
        "digits",
        "--arch",
        "resnet20",
        "--epochs",
        "0",
        "--widths",
        '{"stage1": 0}',
        "--out",
        str(tmp_path / "m.pt"),
        "--record",
        str(tmp_path / "m.json"),
    )
    assert proc.returncode == 2 and "stage1" in proc.stderr
