"""Low-ratio one-shot curves: every method at small pruning ratios of structures and of MACs, one-shot
(no fine-tuning) test top-1 and loss, with the BatchNorm statistics as they are and re-estimated on
training images. Without fine-tuning noise, this is where the saliencies themselves are compared.

The base models are those of the CIFAR-10 CPU tier's recipe (``config/cifar10_cpu.yaml``), cached by
``benchmarks/layer_collapse.py`` / ``benchmarks/quadratic_fidelity.py`` under ``work/``. Every method
scores once per (seed, target) through ``sosp.runner.run_ratios`` exactly as ``sosp prune`` does
(``prune.samples`` training images, the tier's floor and normalisation) and is pruned to each ratio.
Each pruned model is evaluated on the test split twice: as pruned, and after re-estimating its BN
statistics (cumulative average over ``--recalibrate`` augmentation-free training images, model in
train mode without gradients). Outputs: ``results/benchmarks/oneshot_curves.csv`` and ``.md``.
``--quick``: digits, default tier recipe, 2 epochs, two methods, two ratios, outputs under work/.
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
from benchmarks.layer_collapse import base_model, load_tier, log
from sosp import data, train
from sosp.runner import run_ratios
from sosp.utils import train_mode

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


def recalibrated(model: torch.nn.Module, bundle, images: int, seed: int) -> torch.nn.Module:
    """A copy with BN running statistics re-estimated (cumulative average) on ``images`` training images."""
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    seen = 0
    with train_mode(model), torch.no_grad():
        for x, _ in data.batches(bundle.train, 256, shuffle=True, generator=torch.Generator().manual_seed(seed)):
            model(x[: images - seen])
            seen += min(len(x), images - seen)
            if seen >= images:
                break
    return model.eval()


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
                    rep = result.report
                    plain = train.evaluate(result.model, bundle.test)
                    recal = train.evaluate(recalibrated(result.model, bundle, args.recalibrate, seed), bundle.test)
                    rows.append(
                        {
                            "arch": args.arch,
                            "seed": seed,
                            "method": method,
                            "target": target,
                            "ratio": ratio,
                            "base_top1": 100 * base["top1"],
                            "base_loss": base["loss"],
                            "achieved_fraction": rep["achieved_fraction"],
                            "macs_removed_pct": 100 * (1 - rep["macs_after"] / rep["macs_before"]),
                            "params_removed_pct": 100 * (1 - rep["params_after"] / rep["params_before"]),
                            "min_kept_pct": 100 * rep["min_kept_fraction"],
                            "oneshot_top1": 100 * plain["top1"],
                            "oneshot_loss": plain["loss"],
                            "recalibrated_top1": 100 * recal["top1"],
                            "recalibrated_loss": recal["loss"],
                            "samples": pc["samples"],
                            **env,
                        }
                    )
                    log(
                        f"s{seed} {target:10s} {method:11s} r{ratio}: top-1 {100 * plain['top1']:.1f}% "
                        f"(BN re-estimated {100 * recal['top1']:.1f}%), loss {plain['loss']:.3f}"
                    )
                log(f"s{seed} {target} {method}: {time.perf_counter() - t0:.0f} s")
    return rows


def markdown(rows: list[dict], args, seconds: float) -> str:
    def mean(key, **where):
        values = [r[key] for r in rows if all(r[k] == v for k, v in where.items())]
        return statistics.fmean(values) if values else float("nan")

    base = rows[0]
    lines = [
        "# One-shot accuracy at low pruning ratios (no fine-tuning)",
        "",
        f"`benchmarks/oneshot_curves.py`: {args.arch} on the `{args.config.stem}` tier's data and recipe, seeds "
        f"{args.seeds} (base test top-1 {base['base_top1']:.1f} %, loss {base['base_loss']:.3f}); every method scored "
        f"once per target on {base['samples']} calibration images as `sosp prune`, the tier's floor; test top-1 (%) "
        f"on {args.test_images or 'all'} test images, "
        f"one-shot with BN statistics as they are / re-estimated on {args.recalibrate} training images, and the "
        f"one-shot test loss; means over seeds. {seconds / 60:.1f} min.",
    ]
    for target in args.targets:
        header = " | ".join(f"r{r}" for r in args.ratios)
        lines += ["", f"## Ratio of {target}", "", f"| method | {header} | loss at r{args.ratios[-1]} |"]
        lines.append("|---|" + "---:|" * (len(args.ratios) + 1))
        for method in args.methods:
            cells = [
                f"{mean('oneshot_top1', method=method, target=target, ratio=r):.1f} / "
                f"{mean('recalibrated_top1', method=method, target=target, ratio=r):.1f}"
                for r in args.ratios
            ]
            loss = mean("oneshot_loss", method=method, target=target, ratio=args.ratios[-1])
            lines.append(f"| {method} | {' | '.join(cells)} | {loss:.3f} |")
    return "\n".join(lines) + "\n"


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
