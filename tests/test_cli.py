"""The command line: user errors give exit code 2 and one line `sosp: error: ...`, never a traceback;
and the verbs chain (train -> prune -> finetune -> evaluate/measure -> report) on a tiny setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_sosp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SOSP_DEBUG": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sosp.cli", *args], cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=120
    )


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, no traceback, exactly one error line, last on stderr, containing ``fragments``."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("sosp: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A resnet20 on digits, untrained (0 epochs), written by `sosp train`."""
    out = tmp_path_factory.mktemp("cli")
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
        str(out / "base.pt"),
        "--record",
        str(out / "base.json"),
    )
    assert proc.returncode == 0, proc.stderr
    return out / "base.pt"


def test_unknown_model(tmp_path):
    proc = run_sosp(
        "train",
        "--dataset",
        "digits",
        "--arch",
        "resnet_nope",
        "--epochs",
        "0",
        "--out",
        str(tmp_path / "m.pt"),
        "--record",
        str(tmp_path / "r.json"),
    )
    assert_user_error(proc, "unknown model 'resnet_nope'", "resnet20")
    assert not (tmp_path / "m.pt").exists()


def test_unknown_dataset(tmp_path):
    proc = run_sosp(
        "train",
        "--dataset",
        "mnist_nope",
        "--arch",
        "resnet20",
        "--epochs",
        "0",
        "--out",
        str(tmp_path / "m.pt"),
        "--record",
        str(tmp_path / "r.json"),
    )
    assert_user_error(proc, "unknown dataset 'mnist_nope'", "digits")


@pytest.mark.parametrize("ratio", ["1.0", "1.5", "-0.1", "half"])
def test_ratio_outside_unit_interval(tmp_path, ratio):
    proc = run_sosp(
        "prune",
        "--model",
        str(tmp_path / "m.pt"),
        "--method",
        "sosp_h",
        f"--ratio={ratio}",
        "--out",
        str(tmp_path / "p.pt"),
        "--record",
        str(tmp_path / "p.json"),
    )
    assert_user_error(proc, "--ratio", "[0, 1)")


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "no_such_folder"
    proc = run_sosp(
        "train",
        "--dataset",
        "cifar10",
        "--data-root",
        str(missing),
        "--arch",
        "resnet20",
        "--epochs",
        "0",
        "--batch-size",
        "8",
        "--lr",
        "0.1",
        "--out",
        str(tmp_path / "m.pt"),
        "--record",
        str(tmp_path / "r.json"),
    )
    assert_user_error(proc, str(missing))


def test_missing_model_file(tmp_path):
    missing = tmp_path / "missing.pt"
    proc = run_sosp(
        "prune",
        "--model",
        str(missing),
        "--method",
        "sosp_h",
        "--ratio",
        "0.5",
        "--out",
        str(tmp_path / "p.pt"),
        "--record",
        str(tmp_path / "p.json"),
    )
    assert_user_error(proc, "model file not found", str(missing))


def test_usage_errors_are_one_line(tmp_path):
    assert_user_error(run_sosp("nope"), "invalid choice")
    assert_user_error(run_sosp("prune", "--method", "sosp_h"), "required")
    assert_user_error(
        run_sosp(
            "train",
            "--dataset",
            "digits",
            "--arch",
            "resnet20",
            "--arch-option",
            "novalue",
            "--out",
            "m.pt",
            "--record",
            "r.json",
        ),
        "key=value",
    )


def test_bad_train_config(tmp_path):
    proc = run_sosp(
        "train",
        "--dataset",
        "digits",
        "--arch",
        "resnet20",
        "--train-config",
        '{"epochs": 1, "batch_size": 8, "lr": 0.1, "lr_typo": 1}',
        "--out",
        str(tmp_path / "m.pt"),
        "--record",
        str(tmp_path / "r.json"),
    )
    assert_user_error(proc, "lr_typo")


def test_unknown_method_and_bad_model_file(base_model, tmp_path):
    proc = run_sosp(
        "prune",
        "--model",
        str(base_model),
        "--method",
        "nope_method",
        "--ratio",
        "0.5",
        "--out",
        str(tmp_path / "p.pt"),
        "--record",
        str(tmp_path / "p.json"),
    )
    assert_user_error(proc, "nope_method", "sosp_h")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    proc = run_sosp("measure", "--model", str(junk), "--out", str(tmp_path / "r.json"))
    assert_user_error(proc, "cannot load model file")


