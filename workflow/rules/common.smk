# Paths, targets and command-line fragments shared by the rules (no rules here).
#
# A "net" is what one base model is trained as: an architecture of `archs` at its registry widths
# (`resnet20`), or, in the bottleneck study, a widened variant of one (`resnet20+bottleneck`,
# `resnet20+uniform`). Every later stem starts with the net, so the variants flow through the same
# prune / finetune / measure rules as the originals.
import json
import re
import shlex
import sys


# Checks across config keys that the schema cannot express, before anything is planned.
def check_config(config):
    """Checks across keys that a JSON schema cannot express; the first failure stops the run with one
    line naming the key."""
    bottleneck, ratios = config["bottleneck"], [
        float(r) for r in config["prune"]["ratios"]
    ]
    dataset = config["dataset"]
    if dataset["name"] in ("imagefolder", "imagenet") and not dataset.get("root"):
        yield "dataset.root", f"the {dataset['name']} data set needs the folder that holds train/ and test/ (or val/)"
    if bottleneck["enabled"]:
        if not bottleneck["archs"]:
            yield "bottleneck.archs", "the bottleneck study is enabled but names no architecture"
        for i, arch in enumerate(bottleneck["archs"]):
            if arch not in config["archs"]:
                yield f"bottleneck.archs[{i}]", f"{arch!r} is not one of archs {config['archs']}"
            elif not re.fullmatch(r"resnet\d+|vgg\d+", arch):
                yield f"bottleneck.archs[{i}]", f"{arch!r} has no width keys (a CIFAR resnet<6n+2> or vgg<11|13|16|19> is needed)"
        if float(bottleneck["ratio"]) not in ratios:
            yield "bottleneck.ratio", f"{bottleneck['ratio']} is not one of prune.ratios {config['prune']['ratios']}"
    # base models from weights: each names an architecture of `archs`, of the weights' zoo, whose
    # published weights exist (this imports torchvision/timm; nothing is downloaded) or whose file exists
    base = config["base"]
    base_weights = (base.get("weights") or {}) if base["from"] == "weights" else {}
    # (a null spec names no weights: a tier's entry for an architecture dropped from `archs` by a later
    # config file, which cannot delete the key, is switched off with `<arch>: null`)
    for arch, spec in base_weights.items():
        if spec and arch not in config["archs"]:
            yield f"base.weights.{arch}", f"{arch!r} is not one of archs {config['archs']}"
        elif spec:
            from sosp import weights
            from sosp.errors import SospError

            try:
                weights.check(arch, spec)
            except SospError as error:
                yield f"base.weights.{arch}", str(error)
    # every method named anywhere is one an installed package declares (sosp.registry; names only,
    # nothing is imported), and the options of each are its declared ones (this imports those methods)
    from sosp import registry
    from sosp.errors import SospError

    known = registry.names()
    named = [
        (f"prune.methods[{i}]", m) for i, m in enumerate(config["prune"]["methods"])
    ]
    named += [(f"prune.options.{m}", m) for m in config["prune"]["options"]]
    named += [("bottleneck.method", bottleneck["method"])]
    named += [
        (f"bottleneck.methods[{i}]", m) for i, m in enumerate(bottleneck["methods"])
    ]
    for key, method in named:
        if method not in known:
            yield key, f"unknown pruning method {method!r}; installed: {', '.join(known)}"
    for method, options in config["prune"]["options"].items():
        for key, value in options.items():
            try:
                registry.get(method).option(key).check(value)
            except SospError as error:
                yield f"prune.options.{method}.{key}", str(error)


for _key, _message in check_config(config):
    raise WorkflowError(f"invalid config: {_key}: {_message}")


TIER = config["tier"]
# hash of the config keys that decide a record's content (sosp/config_hash.py says which), stamped into
# every record by the measuring jobs (a param: changing one of those keys re-measures, and so
# re-stamps, every record) and checked by rules runs and figures
from sosp.config_hash import config_hash

CONFIG_HASH = config_hash(config)
W = f"{config['work_dir']}/{TIER}"  # checkpoints, draft records, logs (git-ignored)
R = f"{config['results_dir']}/{TIER}"  # records, runs.csv, tables, figures, benchmarks
DEVICE = config["device"]

# the `sosp` of the environment running Snakemake, so an inactive virtualenv still works (a global
# rather than a param: moving the checkout must not count as a changed parameter)
_sosp = Path(sys.executable).with_name("sosp")
SOSP = shlex.quote(str(_sosp)) if _sosp.exists() else "sosp"

# extended by each rules file: everything `rule all` builds
TARGETS = []


def ratio_label(ratio):
    return str(float(ratio))


PRUNE = config["prune"]
# every target the originals are pruned to; the first is the primary one (bottleneck study, widened nets)
PRUNE_TARGETS = (
    [PRUNE["target"]] if isinstance(PRUNE["target"], str) else list(PRUNE["target"])
)
TARGET = PRUNE_TARGETS[0]
RATIOS = [ratio_label(r) for r in PRUNE["ratios"]]
SEEDS = [str(s) for s in config["seeds"]]
BOTTLENECK = config["bottleneck"]
BOTTLENECK_ARCHS = list(BOTTLENECK["archs"]) if BOTTLENECK["enabled"] else []
VARIANTS = (
    "bottleneck",
    "uniform",
)  # widened at the bottlenecks only / every layer uniformly


