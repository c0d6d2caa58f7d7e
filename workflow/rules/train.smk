# Data set (loaded/downloaded once) and base models.


rule data:
    output:
        f"{W}/data.json",
    params:
        data=data_args(),
        download="--download" if config["dataset"].get("download") else "",
    threads: res("data", "threads")
    resources:
        mem_mb=res("data", "mem_mb"),
        runtime=res("data", "runtime"),
    log:
        f"{W}/logs/data.log",
    shell:
        "{SOSP} data {params.data} {params.download} --out {output} > {log} 2>&1"


rule train:
    input:
        rules.data.output,
    output:
        model=f"{W}/models/{BASE}.pt",
        record=f"{W}/records/{BASE}.json",
    params:
        tier=TIER,
        device=DEVICE,
        data=data_args(),
        recipe=quoted_json(config["train"]),
        arch_options=lambda wc: " ".join(
            f"--arch-option {shlex.quote(f'{k}={json.dumps(v)}')}"
            for k, v in sorted(config.get("arch_options", {}).get(wc.arch, {}).items())
        ),
        checkpoints=lambda wc: f"{W}/checkpoints/{BASE.format(**wc)}",
    threads: res("train", "threads")
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
    log:
        f"{W}/logs/train/{BASE}.log",
    benchmark:
        f"{R}/benchmarks/train/{BASE}.tsv"
    shell:
        "{SOSP} train --arch {wildcards.arch} {params.arch_options} --seed {wildcards.seed} {params.data} "
        "--train-config {params.recipe} --checkpoint-dir {params.checkpoints} --tier {params.tier} "
        "--device {params.device} --threads {threads} --out {output.model} --record {output.record} > {log} 2>&1"
