"""Tables from records: the seed summary, the paper-style comparison (one table per target, titled with
what it holds equal) and the scoring times, each as Markdown, LaTeX and HTML."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..io import write_atomic
from .aggregation import _SECTION, _paired, summary_table
from .collection import tidy
from .records import ORIGINAL, UNPRUNED, method_label


def _pm(mean: float, std: float, digits: int = 2, signed: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std:.{digits}f}"
    return text


def _num(value: float, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt)


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Human-readable version of :func:`summary_table` (strings, units in the headers)."""
    rows = []
    for r in summary.itertuples(index=False):
        rows.append(
            {
                "dataset": r.dataset,
                "arch": r.arch,
                "variant": r.variant,
                "method": method_label(r.method, r.method_options),
                "target": r.target,
                "ratio": _num(r.ratio, ".2f"),
                "stage": r.stage,
                "seeds": int(r.seeds),
                "removed structures (%)": _num(100 * r.achieved_fraction, ".1f")
                if r.achieved_fraction == r.achieved_fraction
                else "–",
                "params (10^3)": _num(r.params / 1e3, ".1f"),
                "params removed (%)": _num(r.params_reduction_pct, ".1f"),
                "MACs (10^6)": _num(r.macs_M, ".3f"),
                "MACs removed (%)": _num(r.macs_reduction_pct, ".1f"),
                "top-1 (%)": _pm(r.top1_pct_mean, r.top1_pct_std),
                "Δ top-1 vs base (pp)": _pm(r.top1_change_pp_mean, r.top1_change_pp_std, signed=True),
            }
        )
    return pd.DataFrame(rows)


def _title(tier: str, dataset: str, arch: str, variant: str) -> str:
    widened = "" if variant == ORIGINAL else f", widened {variant}"
    return f"{dataset} / {arch}{widened} (tier {tier})"


def _sections(summary: pd.DataFrame):
    summary = (
        summary.assign(variant=summary["variant"].fillna(ORIGINAL))
        if "variant" in summary
        else summary.assign(variant=ORIGINAL)
    )
    for key, part in summary.groupby(_SECTION, sort=False):
        yield _title(*key), format_summary(part).drop(columns=["dataset", "arch", "variant"])


_NOTE = (
    "Mean ± sample standard deviation over seeds. Reductions and Δ are paired per seed with the "
    "unpruned model (base, or the widened network for a widened variant). MACs are "
    "multiply-accumulates per image at batch 1 (FLOPs = 2 × MACs). `pruned` = one-shot, before "
    "fine-tuning."
)


#: what a comparison at each target holds equal, for the table titles
COMPARISON = {
    "structures": "equal structure ratio (every method removes the same fraction of channels; their MACs differ)",
    "macs": "equal MACs (every method removes the same fraction of the base model's MACs)",
    "params": "equal parameters (every method removes the same fraction of the base model's parameters)",
}


def paper_sections(df: pd.DataFrame):
    """Paper-style tables, one per (tier, data set, architecture, variant) and target, so each table
    compares the methods at one thing held equal (:data:`COMPARISON`): the unpruned model, then every
    (ratio, method) after fine-tuning: params and MACs removed (%), the smallest fraction of channels
    any layer keeps (%, layer collapse shows as ~0), top-1 (%) mean ± std over seeds, its change from
    the unpruned model (pp), and the one-shot top-1 before fine-tuning."""
    m = _paired(df)
    m["_min_kept_pct"] = 100.0 * pd.to_numeric(m["min_kept_fraction"])
    for key, part in m.groupby(_SECTION, sort=False):
        base = part[part["stage"].isin(UNPRUNED)]
        pruned = part[~part["stage"].isin(UNPRUNED)]
        for target in sorted(pruned["target"].unique(), key=lambda t: (t != "structures", t)):
            rows = []
            if len(base):
                rows.append(
                    {
                        "method": f"unpruned ({base['stage'].iloc[0]})",
                        "ratio": "–",
                        "params (10^3)": _num(base["params"].mean() / 1e3, ".1f"),
                        "params ↓ (%)": "–",
                        "MACs (10^6)": _num(base["_macs_M"].mean(), ".3f"),
                        "MACs ↓ (%)": "–",
                        "min kept (%)": "–",
                        "top-1 (%)": _pm(base["_top1_pct"].mean(), base["_top1_pct"].std()),
                        "Δ top-1 (pp)": "–",
                        "one-shot top-1 (%)": "–",
                    }
                )
            runs_of = pruned[pruned["target"] == target]
            for (ratio, method, options), runs in runs_of.groupby(["ratio", "method", "method_options"], sort=True):
                fine, shot = runs[runs["stage"] == "finetuned"], runs[runs["stage"] == "pruned"]
                main = fine if len(fine) else shot
                rows.append(
                    {
                        "method": method_label(method, options),
                        "ratio": _num(ratio, ".2f") + ("" if target == "structures" else f" ({target})"),
                        "params (10^3)": _num(main["params"].mean() / 1e3, ".1f"),
                        "params ↓ (%)": _num(main["_params_red"].mean(), ".1f"),
                        "MACs (10^6)": _num(main["_macs_M"].mean(), ".3f"),
                        "MACs ↓ (%)": _num(main["_macs_red"].mean(), ".1f"),
                        "min kept (%)": _num(shot["_min_kept_pct"].mean(), ".1f") if len(shot) else "–",
                        "top-1 (%)": _pm(fine["_top1_pct"].mean(), fine["_top1_pct"].std()) if len(fine) else "–",
                        "Δ top-1 (pp)": _pm(fine["_top1_change"].mean(), fine["_top1_change"].std(), signed=True)
                        if len(fine)
                        else "–",
                        "one-shot top-1 (%)": _pm(shot["_top1_pct"].mean(), shot["_top1_pct"].std())
                        if len(shot)
                        else "–",
                    }
                )
            yield f"{_title(*key)}: compared at {COMPARISON.get(target, target)}", pd.DataFrame(rows)


