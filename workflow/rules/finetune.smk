# Fine-tuning of one pruned model (one job per net, seed, method and ratio); resumes from its last
# end-of-epoch checkpoint when rerun after a failure.


rule finetune:
    input:
        model=f"{W}/models/{PRUNED}.pt",
    output:
        model=f"{W}/models/{FINETUNED}.pt",
        record=f"{W}/records/{FINETUNED}.json",
    log:
        f"{W}/logs/finetune/{FINETUNED}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{FINETUNED}.tsv"
    threads: res("finetune", "threads")
    resources:
        mem_mb=res("finetune", "mem_mb"),
        runtime=res("finetune", "runtime"),
        gpu=res("finetune", "gpu"),
    params:
        tier=TIER,
        device=DEVICE,
        data=data_args(),
        recipe=quoted_json(config["finetune"]),
        checkpoints=lambda wc: f"{W}/checkpoints/{FINETUNED.format(**wc)}",
    shell:
        "{SOSP} finetune --model {input.model} {params.data} --train-config {params.recipe} "
        "--checkpoint-dir {params.checkpoints} --seed {wildcards.seed} --tier {params.tier} --device {params.device} "
        "--threads {threads} --out {output.model} --record {output.record} > {log} 2>&1"
