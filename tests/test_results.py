"""Records and their aggregation: mean/std over seeds, reductions paired with the base model, and the
outputs (runs.csv, Markdown, LaTeX, figures) built from records alone."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from sosp import plots, results
from sosp.errors import DataError


def _rec(stage, seed, top1, params, macs, method="none", ratio=0.0, **kw):
    target = "structures" if method != "none" else "none"
    return results.make_record(stage, tier="t", dataset="digits", arch="resnet20", seed=seed, method=method,
                               ratio=ratio, target=target, top1=top1, params=params, macs=macs, **kw)


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
    assert list(df.columns[:len(results.COLUMNS)]) == list(results.COLUMNS)
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
    rec = results.make_record("pruned", tier="t", dataset="d", arch="a", seed=3, method="m", ratio=0.3,
                              target="structures", top1=0.5, latency_cpu_b256_ms=1.0)
    assert set(results.COLUMNS) <= set(rec) and rec["method_options"] == "{}"
    assert rec["macs"] is None and rec["latency_cpu_b256_ms"] == 1.0 and rec["schema_version"] == 1
    with pytest.raises(ValueError, match="unknown record field"):
        results.make_record("base", tier="t", dataset="d", arch="a", seed=0, top_1=0.5)
    with pytest.raises(ValueError, match="unknown stage"):
        results.make_record("trained", tier="t", dataset="d", arch="a", seed=0)


def test_measurement_fields():
    m = {"params": 10, "macs": 20, "flops": 40, "macs_fvcore": 20, "latency": [
        {"device": "cpu", "device_name": "x86_64", "batch_size": 1, "median_ms": 1.5, "iqr_ms": 0.1,
         "dtype": "float32", "threads": 1, "torch_version": "2.x"},
        {"device": "cuda:0", "device_name": "H100", "batch_size": 256, "median_ms": 3.0, "iqr_ms": 0.2}]}
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
    assert empty is not None
