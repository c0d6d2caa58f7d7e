"""Calibration data and the loss-based scores: how many calibration samples does each setting let a
score rest on, and what does that do to the pruned networks?

For every architecture and seed of the default tier a base model is trained with the tier's recipe
(or reused from the cache of ``benchmarks/layer_collapse.py``, the same recipe). Each calibration
setting draws ``prune.samples`` samples, shuffled with the run seed, as ``sosp prune`` does:

- ``train``: training images as they are (the suite's default before this benchmark);
- ``train+augment``: training images with the data set's training augmentation (random crops; the
  draws come from the run seed), ``sosp prune --calibration-augment``;
- ``val``: the validation split carved from the training set (images the model was not fitted on),
  ``--calibration-split val``;
- ``smoothed-base``: training images as they are, but the base model trained with label smoothing
  ``--label-smoothing`` (train key ``label_smoothing``): a base model that is not over-confident.

For each setting: the calibration diagnostics of ``sosp.calibration`` (effective samples of the
gradient and curvature terms, smallest class share relative to uniform), then every loss-based
method of ``--methods`` prunes at ``--ratio`` of structures with the tier's floor, one-shot test top-1
and top-1 after the tier's fine-tuning. ``random`` (data-free) is run once per base model as the
reference. Outputs: ``results/benchmarks/calibration.csv`` and ``calibration.md`` (means over seeds).
``--quick``: vgg11, seed 0, sosp_h, 2 training and 1 fine-tuning epoch, outputs under the work folder.
"""

from __future__ import annotations

import argparse
import copy
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
from benchmarks.layer_collapse import CONFIG, base_model, load_tier, log
from sosp import calibration, data, runner, train
from sosp.batches import limit_samples

