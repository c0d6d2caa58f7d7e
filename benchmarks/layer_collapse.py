"""Layer collapse and the per-group floor (``min_fraction``): does a floor stop SOSP-H from emptying
late VGG layers, and what does it cost the other methods and ResNet-20?

For every architecture and seed a base model is trained with the default tier's recipe (digits,
``config/config.yaml``: ``dataset``, ``arch_options``, ``train``), or reused from the cache under
``work/benchmarks/layer_collapse/`` (git-ignored). Every method then prunes it one-shot through
``sosp.runner.run_ratios`` exactly as the workflow's ``sosp prune`` does (calibration: ``prune.samples``
training images in batches of ``prune.score_batch_size``, shuffled with the run seed, no augmentation;
``target=structures``, ``min_channels``/``normalize`` from the tier), once per ``min_fraction``; each
pruned model is evaluated on the test split (one-shot), fine-tuned with the tier's ``finetune`` recipe
(``sosp.train.train``, run seed) and evaluated again.

Outputs: ``results/benchmarks/layer_collapse.csv`` (one row per arch/seed/method/ratio/min_fraction)
and ``results/benchmarks/layer_collapse.md`` (means over seeds, and the floor the decision rule
picks). A pruning whose selection equals one already fine-tuned (same base model, same removed
channels) is not fine-tuned again: fine-tuning is deterministic on the CPU, so its numbers are copied
and the row says so in ``same_selection_as``. Finished rows are cached per base model, so an
interrupted run resumes. ``--quick``: vgg11, seed 0, sosp_h and random at ratio 0.7, floors 0 and 0.1,
2 training epochs and 1 fine-tuning epoch, outputs under the work folder (never results/).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
import yaml

from benchmarks.common import environment, write_csv
from sosp import data, models, runner, selection, train
from sosp.io import load_model, read_json, save_model, write_atomic, write_json

OUT_DIR = ROOT / "results" / "benchmarks"
WORK_DIR = ROOT / "work" / "benchmarks" / "layer_collapse"
CONFIG = ROOT / "config" / "config.yaml"

# Decision rule (fixed before looking at the numbers; means over seeds, fine-tuned test top-1, points):
COLLAPSE_GAP = 5.0  # SOSP-H "collapses" where it is more than this below random at the same arch/ratio, floor 0
HURT_TOL = 2.0  # a floor "hurts" a (arch, method, ratio) that loses more than this against floor 0

STATS = {"trained": 0, "computed": 0, "cached": 0}  # base models trained, rows computed / read from the cache


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run (about a minute), outputs under the work folder")
    p.add_argument(
        "--config", type=Path, default=CONFIG, help="tier config whose data/train/prune/finetune recipe is used"
    )
    p.add_argument("--archs", nargs="+", default=["vgg11", "resnet20"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--methods", nargs="+", default=["sosp_h", "taylor", "random", "cobd"])
    p.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.7])
    p.add_argument("--floors", nargs="+", type=float, default=[0.0, 0.05, 0.1, 0.2], help="min_fraction values")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR, help="cache of base models and finished rows")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where layer_collapse.csv/.md go (default results/benchmarks; --quick: <work-dir>/quick)",
    )
    p.add_argument("--fresh", action="store_true", help="ignore cached rows (base models are still reused)")
    args = p.parse_args(argv)
    if args.quick:
        args.archs, args.seeds, args.methods = ["vgg11"], [0], ["sosp_h", "random"]
        args.ratios, args.floors = [0.7], [0.0, 0.1]
    if args.out_dir is None:
        args.out_dir = args.work_dir / "quick" if args.quick else OUT_DIR
    return args


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_tier(path: Path, quick: bool) -> dict:
    cfg = yaml.safe_load(path.read_text())
    tier = {
        "tier": cfg.get("tier"),
        "data": {
            "name": cfg["dataset"]["name"],
            "root": cfg["dataset"].get("root"),
            "val_fraction": cfg["dataset"].get("val_fraction", 0.1),
            "train_subset": cfg["dataset"].get("train_subset"),
            "seed": cfg["dataset"].get("split_seed", 0),
            "image_size": cfg["dataset"].get("image_size"),
        },
        "arch_options": cfg.get("arch_options") or {},
        "train": dict(cfg["train"]),
        "finetune": dict(cfg["finetune"]),
        # the setting is an equal fraction of structures, whatever else the tier compares
        "prune": {
            "target": "structures",
            **{k: cfg["prune"][k] for k in ("min_channels", "normalize", "samples", "score_batch_size")},
        },
        "prune_options": (cfg["prune"].get("options") or {}),
    }
    if quick:
        tier["train"]["epochs"], tier["finetune"]["epochs"] = 2, 1
    return tier


def last_conv_group(model: torch.nn.Module, groups_report: list[dict], example: torch.Tensor) -> str:
    """Name of the channel group that the network's last Conv2d (module order) produces into."""
    from sosp.structures import channel_groups

    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    for g in channel_groups(model, example):
        if convs[-1] in g.producers:
            return g.name
    return groups_report[-1]["group"]


