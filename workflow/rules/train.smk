# Data set (loaded/downloaded once) and base models: one per (net, seed). A widened net of the
# bottleneck study (`<arch>+bottleneck`, `<arch>+uniform`) is trained with the same recipe and seeds
# from the widths in its architecture's bottleneck analysis (rule `bottleneck`).


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


def _widths_input(wildcards):
    arch, variant = split_net(wildcards.net)
    return {} if variant is None else {"widths": f"{R}/bottleneck/{arch}.json"}


def _arch_options(wildcards):
    arch, variant = split_net(wildcards.net)
    options = " ".join(
        f"--arch-option {shlex.quote(f'{k}={json.dumps(v)}')}"
        for k, v in sorted(config.get("arch_options", {}).get(arch, {}).items())
    )
    if variant is not None:
        options += f" --widths {R}/bottleneck/{arch}.json --variant {variant}"
    return options


rule train:
    input:
        unpack(_widths_input),
        data=rules.data.output,
    output:
        model=f"{W}/models/{BASE}.pt",
        record=f"{W}/records/{BASE}.json",
    params:
        tier=TIER,
        device=DEVICE,
        data=data_args(),
        recipe=quoted_json(config["train"]),
        arch=lambda wc: split_net(wc.net)[0],
        arch_options=_arch_options,
        checkpoints=lambda wc: f"{W}/checkpoints/{BASE.format(**wc)}",
    threads: res("train", "threads")
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        gpu=res("train", "gpu"),
    log:
        f"{W}/logs/train/{BASE}.log",
    benchmark:
        f"{R}/benchmarks/train/{BASE}.tsv"
    shell:
        "{SOSP} train --arch {params.arch} {params.arch_options} --seed {wildcards.seed} {params.data} "
        "--train-config {params.recipe} --checkpoint-dir {params.checkpoints} --tier {params.tier} "
        "--device {params.device} --threads {threads} --out {output.model} --record {output.record} > {log} 2>&1"
