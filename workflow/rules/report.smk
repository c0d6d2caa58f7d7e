# Records -> runs.csv -> tables (Markdown, LaTeX, HTML) and figures (one rule per figure); none of
# them needs a checkpoint or a GPU. Rules runs and figures refuse records whose config_hash is not the
# config's (records made by another config: rerun the workflow, or restore that config). Outputs flagged with report() make `snakemake --report report.html`
# (captions in workflow/report/). With prune.oneshot_ratios, rule `oneshot` makes the one-shot curves'
# table and figure from the pruning jobs' one-shot rows. Rule `figures` rebuilds all of them from
# whatever records are in results/<tier>/ (e.g. a fresh clone, which has no checkpoints), never
# training anything.

REPORT_CFG = config["report"]
RUNS = f"{R}/runs.csv"
TABLE_FILES = [
    f"{R}/tables/{name}.{fmt}"
    for name in REPORT_CFG["tables"]
    for fmt in ("md", "tex", "html")
]
FIGURE_FILES = [
    f"{R}/figures/{name}.{fmt}"
    for name in REPORT_CFG["figures"]
    for fmt in REPORT_CFG["formats"]
]


rule runs:
    input:
        RECORDS,
    output:
        report(RUNS, caption="../report/runs.rst", category="Data"),
    log:
        f"{W}/logs/report/runs.log",
    localrule: True
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    params:
        out_dir=lambda wc, output: Path(output[0]).parent,
        config_hash=CONFIG_HASH,
    shell:
        "{SOSP} report {input} --out-dir {params.out_dir} --only runs --config-hash {params.config_hash} "
        "> {log} 2>&1"


rule tables:
    input:
        RUNS,
    output:
        [
            (
                report(
                    path,
                    caption=f"../report/table_{Path(path).stem}.rst",
                    category="Tables",
                )
                if path.endswith(".html")
                else path
            )
            for path in TABLE_FILES
        ],
    log:
        f"{W}/logs/report/tables.log",
    localrule: True
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    params:
        out_dir=lambda wc, output: Path(output[0]).parents[1],
        tables=" ".join(REPORT_CFG["tables"]),
    shell:
        "{SOSP} report {input} --out-dir {params.out_dir} --only tables --tables {params.tables} > {log} 2>&1"


for _figure in REPORT_CFG["figures"]:
    _files = [f"{R}/figures/{_figure}.{fmt}" for fmt in REPORT_CFG["formats"]]
    _shown = next((f for f in _files if f.endswith((".png", ".svg"))), _files[0])

    rule:
        name:
            f"figure_{_figure}"
        input:
            runs=RUNS,
            bottleneck=BOTTLENECK_ANALYSES if _figure == "layer_ratios" else [],
        output:
            [
                (
                    report(f, caption=f"../report/{_figure}.rst", category="Figures")
                    if f == _shown
                    else f
                )
                for f in _files
            ],
        log:
            f"{W}/logs/report/figure_{_figure}.log",
        localrule: True
        threads: res("report", "threads")
        resources:
            mem_mb=res("report", "mem_mb"),
            runtime=res("report", "runtime"),
        params:
            out_dir=lambda wc, output: Path(output[0]).parents[1],
            figure=_figure,
            formats=" ".join(REPORT_CFG["formats"]),
        shell:
            "{SOSP} report {input.runs} --out-dir {params.out_dir} --only figures --figures {params.figure} "
            "--formats {params.formats} --bottleneck {input.bottleneck} > {log} 2>&1"


# The one-shot curves (prune.oneshot_ratios): the rows the pruning jobs of the original nets wrote to
# results/<tier>/oneshot/ -> tables/oneshot.{csv,md} (mean ± std over seeds) and one figure.
_oneshot_figures = [
    f"{R}/figures/oneshot_curves.{fmt}" for fmt in REPORT_CFG["formats"]
]
_oneshot_shown = next(
    (f for f in _oneshot_figures if f.endswith((".png", ".svg"))), _oneshot_figures[0]
)
ONESHOT_FILES = [f"{R}/tables/oneshot.csv", f"{R}/tables/oneshot.md"] + _oneshot_figures
if ONESHOT_RATIOS:

    rule oneshot:
        input:
            [
                ONESHOT_ROWS.format(net=net, seed=seed, method=method)
                for net in ORIGINAL_NETS
                for seed in SEEDS
                for method in PRUNE["methods"]
            ],
        output:
            [
                (
                    report(f, caption="../report/oneshot.rst", category="Figures")
                    if f == _oneshot_shown
                    else f
                )
                for f in ONESHOT_FILES
            ],
        log:
            f"{W}/logs/report/oneshot.log",
        localrule: True
        threads: res("report", "threads")
        resources:
            mem_mb=res("report", "mem_mb"),
            runtime=res("report", "runtime"),
        params:
            out_dir=lambda wc, output: Path(output[0]).parents[1],
            formats=" ".join(REPORT_CFG["formats"]),
        shell:
            "{SOSP} report --only oneshot --oneshot {input} --out-dir {params.out_dir} "
            "--formats {params.formats} > {log} 2>&1"

    TARGETS += ONESHOT_FILES


# `snakemake --cores 1 figures`: rebuild runs.csv, every table and every figure from the records in
# results/<tier>/ alone. It has no declared input or output, so it always runs and never pulls a
# training, pruning or measuring job into the plan (its dry run plans this one job).
rule figures:
    localrule: True
    params:
        records=f"{R}/records",
        out_dir=R,
        bottleneck=lambda wc: " ".join(
            p for p in BOTTLENECK_ANALYSES if Path(p).exists()
        ),
        tables=" ".join(REPORT_CFG["tables"]),
        figures=" ".join(REPORT_CFG["figures"]),
        formats=" ".join(REPORT_CFG["formats"]),
        config_hash=CONFIG_HASH,
        oneshot=lambda wc: (
            f"--oneshot {R}/oneshot"
            if ONESHOT_RATIOS and Path(f"{R}/oneshot").is_dir()
            else ""
        ),
    shell:
        "{SOSP} report {params.records} --out-dir {params.out_dir} --tables {params.tables} "
        "--figures {params.figures} --formats {params.formats} --bottleneck {params.bottleneck} "
        "--config-hash {params.config_hash} {params.oneshot}"


TARGETS += [RUNS] + TABLE_FILES + FIGURE_FILES