def net_name(arch, variant=None):
    return arch if variant is None else f"{arch}+{variant}"


def split_net(net):
    """`resnet20+bottleneck` -> ("resnet20", "bottleneck"); `resnet20` -> ("resnet20", None)."""
    arch, _, variant = net.partition("+")
    return arch, (variant or None)


ORIGINAL_NETS = list(config["archs"])
WIDENED_NETS = [net_name(arch, v) for arch in BOTTLENECK_ARCHS for v in VARIANTS]
NETS = ORIGINAL_NETS + WIDENED_NETS


def net_targets(net):
    """Targets a net is pruned to: all of `prune.target` for the originals, the first for widened nets."""
    return PRUNE_TARGETS if split_net(net)[1] is None else [TARGET]


def net_methods(net):
    """Pruning methods applied to a net: every method for the originals, `bottleneck.methods` for the
    widened variants."""
    return (
        list(PRUNE["methods"])
        if split_net(net)[1] is None
        else list(BOTTLENECK["methods"])
    )


wildcard_constraints:
    net=r"[^/+]+(\+(bottleneck|uniform))?",
    seed=r"\d+",
    method=r"[^/]+",
    target=r"structures|macs|params",
    ratio=r"\d+(\.\d+)?",


# rules whose jobs use the tier's device; on a CUDA tier each asks the scheduler for one GPU
GPU_RULES = ("train", "base_weights", "prune", "finetune", "measure")
_RES_DEFAULTS = {"threads": 1, "mem_mb": 2000, "runtime": 30}


def res(rule_name, key):
    """A rule's threads/mem_mb/runtime/gpu from config `resources` (schema defaults filled in); `gpu`
    defaults to 1 for GPU_RULES when `device` is CUDA, else 0."""
    given = config.get("resources", {}).get(rule_name, {})
    if key == "gpu":
        default = 1 if DEVICE.startswith("cuda") and rule_name in GPU_RULES else 0
        return given.get("gpu", default)
    return given.get(key, _RES_DEFAULTS[key])


# cores Snakemake was given (an exclusive timing job claims them all, so nothing runs beside it)
def _cores():
    try:
        cores = workflow.cores
    except WorkflowError:  # modes without --cores (e.g. --report) ask for it on access
        return 1
    return cores if isinstance(cores, int) and 0 < cores < 4096 else 1


CORES = _cores()


def timed_threads(rule_name):
    """Threads of a timing job: every core with `measure.exclusive`, else its configured threads."""
    return max(
        res(rule_name, "threads"), CORES if config["measure"]["exclusive"] else 1
    )


def quoted_json(obj):
    return shlex.quote(json.dumps(obj, sort_keys=True, separators=(",", ":")))


def data_args():
    """--dataset ... options of every verb (the data set is downloaded once, by rule `data`)."""
    d = config["dataset"]
    args = [
        f"--dataset {d['name']}",
        f"--val-fraction {d.get('val_fraction', 0.1)}",
        f"--split-seed {d.get('split_seed', 0)}",
    ]
    if d.get("root"):
        args.append(f"--data-root {shlex.quote(str(d['root']))}")
    if d.get("train_subset"):
        args.append(f"--train-subset {d['train_subset']}")
    if d.get("image_size"):
        args.append(f"--image-size {d['image_size']}")
    return " ".join(args)


# one path stem per (net, seed[, method, target, ratio]) and stage, shared by models, draft records,
# final records, logs and benchmarks; `base` is the unpruned network (stage `widened` in the records
# of a widened variant)
BASE = "{net}/s{seed}/base"
PRUNED = "{net}/s{seed}/{method}/{target}/r{ratio}/pruned"
FINETUNED = "{net}/s{seed}/{method}/{target}/r{ratio}/finetuned"


def run_stems(net, seed):
    """Every stem of one (net, seed), in config order: base, then pruned and finetuned per method/ratio."""
    stems = [BASE.format(net=net, seed=seed)]
    for target in net_targets(net):
        for method in net_methods(net):
            for ratio in RATIOS:
                keys = dict(
                    net=net, seed=seed, method=method, target=target, ratio=ratio
                )
                stems += [PRUNED.format(**keys), FINETUNED.format(**keys)]
    return stems


RECORDS = [
    f"{R}/records/{stem}.json"
    for net in NETS
    for seed in SEEDS
    for stem in run_stems(net, seed)
]
BOTTLENECK_ANALYSES = [f"{R}/bottleneck/{arch}.json" for arch in BOTTLENECK_ARCHS]


# inputs and options of rule `train` (a widened net reads its widths from the bottleneck analysis)
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


# Base models from weights (rules in weights.smk): the architectures that start from weights, the
# published weights to fetch by file slug, and the input of rule `base_weights`.
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
