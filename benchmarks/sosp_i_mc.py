"""SOSP-I Monte-Carlo noise: how far the ``mc`` estimator's saliency ranking is from ``exact``'s.

SOSP-I scores ``lambda_s = |g_s| + 1/2 sum_s' |G_ss'|``. The ``mc`` estimator
(:func:`sosp.methods.sosp_i.sosp_i_terms`, ``estimator="mc"``, ``mc_samples=K``) replaces the Gauss-Newton
matrix ``G = (1/N) sum_n J_n^T Lambda_n J_n`` by ``(1/(NK)) sum_{n,k} v_nk v_nk^T`` with ``v_nk`` the
per-sample gate gradient for a label drawn from the model's softmax. Each entry is unbiased, but
``|.|`` of a noisy entry is biased upward by about its noise (``~ sigma_ss' / sqrt(NK)`` where
``G_ss' ~ 0``), and SOSP-I sums ``S`` such entries per row: the hypothesis is a noise floor that
grows with ``S`` and shrinks with ``N K``. This script measures the ranking error on TRAINED models
(results and the ImageNet decision: benchmarks/README.md, "SOSP-I Monte-Carlo noise").

Setup: CIFAR ResNet-20 and ResNet-56 (option-B shortcuts: S = 448 and 1120 structures), trained
in-process on the embedded 8x8 digits (``sosp.train.DEFAULT_DIGITS_CONFIG`` plus 2 warm-up epochs,
20 epochs, seed 0; 10 classes; 98.6 % / 96.7 % test top-1), scored on a fixed calibration set (the
first ``--samples`` training images, batches of ``--batch-size``). Per model: ``exact`` once, then ``mc`` for every ``K`` in ``--ks`` and every
MC seed in ``range(--seeds)``. From the same ``g`` and ``G`` four saliency variants are compared
with the same variant of ``exact``:

- ``sosp_i``: ``|g_s| + 1/2 sum_s' |G_ss'|`` (what ``sosp prune`` ranks; checked once against
  :func:`sosp.runner.score`),
- ``offdiag``: ``sum_{s' != s} |G_ss'|`` alone (the part of ``sosp_i`` that holds ``|.|`` of noisy
  off-diagonal entries),
- ``diag``: ``|g_s| + 1/2 G_ss`` (no off-diagonal entries: positive sums of squares, no ``|.|`` bias),
- ``row_sum``: ``|g_s| + 1/2 |sum_s' G_ss'|`` (SOSP-H's form: ``|.|`` after the signed sum).

S-dependence: besides the two models, ``sosp_i`` is recomputed on principal submatrices of ``G``
(``--subset-sizes``: a random set of ``S'`` structures, the saliency as if only they existed,
``--subset-draws`` sets per size, the same sets for ``exact`` and every ``mc`` run).
N-dependence (``--sample-scan``): ResNet-20 again with other calibration sizes (the first model
only), since the ``mc`` noise scales as ``1/sqrt(N K)``. Predictive spread (``--nonmax-target``):
trained digits models are far more confident than an ImageNet model (mean probability of a
non-argmax label 0.002-0.016 against roughly 0.2-0.3), and a sampled label then rarely differs from
the argmax; each model is therefore also scored with its classifier divided by the temperature
that makes that mean 0.25 (rows ``condition=nonmax0.25``; ``exact`` recomputed for it).

Metrics (each ``mc`` run against ``exact`` on the same calibration set): Spearman rank correlation;
the overlap ``|B_mc & B_exact| / |B_exact|`` of the bottom-30% and bottom-50% sets (lowest saliency
first: what a global pruning step removes); the same two after dividing by the MACs each structure
frees (``normalize: cost``, :func:`sosp.selection.cost_per_structure`; the ImageNet tier's setting);
``abs_sum_inflation = sum_{s != s'} |G^mc_ss'| / sum_{s != s'} |G_ss'| - 1`` (the noise floor
itself, relative to the off-diagonal mass); and the wall time of :func:`sosp.methods.sosp_i.sosp_i_terms`
(``seconds``).

Output: ``--out-dir``/``sosp_i_mc.csv`` (one row per model, N, estimator, K, seed, variant and
subset size; columns in benchmarks/README.md) and a summary table on stdout.

    nice -n 5 python benchmarks/sosp_i_mc.py --quick     # smoke: ResNet-20, N=128, K<=4, about 15 s
    nice -n 5 python benchmarks/sosp_i_mc.py             # full: about 7 min on one thread (2.5 of them training)
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from benchmarks import common  # noqa: E402
from sosp import data, models, runner, selection, train  # noqa: E402
from sosp.methods.sosp_i import sosp_i_terms  # noqa: E402
from sosp.structures import channel_groups, classifier_name, total_structures  # noqa: E402

VARIANTS = ("sosp_i", "offdiag", "diag", "row_sum")
WARMUP_EPOCHS = 2  # without it ResNet-56 reaches only 79 % on digits (lr 0.1 from the start); with it 97 %
BOTTOM = (0.3, 0.5)


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.set_defaults(threads=1)
    parser.add_argument("--models", nargs="+", default=None, help="CIFAR ResNets (default resnet20 resnet56)")
    parser.add_argument(
        "--ks", type=int, nargs="+", default=None, help="mc_samples values (default 1 4 16 64; quick 1 4)"
    )
    parser.add_argument("--seeds", type=int, default=None, help="MC seeds per K (default 3; quick 2)")
    parser.add_argument("--samples", type=int, default=None, help="calibration samples N (default 512; quick 128)")
    parser.add_argument("--batch-size", type=int, default=128, help="calibration batch size")
    parser.add_argument(
        "--subset-sizes",
        type=int,
        nargs="+",
        default=None,
        help="S' of the principal-submatrix study (default 32 64 128 256 448; quick 32 128)",
    )
    parser.add_argument("--subset-draws", type=int, default=5, help="random structure sets per S'")
    parser.add_argument(
        "--sample-scan",
        type=int,
        nargs="*",
        default=None,
        help="extra N for the first model (default 256 1024; quick none)",
    )
    parser.add_argument(
        "--sample-scan-ks", type=int, nargs="+", default=None, help="K values of the N scan (default 1 4 16; quick 1)"
    )
    parser.add_argument(
        "--nonmax-target",
        type=float,
        default=0.25,
        help="also score each model with its logits divided by the temperature T at which the "
        "mean non-argmax probability on the calibration set is this (ImageNet-like "
        "predictive spread; a trained digits model is far more confident); negative: skip",
    )
    parser.add_argument(
        "--soft-ks",
        type=int,
        nargs="+",
        default=None,
        help="K values of that softened condition (default 1 4 16; quick 1)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 20; quick 5)")
    parser.add_argument(
        "--model-cache",
        type=Path,
        default=None,
        help="folder to keep the trained models in (reused when present); default: none",
    )
    args = parser.parse_args(argv)
    q = args.quick
    pick = lambda v, full, quick: v if v is not None else (quick if q else full)  # noqa: E731
    args.models = pick(args.models, ["resnet20", "resnet56"], ["resnet20"])
    args.ks = pick(args.ks, [1, 4, 16, 64], [1, 4])
    args.seeds = pick(args.seeds, 3, 2)
    args.samples = pick(args.samples, 512, 128)
    args.subset_sizes = pick(args.subset_sizes, [32, 64, 128, 256, 448], [32, 128])
    args.sample_scan = pick(args.sample_scan, [256, 1024], [])
    args.sample_scan_ks = pick(args.sample_scan_ks, [1, 4, 16], [1])
    args.epochs = pick(args.epochs, 20, 5)
    args.soft_ks = pick(args.soft_ks, [1, 4, 16], [1])
    if args.nonmax_target is not None and args.nonmax_target < 0:
        args.nonmax_target = None
    return args


# ---------------------------------------------------------------------------------------------
# Models


def trained_model(arch: str, bundle: data.DataBundle, epochs: int, cache: Path | None):
    """``arch`` trained on digits (seed 0), its test top-1, and the training seconds (0 if cached)."""
    path = cache / f"{arch}_digits_e{epochs}_w{WARMUP_EPOCHS}.pt" if cache is not None else None
    if path is not None and path.exists():
        payload = torch.load(path, weights_only=False)
        return payload["model"], payload["top1"], 0.0
    torch.manual_seed(0)
    model = models.create(arch, num_classes=bundle.num_classes, in_channels=bundle.in_channels)
    config = train.TrainConfig(
        **{**train.DEFAULT_DIGITS_CONFIG.to_dict(), "epochs": epochs, "warmup_epochs": min(WARMUP_EPOCHS, epochs)}
    )
    start = time.perf_counter()
    train.train(model, bundle, config, seed=0, progress=False)
    seconds = time.perf_counter() - start
    top1 = train.evaluate(model, bundle.test)["top1"]
    model.eval()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model, "top1": top1}, path)
    return model, top1, seconds


def softened(model, example_input, temperature: float):
    """A copy of ``model`` whose logits are divided by ``temperature`` (classifier weight and bias scaled)."""
    model = copy.deepcopy(model)
    head = dict(model.named_modules())[classifier_name(model, example_input)]
    with torch.no_grad():
        head.weight /= temperature
        if head.bias is not None:
            head.bias /= temperature
    return model


@torch.no_grad()
def confidence(model, x) -> dict:
    """Predictive spread on ``x``: mean ``1 - max_c p_c`` (the chance that a sampled label is not the
    argmax) and mean ``1 - sum_c p_c^2`` (the chance that two sampled labels differ)."""
    p = model.eval()(x).double().softmax(-1)
    return {"mean_nonmax_prob": float((1 - p.max(-1).values).mean()), "mean_gini": float((1 - (p * p).sum(-1)).mean())}


def temperature_for(model, x, target: float) -> float:
    """The ``T >= 1`` (bisection on log T) at which the mean non-argmax probability on ``x`` is ``target``."""
    with torch.no_grad():
        logits = model.eval()(x).double()
    nonmax = lambda t: float((1 - (logits / t).softmax(-1).max(-1).values).mean())  # noqa: E731
    lo, hi = 0.0, math.log(1e4)
    if nonmax(1.0) >= target:
        return 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if nonmax(math.exp(mid)) < target else (lo, mid)
    return math.exp((lo + hi) / 2)


def costs_or_none(model, groups, example_input):
    try:
        return torch.cat(selection.cost_per_structure(model, groups, example_input)).double()
    except Exception as err:  # the cost columns are a side result: never lose the run for them
        common.log(f"  cost_per_structure failed ({type(err).__name__}: {err}); cost columns left empty")
        return None


# ---------------------------------------------------------------------------------------------
# Metrics


def variant_scores(g: torch.Tensor, G: torch.Tensor, idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The three saliency variants, on the principal submatrix ``idx`` (all structures if None)."""
    if idx is not None:
        g, G = g[idx], G[idx][:, idx]
    g, G = g.double(), G.double()
    absG = G.abs()
    return {
        "sosp_i": g.abs() + 0.5 * absG.sum(1),
        "offdiag": absG.sum(1) - absG.diagonal(),
        "diag": g.abs() + 0.5 * G.diagonal(),
        "row_sum": g.abs() + 0.5 * G.sum(1).abs(),
    }


