"""The quadratic model's fidelity: predicted against measured loss change of removing structures.

SOSP's central claim is that the loss change of removing a *set* of structures is predicted by the
quadratic model in gate space (docs/method.md section 2), global correlations (off-diagonal entries
of ``G``, across layers too) included. This benchmark measures it directly, without fine-tuning noise:
on a trained base model it removes single structures and random sets of several sizes, measures the
true loss change, and correlates it with what every method that predicts a loss change predicts.

**Setting.** Base model: ``--arch`` (resnet20) trained with the tier's recipe (``--config``, default
``config/cifar10_cpu.yaml``: CIFAR-10 as an image folder, 12 epochs on 10,000 images) and cached by
``benchmarks/layer_collapse.py``'s :func:`base_model` under ``work/benchmarks/layer_collapse/``.
Calibration data: ``prune.samples`` training images, shuffled with the run seed, in batches of
``prune.score_batch_size``, exactly the samples ``sosp prune`` scores on. Held-out data: the same number
of validation images (``bundle.val``, the split carved from the training set; all of it where it is
smaller), drawn with the run seed. Every prediction is computed once, on the calibration data; the
loss change is measured on both: on the calibration data it tests the quadratic model as a Taylor
expansion of the very loss it was built from, on the held-out data whether the prediction carries to
images the scores never saw (what pruning needs).

**Measured loss change** of a set ``M`` (indicator ``u = 1_M``, removal vector ``d = -t u``; ``t = 1``,
``--depth``, is removal): ``dL(M) = L(1 + d) - L(1)``, the mean cross-entropy over the data with the gates
of ``M`` set to ``1 - t`` (:func:`sosp.structures.gates_applied`, which equals physical removal at
``t = 1``) minus the base loss, in eval mode with the BatchNorm statistics as they are. Forward passes
run in ``--dtype`` (float32 by default: float64 convolutions are about 10x slower on the CPU); logits
are cast to float64 before the loss and every sum is in float64. ``--precision-sets`` single structures (evenly spread
over them) are measured in float64 as well and the largest difference is reported (the float32 noise floor).

**Sets.** ``single``: every structure alone (``--singles N``: a seeded random N of them); fractions
``--fractions`` (default 1 %, 5 %, 20 % of the ``S`` structures, rounded, at least 1): ``--sets`` random
sets each, drawn uniformly without replacement from all structures (no per-group floor), seeded by the
run seed and the size.

**Predictors** (``g``, ``G`` are the calibration means of docs/method.md section 2; each is a function
of ``u``, and Spearman/Pearson are taken over the sets of one size):

signed predictions of the loss change (the quadratic model and its truncations):

- ``quadratic`` (SOSP-I ``estimator=exact``): ``-t g.u + t^2/2 u^T G u``, the full model with the
  exact Gauss-Newton ``G`` of :func:`sosp.methods.sosp_i.sosp_i_terms`;
- ``quadratic_mc`` (SOSP-I ``estimator=mc``, 1 label per sample): the same with the Monte-Carlo ``G``;
- ``quadratic_block``: exact ``G`` with only the entries within one channel group (no correlations
  between groups, i.e. between layers that are not coupled);
- ``quadratic_diag``: only the diagonal ``G_ss`` (no correlations at all);
- ``first_order`` (the first-order term of SOSP, and the signed quantity Taylor squares): ``-t g.u``;
- ``sosp_h_additive`` (SOSP-H, ``curvature=ggn``): ``sum_{s in M} (-t g_s + t^2/2 (G 1)_s)``, the sum of
  the per-structure quantity whose absolute value is SOSP-H's ``combine=joint`` score. It is the set's
  share of the quadratic model of removing *every* structure, so it counts the set's interactions with
  the structures outside it as if those were removed too (``u^T G 1`` instead of ``u^T G u``): exact for
  the whole network, an approximation for a part of it;
- ``sosp_h_additive_hessian``: the same with the exact Hessian-vector product ``H 1``
  (``curvature=hessian``) in place of ``G 1``.

scores summed over the set (each method's saliency, the quantity it ranks by; a method that removes
the lowest-scoring structures treats the sum as the cost of a set, so these are rank predictors of
``|dL|``, unsigned, whatever their scale):

- ``sosp_h[combine=separate|joint|second_order]``: ``|g_s| + 1/2 |(G 1)_s|``, ``|-g_s + 1/2 (G 1)_s|``,
  ``1/2 |(G 1)_s|`` (``sosp.methods.sosp_h.SOSP_H_COMBINE`` applied to ``g`` and ``G 1`` from one
  :func:`~sosp.methods.sosp_h.sosp_h_terms` pass: the method's scores);
- ``sosp_i[estimator=exact|mc]``: ``|g_s| + 1/2 sum_s' |G_ss'|`` (the method's formula on
  :func:`~sosp.methods.sosp_i.sosp_i_terms`); its sum over ``M`` bounds ``|quadratic|`` from above;
- ``taylor``: ``mean_m (dL_m/dc_s)^2`` over the calibration mini-batches (``sosp.runner.score``);
- ``cobd``: ``1/2 sum_j W_ij^2 F_ij`` over the producers' filters and biases, F the sampled-label
  diagonal Fisher: the OBD prediction of the loss increase (``sosp.runner.score`` halved).

For single structures ``quadratic``, ``quadratic_block`` and ``quadratic_diag`` coincide
(``-t g_s + t^2/2 G_ss``).

**Outputs.** ``results/benchmarks/quadratic_fidelity.csv`` (one row per seed, predictor, set size and
data: ``spearman``, ``pearson``, ``n_sets``, mean measured and predicted change, timings, ``env_*``),
``quadratic_fidelity_sets.csv`` (one row per set: measured changes on both data, every prediction; under
the work folder instead when over 1 MB), ``quadratic_fidelity.md`` (Spearman and Pearson tables, means
over seeds) and ``quadratic_fidelity.png``/``.pdf`` (predicted against measured at one set size, and
Spearman of every predictor). Each seed's terms and measurements are cached under
``work/benchmarks/quadratic_fidelity/`` as they are computed, so an interrupted run resumes, and
seeds can run as separate processes (``--no-report``) and be assembled by a last call.
``--quick``: the default tier (digits, ``config/config.yaml``), 2 training epochs, seed 0, every single
structure, 20 sets per size, outputs under the work folder (about 30 s on one core).
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import environment, save_figure, write_csv  # noqa: E402
from benchmarks.layer_collapse import base_model, load_tier  # noqa: E402
from sosp import data, runner, structures  # noqa: E402
from sosp.errors import DataError  # noqa: E402
from sosp.io import write_atomic  # noqa: E402
from sosp.methods.sosp_h import SOSP_H_COMBINE, sosp_h_terms  # noqa: E402
from sosp.methods.sosp_i import sosp_i_terms  # noqa: E402

OUT_DIR = ROOT / "results" / "benchmarks"
WORK_DIR = ROOT / "work" / "benchmarks" / "quadratic_fidelity"
MODELS_DIR = ROOT / "work" / "benchmarks" / "layer_collapse"  # base models shared with that benchmark
CONFIG = ROOT / "config" / "cifar10_cpu.yaml"
QUICK_CONFIG = ROOT / "config" / "config.yaml"
SETS_CSV_LIMIT = 1 << 20  # bytes: a larger per-set CSV goes under the work folder
SPLITS = ("calibration", "held-out")

# name -> (method it belongs to, kind). Signed predictions first, then the methods' score sums.
PREDICTORS = {
    "quadratic": ("sosp_i[estimator=exact]", "signed"),
    "quadratic_mc": ("sosp_i[estimator=mc]", "signed"),
    "quadratic_block": ("sosp_i[estimator=exact]", "signed"),
    "quadratic_diag": ("sosp_i[estimator=exact]", "signed"),
    "first_order": ("taylor / sosp (first-order term)", "signed"),
    "sosp_h_additive": ("sosp_h[curvature=ggn]", "signed"),
    "sosp_h_additive_hessian": ("sosp_h[curvature=hessian]", "signed"),
    "sosp_h[combine=separate]": ("sosp_h[combine=separate]", "score sum"),
    "sosp_h[combine=joint]": ("sosp_h[combine=joint]", "score sum"),
    "sosp_h[combine=second_order]": ("sosp_h[combine=second_order]", "score sum"),
    "sosp_i[estimator=exact]": ("sosp_i[estimator=exact]", "score sum"),
    "sosp_i[estimator=mc]": ("sosp_i[estimator=mc]", "score sum"),
    "taylor": ("taylor", "score sum"),
    "cobd": ("cobd", "score sum"),
}
FORMULAS = {
    "quadratic": "-t g.u + t²/2 uᵀGu (exact G)",
    "quadratic_mc": "-t g.u + t²/2 uᵀG_mc u",
    "quadratic_block": "-t g.u + t²/2 uᵀG_block u (within-group entries only)",
    "quadratic_diag": "-t g.u + t²/2 Σ G_ss (diagonal only)",
    "first_order": "-t g.u",
    "sosp_h_additive": "Σ_M (-t g_s + t²/2 (G1)_s)",
    "sosp_h_additive_hessian": "Σ_M (-t g_s + t²/2 (H1)_s)",
    "sosp_h[combine=separate]": "Σ_M |g_s| + ½|(G1)_s|",
    "sosp_h[combine=joint]": "Σ_M |-g_s + ½(G1)_s|",
    "sosp_h[combine=second_order]": "Σ_M ½|(G1)_s|",
    "sosp_i[estimator=exact]": "Σ_M |g_s| + ½ Σ_s' |G_ss'|",
    "sosp_i[estimator=mc]": "Σ_M |g_s| + ½ Σ_s' |G_mc,ss'|",
    "taylor": "Σ_M mean_m (dL_m/dc_s)²",
    "cobd": "Σ_M ½ Σ_j W_j² F_jj",
}
FIGURE_PREDICTORS = ("quadratic", "quadratic_diag", "sosp_h_additive", "first_order")

STATS = {"computed": [], "cached": []}  # seeds whose pieces were computed / read from the cache


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="digits smoke run (under 2 min), outputs under the work folder")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"tier config (default {CONFIG.relative_to(ROOT)}; --quick: {QUICK_CONFIG.relative_to(ROOT)})",
    )
    p.add_argument("--data-root", default=None, help="data folder instead of the tier's dataset.root")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=None, help="training epochs instead of the tier's")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.05, 0.2], help="set sizes (of S)")
    p.add_argument("--sets", type=int, default=200, help="random sets per fraction")
    p.add_argument("--singles", type=int, default=None, help="single structures measured (default all)")
    p.add_argument("--depth", type=float, default=1.0, help="t: gates of a set go to 1 - t (1 = removal)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="of the forward passes")
    p.add_argument("--precision-sets", type=int, default=8, help="single structures re-measured in float64")
    p.add_argument("--eval-batch-size", type=int, default=256, help="batch of the measuring forward passes")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR, help="cache of terms and measurements")
    p.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="cache of base models")
    p.add_argument("--out-dir", type=Path, default=None, help="default results/benchmarks (--quick: work folder)")
    p.add_argument("--fresh", action="store_true", help="ignore cached terms and measurements (not base models)")
    p.add_argument("--no-report", action="store_true", help="compute and cache the seeds only, write nothing else")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.config is None:
        args.config = QUICK_CONFIG if args.quick else CONFIG
    if args.quick:
        args.seeds, args.sets = [0], min(args.sets, 20)
        args.precision_sets = min(args.precision_sets, 4)
    if args.out_dir is None:
        args.out_dir = args.work_dir / "quick" if args.quick else OUT_DIR
    if not 0 < args.depth <= 1:
        p.error("--depth must be in (0, 1]")
    if any(not 0 < f < 1 for f in args.fractions):
        p.error("--fractions must be in (0, 1)")
    return args


# ------------------------------------------------------------------------------------------- core


def draw_sets(
    num_structures: int, fractions, sets_per_size: int, singles: int | None, seed: int
) -> dict[str, list[torch.Tensor]]:
    """``label -> list of index tensors``: ``single`` (each structure alone, or a seeded random
    ``singles`` of them) and, per fraction, ``sets_per_size`` uniform random sets of
    ``max(1, round(fraction * S))`` structures. Seeded by ``seed`` and the size, so adding a size
    does not change the others."""
    out = {}
    gen = torch.Generator().manual_seed(seed * 1000)
    if singles is None or singles >= num_structures:
        single = torch.arange(num_structures)
    else:
        single = torch.randperm(num_structures, generator=gen)[:singles].sort().values
    out["single"] = [single[i : i + 1] for i in range(len(single))]
    for i, fraction in enumerate(fractions):
        k = max(1, round(fraction * num_structures))
        gen = torch.Generator().manual_seed(seed * 1000 + i + 1)
        out[size_label(fraction)] = [
            torch.randperm(num_structures, generator=gen)[:k].sort().values for _ in range(sets_per_size)
        ]
    return out


def size_label(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def mean_loss(model, batches) -> float:
    """Mean cross-entropy (logits cast to float64, summed in float64) over all samples."""
    total, n = 0.0, 0
    for x, y in batches:
        total += F.cross_entropy(model(x).double(), y, reduction="sum").item()
        n += len(y)
    return total / n


def measure_loss_changes(model, groups, batches, sets, depth: float = 1.0) -> tuple[float, np.ndarray]:
    """``(base loss, dL per set)``: mean cross-entropy with the gates of each set at ``1 - depth``,
    minus the base loss, in eval mode on ``batches`` (in the model's dtype)."""
    p = next(model.parameters())
    num = structures.total_structures(groups)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            base = mean_loss(model, batches)
            out = np.empty(len(sets))
            for i, idx in enumerate(sets):
                gates = torch.ones(num, dtype=p.dtype, device=p.device)
                gates[idx] = 1 - depth
                with structures.gates_applied(model, groups, gates):
                    out[i] = mean_loss(model, batches) - base
    finally:
        model.train(was_training)
    return base, out


def collect_terms(model, groups, batches: list, seed: int, timings: dict | None = None) -> dict:
    """Everything the predictors need, from the calibration ``batches`` (float64 CPU vectors):
    ``g``, ``G`` (SOSP-I exact), ``g_mc``, ``G_mc`` (SOSP-I mc, seeded), ``g_h``, ``G1`` (SOSP-H ggn),
    ``g_hh``, ``H1`` (SOSP-H hessian), ``taylor`` and ``cobd`` scores (``sosp.runner.score``)."""
    timings = {} if timings is None else timings

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        timings[f"seconds_{name}"] = time.perf_counter() - t0
        return value

    cpu = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
    exact = timed("sosp_i_exact", lambda: sosp_i_terms(model, groups, batches))
    mc = timed("sosp_i_mc", lambda: sosp_i_terms(model, groups, batches, estimator="mc", seed=seed))
    ggn = timed("sosp_h_ggn", lambda: sosp_h_terms(model, groups, batches))
    hess = timed("sosp_h_hessian", lambda: sosp_h_terms(model, groups, batches, curvature="hessian"))
    taylor = timed("taylor", lambda: runner.score("taylor", model, groups, batches))
    cobd = timed("cobd", lambda: runner.score("cobd", model, groups, batches, seed=seed))
    return {
        "g": cpu(exact["g"]),
        "G": cpu(exact["G"]),
        "g_mc": cpu(mc["g"]),
        "G_mc": cpu(mc["G"]),
        "g_h": cpu(ggn["g"]),
        "G1": cpu(ggn["Gv"]),
        "g_hh": cpu(hess["g"]),
        "H1": cpu(hess["Gv"]),
        "taylor": torch.cat(taylor).double(),
        "cobd": torch.cat(cobd).double(),
        "group_of": torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)]),
    }


