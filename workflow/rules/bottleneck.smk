# Bottleneck study (docs/method.md section 7): the layer-wise pruning ratios of `bottleneck.method` (SOSP-H)
# at every ratio and seed -> the bottlenecks at `bottleneck.ratio` -> the widths of the bottleneck-
# widened and the uniformly widened networks (results/<tier>/bottleneck/<arch>.json, committed: the
# layer_ratios figure is drawn from it). The widened nets are then trained, pruned, fine-tuned and
# measured by the same rules as the originals (nets `<arch>+bottleneck`, `<arch>+uniform`).


rule bottleneck:
    input:
        model=lambda wc: f"{W}/models/{BASE.format(net=wc.arch, seed=SEEDS[0])}.pt",
        records=lambda wc: [
            f"{W}/records/{PRUNED.format(net=wc.arch, seed=seed, method=BOTTLENECK['method'], target=TARGET, ratio=ratio)}.json"
            for seed in SEEDS
            for ratio in RATIOS
        ],
    output:
        f"{R}/bottleneck/{{arch}}.json",
    log:
        f"{W}/logs/bottleneck/{{arch}}.log",
    benchmark:
        f"{R}/benchmarks/bottleneck/{{arch}}.tsv"
    wildcard_constraints:
        arch=r"[^/+]+",
    threads: res("bottleneck", "threads")
    resources:
        mem_mb=res("bottleneck", "mem_mb"),
        runtime=res("bottleneck", "runtime"),
    params:
        tier=TIER,
        ratio=ratio_label(BOTTLENECK["ratio"]),
        selection=BOTTLENECK["selection"],
        value=BOTTLENECK["value"],
        level=BOTTLENECK["level"],
        factor=BOTTLENECK["factor"],
        uniform_factor=BOTTLENECK["uniform_factor"],
    shell:
        "{SOSP} bottleneck --model {input.model} --report {input.records} --ratio {params.ratio} "
        "--selection {params.selection} --value {params.value} --level {params.level} --factor {params.factor} "
        "--uniform-factor {params.uniform_factor} --tier {params.tier} --out {output} > {log} 2>&1"


TARGETS += BOTTLENECK_ANALYSES
