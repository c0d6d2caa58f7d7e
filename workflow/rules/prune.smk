# One-shot pruning of a base model: saliency on calibration data, global selection, surgery.


rule prune:
    input:
        model=f"{W}/models/{BASE}.pt",
    output:
        model=f"{W}/models/{PRUNED}.pt",
        record=f"{W}/records/{PRUNED}.json",
    params:
        tier=TIER,
        device=DEVICE,
        data=data_args(),
        options=lambda wc: " ".join(
            f"--option {shlex.quote(f'{k}={json.dumps(v)}')}"
            for k, v in sorted(config["prune"].get("options", {}).get(wc.method, {}).items())
        ),
        min_channels=config["prune"]["min_channels"],
        normalize=config["prune"]["normalize"],
        samples=config["prune"]["samples"],
        score_batch_size=config["prune"]["score_batch_size"],
    threads: res("prune", "threads")
    resources:
        mem_mb=res("prune", "mem_mb"),
        runtime=res("prune", "runtime"),
    log:
        f"{W}/logs/prune/{PRUNED}.log",
    benchmark:
        f"{R}/benchmarks/prune/{PRUNED}.tsv"
    shell:
        "{SOSP} prune --model {input.model} --method {wildcards.method} --ratio {wildcards.ratio} "
        "--target {wildcards.target} --min-channels {params.min_channels} --normalize {params.normalize} "
        "{params.options} --samples {params.samples} --score-batch-size {params.score_batch_size} "
        "{params.data} --seed {wildcards.seed} --tier {params.tier} --device {params.device} --threads {threads} "
        "--out {output.model} --record {output.record} > {log} 2>&1"