def method_scores(terms: dict) -> dict[str, torch.Tensor]:
    """Each method's per-structure saliency, as the method computes it from its terms."""
    scores = {}
    for combine, (combinations, make_score) in SOSP_H_COMBINE.items():
        vectors = [a * terms["g_h"] + b * terms["G1"] for a, b in combinations]
        scores[f"sosp_h[combine={combine}]"] = make_score(vectors)
    scores["sosp_i[estimator=exact]"] = terms["g"].abs() + 0.5 * terms["G"].abs().sum(1)
    scores["sosp_i[estimator=mc]"] = terms["g_mc"].abs() + 0.5 * terms["G_mc"].abs().sum(1)
    scores["taylor"] = terms["taylor"]
    scores["cobd"] = 0.5 * terms["cobd"]
    return scores


def indicator(sets, num_structures: int) -> torch.Tensor:
    u = torch.zeros(len(sets), num_structures, dtype=torch.float64)
    for i, idx in enumerate(sets):
        u[i, idx] = 1.0
    return u


def predict(terms: dict, sets, depth: float = 1.0) -> dict[str, np.ndarray]:
    """Every predictor of the module docstring on every set (``u`` its indicator, ``d = -depth u``)."""
    t = depth
    u = indicator(sets, len(terms["g"]))
    G = terms["G"]
    same = terms["group_of"][:, None] == terms["group_of"][None, :]

    def quad(g, M):
        return -t * (u @ g) + 0.5 * t**2 * ((u @ M) * u).sum(1)

    out = {
        "quadratic": quad(terms["g"], G),
        "quadratic_mc": quad(terms["g_mc"], terms["G_mc"]),
        "quadratic_block": quad(terms["g"], G * same),
        "quadratic_diag": -t * (u @ terms["g"]) + 0.5 * t**2 * (u @ G.diagonal()),
        "first_order": -t * (u @ terms["g"]),
        "sosp_h_additive": u @ (-t * terms["g_h"] + 0.5 * t**2 * terms["G1"]),
        "sosp_h_additive_hessian": u @ (-t * terms["g_hh"] + 0.5 * t**2 * terms["H1"]),
    }
    out.update({name: u @ score for name, score in method_scores(terms).items()})
    return {name: out[name].numpy() for name in PREDICTORS}