def timing_sections(df: pd.DataFrame):
    """Scoring cost and calibration per method, one table per (tier, data set, architecture, variant):
    saliency seconds (scoring only) and prune seconds (scoring + selection + surgery), mean ± std over
    seeds (each seed's value first averaged over its ratios), calibration samples, the saliency time
    relative to first-order Taylor where present, and what the scores rest on: the effective number of
    calibration samples (mean over seeds) and the smallest class share relative to uniform (over
    seeds), ``–`` for data-free methods."""
    m = tidy(df)
    for column in ("calibration_effective_samples", "calibration_min_class_share"):  # records before they existed
        if column not in m:
            m[column] = float("nan")
    m = m[m["stage"] == "pruned"]
    for key, part in m.groupby(_SECTION, sort=False):
        per_seed = (
            part.groupby(["method", "method_options", "seed"], sort=True)
            .agg(
                sal=("saliency_seconds", "mean"),
                prune=("prune_seconds", "mean"),
                samples=("samples", "max"),
                effective=("calibration_effective_samples", "mean"),
                share=("calibration_min_class_share", "min"),
            )
            .reset_index()
        )
        agg = (
            per_seed.groupby(["method", "method_options"], sort=True)
            .agg(
                sal_mean=("sal", "mean"),
                sal_std=("sal", "std"),
                prune_mean=("prune", "mean"),
                prune_std=("prune", "std"),
                samples=("samples", "max"),
                effective=("effective", "mean"),
                share=("share", "min"),
                seeds=("seed", "nunique"),
            )
            .reset_index()
        )
        taylor = agg[(agg["method"] == "taylor") & (agg["method_options"] == "{}")]["sal_mean"]
        ref = float(taylor.iloc[0]) if len(taylor) and taylor.iloc[0] > 0 else float("nan")  # NaN: no Taylor reference
        rows = [
            {
                "method": method_label(r.method, r.method_options),
                "seeds": int(r.seeds),
                "samples": "–" if pd.isna(r.samples) else f"{int(r.samples)}",
                "saliency (s)": _pm(r.sal_mean, r.sal_std, 3),
                "prune (s)": _pm(r.prune_mean, r.prune_std, 3),
                "saliency / taylor (×)": _num(r.sal_mean / ref, ".2f"),
                "effective samples": _num(r.effective, ".1f"),
                "min class share": _num(r.share, ".2f"),
            }
            for r in agg.itertuples(index=False)
        ]
        if rows:
            yield _title(*key), pd.DataFrame(rows)


_TIMING_NOTE = (
    "Wall-clock seconds of one pruning job's scoring (saliency) and of scoring + selection + "
    "surgery (prune), on the job's device and threads; mean ± std over seeds. Saliencies are "
    "computed once per (model, method) and shared by every target and ratio. Effective samples: (sum w)^2 / "
    "sum w^2 of the calibration samples' loss weights in the method's score (below 20: the score "
    "rests on a handful of images); min class share: the smallest share of one class relative to "
    "uniform (1 = even; ~0 = a class gets no say); – for data-free methods."
)
_PAPER_NOTE = (
    "Top-1 after fine-tuning, mean ± sample standard deviation over seeds; ↓ = reduction "
    "relative to the unpruned model of the same seed; Δ = change of top-1 in percentage "
    "points; one-shot = before fine-tuning. MACs per image at batch 1."
)

