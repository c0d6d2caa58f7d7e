# Data set (loaded/downloaded once) and base models: one per (net, seed). A widened net of the
# bottleneck study (`<arch>+bottleneck`, `<arch>+uniform`) is trained with the same recipe and seeds
# from the widths in its architecture's bottleneck analysis (rule `bottleneck`).


rule data:
    output:
        f"{W}/data.json",
    log:
        f"{W}/logs/data.log",
    threads: res("data", "threads")
    resources:
        mem_mb=res("data", "mem_mb"),
        runtime=res("data", "runtime"),
    params:
        data=data_args(),
        download="--download" if config["dataset"].get("download") else "",
    shell:
        "{SOSP} data {params.data} {params.download} --out {output} > {log} 2>&1"


rule train:
    input:
        unpack(_widths_input),
        data=rules.data.output,
    output:
        model=f"{W}/models/{BASE}.pt",
        record=f"{W}/records/{BASE}.json",
    log:
        f"{W}/logs/train/{BASE}.log",
    benchmark:
        f"{R}/benchmarks/train/{BASE}.tsv"
    threads: res("train", "threads")
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        gpu=res("train", "gpu"),
    params:
        tier=TIER,
        device=DEVICE,
        data=data_args(),
        nproc=max(1, res("train", "gpu")),  # data-parallel over the job's GPUs
        recipe=quoted_json(config["train"]),
        arch=lambda wc: split_net(wc.net)[0],
        arch_options=_arch_options,
        checkpoints=lambda wc: f"{W}/checkpoints/{BASE.format(**wc)}",
    shell:
        "{SOSP} train --arch {params.arch} {params.arch_options} --seed {wildcards.seed} {params.data} "
        "--train-config {params.recipe} --checkpoint-dir {params.checkpoints} --tier {params.tier} "
        "--device {params.device} --threads {threads} --nproc {params.nproc} "
        "--out {output.model} --record {output.record} > {log} 2>&1"
