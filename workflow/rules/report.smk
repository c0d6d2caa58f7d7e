# Records -> runs.csv, summary tables (Markdown, LaTeX) and figures; needs no checkpoint or GPU.

REPORT = {
    "runs": f"{R}/runs.csv",
    "markdown": f"{R}/tables/summary.md",
    "latex": f"{R}/tables/summary.tex",
}
FIGURE_FILES = [
    f"{R}/figures/{name}.{fmt}"
    for name in config["report"]["figures"]
    for fmt in config["report"]["formats"]
]


rule report:
    input:
        RECORDS,
    output:
        **REPORT,
        figures=FIGURE_FILES,
    params:
        out_dir=lambda wildcards, output: str(Path(output.runs).parent),
        figures=" ".join(config["report"]["figures"]),
        formats=" ".join(config["report"]["formats"]),
    threads: res("report", "threads")
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    log:
        f"{W}/logs/report.log",
    shell:
        "{SOSP} report {input} --out-dir {params.out_dir} --figures {params.figures} --formats {params.formats} "
        "> {log} 2>&1"


rule figures:
    input:
        FIGURE_FILES,


TARGETS += list(REPORT.values()) + FIGURE_FILES