def correlations(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Spearman and Pearson over the sets, and a 95 % interval of Spearman (Fisher z with Fieller's
    standard error ``sqrt(1.06 / (n - 3))``). NaN where either side is constant or there are < 4 sets."""
    from scipy.stats import pearsonr, spearmanr

    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    n = len(measured)
    if n < 4 or np.ptp(predicted) == 0 or np.ptp(measured) == 0:
        return {k: math.nan for k in ("spearman", "pearson", "spearman_ci95_low", "spearman_ci95_high")}
    rho = float(spearmanr(predicted, measured).statistic)
    z, half = math.atanh(min(max(rho, -0.999999), 0.999999)), 1.96 * math.sqrt(1.06 / (n - 3))
    return {
        "spearman": rho,
        "pearson": float(pearsonr(predicted, measured).statistic),
        "spearman_ci95_low": math.tanh(z - half),
        "spearman_ci95_high": math.tanh(z + half),
    }


# ------------------------------------------------------------------------------------------- data


def load_data(tier: dict, data_root: str | None):
    """The tier's data set; a clear error where it is absent (CIFAR-10 is not downloaded here)."""
    d = dict(tier["data"])
    if data_root is not None:
        d["root"] = data_root
    root = d.get("root")
    resolved = None
    if root is not None:
        resolved = Path(root) if Path(root).is_absolute() else ROOT / root
        if not resolved.is_dir():
            raise SystemExit(
                f"quadratic_fidelity: data folder {resolved} not found (dataset {d['name']}, root {root!r}; "
                "a relative root is taken from the repository root). For the CIFAR-10 tier unpack the JPEG copy there: "
                "`unzip -q ../shared/data/cifar10-jpeg.zip -d ../cifar10-data` (from the repository root), "
                "or pass --data-root <folder holding train/ and test/>."
            )
    try:
        bundle = data.load(
            d["name"],
            root=str(resolved) if resolved is not None else None,
            val_fraction=d["val_fraction"],
            train_subset=d["train_subset"],
            seed=d["seed"],
            image_size=d["image_size"],
        )
    except DataError as e:
        raise SystemExit(f"quadratic_fidelity: cannot load the data ({e})") from e
    return bundle, d


def sample_batches(split, n: int, batch_size: int, seed: int, dtype) -> tuple[list, int]:
    """The first ``n`` samples of ``split`` in the order ``data.batches(shuffle=True)`` draws with the
    run seed (``sosp prune``'s calibration samples), as ``(x, y)`` batches in ``dtype``."""
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = split.x[order].to(dtype), split.y[order]
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)], len(x)