def test_prune_help_lists_every_method_and_its_options():
    from sosp import registry

    proc = run_sosp("prune", "--help")
    assert proc.returncode == 0, proc.stderr
    listing = proc.stdout[proc.stdout.index("methods (--method NAME)") :]
    for method in map(registry.get, registry.names()):
        assert f"\n  {method.name} ({method.kind}: " in listing, method.name
        for option in method.options:
            assert f"\n      {option.name}" in listing, (method.name, option.name)


@pytest.mark.parametrize(
    "method, option, message",
    [
        ("magnitude", "scope=sideways", "scope must be one of layerwise, global, got 'sideways'"),
        ("sosp_h", "combin=joint", "method 'sosp_h' has no option 'combin'; options: combine, curvature"),
        ("sosp_i", "mc_samples=many", "mc_samples must be an integer, got 'many'"),
    ],
)
def test_bad_method_option_is_one_line(base_model, tmp_path, method, option, message):
    proc = run_sosp(
        "prune",
        "--model",
        str(base_model),
        "--method",
        method,
        "--ratio",
        "0.5",
        "--option",
        option,
        "--out",
        str(tmp_path / "p.pt"),
        "--record",
        str(tmp_path / "p.json"),
    )
    assert_user_error(proc, message)
    assert not (tmp_path / "p.json").exists()


def test_verbs_chain_in_process(base_model, tmp_path, capsys):
    """train (fixture) -> prune -> finetune -> evaluate -> measure -> report, through main()."""
    from sosp import cli

    d = tmp_path
    assert (
        cli.main(
            [
                "prune",
                "--model",
                str(base_model),
                "--method",
                "sosp_h",
                "--ratio",
                "0.5",
                "--samples",
                "64",
                "--score-batch-size",
                "32",
                "--tier",
                "t",
                "--quiet",
                "--out",
                str(d / "p.pt"),
                "--record",
                str(d / "p.json"),
            ]
        )
        == 0
    )
    pruned = json.loads((d / "p.json").read_text())
    assert pruned["stage"] == "pruned" and pruned["method"] == "sosp_h" and pruned["ratio"] == 0.5
    assert pruned["tier"] == "t" and pruned["samples"] == 64 and 0.4 < pruned["achieved_fraction"] <= 0.5
    assert 0.0 <= pruned["top1"] <= 1.0 and pruned["finetune_epochs"] == 0
    assert pruned["method_options"] == "{}"  # as given; every option the method ran with is in details
    assert pruned["details"]["method_options_resolved"] == {"combine": "separate", "curvature": "ggn"}
    assert (
        cli.main(
            [
                "finetune",
                "--model",
                str(d / "p.pt"),
                "--epochs",
                "1",
                "--batch-size",
                "256",
                "--lr",
                "0.01",
                "--quiet",
                "--out",
                str(d / "f.pt"),
                "--record",
                str(d / "f.json"),
            ]
        )
        == 0
    )
    fine = json.loads((d / "f.json").read_text())
    assert fine["stage"] == "finetuned" and fine["finetune_epochs"] == 1
    assert fine["achieved_fraction"] == pruned["achieved_fraction"] and fine["tier"] == "t"
    assert (
        cli.main(
            ["evaluate", "--model", str(d / "f.pt"), "--eval-split", "val", "--quiet", "--out", str(d / "f_val.json")]
        )
        == 0
    )
    assert json.loads((d / "f_val.json").read_text())["eval_split"] == "val"
    assert (
        cli.main(
            [
                "measure",
                "--model",
                str(d / "f.pt"),
                "--record",
                str(d / "f.json"),
                "--latency-batches",
                "1",
                "2",
                "--threads",
                "1",
                "--quiet",
                "--out",
                str(d / "records" / "f.json"),
            ]
        )
        == 0
    )
    measured = json.loads((d / "records" / "f.json").read_text())
    assert measured["macs"] == measured["macs_fvcore"] > 0 and measured["flops"] == 2 * measured["macs"]
    assert measured["latency_cpu_b1_ms"] > 0 and measured["latency_cpu_b2_iqr_ms"] >= 0
    assert measured["params"] == fine["params"] and measured["top1"] == fine["top1"]
    assert (
        cli.main(
            [
                "measure",
                "--model",
                str(base_model),
                "--no-latency",
                "--quiet",
                "--tier",
                "t",
                "--out",
                str(d / "records" / "base.json"),
            ]
        )
        == 0
    )
    assert cli.main(["report", str(d / "records"), "--out-dir", str(d / "out"), "--quiet"]) == 0
    assert (d / "out" / "runs.csv").read_text().count("\n") == 3  # header + 2 records
    for name in ("tables/summary.md", "tables/summary.tex", "figures/tradeoff_macs.png", "figures/tradeoff_macs.pdf"):
        assert (d / "out" / name).stat().st_size > 0