#: table name -> (title, note, function of the records DataFrame yielding (section title, table))
TABLES = {
    "summary": ("Summary", _NOTE, lambda df: _sections(summary_table(df))),
    "paper": ("Pruning results", _PAPER_NOTE, paper_sections),
    "timing": ("Scoring time and calibration per method", _TIMING_NOTE, timing_sections),
}


def _markdown(title: str, note: str, sections) -> str:
    parts = [f"# {title}", "", note, ""]
    sections = list(sections)
    if not sections:
        parts.append("_no records_")
    for heading, table in sections:
        parts += [f"## {heading}", "", table.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(parts).rstrip() + "\n"


_LATEX_HEADERS = {
    "removed structures (%)": "removed structures (\\%)",
    "params (10^3)": "params ($10^3$)",
    "params removed (%)": "params removed (\\%)",
    "MACs (10^6)": "MACs ($10^6$)",
    "MACs removed (%)": "MACs removed (\\%)",
    "top-1 (%)": "top-1 (\\%)",
    "Δ top-1 vs base (pp)": "$\\Delta$ top-1 vs base (pp)",
    "params ↓ (%)": "params $\\downarrow$ (\\%)",
    "MACs ↓ (%)": "MACs $\\downarrow$ (\\%)",
    "Δ top-1 (pp)": "$\\Delta$ top-1 (pp)",
    "one-shot top-1 (%)": "one-shot top-1 (\\%)",
    "saliency / taylor (×)": "saliency / taylor ($\\times$)",
}


def _latex(note: str, sections) -> str:
    parts = [f"% {note}", "% requires \\usepackage{booktabs}"]
    for heading, table in sections:
        cells = table.astype(str).apply(lambda col: col.map(_latex_cell))
        cells.columns = [_LATEX_HEADERS.get(c, _latex_cell(c)) for c in table.columns]
        parts += [f"% {heading}", cells.to_latex(index=False, escape=False)]
    return "\n".join(parts)


def summary_markdown(summary: pd.DataFrame) -> str:
    """Markdown: one table per (tier, data set, architecture, variant), with a note on units."""
    return _markdown("Summary", _NOTE, _sections(summary))


def summary_latex(summary: pd.DataFrame) -> str:
    """LaTeX (booktabs) tables, one per (tier, data set, architecture, variant)."""
    return _latex(_NOTE, _sections(summary))


def _latex_cell(text: str) -> str:
    text = re.sub(r"([_%&#])", r"\\\1", text)
    return (
        text.replace("±", "$\\pm$")
        .replace("–", "--")
        .replace("↓", "$\\downarrow$")
        .replace("×", "$\\times$")
        .replace("Δ", "$\\Delta$")
    )


def _html(title: str, note: str, sections) -> str:
    import html

    parts = [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(note)}</p>"]
    sections = list(sections)
    if not sections:
        parts.append("<p><em>no records</em></p>")
    for heading, table in sections:
        parts += [f"<h3>{html.escape(heading)}</h3>", table.to_html(index=False, border=0, classes="table")]
    return "\n".join(parts) + "\n"


TABLE_FORMATS = ("md", "tex", "html")


def write_named_tables(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    names: Iterable[str] | None = None,
    formats: Iterable[str] = TABLE_FORMATS,
) -> list[Path]:
    """Tables of :data:`TABLES` (default all) from the records ``df``: ``out_dir/<name>.md`` (Markdown),
    ``.tex`` (LaTeX, booktabs) and ``.html`` (for the Snakemake report)."""
    from ..errors import UnknownNameError

    paths = []
    for name in names or TABLES:
        if name not in TABLES:
            raise UnknownNameError("table", name, TABLES)
        title, note, sections = TABLES[name]
        sections = list(sections(df))
        render = {"md": _markdown, "tex": lambda _title, note, sections: _latex(note, sections), "html": _html}
        for fmt in formats:
            path = Path(out_dir) / f"{name}.{fmt}"
            if fmt not in render:
                raise UnknownNameError("table format", fmt, render)
            text = render[fmt](title, note, sections)
            write_atomic(path, lambda tmp, text=text: tmp.write_text(text))
            paths.append(path)
    return paths
