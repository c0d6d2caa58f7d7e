"""Every paper tier executed small: one test per tier config (config/cifar10.yaml, config/cifar100.yaml,
config/imagenet.yaml) runs the whole DAG with `snakemake` to `rule all` (records, runs.csv, tables,
figures) on the tier's file plus a small override (:func:`small_override`): a generated image folder
instead of the real data set, one seed, one ratio, one epoch of training and fine-tuning, a few
calibration samples, batch-1 latency only, one thread per job, on the CPU. Every method of the tier runs,
at every target of the tier, with the tier's method options, normalisation, floors and bottleneck study,
so each path the tier uses (cost normalisation, `target: macs`, SOSP-I's exact and Monte-Carlo
estimators, torchvision ResNet surgery from published weights on streamed ImageNet-style folders, the
bottleneck study, latency) is executed, not only planned (the dry runs of tests/test_workflow.py plan the full tiers)."""

from __future__ import annotations

import copy
import hashlib
import json
import os

import pandas as pd
import pytest
import torch
import yaml
from test_workflow import copy_workflow, merged_config, snakemake

# rules whose resources the tiers set for a cluster (8-16 threads, GPUs, tens of GB): one thread, no GPU here
RULES = ("data", "train", "base_weights", "prune", "finetune", "measure", "bottleneck", "report")


def small_override(tier: dict, root, work, arch: str, ratio: float, figures: list[str], **dataset) -> dict:
    """What a tier run needs to finish in seconds on one CPU core; everything else is the tier's own.

    ``figures``: the tier's figures that draw something only this tier has (one job and ~3 s of start-up
    per figure; every figure of every kind is drawn by tests/test_workflow.py's end-to-end run)."""
    prune = tier["prune"]
    assert set(figures) <= set(tier["report"]["figures"]), figures
    return {
        "device": "cpu",
        "work_dir": str(work / "work"),
        "results_dir": str(work / "results"),
        "dataset": {"root": str(root), "download": False, "train_subset": None, **dataset},
        "archs": [arch],
        "seeds": [0],
        "train": {"epochs": 1, "batch_size": 32},
        "finetune": {"epochs": 1, "batch_size": 32},
        "prune": {
            "ratios": [ratio],  # one of the tier's ratios
            "samples": 16,  # one scoring batch: every scoring path runs, at half the cost of two
            "score_batch_size": 16,
            "warmup_batches": 0,  # the untimed warm-up pass would double the scoring here
            "options": copy.deepcopy(prune["options"]),
        },
        "measure": {"latency_batches": [1], "threads": 1, "warmup": 10, "iters": 30},  # the schema's minimum
        # the tiers run one fine-tuning job per model (one GPU each); one job per family here: 7 jobs
        # instead of 14 (their start-up is most of the time), the same models, records and checkpoints
        "batch": {"finetune": "family"},
        "resources": {rule: {"threads": 1, "mem_mb": 2000, "runtime": 30, "gpu": 0} for rule in RULES},
        "report": {"figures": figures},
    }