def rebatch(batches: list, batch_size: int) -> list:
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


# ------------------------------------------------------------------------------------------- runs


def save_cache(path: Path, cache: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(cache, tmp))


def run_seed(seed: int, tier: dict, data_key: dict, bundle, args) -> dict:
    """Terms, sets, measurements and timings of one base model (cached piece by piece)."""
    dtype = getattr(torch, args.dtype)
    model, top1, model_key, train_seconds = base_model(args.arch, seed, tier, bundle, args.models_dir)
    model = copy.deepcopy(model).eval().to(dtype)
    pc = tier["prune"]
    calib, n_calib = sample_batches(bundle.train, pc["samples"], pc["score_batch_size"], seed, dtype)
    held, n_held = sample_batches(bundle.val, pc["samples"], pc["score_batch_size"], seed, dtype)
    measure_data = {
        "calibration": rebatch(calib, args.eval_batch_size),
        "held-out": rebatch(held, args.eval_batch_size),
    }
    groups = structures.channel_groups(model, bundle.example_input[:1].to(dtype))
    num = structures.total_structures(groups)
    key = digest(
        {
            "model": model_key,
            "samples": pc["samples"],
            "batch": pc["score_batch_size"],
            "dtype": args.dtype,
            "depth": args.depth,
            "fractions": args.fractions,
            "sets": args.sets,
            "singles": args.singles,
            "data": data_key,
        }
    )
    path = args.work_dir / "cache" / f"{args.arch}_s{seed}_{key}.pt"
    cache = {} if args.fresh or not path.exists() else torch.load(path, weights_only=False)
    if train_seconds or "train_seconds" not in cache:  # a cached base model reports 0 s
        cache["train_seconds"] = train_seconds
    cache.update(
        seed=seed,
        base_top1=top1,
        num_structures=num,
        num_groups=len(groups),
        n_samples={"calibration": n_calib, "held-out": n_held},
    )
    computed = False
    if "terms" not in cache:
        timings = {}
        t0 = time.perf_counter()
        cache["terms"] = collect_terms(model, groups, calib, seed, timings)
        cache["timings"] = {**timings, "seconds_terms": time.perf_counter() - t0}
        log(
            f"{args.arch} s{seed}: terms of every predictor on {n_calib} samples "
            f"({cache['timings']['seconds_terms']:.1f} s: "
            + ", ".join(f"{k[8:]} {v:.1f}" for k, v in timings.items())
            + ")"
        )
        save_cache(path, cache)
        computed = True
    sets = draw_sets(num, args.fractions, args.sets, args.singles, seed)
    cache["sets"] = sets
    measured = cache.setdefault("measured", {})
    base_loss = cache.setdefault("base_loss", {})
    seconds = cache.setdefault("measure_seconds", {})
    for split in SPLITS:
        for label, items in sets.items():
            if (split, label) in measured:
                continue
            t0 = time.perf_counter()
            base_loss[split], measured[(split, label)] = measure_loss_changes(
                model, groups, measure_data[split], items, args.depth
            )
            seconds[(split, label)] = time.perf_counter() - t0
            log(
                f"{args.arch} s{seed} {split:11s} {label:>6s}: {len(items)} sets of "
                f"{len(items[0])} measured ({seconds[(split, label)]:.1f} s, "
                f"{seconds[(split, label)] / len(items):.3f} s per set); base loss {base_loss[split]:.4f}"
            )
            save_cache(path, cache)
            computed = True
    if args.dtype != "float64" and args.precision_sets > 0 and "precision" not in cache:
        t0 = time.perf_counter()
        singles = measured[("calibration", "single")]
        picks = np.unique(np.linspace(0, len(singles) - 1, min(args.precision_sets, len(singles))).round().astype(int))
        items = [sets["single"][i] for i in picks]
        model64 = copy.deepcopy(model).double()
        _, exact = measure_loss_changes(
            model64,
            groups,
            [(x.double(), y) for x, y in measure_data["calibration"]],
            items,
            args.depth,
        )
        diff = np.abs(exact - singles[picks])
        cache["precision"] = {
            "sets": len(items),
            "max_abs_diff": float(diff.max()),
            "median_abs_change": float(np.median(np.abs(measured[("calibration", "single")]))),
            "seconds": time.perf_counter() - t0,
        }
        log(
            f"{args.arch} s{seed}: float64 check of {len(items)} single structures: largest |difference| "
            f"{diff.max():.2e} (median |dL| of single structures {cache['precision']['median_abs_change']:.2e})"
        )
        save_cache(path, cache)
        computed = True
    STATS["computed" if computed else "cached"].append(seed)
    return cache


