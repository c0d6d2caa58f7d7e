# Base models from weights instead of training (config `base.weights`; sosp/weights.py). Published
# torchvision/timm weights are fetched once per spec by rule `fetch_weights`, a local rule (it runs
# where Snakemake runs, e.g. a cluster's login node, which can download; jobs of it take the global
# resource `download`, so with the default profile's `download=1` no two run at once); then every
# (net, seed) of an architecture with weights is built by rule `base_weights` (`sosp base`, which never
# downloads) into the very files that rule `train` writes otherwise, so every later rule is unchanged.
# Architectures without weights, and the widened nets of the bottleneck study, are trained.

# (BASE_WEIGHTS, FETCHED_WEIGHTS and the input functions are in common.smk: rules files hold rules only)


localrules:
    fetch_weights,


rule fetch_weights:
    output:
        f"{W}/weights/{{slug}}.json",
    log:
        f"{W}/logs/weights/{{slug}}.log",
    wildcard_constraints:
        slug=_alternatives(FETCHED_WEIGHTS),
    threads: 1
    resources:
        mem_mb=res("data", "mem_mb"),
        runtime=res("data", "runtime"),
        download=1,
    params:
        spec=lambda wc: shlex.quote(FETCHED_WEIGHTS[wc.slug]),
        cache=_weights_cache(),
    shell:
        "{SOSP} weights --weights {params.spec} {params.cache} --out {output} > {log} 2>&1"


rule base_weights:
    input:
        unpack(_base_weights_input),
        data=rules.data.output,
    output:
        model=f"{W}/models/{BASE}.pt",
        record=f"{W}/records/{BASE}.json",
    log:
        f"{W}/logs/base_weights/{BASE}.log",
    benchmark:
        f"{R}/benchmarks/base_weights/{BASE}.tsv"
    wildcard_constraints:
        net=_alternatives(BASE_WEIGHTS),
    threads: res("base_weights", "threads")
    resources:
        mem_mb=res("base_weights", "mem_mb"),
        runtime=res("base_weights", "runtime"),
        gpu=res("base_weights", "gpu"),
    params:
        tier=TIER,
        device=DEVICE,
        data=data_args(),
        weights=lambda wc: shlex.quote(BASE_WEIGHTS[wc.net]),
        cache=_weights_cache(),
        arch_options=_arch_options,
    shell:
        "{SOSP} base --arch {wildcards.net} {params.arch_options} --weights {params.weights} {params.cache} "
        "--seed {wildcards.seed} {params.data} --tier {params.tier} --device {params.device} "
        "--threads {threads} --out {output.model} --record {output.record} > {log} 2>&1"


# a net with weights is built by base_weights; rule train's outputs match it too, and train the rest
ruleorder: base_weights > train
