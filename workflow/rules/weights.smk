# Base models from weights instead of training (config `base.weights`; sosp/weights.py). Published
# torchvision/timm weights are fetched once per spec by rule `fetch_weights`, a local rule (it runs
# where Snakemake runs, e.g. a cluster's login node, which can download; jobs of it take the global
# resource `download`, so with the default profile's `download=1` no two run at once); then every
# (net, seed) of an architecture with weights is built by rule `base_weights` (`sosp base`, which never
# downloads) into the very files that rule `train` writes otherwise, so every later rule is unchanged.
# Architectures without weights, and the widened nets of the bottleneck study, are trained.

BASE_WEIGHTS = {
    arch: spec
    for arch, spec in (config["base"].get("weights") or {}).items()
    if spec and config["base"]["from"] == "weights"
}
WEIGHTS_CACHE = config["base"].get("cache_dir")


def weights_slug(spec):
    """A file name for a weights spec: torchvision:ResNet18_Weights.IMAGENET1K_V1 -> torchvision_ResNet18_..."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)


# published weights (fetched), by slug; file: weights are read where they are
FETCHED_WEIGHTS = {
    weights_slug(s): s for s in BASE_WEIGHTS.values() if not s.startswith("file:")
}


def _alternatives(names):
    """A wildcard regex matching exactly ``names`` (nothing, if there are none)."""
    return "|".join(re.escape(n) for n in sorted(names)) or "(?!)"


def _weights_cache():
    return f"--weights-cache {shlex.quote(str(WEIGHTS_CACHE))}" if WEIGHTS_CACHE else ""


def _base_weights_input(wildcards):
    spec = BASE_WEIGHTS[wildcards.net]
    # a checkpoint file is itself the input (a changed file rebuilds the base model)
    if spec.startswith("file:"):
        return {"weights": spec[len("file:") :]}
    return {"weights": f"{W}/weights/{weights_slug(spec)}.json"}


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