def test_measure_many_models_and_report_parts(base_model, tmp_path):
    """`measure` takes several models (one record each); `report` rebuilds parts from a runs.csv."""
    from sosp import cli

    d = tmp_path
    assert (
        cli.main(
            [
                "prune",
                "--model",
                str(base_model),
                "--method",
                "random",
                "--ratio",
                "0.3",
                "0.6",
                "--samples",
                "32",
                "--quiet",
                "--tier",
                "t",
                "--out",
                str(d / "a.pt"),
                str(d / "b.pt"),
                "--record",
                str(d / "a.json"),
                str(d / "b.json"),
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "measure",
                "--model",
                str(d / "a.pt"),
                str(d / "b.pt"),
                "--record",
                str(d / "a.json"),
                str(d / "b.json"),
                "--latency-batches",
                "1",
                "--threads",
                "1",
                "--gpu-latency",
                "never",
                "--quiet",
                "--out",
                str(d / "r" / "a.json"),
                str(d / "r" / "b.json"),
            ]
        )
        == 0
    )
    a, b = (json.loads((d / "r" / f"{n}.json").read_text()) for n in "ab")
    assert a["ratio"] == 0.3 and b["ratio"] == 0.6 and b["macs"] < a["macs"] and a["latency_cpu_b1_ms"] > 0
    assert "latency_cuda_b1_ms" not in a
    assert cli.main(["report", str(d / "r"), "--out-dir", str(d / "out"), "--only", "runs", "--quiet"]) == 0
    assert not (d / "out" / "tables").exists()
    assert (
        cli.main(
            [
                "report",
                str(d / "out" / "runs.csv"),
                "--out-dir",
                str(d / "out"),
                "--only",
                "tables",
                "figures",
                "--figures",
                "oneshot_ratio",
                "--formats",
                "png",
                "--quiet",
            ]
        )
        == 0
    )
    assert {p.name for p in (d / "out" / "tables").iterdir()} == {
        f"{n}.{f}" for n in ("summary", "paper", "timing") for f in ("md", "tex", "html")
    }
    assert [p.name for p in (d / "out" / "figures").iterdir()] == ["oneshot_ratio.png"]


def test_measure_and_prune_argument_counts(base_model, tmp_path):
    proc = run_sosp("measure", "--model", str(base_model), str(base_model), "--out", str(tmp_path / "x.json"))
    assert_user_error(proc, "one --out", "2 model(s)")
    proc = run_sosp(
        "prune",
        "--model",
        str(base_model),
        "--method",
        "random",
        "--ratio",
        "0.3",
        "0.5",
        "--out",
        str(tmp_path / "p.pt"),
        "--record",
        str(tmp_path / "p.json"),
    )
    assert_user_error(proc, "one --out and one --record per --ratio")
    import torch

    if not torch.cuda.is_available():
        proc = run_sosp(
            "measure", "--model", str(base_model), "--gpu-latency", "always", "--out", str(tmp_path / "x.json")
        )
        assert_user_error(proc, "no CUDA device")
        assert not (tmp_path / "x.json").exists()


