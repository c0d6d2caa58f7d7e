"""Within-layer choice study: at each method's own per-group widths, which channels should a layer keep?

For a base model (the workflow's ``work/<tier>/models/<arch>/s<seed>/base.pt``) and every *width
method* ``M`` (default: every method of the tier), ``M`` prunes the model exactly as ``sosp prune``
does (``sosp.runner.run_ratios``: the tier's calibration samples, floor, normalisation and options;
``--ratio`` of ``--target``), which fixes how many channels each group keeps. Each *choice rule* ``C``
then keeps that many channels in every group, the ones it scores highest (removal: the kernel's own
``sosp.selection.removal_order`` with the widths as per-group floors, surgery
``sosp.selection.remove_channels``):

- ``own``: ``M``'s own pruned model (the reference row; for a channel method its selection is what
  the rules' widths come from, so ``own`` and a rule equal to ``M`` coincide);
- ``sosp_h``: SOSP-H's saliency ``|g| + 1/2 |G 1|`` (``sosp.runner.score``, the tier's options);
- ``random``: uniform scores from a generator seeded with ``RANDOM_SEED_OFFSET + seed`` (one draw per
  base model, shared by all width methods);
- ``curvature``: single-channel curvature ``|g_s| + 1/2 G_ss``, the diagonal of the exact Gauss-Newton
  matrix in gate space (``sosp.methods.sosp_i.sosp_i_terms``, estimator ``exact``: no off-diagonal,
  cross-channel term at all);
- ``bn_scale``: ``|gamma|`` of the BatchNorm(s) of the group (those right after its producers in
  ResNet-20), summed over the producers of a residual group (network-slimming's criterion).

EigenDamage prunes eigen-directions, not channels: its widths are the analogue
``round(size * mean kept fraction)`` over its producers' output and its consumers' input directions
(at least the group's floor), and its ``own`` row is its reparameterised model. Every pruned model is
evaluated on the test split one-shot, fine-tuned with the tier's ``finetune`` recipe
(``sosp.train.train``, run seed) and evaluated again (top-1 and loss). A model whose weights equal one
already fine-tuned from the same base (same removed set after pure surgery) is not fine-tuned again:
fine-tuning is deterministic on the CPU, so its numbers are copied and ``same_selection_as`` says from
which row (as ``layer_collapse.py`` does). Finished rows are cached per base model under
``work/benchmarks/within_layer/`` (after every row), so an interrupted run resumes.

Outputs (``--out-dir``, default ``results/cifar10_cpu/within_layer/``): ``within_layer.csv`` (one row
per seed, width method and choice rule), ``within_layer.md`` (means over seeds; the verdict of the
decision rule fixed below) and ``within_layer.png/.pdf``. ``--quick``: the default (digits) tier, a
2-epoch base model trained and cached here (``layer_collapse.base_model``), seed 0, width methods
sosp_h and taylor, 1 fine-tuning epoch, outputs under ``work/benchmarks/within_layer/quick``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
import torch.nn as nn
import yaml

from benchmarks.common import environment, save_figure, write_csv
from benchmarks.layer_collapse import base_model, digest, log
from sosp import data, runner, selection, train
from sosp.batches import limit_samples
from sosp.cli.common import weights_digest
from sosp.errors import UnsupportedModelError
from sosp.io import load_model, read_json, write_atomic, write_json
from sosp.methods.sosp_i import sosp_i_terms
from sosp.structures import channel_groups, split_flat

WORK_DIR = ROOT / "work" / "benchmarks" / "within_layer"
BASE_CONFIG = ROOT / "config" / "config.yaml"
TIER_CONFIG = ROOT / "config" / "cifar10_cpu.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CHOICES = ["sosp_h", "random", "curvature", "bn_scale"]
RANDOM_SEED_OFFSET = 1000  # the random rule's draw differs from the `random` method's (run seed)
VERSION = 1  # bump when a row's meaning changes: cached rows of another version are recomputed

# Decision rule (fixed before looking at CIFAR-10 numbers; fine-tuned test top-1, points, means over seeds):
# at SOSP-H's own widths, SOSP-H's within-layer choice is "worse than random" when random's mean is more
# than GAP points above it AND random is above it at every seed; "better than random" symmetrically;
# otherwise "no clear difference". The digits finding (69/72/63 % against 88/93/94 %) carries over to
# CIFAR-10 exactly when the verdict is "worse than random".
GAP = 2.0

STATS = {"computed": 0, "cached": 0, "finetuned": 0}


# ------------------------------------------------------------------------------------------- setup


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="digits smoke run (well under a minute), work folder only")
    p.add_argument(
        "--tier-config",
        type=Path,
        default=TIER_CONFIG,
        help="tier given on top of config/config.yaml, merged and defaulted as the workflow does",
    )
    p.add_argument("--data-root", help="overrides the tier's dataset.root")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--ratio", type=float, default=0.7)
    p.add_argument("--target", default="structures", choices=selection.TARGETS)
    p.add_argument("--width-methods", nargs="+", default=None, help="default: the tier's prune.methods")
    p.add_argument("--choices", nargs="+", default=CHOICES, choices=CHOICES, help="rules besides `own`")
    p.add_argument("--finetune-epochs", type=int, default=None, help="override the tier's finetune.epochs")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="folder with <arch>/s<seed>/base.pt (default: the tier's work/<tier>/models)",
    )
    p.add_argument("--work-dir", type=Path, default=WORK_DIR, help="cache of finished rows (and quick base models)")
    p.add_argument("--out-dir", type=Path, default=None, help="default results/<tier>/within_layer (--quick: work)")
    p.add_argument("--fresh", action="store_true", help="ignore cached rows")
    args = p.parse_args(argv)
    if args.quick:
        args.tier_config, args.seeds = None, [0]
        if args.width_methods is None:
            args.width_methods = ["sosp_h", "taylor"]
    return args


def merged_config(tier_config: Path | None) -> dict:
    """config/config.yaml with the tier on top, merged and given the schema's defaults as the workflow does."""
    from snakemake.utils import update_config, validate

    cfg = yaml.safe_load(BASE_CONFIG.read_text())
    if tier_config is not None:
        update_config(cfg, yaml.safe_load(Path(tier_config).read_text()) or {})
    validate(cfg, str(SCHEMA))
    return cfg