def rows_of(cache: dict, args, tier: dict, env: dict) -> tuple[list[dict], list[dict]]:
    """Summary rows (seed x predictor x size x data) and per-set rows of one seed."""
    seed = cache["seed"]
    timings = cache["timings"]
    common = {
        "tier": tier["tier"],
        "dataset": tier["data"]["name"],
        "arch": args.arch,
        "seed": seed,
        "base_top1": 100 * cache["base_top1"],
        "num_structures": cache["num_structures"],
        "num_groups": cache["num_groups"],
        "dtype": args.dtype,
        "depth": args.depth,
    }
    rows, per_set = [], []
    for label, items in cache["sets"].items():
        predicted = predict(cache["terms"], items, args.depth)
        for split in SPLITS:
            measured = cache["measured"][(split, label)]
            for name, (method, kind) in PREDICTORS.items():
                rows.append(
                    {
                        **common,
                        "predictor": name,
                        "method": method,
                        "kind": kind,
                        "size": label,
                        "set_size": len(items[0]),
                        "data": split,
                        "n_samples": cache["n_samples"][split],
                        "n_sets": len(items),
                        **correlations(predicted[name], measured),
                        "mean_measured": float(np.mean(measured)),
                        "mean_predicted": float(np.mean(predicted[name])),
                        "base_loss": cache["base_loss"][split],
                        "measure_seconds": cache["measure_seconds"][(split, label)],
                        "train_seconds": cache["train_seconds"],
                        **{k: v for k, v in timings.items()},
                        **env,
                    }
                )
        for i, idx in enumerate(items):
            per_set.append(
                {
                    "seed": seed,
                    "size": label,
                    "set": i,
                    "set_size": len(idx),
                    "structure": int(idx[0]) if label == "single" else "",
                    **{f"measured_{s}": f"{cache['measured'][(s, label)][i]:.6g}" for s in SPLITS},
                    **{name: f"{predicted[name][i]:.6g}" for name in PREDICTORS},
                }
            )
    return rows, per_set


