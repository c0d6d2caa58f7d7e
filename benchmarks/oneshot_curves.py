"""Low-ratio one-shot curves: every method at small pruning ratios of structures and of MACs, one-shot
(no fine-tuning) test top-1 and loss, with the BatchNorm statistics as they are and re-estimated on
training images. Without fine-tuning noise, this is where the saliencies themselves are compared.

The base models are those of the CIFAR-10 CPU tier's recipe (``config/cifar10_cpu.yaml``), cached by
``benchmarks/layer_collapse.py`` / ``benchmarks/quadratic_fidelity.py`` under ``work/``. Every method
scores once per (seed, target) through ``sosp.runner.run_ratios`` exactly as ``sosp prune`` does
(``prune.samples`` training images, the tier's floor and normalisation) and is pruned to each ratio.
Each pruned model is evaluated on the test split twice: as pruned, and after re-estimating its BN
statistics (cumulative average over ``--recalibrate`` augmentation-free training images, model in
train mode without gradients). The evaluation, the rows and the Markdown table are the suite's own
(``sosp.oneshot``, ``sosp.results.oneshot``: what a tier's ``prune.oneshot_ratios`` computes in its
pruning jobs); this script adds the cached base models, a test subset and the environment columns.
Outputs: ``results/benchmarks/oneshot_curves.csv`` and ``.md``.
``--quick``: digits, default tier recipe, 2 epochs, two methods, two ratios, outputs under work/.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
import yaml

from benchmarks.common import environment, write_csv
from benchmarks.layer_collapse import base_model, load_tier, log
from sosp import data, oneshot, train
from sosp.results.oneshot import oneshot_markdown, oneshot_table
from sosp.runner import run_ratios

OUT_DIR = ROOT / "results" / "benchmarks"
WORK_DIR = ROOT / "work" / "benchmarks" / "layer_collapse"  # base models shared with the other benchmarks
METHODS = ["sosp_h", "sosp_i", "taylor", "cobd", "eigendamage", "magnitude", "random"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="digits smoke run, outputs under the work folder")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "cifar10_cpu.yaml")
    p.add_argument("--data-root", help="overrides the tier's dataset.root")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--ratios", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.4])
    p.add_argument("--targets", nargs="+", default=["structures", "macs"])
    p.add_argument("--recalibrate", type=int, default=2048, help="training images for BN re-estimation")
    p.add_argument(
        "--test-images",
        type=int,
        default=None,
        help="evaluate on this many test images (a fixed stratified-by-seed subset; default all)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--out-dir", type=Path, default=None, help="default results/benchmarks (--quick: work folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.config, args.methods, args.ratios = ROOT / "config" / "config.yaml", ["sosp_h", "random"], [0.1, 0.3]
    if args.out_dir is None:
        args.out_dir = args.work_dir / "quick_oneshot" if args.quick else OUT_DIR
    return args


def run(args) -> list[dict]:
    tier = load_tier(args.config, args.quick)
    cfg = yaml.safe_load(args.config.read_text())
    if args.data_root:
        tier["data"]["root"] = args.data_root
    bundle = data.load(**tier["data"])
    if args.test_images and args.test_images < len(bundle.test):
        keep = torch.randperm(len(bundle.test), generator=torch.Generator().manual_seed(0))[: args.test_images]
        bundle.test = bundle.test.subset(keep.sort().values)
    pc = tier["prune"]
    env = environment()
    rows = []
    for seed in args.seeds:
        model, base_top1, _, _ = base_model(args.arch, seed, tier, bundle, args.work_dir)
        model.eval()
        base = train.evaluate(model, bundle.test)
        log(f"{args.arch} s{seed}: base test top-1 {100 * base['top1']:.2f}%, loss {base['loss']:.3f}")

        def calibration(seed=seed):
            return data.batches(
                bundle.train, pc["score_batch_size"], shuffle=True, generator=torch.Generator().manual_seed(seed)
            )

        for target in args.targets:
            for method in args.methods:
                t0 = time.perf_counter()
                results = run_ratios(
                    method,
                    model,
                    calibration,
                    args.ratios,
                    example_input=bundle.example_input[:1],
                    target=target,
                    min_channels=pc["min_channels"],
                    min_fraction=cfg["prune"]["min_fraction"],
                    normalize=pc["normalize"],
                    num_samples=pc["samples"],
                    seed=seed,
                    **copy.deepcopy(tier["prune_options"].get(method, {})),
                )
                for ratio, result in zip(args.ratios, results):
                    metrics = oneshot.evaluate(
                        result.model, bundle, modes=oneshot.BN_MODES, bn_images=args.recalibrate, seed=seed
                    )
                    identity = {
                        "tier": args.config.stem,
                        "dataset": tier["data"]["name"],
                        "net": args.arch,
                        "seed": seed,
                        "method": method,
                        "method_options": "{}",
                        "target": target,
                        "ratio": ratio,
                        "samples": pc["samples"],
                        "split": "test",
                        "base_top1_pct": 100 * base["top1"],
                        "base_loss": base["loss"],
                    }
                    rows.append({**oneshot.row(result.report, metrics, **identity), **env})
                    log(
                        f"s{seed} {target:10s} {method:11s} r{ratio}: top-1 {metrics['oneshot_top1_pct']:.1f}% "
                        f"(BN re-estimated {metrics['reestimated_top1_pct']:.1f}%), loss {metrics['oneshot_loss']:.3f}"
                    )
                log(f"s{seed} {target} {method}: {time.perf_counter() - t0:.0f} s")
    return rows


def markdown(rows: list[dict], args, seconds: float) -> str:
    """The suite's one-shot table (``sosp.results.oneshot``) of the rows, with this run's note."""
    import pandas as pd

    base = rows[0]
    note = (
        f"`benchmarks/oneshot_curves.py`: {args.arch} on the `{args.config.stem}` tier's data and recipe, seeds "
        f"{args.seeds} (base test top-1 {base['base_top1_pct']:.1f} %, loss {base['base_loss']:.3f}); every method "
        f"scored once per target on {base['samples']} calibration images as `sosp prune`, the tier's floor; test "
        f"top-1 (%) and loss on {args.test_images or 'all'} test images, one-shot with BN statistics as they are / "
        f"re-estimated on {base['bn_images']} training images; mean ± std over seeds. {seconds / 60:.1f} min."
    )
    return oneshot_markdown(oneshot_table(pd.DataFrame(rows)), note=note)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(args.out_dir / "oneshot_curves.csv", rows)
    (args.out_dir / "oneshot_curves.md").write_text(markdown(rows, args, time.perf_counter() - t0))
    log(f"wrote {args.out_dir / 'oneshot_curves.csv'} and oneshot_curves.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
