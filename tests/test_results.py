"""Records and their aggregation: mean/std over seeds, reductions paired with the base model, and the
outputs (runs.csv, Markdown, LaTeX, figures) built from records alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from sosp import plots, results
from sosp.errors import DataError


def _rec(stage, seed, top1, params, macs, method="none", ratio=0.0, **kw):
    target = "structures" if method != "none" else "none"
    return results.make_record(
        stage,
        tier="t",
        dataset="digits",
        arch="resnet20",
        seed=seed,
        method=method,
        ratio=ratio,
        target=target,
        top1=top1,
        params=params,
        macs=macs,
        **kw,
    )


@pytest.fixture
def records():
    """Two seeds; base 0.90/0.94; pruned (ratio 0.5) 0.80/0.90 one-shot, 0.88/0.92 fine-tuned."""
    return [
        _rec("base", 0, 0.90, 1000, 4_000_000),
        _rec("base", 1, 0.94, 1000, 4_000_000),
        _rec("pruned", 0, 0.80, 500, 2_000_000, "sosp_h", 0.5, achieved_fraction=0.5),
        _rec("pruned", 1, 0.90, 600, 1_000_000, "sosp_h", 0.5, achieved_fraction=0.5),
        _rec("finetuned", 0, 0.88, 500, 2_000_000, "sosp_h", 0.5, achieved_fraction=0.5),
        _rec("finetuned", 1, 0.92, 600, 1_000_000, "sosp_h", 0.5, achieved_fraction=0.5),
        _rec("finetuned", 0, 0.70, 400, 1_000_000, "sosp_h", 0.5, method_options={"combine": "joint"}),
    ]


def _row(summary, **keys):
    mask = pd.Series(True, index=summary.index)
    for k, v in keys.items():
        mask &= summary[k] == v
    assert mask.sum() == 1, summary[list(keys)]
    return summary[mask].iloc[0]


def _md_rows(markdown: str, first_cell: str) -> list[dict]:
    """The rows (column header -> cell) of every Markdown table whose first cell is ``first_cell``."""
    rows, header = [], None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif cells[0] == first_cell:
            rows.append(dict(zip(header, cells)))
    return rows


def _is_placeholder(fig) -> bool:
    """The figure drawn without data: one panel, no axes, a single 'no ...' message."""
    return len(fig.axes) == 1 and not fig.axes[0].axison and [t.get_text()[:3] for t in fig.axes[0].texts] == ["no "]


def test_summary_mean_std_over_seeds(records):
    summary = results.summary_table(pd.DataFrame(records))
    assert len(summary) == 4  # base, pruned, finetuned, and the finetuned variant with other options
    base = _row(summary, stage="base")
    assert base.seeds == 2 and base.top1_pct_mean == pytest.approx(92.0)
    assert base.top1_pct_std == pytest.approx(math.sqrt(8.0))  # sample std (ddof=1) of 90, 94
    assert base.params_reduction_pct == pytest.approx(0.0) and base.top1_change_pp_mean == pytest.approx(0.0)

    fine = _row(summary, stage="finetuned", method_options="{}")
    assert fine.top1_pct_mean == pytest.approx(90.0) and fine.top1_pct_std == pytest.approx(math.sqrt(8.0))
    # paired per seed: (88-90, 92-94) = (-2, -2)
    assert fine.top1_change_pp_mean == pytest.approx(-2.0) and fine.top1_change_pp_std == pytest.approx(0.0)
    # params: (1 - 500/1000, 1 - 600/1000) -> 50 %, 40 %; MACs 50 %, 75 %
    assert fine.params_reduction_pct == pytest.approx(45.0) and fine.params == pytest.approx(550.0)
    assert fine.macs_reduction_pct == pytest.approx(62.5) and fine.macs_M == pytest.approx(1.5)

    pruned = _row(summary, stage="pruned")
    assert pruned.top1_pct_mean == pytest.approx(85.0)
    assert pruned.top1_change_pp_mean == pytest.approx(-7.0)  # (-10, -4)
    assert pruned.top1_change_pp_std == pytest.approx(math.sqrt(18.0))
    assert pruned.achieved_fraction == pytest.approx(0.5)

    variant = _row(summary, stage="finetuned", method_options='{"combine":"joint"}')
    assert variant.seeds == 1 and math.isnan(variant.top1_pct_std)
    assert variant.top1_change_pp_mean == pytest.approx(-20.0)


def test_missing_base_gives_nan_not_error(records):
    summary = results.summary_table(pd.DataFrame([r for r in records if r["stage"] != "base"]))
    assert summary["params_reduction_pct"].isna().all() and summary["top1_pct_mean"].notna().all()


def test_collect_round_trip(records, tmp_path):
    for i, rec in enumerate(records):
        (tmp_path / "records").mkdir(exist_ok=True)
        (tmp_path / "records" / f"{i}.json").write_text(json.dumps({**rec, "details": {"x": [1]}}))
    df = results.collect([tmp_path / "records"])
    assert len(df) == len(records) and "details" not in df.columns
    assert list(df.columns[: len(results.COLUMNS)]) == list(results.COLUMNS)
    assert list(df["stage"][:2]) == ["base", "base"]  # method "none" sorts first
    results.write_runs_csv(df, tmp_path / "runs.csv")
    back = pd.read_csv(tmp_path / "runs.csv")
    assert len(back) == len(records) and back["params"].dtype.kind == "i"
    with pytest.raises(DataError, match="not found"):
        results.collect([tmp_path / "nope.json"])
    (tmp_path / "bad.json").write_text('{"stage": "base"}')
    with pytest.raises(DataError, match="lacks field"):
        results.collect([tmp_path / "bad.json"])


def test_make_record_fields():
    rec = results.make_record(
        "pruned",
        tier="t",
        dataset="d",
        arch="a",
        seed=3,
        method="m",
        ratio=0.3,
        target="structures",
        top1=0.5,
        latency_cpu_b256_ms=1.0,
    )
    assert set(results.COLUMNS) <= set(rec) and rec["method_options"] == "{}"
    assert rec["macs"] is None and rec["latency_cpu_b256_ms"] == 1.0 and rec["schema_version"] == results.SCHEMA_VERSION
    with pytest.raises(ValueError, match="unknown record field"):
        results.make_record("base", tier="t", dataset="d", arch="a", seed=0, top_1=0.5)
    with pytest.raises(ValueError, match="unknown stage"):
        results.make_record("trained", tier="t", dataset="d", arch="a", seed=0)


def test_pruned_and_finetuned_records_carry_the_pruning():
    base = results.make_record("base", tier="t", dataset="digits", arch="resnet20", seed=1, train_epochs=3)
    report = {
        "achieved_fraction": 0.5,
        "min_channels": 1,
        "min_fraction": 0.0,
        "normalize": "none",
        "per_group": [{"group": "g", "removed": 2, "size": 4}],
        "saliency_seconds": 1.0,
        "selection_seconds": 0.1,
        "prune_seconds": 1.5,
        "params_after": 10,
        "macs_after": 20,
        "scores": [[1.0]],
        "options": {},
        "resolved_options": {"combine": "separate"},
    }
    pruned = results.pruned_record(
        base, report, seed=1, method="sosp_h", ratio=0.5, target="structures", method_options={}, samples=64, top1=0.9
    )
    assert (pruned["stage"], pruned["train_epochs"], pruned["finetune_epochs"]) == ("pruned", 3, 0)
    assert (pruned["params"], pruned["macs"], pruned["top1"], pruned["samples"]) == (10, 20, 0.9, 64)
    assert pruned["removed_per_layer"] == '{"g": 0.5}' and pruned["min_kept_fraction"] == 0.5
    assert pruned["details"]["method_options_resolved"] == {"combine": "separate"}
    assert "scores" not in pruned["details"]["prune_report"] and "per_group" in pruned["details"]["prune_report"]
    tuned = results.finetuned_record(
        pruned, seed=1, params=10, finetune_epochs=2, finetune_seconds=4.0, top1=0.95, details={"history": []}
    )
    assert tuned["stage"] == "finetuned" and tuned["details"] == {"history": []}
    assert all(tuned[k] == pruned[k] for k in results.records.CARRIED + ("method", "ratio", "target", "macs"))
    assert (tuned["top1"], tuned["finetune_epochs"], tuned["finetune_seconds"]) == (0.95, 2, 4.0)


def test_measurement_fields():
    m = {
        "params": 10,
        "macs": 20,
        "flops": 40,
        "macs_fvcore": 20,
        "latency": [
            {
                "device": "cpu",
                "device_name": "x86_64",
                "batch_size": 1,
                "median_ms": 1.5,
                "iqr_ms": 0.1,
                "dtype": "float32",
                "threads": 1,
                "torch_version": "2.x",
            },
            {"device": "cuda:0", "device_name": "H100", "batch_size": 256, "median_ms": 3.0, "iqr_ms": 0.2},
        ],
    }
    f = results.measurement_fields(m)
    assert f["latency_cpu_b1_ms"] == 1.5 and f["latency_cpu_b1_iqr_ms"] == 0.1
    assert f["latency_cuda_b256_ms"] == 3.0 and f["device_name"] == "x86_64" and f["threads"] == 1
    assert all(results.is_column(k) for k in f)


def test_tables_and_figures(records, tmp_path):
    df = results.tidy(pd.DataFrame(records))
    summary = results.summary_table(df)
    md, tex = results.summary_markdown(summary), results.summary_latex(summary)
    assert "digits / resnet20" in md and "90.00 ± 2.83" in md and "-2.00 ± 0.00" in md
    assert "sosp_h[combine=joint]" in md and "MACs (10^6)" in md
    assert "\\begin{tabular}" in tex and "sosp\\_h" in tex and "$\\pm$" in tex
    paths = plots.write_figures(df, tmp_path)
    assert {p.name for p in paths} == {f"{n}.{f}" for n in plots.FIGURES for f in plots.FORMATS}
    assert all(p.read_bytes()[:4] in (b"\x89PNG", b"%PDF") for p in paths)
    fig = plots.tradeoff(df, x="macs")
    ax = fig.axes[0]
    assert "MACs" in ax.get_xlabel() and "%" in ax.get_ylabel()
    assert any("base" in t.get_text() for t in ax.get_legend().get_texts())
    empty = plots.tradeoff(df.iloc[0:0])  # no data: a placeholder, not an error
    assert _is_placeholder(empty) and not _is_placeholder(fig)


@pytest.fixture
def study(records):
    """The records above plus a widened variant (its own unpruned reference, stage `widened`) and
    timings, and a bottleneck analysis as `sosp bottleneck` writes it."""
    more = [
        _rec("widened", 0, 0.95, 2000, 8_000_000, variant="bottleneck-x2"),
        _rec("widened", 1, 0.97, 2000, 8_000_000, variant="bottleneck-x2"),
        _rec("finetuned", 0, 0.93, 1000, 4_000_000, "sosp_h", 0.5, variant="bottleneck-x2"),
        _rec("finetuned", 1, 0.93, 1000, 4_000_000, "sosp_h", 0.5, variant="bottleneck-x2"),
        _rec("pruned", 0, 0.5, 500, 2_000_000, "taylor", 0.5, saliency_seconds=0.1, prune_seconds=0.3),
        _rec("pruned", 1, 0.6, 500, 2_000_000, "taylor", 0.5, saliency_seconds=0.3, prune_seconds=0.5),
    ]
    out = [dict(r) for r in records]
    for r in out:
        if r["stage"] == "pruned":
            r.update(saliency_seconds=0.2, prune_seconds=0.4, latency_cpu_b1_ms=1.0, latency_cpu_b1_iqr_ms=0.1)
    analysis = {
        "tier": "t",
        "dataset": "digits",
        "arch": "resnet20",
        "method": "sosp_h",
        "ratio": 0.5,
        "by_ratio": {
            "0.5": {
                "seeds": [0, 1],
                "layers": {"stage1": [0.1, 0.2], "layer1.0": [0.6, 0.7]},
                "blocks": {"layer1": [0.3, 0.4]},
            }
        },
        "bottlenecks": ["stage1"],
        "bottleneck_blocks": ["layer1"],
    }
    return out + more, [analysis]


def test_widened_variant_is_paired_with_its_own_unpruned_network(study):
    records, _ = study
    summary = results.summary_table(pd.DataFrame(records))
    widened = _row(summary, variant="bottleneck-x2", stage="finetuned")
    # paired with the widened networks (95, 97), not with the original base (90, 94)
    assert widened.top1_change_pp_mean == pytest.approx(-3.0) and widened.params_reduction_pct == pytest.approx(50)
    assert _row(summary, variant="bottleneck-x2", stage="widened").top1_change_pp_mean == pytest.approx(0.0)
    md = results.summary_markdown(summary)
    assert "digits / resnet20, widened bottleneck-x2 (tier t)" in md and "digits / resnet20 (tier t)" in md


def test_paper_and_timing_tables(study, tmp_path):
    records, _ = study
    df = results.tidy(pd.DataFrame(records))
    paths = results.write_named_tables(df, tmp_path)
    assert {p.name for p in paths} == {f"{n}.{f}" for n in results.TABLES for f in results.TABLE_FORMATS}
    paper = (tmp_path / "paper.md").read_text()
    assert "unpruned (base)" in paper and "unpruned (widened)" in paper
    # one sosp_h row per network: the original (paired with base), then the widened (paired with widened)
    rows = [(r["ratio"], r["top-1 (%)"], r["Δ top-1 (pp)"]) for r in _md_rows(paper, "sosp_h")]
    assert rows == [("0.50", "90.00 ± 2.83", "-2.00 ± 0.00"), ("0.50", "93.00 ± 0.00", "-3.00 ± 1.41")]
    assert _md_rows(paper, "sosp_h")[0]["one-shot top-1 (%)"] == "85.00 ± 7.07"
    timing = (tmp_path / "timing.md").read_text()
    # taylor: per-seed saliency 0.1, 0.3 -> 0.200 ± 0.141; sosp_h 0.2 -> 1.00 x taylor
    assert "0.200 ± 0.141" in timing and "| 1.00 " in timing
    assert "\\begin{tabular}" in (tmp_path / "timing.tex").read_text()
    assert "<table" in (tmp_path / "paper.html").read_text()


def test_runs_csv_round_trip_keeps_variants(study, tmp_path):
    records, _ = study
    df = results.tidy(pd.DataFrame(records))
    results.write_runs_csv(df, tmp_path / "runs.csv")
    back = results.read_runs_csv(tmp_path / "runs.csv")
    assert len(back) == len(df) and set(back["variant"]) == {"original", "bottleneck-x2"}
    assert list(back["method_options"]) == list(df["method_options"])
    old = df.drop(columns=["variant"])  # schema version 1 records had no variant
    assert set(results.tidy(old)["variant"]) == {"original"}
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="runs.csv"):
        results.read_runs_csv(tmp_path / "x.csv")


def test_every_figure_draws_from_records(study, tmp_path):
    records, analyses = study
    df = results.tidy(pd.DataFrame(records))
    paths = plots.write_figures(df, tmp_path, formats=["png"], bottleneck=analyses)
    assert {p.name for p in paths} == {f"{n}.png" for n in plots.FIGURES}
    fig = plots.layer_ratios(df, bottleneck=analyses)
    assert any("stage1 ★" == t.get_text() for t in fig.axes[0].get_xticklabels())
    fig = plots.bottleneck_params(df)
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} == {"original", "bottleneck-x2"}
    # an original also pruned to another target: its point stays the widened nets' target's
    original = df[(df["variant"] == "original") & (df["stage"] == "finetuned")]
    other = original.assign(target="macs", params=1, top1=0.0)
    again = plots.bottleneck_params(pd.concat([df, other], ignore_index=True))
    for before, after in zip(fig.axes[0].lines, again.axes[0].lines):
        assert list(before.get_xdata()) == list(after.get_xdata()) and list(before.get_ydata()) == list(
            after.get_ydata()
        )
    for name, fn in plots.FIGURES.items():  # no data: a placeholder, never an error
        assert _is_placeholder(fn(df.iloc[0:0], bottleneck=[])), name


# ---------------------------------------------------------------------------------------------------
# config_hash: which config made a record
# ---------------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def _tier_config(name: str = "config.yaml") -> dict:
    """A tier's config as the workflow sees it: over config/config.yaml, validated, schema defaults in."""
    import yaml
    from snakemake.utils import validate

    def merge(base, overlay):
        out = dict(base)
        for k, v in overlay.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if name != "config.yaml":
        config = merge(config, yaml.safe_load((REPO / "config" / name).read_text()))
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def test_config_hash_covers_what_decides_a_record():
    from sosp.config_hash import config_hash

    config = _tier_config()
    digest = config_hash(config)
    assert len(digest) == 12 and digest == config_hash(json.loads(json.dumps(config)))

    def changed(path: str, value) -> str:
        other = json.loads(json.dumps(config))
        *parents, key = path.split(".")
        node = other
        for p in parents:
            node = node[p]
        node[key] = value
        return config_hash(other)

    for path, value in [
        ("finetune.epochs", 4),
        ("train.lr", 0.05),
        ("prune.min_fraction", 0.2),
        ("prune.samples", 128),
        ("dataset.val_fraction", 0.2),
        ("arch_options.vgg11", {}),
        ("measure.latency_batches", [1]),
        ("bottleneck.factor", 3.0),
        ("device", "cuda"),
        ("base.from", "scratch"),
    ]:
        assert changed(path, value) != digest, path
    # which records exist, pure timing knobs, where things go, the report and the job resources
    for path, value in [
        ("seeds", [0, 1, 2]),
        ("archs", ["resnet20"]),
        ("prune.ratios", [0.5]),
        ("prune.methods", ["sosp_h"]),
        ("prune.target", "structures"),
        ("prune.timed", True),
        ("prune.warmup_batches", 3),
        ("measure.iters", 100),
        ("measure.warmup", 20),
        ("measure.exclusive", False),
        ("tier", "other"),
        ("results_dir", "elsewhere"),
        ("report.formats", ["svg"]),
        ("resources.finetune", {"threads": 4}),
        ("batch.finetune", "model"),
        ("base.cache_dir", "/scratch/weights"),
        ("bottleneck.methods", ["sosp_h", "taylor"]),
    ]:
        assert changed(path, value) == digest, path
    assert changed("bottleneck.factor", 2) == digest  # 2 and 2.0 alike