# ------------------------------------------------------------------------------------------- report


def fmt(x, digits=2) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def mean_over_seeds(rows, key, **where) -> float:
    values = [r[key] for r in rows if all(r[k] == v for k, v in where.items())]
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(values) if values else math.nan


def markdown(rows: list[dict], caches: list[dict], args, tier: dict, runtime_s: float, sets_csv: Path) -> str:
    labels = list(caches[0]["sets"])
    sizes = {label: len(caches[0]["sets"][label][0]) for label in labels}
    counts = {label: len(caches[0]["sets"][label]) for label in labels}
    c0 = caches[0]
    command = " ".join(["benchmarks/quadratic_fidelity.py", *args.argv])
    lines = [
        "# Fidelity of the quadratic model: predicted against measured loss change",
        "",
        (
            f"Generated by `{command}` (seeds {', '.join(map(str, args.seeds))}): {args.arch} on "
            f"{tier['data']['name']} (tier `{tier['tier']}`, {tier['train']['epochs']} training epochs; test top-1 "
            + ", ".join(f"s{c['seed']} {100 * c['base_top1']:.1f} %" for c in caches)
            + f"), S = {c0['num_structures']} structures in {c0['num_groups']} groups. Predictions from "
            f"{c0['n_samples']['calibration']} calibration images (training split, as `sosp prune`); loss "
            f"changes measured on the same images (*calib.*) and on {c0['n_samples']['held-out']} held-out "
            f"validation images (*held-out*), forward passes in {args.dtype}, removal depth t = {args.depth:g} "
            f"(1: removal). Sets: "
            + ", ".join(f"{label} = {counts[label]} sets of {sizes[label]}" for label in labels)
            + f". Wall time {runtime_s / 60:.1f} min on {torch.get_num_threads()} thread(s) "
            f"({rows[0]['env_device_name']}, load {rows[0]['env_load_avg_1min']:.1f}); seeds computed "
            f"{STATS['computed'] or 'none'}, read from the cache {STATS['cached'] or 'none'}."
        ),
        "",
        "Every number is the mean over seeds (per seed, with a 95 % interval of Spearman: "
        "`quadratic_fidelity.csv` beside this file). Signed predictors predict dL itself; score sums are the "
        "methods' saliencies summed over the set (rank predictors, unsigned). Definitions: the module "
        "docstring of `benchmarks/quadratic_fidelity.py` (u: indicator of the set, t: depth).",
        "",
    ]
    header = "| predictor | kind | " + " | ".join(f"{lab} calib. | {lab} held-out" for lab in labels) + " |"
    rule = "|---|---|" + "---:|" * (2 * len(labels))
    for stat in ("spearman", "pearson"):
        lines += [f"## {stat.capitalize()} correlation with the measured loss change", "", header, rule]
        for name, (_, kind) in PREDICTORS.items():
            cells = [
                fmt(mean_over_seeds(rows, stat, predictor=name, size=lab, data=split))
                for lab in labels
                for split in SPLITS
            ]
            lines.append(f"| `{name}` | {kind} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Scale: mean measured and mean predicted loss change (calibration data)",
        "",
        "| set | measured | " + " | ".join(f"`{n}`" for n, (_, k) in PREDICTORS.items() if k == "signed") + " |",
        "|---|---:|" + "---:|" * sum(k == "signed" for _, k in PREDICTORS.values()),
    ]
    for lab in labels:
        cells = [
            fmt(mean_over_seeds(rows, "mean_predicted", predictor=n, size=lab, data="calibration"), 4)
            for n, (_, k) in PREDICTORS.items()
            if k == "signed"
        ]
        measured = fmt(mean_over_seeds(rows, "mean_measured", predictor="quadratic", size=lab, data="calibration"), 4)
        lines.append(f"| {lab} ({sizes[lab]}) | {measured} | " + " | ".join(cells) + " |")
    lines += ["", "## Predictors", "", "| predictor | method | kind | formula |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {m} | {k} | {FORMULAS[n]} |" for n, (m, k) in PREDICTORS.items()]
    lines += ["", "## Cost and precision", ""]
    for c in caches:
        t = c["timings"]
        pieces = ", ".join(f"{k[8:]} {v:.1f} s" for k, v in t.items() if k != "seconds_terms")
        measure = sum(c["measure_seconds"].values())
        n_forward = sum(len(v) for v in c["sets"].values()) * len(SPLITS)
        line = (
            f"- seed {c['seed']}: base model trained in {c['train_seconds']:.0f} s (0: cached); terms "
            f"{t['seconds_terms']:.1f} s ({pieces}); measuring {measure:.0f} s for {n_forward} sets "
            f"({measure / n_forward:.3f} s per set and data)"
        )
        if "precision" in c:
            pr = c["precision"]
            line += (
                f"; float64 re-measurement of {pr['sets']} single structures: largest |difference| "
                f"{pr['max_abs_diff']:.1e} against a median |dL| of single structures of {pr['median_abs_change']:.1e}"
            )
        lines.append(line + ".")
    lines += ["", f"Per-set values: `{sets_csv.relative_to(ROOT) if sets_csv.is_relative_to(ROOT) else sets_csv}`.", ""]
    return "\n".join(lines)


