"""A pruning method from another installed package (tests/plugin/sosp_example_plugin, with real
``.dist-info`` metadata declaring it under the ``sosp.methods`` entry-point group) runs through
``sosp prune`` and through a one-job workflow, and its records name the package that provided it.
Nothing in the suite names the plug-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import plugins
import pytest
import yaml
from test_workflow import TINY, copy_workflow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict:
    """The environment of a process that has the example plug-in installed (on its PYTHONPATH)."""
    site = plugins.example_plugin(tmp_path_factory.mktemp("site"))
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "SOSP_DEBUG": ""}


def sosp(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sosp.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )


def snakemake(workdir: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    command = [sys.executable, "-m", "snakemake", *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def base(tmp_path_factory, plugin_env) -> tuple[Path, Path]:
    """An untrained resnet20 on digits and its record, written by `sosp train`."""
    out = tmp_path_factory.mktemp("base")
    model, record = out / "base.pt", out / "base.json"
    proc = sosp(
        plugin_env,
        *("train", "--dataset", "digits", "--arch", "resnet20", "--epochs", "0", "--quiet"),
        *("--out", str(model), "--record", str(record)),
    )
    assert proc.returncode == 0, proc.stderr
    return model, record


def test_the_plugin_is_listed_and_prunes_through_the_cli(plugin_env, base, tmp_path):
    listing = sosp(plugin_env, "prune", "--help")
    assert listing.returncode == 0, listing.stderr
    assert "filter_l2 (saliency: shared selection and surgery; sosp-example-plugin 0.1.0)" in listing.stdout
    assert "power=FLOAT (default 2.0)" in listing.stdout

    proc = sosp(
        plugin_env,
        *("prune", "--model", str(base[0]), "--method", "filter_l2", "--option", "power=1", "--ratio", "0.3", "0.5"),
        *("--samples", "64", "--quiet", "--out", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")),
        *("--record", str(tmp_path / "a.json"), str(tmp_path / "b.json")),
    )
    assert proc.returncode == 0, proc.stderr
    for name, ratio in (("a", 0.3), ("b", 0.5)):
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["method"] == "filter_l2" and record["ratio"] == ratio
        assert record["method_package"] == "sosp-example-plugin 0.1.0"
        assert json.loads(record["method_options"]) == {"power": 1.0}
        assert record["achieved_fraction"] == pytest.approx(ratio, abs=0.02)

    without = {**plugin_env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    out = ("--out", str(tmp_path / "c.pt"), "--record", str(tmp_path / "c.json"))
    proc = sosp(without, "prune", "--model", str(base[0]), "--method", "filter_l2", "--ratio", "0.3", *out)
    assert proc.returncode == 2 and "unknown pruning method 'filter_l2'" in proc.stderr


def test_the_plugin_runs_in_a_one_job_workflow(plugin_env, base, tmp_path):
    """A tier naming the plug-in passes the config check, and the prune job (the only one allowed; the
    base model is given) writes its model and record."""
    copy_workflow(tmp_path)
    tier = {**TINY, "tier": "plug", "bottleneck": {"enabled": False}}
    tier["prune"] = {
        **TINY["prune"],
        "methods": ["filter_l2"],
        "target": "structures",
        "options": {"filter_l2": {"power": 1}},
    }
    (tmp_path / "plug.yaml").write_text(yaml.safe_dump(tier))
    models, records = tmp_path / "work/plug/models/resnet20/s0", tmp_path / "work/plug/records/resnet20/s0"
    models.mkdir(parents=True)
    records.mkdir(parents=True)
    (models / "base.pt").write_bytes(base[0].read_bytes())
    (records / "base.json").write_text(base[1].read_text())
    pruned = "work/plug/models/resnet20/s0/filter_l2/structures/r0.5/pruned.pt"

    args = (
        pruned,
        "--cores",
        "1",
        "--configfile",
        "plug.yaml",
        "--allowed-rules",
        "prune",
    )  # target first: both options take lists
    proc = snakemake(tmp_path, *args, env=plugin_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "prune" in proc.stdout + proc.stderr and (tmp_path / pruned).exists()
    record = json.loads((records / "filter_l2/structures/r0.5/pruned.json").read_text())
    assert record["method"] == "filter_l2" and record["method_package"] == "sosp-example-plugin 0.1.0"
    assert json.loads(record["method_options"]) == {"power": 1.0}

    without = snakemake(tmp_path, "--dry-run", *args, env={**plugin_env, "PYTHONPATH": ""})
    assert without.returncode != 0
    assert "invalid config: prune.methods[0]: unknown pruning method 'filter_l2'" in without.stdout + without.stderr