def test_records_of_another_config_are_refused(records, tmp_path):
    for i, rec in enumerate(records):
        rec["config_hash"] = "aaaaaaaaaaaa" if i != 3 else "bbbbbbbbbbbb"
        (tmp_path / f"r{i}.json").write_text(json.dumps(rec))
    with pytest.raises(DataError, match=r"1 of 7 records were made by a different config \(e\.g\. .*r3\.json"):
        results.collect([tmp_path], config_hash="aaaaaaaaaaaa")
    assert len(results.collect([tmp_path])) == 7  # without a hash to check, nothing is refused
    from sosp import cli

    out = tmp_path / "out"
    assert cli.main(["report", str(tmp_path), "--out-dir", str(out), "--only", "runs", "--config-hash", "a" * 12]) == 2
    assert not (out / "runs.csv").exists()
    # records made before config_hash existed are counted, not refused
    unstamped = [{k: v for k, v in rec.items() if k != "config_hash"} for rec in records]
    assert results.check_config_hash(((f"r{i}", r) for i, r in enumerate(unstamped)), "a" * 12) == 7


def test_committed_default_records_match_the_default_config():
    """results/default/records were made by config/config.yaml. Records that predate config_hash are not
    checked (the test skips until the tier is rerun and they carry it)."""
    from sosp.config_hash import config_hash

    folder = REPO / "results" / "default" / "records"
    if not folder.is_dir():
        pytest.skip("no committed default records (being regenerated?)")
    stamped = [(p, results.read_record(p)) for p in results.record_paths([folder])]
    if not any(r.get("config_hash") for _, r in stamped):
        pytest.skip("the committed default records predate config_hash: rerun the default tier to check them")
    assert results.check_config_hash(stamped, config_hash(_tier_config())) == 0, "every record carries the hash"
