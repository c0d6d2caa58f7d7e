# One-shot pruning of a base model by one method at every ratio of the tier: the saliencies are
# computed once per (net, seed, method) and shared by the ratios (they do not depend on the ratio);
# selection and surgery run per ratio. Each ratio gets its own model and draft record.


rule prune:
    input:
        model=f"{W}/models/{BASE}.pt",
    output:
        models=expand(f"{W}/models/{PRUNED}.pt", ratio=RATIOS, allow_missing=True),
        records=expand(f"{W}/records/{PRUNED}.json", ratio=RATIOS, allow_missing=True),
    log:
        f"{W}/logs/prune/{{net}}/s{{seed}}/{{method}}/{{target}}.log",
    benchmark:
        f"{R}/benchmarks/prune/{{net}}/s{{seed}}/{{method}}/{{target}}.tsv"
    threads: timed_threads("prune") if PRUNE["timed"] else res("prune", "threads")
    resources:
        mem_mb=res("prune", "mem_mb"),
        runtime=res("prune", "runtime"),
        gpu=res("prune", "gpu"),
        timed=1 if PRUNE["timed"] else 0,
    params:
        tier=TIER,
        device=DEVICE,
        data=data_args(),
        ratios=" ".join(RATIOS),
        options=lambda wc: " ".join(
            f"--option {shlex.quote(f'{k}={json.dumps(v)}')}"
            for k, v in sorted(PRUNE.get("options", {}).get(wc.method, {}).items())
        ),
        min_channels=PRUNE["min_channels"],
        min_fraction=PRUNE["min_fraction"],
        normalize=PRUNE["normalize"],
        samples=PRUNE["samples"],
        score_batch_size=PRUNE["score_batch_size"],
        warmup=PRUNE["warmup_batches"],
        calibration=f"--calibration-split {PRUNE['calibration']['split']}"
        + (" --calibration-augment" if PRUNE["calibration"]["augment"] else ""),
    shell:
        "{SOSP} prune --model {input.model} --method {wildcards.method} --ratio {params.ratios} "
        "--target {wildcards.target} --min-channels {params.min_channels} --min-fraction {params.min_fraction} "
        "--normalize {params.normalize} "
        "{params.options} --samples {params.samples} --score-batch-size {params.score_batch_size} "
        "--warmup-batches {params.warmup} {params.calibration} "
        "{params.data} --seed {wildcards.seed} --tier {params.tier} --device {params.device} --threads {threads} "
        "--out {output.models} --record {output.records} > {log} 2>&1"