def recipe(cfg: dict, args) -> dict:
    ds = cfg["dataset"]
    tier = {
        "tier": cfg["tier"],
        "data": {
            "name": ds["name"],
            "root": args.data_root or ds.get("root"),
            "val_fraction": ds.get("val_fraction", 0.1),
            "train_subset": ds.get("train_subset"),
            "seed": ds.get("split_seed", 0),
            "image_size": ds.get("image_size"),
        },
        "arch_options": cfg.get("arch_options") or {},
        "train": dict(cfg["train"]),
        "finetune": dict(cfg["finetune"]),
        "prune": {
            k: cfg["prune"][k] for k in ("min_channels", "min_fraction", "normalize", "samples", "score_batch_size")
        },
        "calibration": dict(cfg["prune"].get("calibration") or {"split": "train", "augment": False}),
        "options": cfg["prune"].get("options") or {},
        "methods": list(cfg["prune"]["methods"]),
        "models_dir": ROOT / cfg.get("work_dir", "work") / cfg["tier"] / "models",
    }
    if args.quick:
        tier["train"]["epochs"], tier["finetune"]["epochs"] = 2, 1
    if args.finetune_epochs is not None:
        tier["finetune"]["epochs"] = args.finetune_epochs
    return tier


# ------------------------------------------------------------------------------------------- rules


def bn_scale_scores(model: nn.Module, groups) -> list[torch.Tensor]:
    """Per structure, ``|gamma|`` summed over the group's BatchNorms (those right after its producers)."""
    modules = dict(model.named_modules())
    scores = []
    for g in groups:
        norms = [modules[n] for n in g.gated_modules if isinstance(modules[n], nn.modules.batchnorm._BatchNorm)]
        if not norms or any(m.weight is None for m in norms):
            raise UnsupportedModelError(f"bn_scale: group {g.name!r} has no affine BatchNorm right after a producer")
        total = sum(m.weight.detach().abs().double().cpu() for m in norms)
        scores.append(g.per_structure(total))
    return scores


def curvature_scores(model: nn.Module, groups, batches) -> list[torch.Tensor]:
    """``|g_s| + 1/2 G_ss`` with the exact Gauss-Newton diagonal (SOSP-I's terms, no cross-channel part)."""
    terms = sosp_i_terms(model, groups, batches, estimator="exact")
    return [s.double().cpu() for s in split_flat(terms["g"].abs() + 0.5 * terms["G"].diagonal(), groups)]