def base_model(arch: str, seed: int, tier: dict, bundle, work: Path):
    """The trained base model (cached) and its test top-1."""
    options = tier["arch_options"].get(arch, {})
    key = digest({"arch": arch, "options": options, "data": tier["data"], "train": tier["train"], "seed": seed})
    path = work / "models" / f"{arch}_s{seed}_{key}.pt"
    if path.exists():
        model, meta = load_model(path)
        log(
            f"{arch} seed {seed}: reusing base model {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
            f"(test top-1 {100 * meta['test_top1']:.2f}%)"
        )
        return model, meta["test_top1"], key, 0.0
    config = train.TrainConfig.from_dict(tier["train"])
    train.seed_everything(seed)
    model = models.create(arch, num_classes=bundle.num_classes, in_channels=bundle.in_channels, **options)
    log(
        f"{arch} seed {seed}: training base model ({sum(p.numel() for p in model.parameters()):,} params, "
        f"{config.epochs} epochs)"
    )
    t0 = time.perf_counter()
    train.train(model, bundle, config, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    top1 = train.evaluate(model, bundle.test)["top1"]
    log(f"{arch} seed {seed}: base test top-1 {100 * top1:.2f}% ({seconds:.0f} s)")
    STATS["trained"] += 1
    save_model(
        path,
        model,
        {
            "arch": arch,
            "arch_options": options,
            "seed": seed,
            "test_top1": top1,
            "train_config": tier["train"],
            "data": tier["data"],
            "train_seconds": seconds,
        },
    )
    return model, top1, key, seconds


def run_base(arch: str, seed: int, tier: dict, bundle, args, env: dict) -> list[dict]:
    model, base_top1, key, train_seconds = base_model(arch, seed, tier, bundle, args.work_dir)
    model.eval()
    example = bundle.example_input[:1]
    ft_config = train.TrainConfig.from_dict(tier["finetune"])
    pc = tier["prune"]
    cache_path = args.work_dir / "rows" / f"{arch}_s{seed}_{key}_{digest([tier['finetune'], pc])}.json"
    cache = {} if args.fresh or not cache_path.exists() else read_json(cache_path)
    rows, fitted = [], {}  # fitted: selection key -> (row label, fine-tuned numbers)
    last_group = None

    def calibration():
        return data.batches(
            bundle.train,
            pc["score_batch_size"],
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            augment=None,
        )

    for method in args.methods:
        options = dict(tier["prune_options"].get(method, {}))
        for floor in args.floors:
            todo = [r for r in args.ratios if f"{method}|{r}|{floor}" not in cache]
            results = {}
            if todo:
                t0 = time.perf_counter()
                runs = runner.run_ratios(
                    method,
                    copy.deepcopy(model),
                    calibration,
                    todo,
                    example_input=example,
                    target=pc["target"],
                    min_channels=pc["min_channels"],
                    min_fraction=floor,
                    normalize=pc["normalize"],
                    num_samples=pc["samples"],
                    seed=seed,
                    warmup_batches=0,
                    **copy.deepcopy(options),
                )
                results = dict(zip(todo, runs))
                log(
                    f"{arch} s{seed} {method} min_fraction {floor}: scored and pruned to {todo} "
                    f"({time.perf_counter() - t0:.1f} s)"
                )
            for ratio in args.ratios:
                label = f"{method}|{ratio}|{floor}"
                if label in cache:
                    row = cache[label]
                    STATS["cached"] += 1
                    fitted.setdefault(row["selection_key"], (label, row))
                    rows.append(row)
                    continue
                result = results[ratio]
                rep = result.report
                if last_group is None:
                    last_group = last_conv_group(model, rep["per_group"], example)
                sel_key = digest(result.removed)
                last = next(g for g in rep["per_group"] if g["group"] == last_group)
                emptiest = min(rep["per_group"], key=lambda g: (g["size"] - g["removed"]) / g["size"])
                row = {
                    "arch": arch,
                    "seed": seed,
                    "method": method,
                    "ratio": ratio,
                    "min_fraction": floor,
                    "min_fraction_applied": rep.get("min_fraction"),
                    "base_top1": 100 * base_top1,
                    "achieved_fraction": rep["achieved_fraction"],
                    "macs_reduction_pct": 100 * (1 - rep["macs_after"] / rep["macs_before"]),
                    "params_reduction_pct": 100 * (1 - rep["params_after"] / rep["params_before"]),
                    "macs_after": rep["macs_after"],
                    "params_after": rep["params_after"],
                    "min_kept_pct": 100 * rep["min_kept_fraction"],
                    "min_kept_group": emptiest["group"],
                    "last_conv_group": last_group,
                    "last_conv_size": last["size"],
                    "last_conv_kept": last["size"] - last["removed"],
                    "groups_at_floor": sum(
                        1
                        for g in rep["per_group"]
                        if g["size"] - g["removed"]
                        == selection.group_floor(g["size"], pc["min_channels"], rep.get("min_fraction", floor))
                    ),
                    "kept_per_group": json.dumps({g["group"]: g["size"] - g["removed"] for g in rep["per_group"]}),
                    "prune_seconds": rep.get("prune_seconds"),
                    "oneshot_top1": 100 * train.evaluate(result.model, bundle.test)["top1"],
                    "selection_key": sel_key,
                    "same_selection_as": "",
                }
                if sel_key in fitted:  # same pruned model as one already fine-tuned: same numbers
                    other_label, other = fitted[sel_key]
                    row.update(
                        finetuned_top1=other["finetuned_top1"], finetune_seconds=0.0, same_selection_as=other_label
                    )
                else:
                    t0 = time.perf_counter()
                    pruned = result.model
                    train.train(pruned, bundle, ft_config, seed=seed, progress=False)
                    row["finetune_seconds"] = time.perf_counter() - t0
                    row["finetuned_top1"] = 100 * train.evaluate(pruned, bundle.test)["top1"]
                    fitted[sel_key] = (label, row)
                row.update(
                    {
                        "train_epochs": tier["train"]["epochs"],
                        "finetune_epochs": ft_config.epochs,
                        "samples": pc["samples"],
                        "base_train_seconds": train_seconds,
                        **env,
                    }
                )
                log(
                    f"{arch} s{seed} {method:7s} r{ratio} mf {floor:<4}: MACs -{row['macs_reduction_pct']:.1f}%  "
                    f"min kept {row['min_kept_pct']:.1f}% ({row['min_kept_group']})  last conv "
                    f"{row['last_conv_kept']}/{row['last_conv_size']}  one-shot {row['oneshot_top1']:.1f}%  "
                    f"fine-tuned {row['finetuned_top1']:.1f}%"
                    + (f"  (= {row['same_selection_as']})" if row["same_selection_as"] else "")
                )
                cache[label] = row
                STATS["computed"] += 1
                rows.append(row)
            write_json(cache_path, cache)
    return rows


# ------------------------------------------------------------------------------------------- tables


def mean(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(values) if values else math.nan


def aggregate(rows: list[dict]) -> dict:
    """(arch, ratio, method, floor) -> means over seeds."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["arch"], r["ratio"], r["method"], r["min_fraction"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {
            c: mean([r[c] for r in rs])
            for c in (
                "macs_reduction_pct",
                "min_kept_pct",
                "last_conv_kept",
                "oneshot_top1",
                "finetuned_top1",
                "base_top1",
                "min_fraction_applied",
            )
        }
        out[key]["last_conv_size"] = rs[0]["last_conv_size"]
        out[key]["last_conv_group"] = rs[0]["last_conv_group"]
        out[key]["seeds"] = sorted(r["seed"] for r in rs)
        out[key]["finetuned_by_seed"] = [r["finetuned_top1"] for r in sorted(rs, key=lambda r: r["seed"])]
    return out


def decide(agg: dict, archs, ratios, methods, floors) -> tuple[float | None, list[str]]:
    """The smallest floor that removes SOSP-H's collapse without hurting anything else (see the constants)."""
    notes = []
    f0 = floors[0]
    if "sosp_h" not in methods or "random" not in methods or f0 != 0.0:
        return None, ["decision needs sosp_h, random and floor 0"]
    ref = {(a, r): agg[(a, r, "random", f0)]["finetuned_top1"] for a in archs for r in ratios}
    collapsed = [
        (a, r)
        for a in archs
        for r in ratios
        if agg[(a, r, "sosp_h", f0)]["finetuned_top1"] < ref[(a, r)] - COLLAPSE_GAP
    ]
    if not collapsed:
        notes.append(f"no collapse at floor 0: SOSP-H is within {COLLAPSE_GAP:g} points of random everywhere")
        return 0.0, notes
    notes.append(
        f"SOSP-H collapses at floor 0 (more than {COLLAPSE_GAP:g} points below random, fine-tuned) on: "
        + ", ".join(f"{a} r{r}" for a, r in collapsed)
    )
    for f in floors[1:]:
        still = [
            (a, r) for a, r in collapsed if agg[(a, r, "sosp_h", f)]["finetuned_top1"] < ref[(a, r)] - COLLAPSE_GAP
        ]
        hurt = [
            (a, r, m)
            for a in archs
            for r in ratios
            for m in methods
            if (a, r) not in collapsed or m != "sosp_h"
            if agg[(a, r, m, f)]["finetuned_top1"] < agg[(a, r, m, f0)]["finetuned_top1"] - HURT_TOL
        ]
        notes.append(
            f"floor {f:g}: still collapsed {', '.join(f'{a} r{r}' for a, r in still) or 'none'}; "
            f"hurt (> {HURT_TOL:g} points below floor 0) "
            + (
                ", ".join(
                    f"{m} {a} r{r} ({agg[(a, r, m, f)]['finetuned_top1']:.1f} vs "
                    f"{agg[(a, r, m, f0)]['finetuned_top1']:.1f})"
                    for a, r, m in hurt
                )
                or "none"
            )
        )
        if not still and not hurt:
            return f, notes
    return None, notes


def fmt(x, digits=1):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(rows: list[dict], args, tier: dict, runtime_s: float) -> str:
    agg = aggregate(rows)
    archs = [a for a in args.archs if any(k[0] == a for k in agg)]
    lines = [
        "# Layer collapse and the per-group floor (`min_fraction`)",
        "",
        (
            f"Generated by `benchmarks/layer_collapse.py{' --quick' if args.quick else ''}`: {tier['data']['name']}, "
            f"tier `{tier['tier']}` recipe (train {tier['train']['epochs']} epochs, fine-tune "
            f"{tier['finetune']['epochs']} epochs, {tier['prune']['samples']} calibration samples, "
            f"target {tier['prune']['target']}, min_channels {tier['prune']['min_channels']}), seeds "
            f"{', '.join(map(str, args.seeds))}; every number is the mean over seeds, test top-1 in %. "
            f"Wall time of the invocation that wrote this file: {runtime_s / 60:.1f} min on "
            f"{torch.get_num_threads()} thread(s) ({rows[0]['env_device_name']}); it trained "
            f"{STATS['trained']} base model(s), computed {STATS['computed']} row(s) and read {STATS['cached']} "
            "from the cache under work/benchmarks/layer_collapse/."
        ),
        "",
    ]
    bases = {}
    for r in rows:
        bases.setdefault(r["arch"], {})[r["seed"]] = r["base_top1"]
    lines.append(
        "Base models (test top-1): "
        + "; ".join(f"{a} " + ", ".join(f"s{s} {fmt(v, 2)}" for s, v in sorted(bases[a].items())) for a in archs)
        + "."
    )
    lines += [
        "",
        "## Fine-tuned test top-1 by floor",
        "",
        "| arch | ratio | method | " + " | ".join(f"mf {f:g}" for f in args.floors) + " |",
        "|---|---|---|" + "---:|" * len(args.floors),
    ]
    for a in archs:
        for ratio in args.ratios:
            for m in args.methods:
                cells = [
                    fmt(agg[(a, ratio, m, f)]["finetuned_top1"]) if (a, ratio, m, f) in agg else "" for f in args.floors
                ]
                lines.append(f"| {a} | {ratio:g} | {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## All measurements",
        "",
        (
            "`mf`: configured min_fraction; `applied`: the floor the method used (C-OBD keeps at least 0.05); "
            "MAC red.: MACs removed (%); min kept: smallest kept fraction of any group (%); last conv: channels "
            "kept in the group of the last conv layer (mean over seeds) / its size."
        ),
        "",
        (
            "| arch | ratio | method | mf | applied | MAC red. % | min kept % | last conv | one-shot top-1 | "
            "fine-tuned top-1 |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in archs:
        for ratio in args.ratios:
            for m in args.methods:
                for f in args.floors:
                    v = agg.get((a, ratio, m, f))
                    if v is None:
                        continue
                    lines.append(
                        f"| {a} | {ratio:g} | {m} | {f:g} | {fmt(v['min_fraction_applied'], 2)} | "
                        f"{fmt(v['macs_reduction_pct'])} | {fmt(v['min_kept_pct'])} | "
                        f"{fmt(v['last_conv_kept'], 1)}/{v['last_conv_size']} | {fmt(v['oneshot_top1'])} | "
                        f"{fmt(v['finetuned_top1'])} |"
                    )
    try:
        choice, notes = decide(agg, archs, args.ratios, args.methods, args.floors)
    except KeyError as exc:
        choice, notes = None, [f"incomplete grid ({exc})"]
    lines += [
        "",
        "## Decision rule",
        "",
        (
            f"SOSP-H *collapses* at an (arch, ratio) where its fine-tuned top-1 is more than {COLLAPSE_GAP:g} "
            f"points below random's at floor 0. A floor *hurts* an (arch, method, ratio) that it leaves more "
            f"than {HURT_TOL:g} points below its own floor-0 accuracy (the collapsed SOSP-H cells excepted). "
            "The recommended default is the smallest floor that leaves no collapse and hurts nothing."
        ),
        "",
    ]
    lines += [f"- {n}" for n in notes]
    lines += [
        "",
        f"**Rule's choice: min_fraction = {choice:g}**"
        if choice is not None
        else "**Rule's choice: none of the floors tried satisfies the rule**",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tier = load_tier(args.config, args.quick)
    env = environment("cpu")
    log(
        f"layer collapse: archs {args.archs}, seeds {args.seeds}, methods {args.methods}, ratios {args.ratios}, "
        f"floors {args.floors}; train {tier['train']['epochs']} / fine-tune {tier['finetune']['epochs']} epochs; "
        f"{torch.get_num_threads()} thread(s)"
    )
    d = tier["data"]
    bundle = data.load(
        d["name"],
        root=d["root"],
        val_fraction=d["val_fraction"],
        train_subset=d["train_subset"],
        seed=d["seed"],
        image_size=d["image_size"],
    )
    rows = []
    for arch in args.archs:
        for seed in args.seeds:
            rows += run_base(arch, seed, tier, bundle, args, env)
    runtime = time.perf_counter() - start
    for r in rows:
        r["script_runtime_s"] = runtime
    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(args.out_dir / "layer_collapse.csv", rows)
    md = markdown(rows, args, tier, runtime)
    md_path = args.out_dir / "layer_collapse.md"
    write_atomic(md_path, lambda tmp: tmp.write_text(md))
    log(f"wrote {csv_path} and {md_path} ({runtime / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