def figure(rows: list[dict], cache: dict, args, stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(cache["sets"])
    show = size_label(args.fractions[1]) if len(args.fractions) > 1 else labels[-1]
    predicted = predict(cache["terms"], cache["sets"][show], args.depth)
    measured = cache["measured"][("calibration", show)]
    fig = plt.figure(figsize=(4 * len(FIGURE_PREDICTORS), 8.5))
    grid = fig.add_gridspec(2, len(FIGURE_PREDICTORS), height_ratios=[1, 1.1])
    for j, name in enumerate(FIGURE_PREDICTORS):
        ax = fig.add_subplot(grid[0, j])
        ax.scatter(predicted[name], measured, s=8, alpha=0.6)
        xlim, ylim = ax.get_xlim(), ax.get_ylim()  # each panel on its own scale; y = x where the ranges meet
        lo, hi = max(xlim[0], ylim[0]), min(xlim[1], ylim[1])
        if lo < hi:
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="y = x")
        ax.set_xlim(xlim)
        ax.set_ylim(ylim)
        c = correlations(predicted[name], measured)
        ax.set_title(f"{name}\nSpearman {c['spearman']:.2f}, Pearson {c['pearson']:.2f}", fontsize=9)
        ax.set_xlabel("predicted dL")
        if j == 0:
            ax.set_ylabel(f"measured dL (calibration, {show} sets, seed {cache['seed']})")
    names = list(PREDICTORS)
    width = 0.8 / len(labels)
    for j, split in enumerate(SPLITS):
        ax = fig.add_subplot(grid[1, 2 * j : 2 * j + 2] if len(FIGURE_PREDICTORS) >= 4 else grid[1, j])
        for k, lab in enumerate(labels):
            values = [mean_over_seeds(rows, "spearman", predictor=n, size=lab, data=split) for n in names]
            ax.bar(np.arange(len(names)) + (k - (len(labels) - 1) / 2) * width, values, width, label=lab)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(np.arange(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(-1, 1)
        ax.set_ylabel("Spearman (mean over seeds)")
        ax.set_title(f"{split} data", fontsize=10)
        if j == 0:
            ax.legend(title="set size", fontsize=7, title_fontsize=8)
    fig.suptitle(f"Quadratic model fidelity: {args.arch}, {rows[0]['dataset']} ({rows[0]['tier']})", fontsize=11)
    fig.tight_layout()
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tier = load_tier(args.config, args.quick)
    if args.epochs is not None:
        tier["train"]["epochs"] = args.epochs
    bundle, data_key = load_data(tier, args.data_root)
    env = environment("cpu", getattr(torch, args.dtype))
    log(
        f"quadratic fidelity: {args.arch} on {tier['data']['name']} (tier {tier['tier']}), seeds {args.seeds}, "
        f"fractions {args.fractions} x {args.sets} sets + {'all' if args.singles is None else args.singles} single "
        f"structures, {args.dtype}, {torch.get_num_threads()} thread(s)"
    )
    caches = [run_seed(seed, tier, data_key, bundle, args) for seed in args.seeds]
    if args.no_report:
        log(f"cached seeds {args.seeds} under {args.work_dir / 'cache'} (--no-report: nothing else written)")
        return 0
    rows, per_set = [], []
    for cache in caches:
        r, s = rows_of(cache, args, tier, env)
        rows += r
        per_set += s
    runtime = time.perf_counter() - start
    for r in rows:
        r["script_runtime_s"] = runtime
    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(args.out_dir / "quadratic_fidelity.csv", rows)
    sets_path = args.out_dir / "quadratic_fidelity_sets.csv"
    write_csv(sets_path, per_set)
    if sets_path.stat().st_size > SETS_CSV_LIMIT and args.out_dir != args.work_dir:
        moved = args.work_dir / "quadratic_fidelity_sets.csv"
        moved.parent.mkdir(parents=True, exist_ok=True)
        sets_path.replace(moved)
        sets_path = moved
    md = markdown(rows, caches, args, tier, runtime, sets_path)
    md_path = args.out_dir / "quadratic_fidelity.md"
    write_atomic(md_path, lambda tmp: tmp.write_text(md))
    figures = figure(rows, caches[0], args, args.out_dir / "quadratic_fidelity")
    log(f"wrote {csv_path}, {sets_path}, {md_path}, {', '.join(map(str, figures))} ({runtime / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
