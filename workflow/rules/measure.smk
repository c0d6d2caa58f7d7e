# Params, MACs (two counters) and latency of every model, completing its record in results/<tier>/.
# Timing jobs take the global resource `timed` (the profile allows 1), so two never overlap; with
# measure.exclusive they also claim every core, so no other job runs beside a timing.

_cores = workflow.cores if isinstance(workflow.cores, int) and 0 < workflow.cores < 4096 else 1


rule measure:
    input:
        model=f"{W}/models/{{stem}}.pt",
        record=f"{W}/records/{{stem}}.json",
    output:
        f"{R}/records/{{stem}}.json",
    wildcard_constraints:
        stem=r"[^/]+/s\d+/(base|[^/]+/[^/]+/r[^/]+/(pruned|finetuned))",
    params:
        tier=TIER,
        device=DEVICE,
        latency=(
            "--latency-batches " + " ".join(map(str, config["measure"]["latency_batches"]))
            if config["measure"]["latency"]
            else "--no-latency"
        ),
        torch_threads=config["measure"]["threads"],
    threads: max(res("measure", "threads"), _cores if config["measure"]["exclusive"] else 1)
    resources:
        mem_mb=res("measure", "mem_mb"),
        runtime=res("measure", "runtime"),
        timed=1 if config["measure"]["latency"] else 0,
    log:
        f"{W}/logs/measure/{{stem}}.log",
    benchmark:
        f"{R}/benchmarks/measure/{{stem}}.tsv"
    shell:
        "{SOSP} measure --model {input.model} --record {input.record} {params.latency} "
        "--device {params.device} --threads {params.torch_threads} --tier {params.tier} --out {output} > {log} 2>&1"


TARGETS += RECORDS