def random_scores(groups, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(RANDOM_SEED_OFFSET + seed)
    return [torch.rand(g.size, generator=generator, dtype=torch.float64) for g in groups]


def choose(groups, scores, widths: dict[str, int]) -> dict[str, list[int]]:
    """Remove the ``size - widths[g]`` lowest-scoring structures of every group (ties by position)."""
    order = selection.removal_order(groups, scores, floors=[widths[g.name] for g in groups])
    return selection.as_removed(groups, order)


def widths_of(result, groups, entry_floor: float, min_channels: int) -> dict[str, int]:
    """Kept structures per group of a width method's result (EigenDamage: the direction analogue)."""
    per_group = result.report.get("per_group")
    if per_group is not None:
        return {g["group"]: g["size"] - g["removed"] for g in per_group}
    layers = {r["layer"]: r for r in result.report["per_layer"]}
    widths = {}
    for g in groups:
        fracs = [layers[p]["kept_out"] / layers[p]["directions_out"] for p in g.producers if p in layers]
        fracs += [layers[c]["kept_in"] / layers[c]["directions_in"] for c in g.consumers if c in layers]
        kept = round(g.size * statistics.fmean(fracs)) if fracs else g.size
        widths[g.name] = min(g.size, max(kept, selection.group_floor(g.size, min_channels, entry_floor)))
    return widths


# ------------------------------------------------------------------------------------------- runs


def load_base(arch: str, seed: int, tier: dict, bundle, args):
    if args.quick:
        model, _, _, _ = base_model(arch, seed, tier, bundle, args.work_dir)
        return model
    path = (args.models_dir or tier["models_dir"]) / arch / f"s{seed}" / "base.pt"
    if not path.exists():
        raise SystemExit(f"no base model {path}: run the workflow's training for the tier first")
    model, meta = load_model(path)
    seen = {k: v for k, v in (meta.get("data") or {}).items() if k != "root"}
    wanted = {k: v for k, v in tier["data"].items() if k != "root"}
    if seen and seen != wanted:
        raise SystemExit(f"{path} was trained on data {seen}, the tier gives {wanted}")
    log(f"{arch} s{seed}: base model {path}")
    return model


def run_base(arch: str, seed: int, tier: dict, bundle, args, env: dict) -> list[dict]:
    model = load_base(arch, seed, tier, bundle, args).eval()
    example = bundle.example_input[:1]
    groups = channel_groups(model, example)
    ft_config = train.TrainConfig.from_dict(tier["finetune"])
    pc, cal = tier["prune"], tier["calibration"]
    base = train.evaluate(model, bundle.test)
    base_key = weights_digest(model)[:12]
    settings = [VERSION, tier["finetune"], pc, cal, tier["options"], args.ratio, args.target, tier["data"]]
    cache_path = args.work_dir / "rows" / f"{arch}_s{seed}_{base_key}_{digest(settings)}.json"
    cache = {} if args.fresh or not cache_path.exists() else read_json(cache_path)
    fitted = {r["model_digest"]: (label, r) for label, r in cache.items()}
    log(
        f"{arch} s{seed}: base test top-1 {100 * base['top1']:.2f}%, loss {base['loss']:.3f}; "
        f"{sum(g.size for g in groups)} structures in {len(groups)} groups; cache {cache_path.name} "
        f"({len(cache)} rows)"
    )
    split = getattr(bundle, cal["split"])

    def calibration():  # as `sosp prune`: the same samples (and augmentation draws) at every call
        return data.batches(
            split,
            pc["score_batch_size"],
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            augment=bundle.augment if cal["augment"] else None,
        )

    rule_scores: dict[str, list[torch.Tensor]] = {}

    def scores_of(rule: str) -> list[torch.Tensor]:
        if rule not in rule_scores:
            t0 = time.perf_counter()
            if rule == "sosp_h":
                rule_scores[rule] = runner.score(
                    "sosp_h",
                    model,
                    groups,
                    calibration(),
                    num_samples=pc["samples"],
                    **copy.deepcopy(tier["options"].get("sosp_h", {})),
                )
            elif rule == "curvature":
                rule_scores[rule] = curvature_scores(model, groups, limit_samples(calibration(), pc["samples"]))
            elif rule == "random":
                rule_scores[rule] = random_scores(groups, seed)
            else:
                rule_scores[rule] = bn_scale_scores(model, groups)
            log(f"{arch} s{seed}: {rule} scores ({time.perf_counter() - t0:.1f} s)")
        return rule_scores[rule]

    rows = []
    for method in args.width_methods:
        labels = [f"{method}|{c}" for c in ["own", *args.choices]]
        if all(label in cache for label in labels):
            rows += [cache[label] for label in labels]
            STATS["cached"] += len(labels)
            continue
        t0 = time.perf_counter()
        options = copy.deepcopy(tier["options"].get(method, {}))
        (result,) = runner.run_ratios(
            method,
            model,
            calibration,
            [args.ratio],
            example_input=example,
            target=args.target,
            min_channels=pc["min_channels"],
            min_fraction=pc["min_fraction"],
            normalize=pc["normalize"],
            num_samples=pc["samples"],
            seed=seed,
            warmup_batches=0,
            **options,
        )
        prune_seconds = time.perf_counter() - t0
        floor = runner.effective_selection(method, options, pc["min_channels"], pc["min_fraction"])["min_fraction"]
        widths = widths_of(result, groups, floor, pc["min_channels"])
        channel_method = "per_group" in result.report
        own_kept = None
        if channel_method:
            own_kept = {g.name: sorted(set(range(g.size)) - set(result.removed.get(g.name, ()))) for g in groups}
        log(
            f"{arch} s{seed} {method}: pruned to {args.ratio} of {args.target} ({prune_seconds:.1f} s); kept "
            f"{sum(widths.values())} of {sum(g.size for g in groups)} structures"
        )
        for choice, label in zip(["own", *args.choices], labels):
            if label in cache:
                rows.append(cache[label])
                STATS["cached"] += 1
                continue
            t1 = time.perf_counter()
            if choice == "own":
                pruned, removed, rep = result.model, result.removed, result.report
            else:
                removed = choose(groups, scores_of(choice), widths)
                pruned = selection.remove_channels(model, groups, removed, example)
                rep = selection.describe(model, pruned, groups, removed, example)
            kept = {g.name: g.size - len(removed.get(g.name, ())) for g in groups}
            if choice != "own" and kept != widths:
                raise AssertionError(f"{label}: kept {kept} differs from the widths {widths}")
            overlap = None
            if own_kept is not None:
                mine = {g.name: set(range(g.size)) - set(removed.get(g.name, ())) for g in groups}
                shared = sum(len(mine[n] & set(own_kept[n])) for n in mine)
                overlap = shared / max(1, sum(map(len, own_kept.values())))
            one = train.evaluate(pruned, bundle.test)
            key = weights_digest(pruned)
            row = {
                "arch": arch,
                "seed": seed,
                "width_method": method,
                "choice": choice,
                "ratio": args.ratio,
                "target": args.target,
                "min_fraction": floor,
                "base_top1": 100 * base["top1"],
                "base_loss": base["loss"],
                "params": rep["params_after"],
                "macs": rep["macs_after"],
                "params_removed_pct": 100 * (1 - rep["params_after"] / rep["params_before"]),
                "macs_removed_pct": 100 * (1 - rep["macs_after"] / rep["macs_before"]),
                "structures_kept": sum(widths.values()),
                "kept_overlap_with_own": overlap,
                "oneshot_top1": 100 * one["top1"],
                "oneshot_loss": one["loss"],
                "same_selection_as": "",
                "kept_per_group": json.dumps(widths if choice != "own" else kept),
                "removed": json.dumps(removed),
                "model_digest": key,
            }
            if key in fitted:
                other_label, other = fitted[key]
                row.update(
                    finetuned_top1=other["finetuned_top1"],
                    finetuned_loss=other["finetuned_loss"],
                    finetune_seconds=0.0,
                    same_selection_as=other_label,
                )
            else:
                t2 = time.perf_counter()
                tuned = copy.deepcopy(pruned)
                train.train(tuned, bundle, ft_config, seed=seed, progress=False)
                row["finetune_seconds"] = time.perf_counter() - t2
                after = train.evaluate(tuned, bundle.test)
                row.update(finetuned_top1=100 * after["top1"], finetuned_loss=after["loss"])
                fitted[key] = (label, row)
                STATS["finetuned"] += 1
            row.update(
                seconds=time.perf_counter() - t1,
                width_prune_seconds=prune_seconds,
                finetune_epochs=ft_config.epochs,
                samples=pc["samples"],
                tier=tier["tier"],
                **env,
            )
            log(
                f"{arch} s{seed} {method:11s} {choice:9s}: MACs -{row['macs_removed_pct']:.1f}%  one-shot "
                f"{row['oneshot_top1']:.1f}%  fine-tuned {row['finetuned_top1']:.1f}% (loss "
                f"{row['finetuned_loss']:.3f})"
                + (f"  (= {row['same_selection_as']})" if row["same_selection_as"] else "")
                + f"  [{row['seconds']:.0f} s]"
            )
            cache[label] = row
            STATS["computed"] += 1
            rows.append(row)
            write_json(cache_path, cache)
    return rows


# ------------------------------------------------------------------------------------------- outputs


def cell(rows, method, choice, key="finetuned_top1") -> list[float]:
    rs = sorted((r for r in rows if r["width_method"] == method and r["choice"] == choice), key=lambda r: r["seed"])
    return [r[key] for r in rs]


def verdict(rows: list[dict]) -> str:
    """The decision rule (see GAP): SOSP-H's within-layer choice against random at SOSP-H's own widths."""
    # SOSP-H's own selection is its within-group choice at its own widths: `own` stands in for the rule
    h, r = cell(rows, "sosp_h", "sosp_h") or cell(rows, "sosp_h", "own"), cell(rows, "sosp_h", "random")
    if not h or len(h) != len(r):
        return "no verdict: needs width method sosp_h and the choice rule random"
    gap = statistics.fmean(r) - statistics.fmean(h)
    seeds = ", ".join(f"{a:.1f} vs {b:.1f}" for a, b in zip(h, r))
    if gap > GAP and all(b > a for a, b in zip(h, r)):
        what = f"worse than random by {gap:.1f} points, as on digits (the finding carries over)"
    elif -gap > GAP and all(a > b for a, b in zip(h, r)):
        what = f"better than random by {-gap:.1f} points, unlike digits (the finding does not carry over)"
    else:
        what = (
            f"not clearly different from random ({gap:+.1f} points random minus SOSP-H; the rule needs more than "
            f"{GAP:g} at every seed): the digits finding does not carry over"
        )
    return f"At its own widths, SOSP-H's within-layer choice is {what} (per seed, SOSP-H vs random: {seeds})."


def fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown(rows: list[dict], args, tier: dict, seconds: float) -> str:
    rules = ["own", *args.choices]
    methods = [m for m in args.width_methods if any(r["width_method"] == m for r in rows)]
    bases = {r["seed"]: (r["base_top1"], r["base_loss"]) for r in rows}
    lines = [
        "# Within-layer choice at each method's own widths",
        "",
        f"`benchmarks/within_layer.py{' --quick' if args.quick else ''}`: {args.arch}, tier `{tier['tier']}` "
        f"({tier['data']['name']}), seeds {sorted(bases)} (base test top-1 "
        + ", ".join(f"s{s} {t:.1f} %" for s, (t, _) in sorted(bases.items()))
        + f"); each width method pruned to {args.ratio:g} of {args.target} as `sosp prune` does "
        f"({tier['prune']['samples']} calibration images, floor {tier['prune']['min_fraction']:g}), then every "
        f"choice rule kept as many channels per group; fine-tuned {tier['finetune']['epochs']} epoch(s) "
        f"(lr {tier['finetune']['lr']:g}). Test top-1 (%), mean ± std over seeds. {STATS['computed']} row(s) "
        f"computed ({STATS['finetuned']} fine-tunings), {STATS['cached']} read from the cache; "
        f"{seconds / 60:.1f} min on {torch.get_num_threads()} thread(s).",
        "",
        f"**Verdict** (rule fixed in the code before the run: worse/better by more than {GAP:g} points, "
        f"on the mean and at every seed): {verdict(rows)}",
        "",
        "## Fine-tuned top-1",
        "",
        "`own`: the width method's own pruned model; the other columns keep the same number of channels per "
        "group, chosen by the rule. `=` marks a cell whose pruned model equals the `own` one (not fine-tuned "
        "again).",
        "",
        "| width method | MACs removed % | " + " | ".join(rules) + " |",
        "|---|---:|" + "---:|" * len(rules),
    ]
    for m in methods:
        cells = []
        for c in rules:
            same = [r for r in rows if r["width_method"] == m and r["choice"] == c and r["same_selection_as"]]
            mark = " =" if same and all(r["same_selection_as"] == f"{m}|own" for r in same) else ""
            cells.append(fmt(cell(rows, m, c)) + mark)
        macs = fmt(cell(rows, m, "sosp_h" if "sosp_h" in args.choices else "own", "macs_removed_pct"))
        lines.append(f"| {m} | {macs} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## One-shot top-1 (before fine-tuning) and kept-channel overlap with the width method's own choice",
        "",
        "| width method | " + " | ".join(rules) + " |",
        "|---|" + "---:|" * len(rules),
    ]
    for m in methods:
        cells = []
        for c in rules:
            ov = [v for v in cell(rows, m, c, "kept_overlap_with_own") if v is not None]
            cells.append(fmt(cell(rows, m, c, "oneshot_top1")) + (f" ({statistics.fmean(ov):.2f})" if ov else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Rules: `sosp_h` |g| + 1/2 |(G 1)_s| (SOSP-H's saliency); `random` uniform (seeded); `curvature` "
        "|g_s| + 1/2 G_ss (exact Gauss-Newton diagonal); `bn_scale` |gamma| of the group's BatchNorm(s), summed "
        "over a residual group's producers."
        + (
            " EigenDamage's widths are the analogue of its kept eigen-directions (see the script's docstring); "
            "its `own` model is reparameterised, so its MACs differ from the rules'."
            if "eigendamage" in methods
            else ""
        ),
        "",
    ]
    return "\n".join(lines)


def figure(rows: list[dict], args, stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = ["own", *args.choices]
    methods = [m for m in args.width_methods if any(r["width_method"] == m for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(methods) * 2), 3.6), sharey=False)
    width = 0.8 / len(rules)
    for ax, key, title in zip(axes, ("finetuned_top1", "oneshot_top1"), ("fine-tuned", "one-shot")):
        for i, c in enumerate(rules):
            xs, means = [], []
            for j, m in enumerate(methods):
                vals = cell(rows, m, c, key)
                if not vals:
                    continue
                x = j - 0.4 + (i + 0.5) * width
                xs.append(x)
                means.append(statistics.fmean(vals))
                ax.plot([x] * len(vals), vals, "k.", ms=3)
            ax.bar(xs, means, width, label=c)
        ax.set_xticks(range(len(methods)), methods, rotation=20)
        ax.set_ylabel(f"{title} test top-1 (%)")
        ax.set_title(title, fontsize=9)
    axes[1].legend(title="choice rule", fontsize=7, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(
        f"{args.arch}: channels chosen within each group at the width method's widths "
        f"({args.ratio:g} of {args.target}); dots: seeds",
        fontsize=9,
    )
    fig.tight_layout()
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cfg = merged_config(args.tier_config)
    tier = recipe(cfg, args)
    if args.width_methods is None:
        args.width_methods = tier["methods"]
    if args.out_dir is None:
        args.out_dir = args.work_dir / "quick" if args.quick else ROOT / "results" / tier["tier"] / "within_layer"
    log(
        f"within-layer study: tier {tier['tier']}, {args.arch}, seeds {args.seeds}, ratio {args.ratio} of "
        f"{args.target}, width methods {args.width_methods}, rules own + {args.choices}; fine-tune "
        f"{tier['finetune']['epochs']} epoch(s); {torch.get_num_threads()} thread(s)"
    )
    bundle = data.load(**tier["data"])
    env = environment("cpu")
    rows = []
    for seed in args.seeds:
        rows += run_base(args.arch, seed, tier, bundle, args, env)
    seconds = time.perf_counter() - start
    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(
        args.out_dir / "within_layer.csv",
        [{k: v for k, v in r.items() if k not in ("removed", "model_digest")} for r in rows],
    )
    md = markdown(rows, args, tier, seconds)
    write_atomic(args.out_dir / "within_layer.md", lambda tmp: tmp.write_text(md))
    figure(rows, args, args.out_dir / "within_layer")
    log(verdict(rows))
    log(f"wrote {csv_path}, within_layer.md and within_layer.png/.pdf ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