OUT_DIR = ROOT / "results" / "benchmarks"
WORK_DIR = ROOT / "work" / "benchmarks" / "layer_collapse"  # base models shared with that benchmark
SETTINGS = {  # name -> (split, augment, base trained with label smoothing)
    "train": ("train", False, False),
    "train+augment": ("train", True, False),
    "val": ("val", False, False),
    "smoothed-base": ("train", False, True),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run, outputs under the work folder")
    p.add_argument("--config", type=Path, default=CONFIG, help="tier config whose recipe is used")
    p.add_argument("--archs", nargs="+", default=["vgg11", "resnet20"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--methods", nargs="+", default=["sosp_h", "taylor", "cobd"])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--ratio", type=float, default=0.7)
    p.add_argument("--label-smoothing", type=float, default=0.1, help="of the smoothed-base setting's base model")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR, help="cache of base models")
    p.add_argument("--out-dir", type=Path, default=None, help="default results/benchmarks (--quick: work folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.archs, args.seeds, args.methods = ["vgg11"], [0], ["sosp_h"]
    if args.out_dir is None:
        args.out_dir = args.work_dir / "quick_calibration" if args.quick else OUT_DIR
    return args


def batches_of(bundle, setting: str, seed: int, batch_size: int):
    split, augment, _ = SETTINGS[setting]
    return lambda: data.batches(
        getattr(bundle, split),
        batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        augment=bundle.augment if augment else None,
    )


def prune_and_finetune(model, method, make_batches, args, tier, bundle, seed) -> dict:
    pc = tier["prune"]
    (result,) = runner.run_ratios(
        method,
        copy.deepcopy(model),
        make_batches,
        [args.ratio],
        example_input=bundle.example_input[:1],
        target="structures",
        min_channels=pc["min_channels"],
        min_fraction=tier["min_fraction"],
        normalize=pc["normalize"],
        num_samples=pc["samples"],
        seed=seed,
        **copy.deepcopy(tier["prune_options"].get(method, {})),
    )
    oneshot = train.evaluate(result.model, bundle.test)["top1"]
    t0 = time.perf_counter()
    train.train(result.model, bundle, train.TrainConfig.from_dict(tier["finetune"]), seed=seed, progress=False)
    return {
        "achieved_fraction": result.report["achieved_fraction"],
        "min_kept_pct": 100 * result.report["min_kept_fraction"],
        "oneshot_top1": 100 * oneshot,
        "finetuned_top1": 100 * train.evaluate(result.model, bundle.test)["top1"],
        "finetune_seconds": time.perf_counter() - t0,
    }


def run(args) -> list[dict]:
    tier = load_tier(args.config, args.quick)
    tier["min_fraction"] = yaml.safe_load(args.config.read_text())["prune"]["min_fraction"]
    bundle = data.load(**tier["data"])
    env = environment()
    rows = []
    for arch in args.archs:
        for seed in args.seeds:
            plain = base_model(arch, seed, tier, bundle, args.work_dir)
            smoothed_tier = {**tier, "train": {**tier["train"], "label_smoothing": args.label_smoothing}}
            smoothed = (
                base_model(arch, seed, smoothed_tier, bundle, args.work_dir)
                if "smoothed-base" in args.settings
                else None
            )
            common = {"arch": arch, "seed": seed, "ratio": args.ratio}
            reference = prune_and_finetune(plain[0].eval(), "random", lambda: [], args, tier, bundle, seed)
            rows.append(
                {
                    **common,
                    "base_top1": 100 * plain[1],
                    "setting": "(data-free)",
                    "method": "random",
                    **reference,
                    **env,
                }
            )
            for setting in args.settings:
                model, base_top1, _, _ = smoothed if SETTINGS[setting][2] else plain
                model.eval()
                common["base_top1"] = 100 * base_top1
                make = batches_of(bundle, setting, seed, tier["prune"]["score_batch_size"])
                found = calibration.diagnose(model, limit_samples(make(), tier["prune"]["samples"]))
                diag = {
                    "samples": found["samples"],
                    "effective_gradient": found["effective_samples_gradient"],
                    "effective_curvature": found["effective_samples_curvature"],
                    "min_class_share_gradient": found["min_class_share_gradient"],
                    "min_class_share_curvature": found["min_class_share_curvature"],
                }
                log(
                    f"{arch} s{seed} {setting}: effective samples gradient {diag['effective_gradient']:.1f}, "
                    f"curvature {diag['effective_curvature']:.1f} of {diag['samples']}"
                )
                for method in args.methods:
                    numbers = prune_and_finetune(model, method, make, args, tier, bundle, seed)
                    log(
                        f"{arch} s{seed} {setting:13s} {method:7s}: one-shot {numbers['oneshot_top1']:.1f}%  "
                        f"fine-tuned {numbers['finetuned_top1']:.1f}%  (random {reference['finetuned_top1']:.1f}%)"
                    )
                    rows.append({**common, "setting": setting, "method": method, **diag, **numbers, **env})
    return rows


def markdown(rows: list[dict], args, seconds: float) -> str:
    def mean(key, **where):
        values = [r[key] for r in rows if all(r.get(k) == v for k, v in where.items()) and r.get(key) is not None]
        return statistics.fmean(values) if values else float("nan")

    lines = [
        "# Calibration setting vs effective samples and pruned accuracy",
        "",
        f"Default tier recipe (digits), ratio {args.ratio} of structures, seeds {args.seeds}; means over seeds. "
        f"Generated by `benchmarks/calibration.py` in {seconds / 60:.1f} min.",
        "",
        "| arch | setting | base top-1 | eff. samples (grad / curv) | min class share (grad) | method | one-shot top-1 | fine-tuned top-1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch in args.archs:
        lines.append(
            f"| {arch} | (data-free) | {mean('base_top1', arch=arch, method='random'):.1f} | | | random | "
            f"{mean('oneshot_top1', arch=arch, method='random'):.1f} | "
            f"{mean('finetuned_top1', arch=arch, method='random'):.1f} |"
        )
        for setting in args.settings:
            for method in args.methods:
                where = {"arch": arch, "setting": setting, "method": method}
                lines.append(
                    f"| {arch} | {setting} | {mean('base_top1', **where):.1f} | {mean('effective_gradient', **where):.1f} / "
                    f"{mean('effective_curvature', **where):.1f} | {mean('min_class_share_gradient', **where):.2f} | "
                    f"{method} | {mean('oneshot_top1', **where):.1f} | {mean('finetuned_top1', **where):.1f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(args.out_dir / "calibration.csv", rows)
    (args.out_dir / "calibration.md").write_text(markdown(rows, args, time.perf_counter() - t0))
    log(f"wrote {args.out_dir / 'calibration.csv'} and calibration.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
