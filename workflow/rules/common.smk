# Paths, targets and command-line fragments shared by the rules (no rules here).
import json
import shlex
import sys

TIER = config["tier"]
W = f"{config['work_dir']}/{TIER}"  # checkpoints, draft records, logs (git-ignored)
R = f"{config['results_dir']}/{TIER}"  # records, runs.csv, tables, figures, benchmarks
DEVICE = config["device"]

# the `sosp` of the environment running Snakemake, so an inactive virtualenv still works (a global
# rather than a param: moving the checkout must not count as a changed parameter)
_sosp = Path(sys.executable).with_name("sosp")
SOSP = shlex.quote(str(_sosp)) if _sosp.exists() else "sosp"

# extended by each rules file: everything `rule all` builds
TARGETS = []


wildcard_constraints:
    arch=r"[^/]+",
    seed=r"\d+",
    method=r"[^/]+",
    target=r"structures|macs|params",
    ratio=r"\d+(\.\d+)?",


def res(rule_name, key):
    """A rule's threads/mem_mb/runtime from config `resources` (schema defaults filled in)."""
    defaults = {"threads": 1, "mem_mb": 2000, "runtime": 30}
    return config.get("resources", {}).get(rule_name, {}).get(key, defaults[key])


def quoted_json(obj):
    return shlex.quote(json.dumps(obj, sort_keys=True, separators=(",", ":")))


def data_args():
    """--dataset ... options of every verb (the data set is downloaded once, by rule `data`)."""
    d = config["dataset"]
    args = [f"--dataset {d['name']}", f"--val-fraction {d.get('val_fraction', 0.1)}",
            f"--split-seed {d.get('split_seed', 0)}"]
    if d.get("root"):
        args.append(f"--data-root {shlex.quote(str(d['root']))}")
    if d.get("train_subset"):
        args.append(f"--train-subset {d['train_subset']}")
    if d.get("image_size"):
        args.append(f"--image-size {d['image_size']}")
    return " ".join(args)


def ratio_label(ratio):
    return str(float(ratio))


# one path stem per (arch, seed[, method, target, ratio]) and stage, shared by models, draft records,
# final records, logs and benchmarks
BASE = "{arch}/s{seed}/base"
PRUNED = "{arch}/s{seed}/{method}/{target}/r{ratio}/pruned"
FINETUNED = "{arch}/s{seed}/{method}/{target}/r{ratio}/finetuned"


def run_stems():
    """Every (stem) of this tier, in config order: base, then pruned and finetuned per method/ratio."""
    stems = []
    for arch in config["archs"]:
        for seed in config["seeds"]:
            stems.append(BASE.format(arch=arch, seed=seed))
            for method in config["prune"]["methods"]:
                for ratio in config["prune"]["ratios"]:
                    keys = dict(arch=arch, seed=seed, method=method, target=config["prune"]["target"],
                                ratio=ratio_label(ratio))
                    stems += [PRUNED.format(**keys), FINETUNED.format(**keys)]
    return stems


RECORDS = [f"{R}/records/{stem}.json" for stem in run_stems()]