def run_tier(tmp_path, tier_file: str, override: dict) -> tuple[dict, pd.DataFrame]:
    """The tier file plus ``override`` through the whole DAG in a fresh copy of the workflow; returns
    the tier's config (without the override) and runs.csv."""
    copy_workflow(tmp_path)
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(override))
    args = ["--profile", "workflow/profiles/default", "--cores", "1"]
    args += ["--configfile", "config/config.yaml", f"config/{tier_file}", "small.yaml"]
    proc = snakemake(tmp_path, *args, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    config = merged_config(tier_file)
    runs = pd.read_csv(tmp_path / "results" / config["tier"] / "runs.csv")
    return config, runs


def check_common(tmp_path, config: dict, override: dict, runs: pd.DataFrame) -> None:
    """What every tier run must show: records of every method at every target, latency, MACs targets,
    SOSP-I's estimator, tables and figures."""
    tier, prune = config["tier"], config["prune"]
    out = tmp_path / "results" / tier
    targets = [prune["target"]] if isinstance(prune["target"], str) else prune["target"]
    (arch,), (ratio,) = override["archs"], override["prune"]["ratios"]
    original = runs[runs["variant"] == "original"]
    assert set(runs["tier"]) == {tier} and set(runs["arch"]) == {arch} and set(runs["seed"]) == {0}
    assert runs["config_hash"].notna().all() and runs["config_hash"].nunique() == 1
    # every method of the tier at every target: one pruned and one fine-tuned record each
    assert len(original) == 1 + 2 * len(prune["methods"]) * len(targets)
    for method in prune["methods"]:
        for target in targets:
            rows = original[(original["method"] == method) & (original["target"] == target)]
            assert sorted(rows["stage"]) == ["finetuned", "pruned"], (method, target)
            assert (rows["ratio"] == ratio).all()
    base = original[original["stage"] == "base"].iloc[0]
    pruned = original[original["stage"] != "base"]
    assert (pruned["macs"] < base["macs"]).all() and (pruned["params"] < base["params"]).all()
    assert (runs["macs"] == runs["macs_fvcore"]).all()
    assert runs["top1"].between(0, 1).all() and runs["loss"].notna().all()
    assert (pruned["finetune_epochs"].where(pruned["stage"] == "finetuned", 1) == 1).all()
    # latency: batch 1 on the CPU for every model, one thread, as the override asks
    assert runs[["latency_cpu_b1_ms", "latency_cpu_b1_iqr_ms", "device_name"]].notna().all().all()
    assert (runs["latency_cpu_b1_ms"] > 0).all() and (runs["threads"] == 1).all()
    # target macs: the pruned models remove the ratio of the base model's MACs (selection stops at the
    # first structure that reaches it, so at most a little more)
    if "macs" in targets:
        by_macs = pruned[pruned["target"] == "macs"]
        removed = 1 - by_macs["macs"] / base["macs"]
        assert removed.between(ratio - 0.005, ratio + 0.05).all(), removed.tolist()
    if "structures" in targets:
        # channel methods remove exactly the ratio of channels; EigenDamage counts eigen-directions and
        # keeps a layer's removals only where its decomposed form has fewer parameters, so it may fall short
        by_structures = pruned[pruned["target"] == "structures"]
        channels = by_structures["method"] != "eigendamage"
        assert by_structures.loc[channels, "achieved_fraction"].between(ratio - 0.005, ratio + 0.005).all()
        assert by_structures.loc[~channels, "achieved_fraction"].between(0.5 * ratio, ratio + 0.005).all()
    # floors and normalisation as the tier sets them
    assert (pruned["min_fraction"] >= prune["min_fraction"]).all() and (
        pruned["min_channels"] == prune["min_channels"]
    ).all()
    assert (pruned["min_kept_fraction"] >= prune["min_fraction"] - 1e-9).all()
    scaled = {"sosp_h", "sosp_i", "taylor", "cobd"}  # one global scale: cost normalisation applies
    for _, row in pruned.iterrows():
        expected = prune["normalize"] if row["method"] in scaled else "none"
        assert row["normalize"] == expected, (row["method"], row["normalize"])
    # SOSP-I used the estimator the tier sets
    for target in targets:
        record = json.loads(
            (out / "records" / arch / "s0" / "sosp_i" / target / f"r{ratio}" / "pruned.json").read_text()
        )
        resolved = record["details"]["method_options_resolved"]
        for key, value in override["prune"]["options"]["sosp_i"].items():
            assert resolved[key] == value, (key, resolved)
        assert record["details"]["prune_report"]["calibration"]["samples"] == override["prune"]["samples"]
    # tables and figures of the tier
    for name in config["report"]["tables"]:
        assert (out / "tables" / f"{name}.md").read_text().startswith("# ")
    for name in override["report"]["figures"]:
        for fmt in config["report"]["formats"]:
            assert (out / "figures" / f"{name}.{fmt}").stat().st_size > 1000, (name, fmt)
    paper = (out / "tables" / "paper.md").read_text()
    if "macs" in targets:
        assert "compared at equal MACs" in paper


@pytest.mark.slow
@pytest.mark.xdist_group("tier_cifar")
def test_cifar10_tier_runs(image_folder, tmp_path):
    """ResNet-56 only (the bottleneck study's architecture; VGG-16/19 add nothing the CIFAR-100 tier's
    run does not): 10 classes x 8 training images, 2 test images each."""
    root = image_folder(32, 10, 8, 2)
    tier = merged_config("cifar10.yaml")
    figures = ["tradeoff_macs", "layer_ratios", "bottleneck_params"]
    override = small_override(tier, root, tmp_path, "resnet56", 0.5, figures, name="imagefolder", val_fraction=0.1)
    config, runs = run_tier(tmp_path, "cifar10.yaml", override)
    check_common(tmp_path, config, override, runs)


@pytest.mark.slow
@pytest.mark.xdist_group("tier_cifar100")
def test_cifar100_tier_runs(image_folder, tmp_path):
    """ResNet-56 only (the cheaper of the tier's two); 100 classes, so SOSP-I's exact estimator makes
    its 100 reverse passes per batch as at full scale: 2 training images per class, 1 test image."""
    root = image_folder(32, 100, 2, 1)
    tier = merged_config("cifar100.yaml")
    override = small_override(
        tier, root, tmp_path, "resnet56", 0.5, ["tradeoff_macs"], name="imagefolder", val_fraction=0.1
    )
    config, runs = run_tier(tmp_path, "cifar100.yaml", override)
    check_common(tmp_path, config, override, runs)
    assert set(runs["variant"]) == {"original"} and not (tmp_path / "results" / "cifar100" / "bottleneck").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("tier_imagenet")
def test_imagenet_tier_runs(image_folder, tmp_path, monkeypatch):
    """torchvision ResNet-18 from its IMAGENET1K_V1 weights (the state dict of a random model, offline,
    where torch.hub looks for the published file), on a generated folder with 1000 classes (the
    published classifier has 1000 outputs, kept as published) of 96x96 images: above 64 pixels, so
    streamed from JPEGs with the ImageNet transforms as at 224 (torchvision's ResNets pool adaptively,
    and the surgery does not depend on the resolution), at a fifth of the cost: one training image per class, of which
    16 train and 10 validate (val_fraction 0.01), and 8 test images. ResNet-18 only: ResNet-50 runs the
    same surgery code (bottleneck blocks instead of basic ones) at four times the cost."""
    import torchvision

    root = image_folder(96, 1000, 1, 1, test_classes=8)
    cache = tmp_path / "torch_cache"
    spec = "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    weight = torchvision.models.get_weight(spec.split(":")[1])
    (cache / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    published = cache / "hub" / "checkpoints" / os.path.basename(weight.url)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), published)

    tier = merged_config("imagenet.yaml")
    assert (
        tier["base"]["weights"]["torchvision:resnet18"] == spec
        and tier["prune"]["options"]["sosp_i"]["estimator"] == "mc"
    )
    override = small_override(
        tier,
        root,
        tmp_path,
        "torchvision:resnet18",
        0.3,
        ["latency_macs"],
        name="imagenet",
        val_fraction=0.01,
        image_size=96,
    )
    override["dataset"]["train_subset"] = 16
    # resnet50 is dropped from archs, and a later config file cannot delete its weights entry: null it
    override["base"] = {"weights": {"torchvision:resnet50": None}, "cache_dir": str(cache)}
    # SOSP-I's Monte-Carlo estimator as the tier sets it, with 2 sampled labels per image instead of 64
    # (65 backward passes per batch would be most of the run)
    override["prune"]["options"]["sosp_i"]["mc_samples"] = 2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: nothing may be fetched
    monkeypatch.setenv("TORCH_HOME", str(cache))  # torch.hub's own default points there too
    config, runs = run_tier(tmp_path, "imagenet.yaml", override)
    check_common(tmp_path, config, override, runs)
    out = tmp_path / "results" / "imagenet"
    base = json.loads((out / "records" / "torchvision:resnet18" / "s0" / "base.json").read_text())
    source = base["details"]["weights_source"]
    assert source["spec"] == spec and source["file_name"] == published.name
    assert source["sha256"] == hashlib.sha256(published.read_bytes()).hexdigest()
    assert base["details"]["input_shape"] == [3, 96, 96] and base["train_epochs"] in (0, None)
    assert set(runs["dataset"]) == {"imagenet"} and set(runs["variant"]) == {"original"}
