# Params, MACs (two counters) and latency (CPU, and GPU when one is present) of every model of one
# (net, seed), completing each draft record into results/<tier>/records/ and stamping the config hash
# into it. One job per (net, seed) keeps the per-process start-up off the critical path; every
# architecture is timed on its own, once: a fine-tuned model has its pruned model's architecture, so
# it gets that model's timing (`details.latency_of` in its record) instead of being timed again.
# Timing jobs take the global resource `timed` (the profiles allow 1), so two never overlap; with
# measure.exclusive they also claim every core, so no other job runs beside a timing.

_latency = (
    "--latency-batches "
    + " ".join(map(str, config["measure"]["latency_batches"]))
    + f" --gpu-latency {config['measure']['gpu_latency']}"
    + f" --warmup {config['measure']['warmup']} --iters {config['measure']['iters']}"
    if config["measure"]["latency"]
    else "--no-latency"
)


# two rules with the same body: the originals are pruned by every method, the widened variants by
# `bottleneck.methods`, so their (net, seed) jobs produce different sets of records
for _name, _nets, _methods, _targets in (
    ("measure", r"[^/+]+", PRUNE["methods"], PRUNE_TARGETS),
    (
        "measure_widened",
        r"[^/+]+\+(bottleneck|uniform)",
        BOTTLENECK["methods"],
        [TARGET],
    ),
):
    _stems = [BASE] + [
        stem.replace("{method}", m).replace("{target}", t).replace("{ratio}", r)
        for t in _targets
        for m in _methods
        for r in RATIOS
        for stem in (PRUNED, FINETUNED)
    ]

    rule:
        name:
            _name
        input:
            models=[f"{W}/models/{stem}.pt" for stem in _stems],
            records=[f"{W}/records/{stem}.json" for stem in _stems],
        output:
            [f"{R}/records/{stem}.json" for stem in _stems],
        log:
            f"{W}/logs/measure/{{net}}/s{{seed}}.log",
        benchmark:
            f"{R}/benchmarks/measure/{{net}}/s{{seed}}.tsv"
        wildcard_constraints:
            net=_nets,
        threads: timed_threads("measure")
        resources:
            mem_mb=res("measure", "mem_mb"),
            runtime=res("measure", "runtime"),
            gpu=res("measure", "gpu"),
            timed=1 if config["measure"]["latency"] else 0,
        params:
            tier=TIER,
            device=DEVICE,
            latency=_latency,
            torch_threads=config["measure"]["threads"],
            config_hash=CONFIG_HASH,
        shell:
            "{SOSP} measure --model {input.models} --record {input.records} {params.latency} "
            "--device {params.device} --threads {params.torch_threads} --tier {params.tier} "
            "--config-hash {params.config_hash} --out {output} > {log} 2>&1"


TARGETS += RECORDS