def bottom_overlap(a: torch.Tensor, b: torch.Tensor, fraction: float) -> float:
    """``|bottom(a) & bottom(b)| / k`` with ``k = round(fraction * len)``, lowest first, ties by position."""
    k = max(1, round(fraction * len(a)))
    low = lambda s: set(np.lexsort((np.arange(len(s)), s.numpy()))[:k].tolist())  # noqa: E731
    return len(low(a) & low(b)) / k


def compare(mc: torch.Tensor, exact: torch.Tensor, cost: torch.Tensor | None) -> dict:
    row = {"spearman": float(spearmanr(mc.numpy(), exact.numpy())[0])}
    for f in BOTTOM:
        row[f"bottom{round(f * 100)}_overlap"] = bottom_overlap(mc, exact, f)
    if cost is not None:
        mc_c, ex_c = mc / cost, exact / cost
        row["spearman_cost"] = float(spearmanr(mc_c.numpy(), ex_c.numpy())[0])
        for f in BOTTOM:
            row[f"bottom{round(f * 100)}_overlap_cost"] = bottom_overlap(mc_c, ex_c, f)
    return row


def mean_rows(rows: list[dict]) -> dict:
    """Column-wise mean of metric dicts (over subset draws)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def inflation(G_mc: torch.Tensor, G_exact: torch.Tensor, idx: torch.Tensor | None = None) -> float:
    """``sum_{s != s'} |G^mc_ss'| / sum_{s != s'} |G_ss'| - 1``: the off-diagonal noise floor."""
    if idx is not None:
        G_mc, G_exact = G_mc[idx][:, idx], G_exact[idx][:, idx]
    off = lambda M: float(M.double().abs().sum() - M.double().diagonal().abs().sum())  # noqa: E731
    return off(G_mc) / off(G_exact) - 1


# ---------------------------------------------------------------------------------------------
# One model at one calibration size


def run_case(
    arch,
    model,
    top1,
    bundle,
    groups,
    cost,
    n,
    ks,
    seeds,
    subset_sizes,
    draws,
    batch_size,
    env,
    check_score: bool,
    condition: str = "trained",
    temperature: float = 1.0,
) -> list[dict]:
    S = total_structures(groups)
    x, y = bundle.train.x[:n], bundle.train.y[:n]
    if len(x) < n:
        raise SystemExit(f"only {len(x)} training samples, asked for N={n}")

    def batches():
        for i in range(0, n, batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]

    def terms(**options):
        start = time.perf_counter()
        t = sosp_i_terms(model, groups, batches(), **options)
        return t, time.perf_counter() - start

    sosp_i_terms(model, groups, batches(), estimator="mc", mc_samples=1)  # warm-up (untimed)
    exact, exact_seconds = terms(estimator="exact")
    g_ex, G_ex = exact["g"].cpu(), exact["G"].cpu()
    sizes = [s for s in subset_sizes if s < S] + [S]
    subsets = {
        s: [None]
        if s == S
        else [torch.randperm(S, generator=torch.Generator().manual_seed(1000 * s + d))[:s] for d in range(draws)]
        for s in sizes
    }
    exact_scores = {s: [variant_scores(g_ex, G_ex, idx) for idx in subsets[s]] for s in sizes}
    full = exact_scores[S][0]["sosp_i"]
    second_share = float((0.5 * G_ex.double().abs().sum(1)).sum() / full.sum())
    if check_score:
        ref = torch.cat(runner.score("sosp_i", model, groups, batches(), estimator="exact"))
        if not torch.allclose(ref, full, rtol=1e-4, atol=1e-12 + 1e-6 * float(full.abs().max())):
            raise RuntimeError("sosp_i variant differs from sosp.runner.score('sosp_i'): the script is stale")
    spread = confidence(model, x)
    base = {
        "model": arch,
        "dataset": bundle.name,
        "num_classes": bundle.num_classes,
        "test_top1": top1,
        "condition": condition,
        "temperature": temperature,
        **spread,
        "num_structures": S,
        "samples": n,
        "batch_size": batch_size,
        "second_order_share": second_share,
        "exact_seconds": exact_seconds,
    }
    rows = [
        {
            **base,
            "estimator": "exact",
            "mc_samples": None,
            "mc_seed": None,
            "variant": v,
            "subset_size": S,
            "subset_draws": 1,
            "spearman": 1.0,
            "seconds": exact_seconds,
            "ratio_to_exact": 1.0,
            "backward_passes_per_batch": bundle.num_classes,
            **env,
        }
        for v in VARIANTS
    ]
    common.log(
        f"{arch} {condition} N={n}: S={S}, exact {exact_seconds:.2f} s, second-order share "
        f"{second_share:.2f}, test top-1 {top1:.3f}, mean non-argmax prob {spread['mean_nonmax_prob']:.4f}"
    )
    for K in ks:
        for seed in range(seeds):
            mc, seconds = terms(estimator="mc", mc_samples=K, seed=seed)
            g_mc, G_mc = mc["g"].cpu(), mc["G"].cpu()
            for s in sizes:
                per_draw = {v: [] for v in VARIANTS}
                infl = []
                for idx, ex in zip(subsets[s], exact_scores[s]):
                    scores = variant_scores(g_mc, G_mc, idx)
                    c = None if cost is None else (cost if idx is None else cost[idx])
                    for v in VARIANTS:
                        per_draw[v].append(compare(scores[v], ex[v], c))
                    infl.append(inflation(G_mc, G_ex, idx))
                for v in VARIANTS:
                    if s != S and v != "sosp_i":
                        continue  # the subset study is about the |.|-before-sum variant
                    rows.append(
                        {
                            **base,
                            "estimator": "mc",
                            "mc_samples": K,
                            "mc_seed": seed,
                            "variant": v,
                            "subset_size": s,
                            "subset_draws": len(subsets[s]),
                            **mean_rows(per_draw[v]),
                            "abs_sum_inflation": float(np.mean(infl)) if v == "sosp_i" else None,
                            "effective_draws": n * K * spread["mean_nonmax_prob"],
                            "seconds": seconds,
                            "ratio_to_exact": seconds / exact_seconds,
                            "backward_passes_per_batch": K + 1,
                            **env,
                        }
                    )
            full_row = next(r for r in rows[::-1] if r["variant"] == "sosp_i" and r["subset_size"] == S)
            common.log(
                f"  K={K:<4} seed {seed}: spearman {full_row['spearman']:.4f}, bottom-30% overlap "
                f"{full_row['bottom30_overlap']:.3f}, inflation {full_row['abs_sum_inflation']:.3f}, "
                f"{seconds:.2f} s"
            )
    return rows


# ---------------------------------------------------------------------------------------------
# Summary


def summary(rows: list[dict]) -> str:
    """One line per (model, condition, N, variant, S', K): means over MC seeds (Spearman also +- the
    sample standard deviation over seeds)."""

    def mean(sel, col):
        values = [r.get(col) for r in sel]
        values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return float(np.mean(values)) if values else math.nan

    key = lambda r: (
        r["model"],
        r["condition"],
        r["num_structures"],
        r["samples"],
        r["variant"],  # noqa: E731
        r["subset_size"],
        r["mc_samples"],
    )
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["estimator"] == "mc":
            groups.setdefault(key(r), []).append(r)
    lines = [
        (
            f"{'model':<9} {'condition':<10} {'S':>5} {'N':>5} {'variant':<8} {'S_sub':>5} {'K':>4} "
            f"{'spearman':>16} {'bot30':>6} {'bot50':>6} {'bot30c':>6} {'infl':>6} {'sec':>6} {'x_exact':>7}"
        )
    ]
    for k, sel in groups.items():
        rho = [r["spearman"] for r in sel]
        lines.append(
            f"{k[0]:<9} {k[1]:<10} {k[2]:>5} {k[3]:>5} {k[4]:<8} {k[5]:>5} {k[6]:>4} "
            f"{np.mean(rho):>8.4f}+-{np.std(rho, ddof=1) if len(rho) > 1 else 0.0:.4f} {mean(sel, 'bottom30_overlap'):>6.3f} "
            f"{mean(sel, 'bottom50_overlap'):>6.3f} {mean(sel, 'bottom30_overlap_cost'):>6.3f} "
            f"{mean(sel, 'abs_sum_inflation'):>6.3f} {mean(sel, 'seconds'):>6.2f} "
            f"{mean(sel, 'ratio_to_exact'):>7.2f}"
        )
    for r in rows:
        if r["estimator"] == "exact" and r["variant"] == "sosp_i":
            lines.append(
                f"exact: {r['model']} {r['condition']} N={r['samples']}: {r['seconds']:.2f} s "
                f"({r['backward_passes_per_batch']} backward passes per batch), mean non-argmax prob "
                f"{r['mean_nonmax_prob']:.4f}"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    common.set_threads(args.threads, args.quick)
    env = common.environment("cpu")
    bundle = data.load("digits", val_fraction=0.1)
    calibration = bundle.train.x[: args.samples]
    rows = []
    for i, arch in enumerate(args.models):
        model, top1, train_seconds = trained_model(arch, bundle, args.epochs, args.model_cache)
        common.log(f"{arch}: trained ({train_seconds:.1f} s), test top-1 {top1:.3f}")
        groups = channel_groups(model, bundle.example_input)
        cost = costs_or_none(model, groups, bundle.example_input)
        ns = [(args.samples, args.ks, args.subset_sizes)]
        if i == 0:
            ns += [(n, args.sample_scan_ks, []) for n in args.sample_scan if n != args.samples]
        for j, (n, ks, subset_sizes) in enumerate(ns):
            rows += run_case(
                arch,
                model,
                top1,
                bundle,
                groups,
                cost,
                n,
                ks,
                args.seeds,
                subset_sizes,
                args.subset_draws,
                args.batch_size,
                env,
                check_score=j == 0,
            )
        if args.nonmax_target is not None:
            t = temperature_for(model, calibration, args.nonmax_target)
            soft = softened(model, bundle.example_input, t)
            rows += run_case(
                arch,
                soft,
                top1,
                bundle,
                channel_groups(soft, bundle.example_input),
                cost,
                args.samples,
                args.soft_ks,
                args.seeds,
                [],
                args.subset_draws,
                args.batch_size,
                env,
                check_score=False,
                condition=f"nonmax{args.nonmax_target:g}",
                temperature=t,
            )
    path = common.write_csv(args.out_dir / "sosp_i_mc.csv", rows)
    print(summary(rows))
    common.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