def test_prune_several_targets_and_the_oneshot_curve_in_one_call(base_model, tmp_path, capsys):
    """One `sosp prune` call (one workflow job) prunes to every target and ratio from one scoring pass,
    --out/--record running over the targets, then the ratios; --oneshot-ratio adds one-shot rows (no
    model files) at further ratios of every target, reusing a pruned model at a ratio it also writes;
    `sosp report --only oneshot` turns the rows into the one-shot table and figure."""
    from sosp import cli

    d = tmp_path
    names = ["s3", "s6", "m3", "m6"]
    args = ["prune", "--model", str(base_model), "--method", "taylor", "--target", "structures", "macs",
            "--ratio", "0.3", "0.6", "--samples", "64", "--score-batch-size", "32", "--threads", "1", "--tier", "t",
            "--out", *[str(d / f"{n}.pt") for n in names], "--record", *[str(d / f"{n}.json") for n in names]]  # fmt: skip
    curve = ["--oneshot-ratio", "0.1", "0.3", "--oneshot-bn", "as_is", "reestimated", "--oneshot-bn-images", "100"]
    assert cli.main([*args, *curve, "--oneshot-out", str(d / "oneshot" / "taylor.csv")]) == 0
    log = capsys.readouterr().err
    assert log.count("scored ") == 1 and log.count("loading data set") == 1, log
    records = {n: json.loads((d / f"{n}.json").read_text()) for n in names}
    assert [(r["target"], r["ratio"]) for r in records.values()] == [
        ("structures", 0.3),
        ("structures", 0.6),
        ("macs", 0.3),
        ("macs", 0.6),
    ]
    assert all(r["details"]["prune_report"]["shared_scoring"] for r in records.values())
    assert records["s6"]["achieved_fraction"] > records["s3"]["achieved_fraction"]
    assert records["m6"]["macs"] <= 0.4 * records["m6"]["details"]["prune_report"]["macs_before"]
    assert not list(d.glob("*0.1*")) and len(list(d.glob("*.pt"))) == 4  # the one-shot points write no model

    import pandas as pd

    rows = pd.read_csv(d / "oneshot" / "taylor.csv")
    assert list(zip(rows["target"], rows["ratio"])) == [("structures", 0.3), ("macs", 0.3), ("structures", 0.1),
                                                        ("macs", 0.1)]  # fmt: skip
    assert (rows["tier"] == "t").all() and (rows["net"] == "resnet20").all() and (rows["bn_images"] == 100).all()
    assert rows[["oneshot_top1_pct", "oneshot_loss", "reestimated_top1_pct", "reestimated_loss"]].notna().all().all()
    # at a ratio it also writes, the one-shot row is that model's evaluation
    s3 = rows[(rows["target"] == "structures") & (rows["ratio"] == 0.3)].iloc[0]
    assert s3["oneshot_top1_pct"] == pytest.approx(100 * records["s3"]["top1"])
    assert s3["achieved_fraction"] == pytest.approx(records["s3"]["achieved_fraction"])

    assert cli.main(["report", "--only", "oneshot", "--oneshot", str(d / "oneshot"), "--out-dir", str(d / "out"),
                     "--formats", "png", "--quiet"]) == 0  # fmt: skip
    table = pd.read_csv(d / "out" / "tables" / "oneshot.csv")
    assert len(table) == 4 and set(table["seeds"]) == {1} and table["reestimated_top1_pct_mean"].notna().all()
    assert "| taylor |" in (d / "out" / "tables" / "oneshot.md").read_text()
    assert (d / "out" / "figures" / "oneshot_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (d / "out").rglob("*") if p.is_file()) == [
        "oneshot.csv",
        "oneshot.md",
        "oneshot_curves.png",
    ]


def test_prune_and_report_oneshot_usage_errors(base_model, tmp_path):
    common = ["prune", "--model", str(base_model), "--method", "random", "--ratio", "0.3", "0.5"]
    proc = run_sosp(*common, "--target", "structures", "macs", "--out", *["a.pt"] * 2, "--record", *["a.json"] * 2)
    assert_user_error(proc, "one --out and one --record per --ratio and --target", "2 target(s) x 2 ratio(s)")
    proc = run_sosp(*common, "--out", "a.pt", "b.pt", "--record", "a.json", "b.json", "--oneshot-ratio", "0.1")
    assert_user_error(proc, "--oneshot-ratio and --oneshot-out together")
    proc = run_sosp(*common, "--target", "macs", "macs", "--out", *["a.pt"] * 4, "--record", *["a.json"] * 4)
    assert_user_error(proc, "name each --target and each --ratio once")
    proc = run_sosp(*common, "--target", "flops", "--out", "a.pt", "--record", "a.json")
    assert_user_error(proc, "--target", "flops")
    proc = run_sosp("report", "--only", "oneshot", "--out-dir", str(tmp_path / "out"))
    assert_user_error(proc, "--only oneshot needs --oneshot")
    proc = run_sosp("report", "--out-dir", str(tmp_path / "out"))
    assert_user_error(proc, "give the records")
    proc = run_sosp("report", "--only", "oneshot", "--oneshot", str(tmp_path / "none"), "--out-dir", str(tmp_path))
    assert_user_error(proc, "one-shot rows not found")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("*.pt"))
