"""Execution profiles: local (default), the SLURM executor plugin and the generic cluster executor plugin
each pass a dry run of the default and a paper-scale tier, with the jobs' resources as the cluster sees
them. The executor plugins come with the project's install step (pyproject extra `slurm`)."""

from __future__ import annotations

import importlib.util
import re

import pytest
import tomllib
import yaml
from test_workflow import REPO, copy_workflow, expected_jobs, job_counts, merged_config, snakemake

PROFILES = sorted(p.name for p in (REPO / "workflow" / "profiles").iterdir() if (p / "config.yaml").exists())
PLUGINS = {"slurm": "snakemake_executor_plugin_slurm", "cluster-generic": "snakemake_executor_plugin_cluster_generic"}


def test_profiles_and_plugins_are_installed_by_the_project():
    assert {"default", "slurm", "cluster-generic"} <= set(PROFILES)
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["slurm"]
    for profile, module in PLUGINS.items():
        executor = yaml.safe_load((REPO / "workflow" / "profiles" / profile / "config.yaml").read_text())["executor"]
        assert executor == profile
        assert any(req.startswith(f"snakemake-executor-plugin-{profile}") for req in extra), extra
        assert importlib.util.find_spec(module) is not None, f"{module} missing: pip install -e '.[slurm]'"
    assert ".[test,slurm]" in (REPO / "Makefile").read_text()  # the install step installs the extra


def _resources(output: str, rule: str) -> dict[str, str]:
    """The resources of the first planned job of ``rule`` in a dry run's output."""
    block = re.search(rf"^(?:local)?rule {rule}:\n(.*?)\n\n", output, re.M | re.S)
    assert block, f"no {rule} job planned"
    line = re.search(r"^\s+resources: (.*)$", block.group(1), re.M).group(1)
    return dict(item.split("=", 1) for item in line.split(", "))


SLURM_ENV = ("SOSP_SLURM_CPU_PARTITION", "SOSP_SLURM_GPU_PARTITION", "SOSP_SLURM_ACCOUNT")


def _all_resources(output: str) -> dict[str, dict[str, str]]:
    """Rule -> the resources of its first planned job, for every rule of a dry run's output."""
    found = {}
    for block in re.finditer(r"^(?:local)?rule (\w+):\n(.*?)\n\n", output, re.M | re.S):
        line = re.search(r"^\s+resources: (.*)$", block.group(2), re.M)
        if line and block.group(1) not in found:
            found[block.group(1)] = dict(item.split("=", 1) for item in line.group(1).split(", "))
    return found


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("tier", ["config.yaml", "cifar10.yaml"])
def test_profile_dry_run(profile, tier, tmp_path, monkeypatch):
    for name in SLURM_ENV:  # the shipped partitions, whatever this shell sets
        monkeypatch.delenv(name, raising=False)
    copy_workflow(tmp_path)
    proc = snakemake(
        tmp_path, "--dry-run", "--profile", f"workflow/profiles/{profile}", "--configfile", f"config/{tier}"
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert job_counts(proc.stdout) == expected_jobs(merged_config(tier))
    train, measure = _resources(proc.stdout, "train"), _resources(proc.stdout, "measure")
    config = merged_config(tier)
    assert train["runtime"] == str(config["resources"]["train"]["runtime"])
    assert train["mem_mb"] == str(config["resources"]["train"]["mem_mb"])
    gpus = "1" if config["device"].startswith("cuda") else "0"
    assert train["gpu"] == measure["gpu"] == gpus  # a cuda tier asks for one GPU per job
    if profile == "slurm":
        assert train["slurm_partition"] == "gpu" and measure["slurm_extra"] == "--exclusive"
        assert _resources(proc.stdout, "bottleneck")["slurm_partition"] == "cpu"
        assert "slurm_account" not in train
        for rule, resources in _all_resources(proc.stdout).items():  # every job on the tier's device
            if resources.get("gpu", "0") != "0":
                assert resources["slurm_partition"] == "gpu", (rule, resources)
    if profile == "default":
        assert measure["timed"] == "1"  # the global resource that keeps timings apart


def test_slurm_partitions_and_account_from_the_environment(tmp_path, monkeypatch):
    """The SLURM profile takes partitions and account from SOSP_SLURM_* when set (as .ci/slurm.sh does for
    its one-node cluster), quoted: a partition named like a Python builtin stays a name."""
    copy_workflow(tmp_path)
    for name, value in zip(SLURM_ENV, ("max", "a100-80g", "123456")):
        monkeypatch.setenv(name, value)
    proc = snakemake(tmp_path, "--dry-run", "--profile", "workflow/profiles/slurm")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    train, bottleneck = _resources(proc.stdout, "train"), _resources(proc.stdout, "bottleneck")
    assert train["slurm_partition"] == "a100-80g" and bottleneck["slurm_partition"] == "max"
    assert train["slurm_account"] == bottleneck["slurm_account"] == "123456"


def test_generic_submit_command_uses_the_job_resources():
    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "cluster-generic" / "config.yaml").read_text())
    command = profile["cluster-generic-submit-cmd"]
    for field in ("{threads}", "{resources.mem_mb}", "{resources.runtime}", "{resources.gpu}"):
        assert field in command
    assert {"mem_mb", "runtime", "gpu"} <= set(profile["default-resources"])
