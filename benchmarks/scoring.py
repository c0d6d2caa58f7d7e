"""Scoring cost per batch of every channel saliency method, side by side with Taylor.

What is timed, per model (CIFAR shape: 3x32x32 inputs, 10 classes, one batch of ``--batch-size``
random images and labels; the values do not change the cost):

- every saliency method of :mod:`sosp.registry`, called through :func:`sosp.runner.score` on that
  one batch, i.e. exactly what ``sosp prune`` runs per calibration batch (plus the per-call
  conversion of the scores to float64); SOSP-H once per ``combine`` (``separate``, ``joint``,
  ``second_order``) and once with ``curvature=hessian``; SOSP-I only on ``--sosp-i-models`` and only
  where its own memory check (:func:`sosp.methods.sosp_i.check_pairwise_memory`) passes. ``random`` and
  ``magnitude`` do not read the batch: their time is per call.
- EigenDamage's scoring part, the K-FAC factor pass :func:`sosp_baselines.fisher.kfac_factors` on the
  batch (row ``eigendamage[part=factors]``), and the same plus the per-layer eigendecompositions and
  eigenbasis importances, :func:`sosp_baselines.eigendamage.score_layers` (row
  ``eigendamage[part=factors+eigh]``; the eigendecompositions are paid once per scoring run, not per
  batch).

All methods of one model are timed in the same process, interleaved (warm-up round, then ``--rounds``
rounds calling every method once in rotating order, :func:`benchmarks.common.interleaved`); the ratio to
Taylor is the median over rounds of the within-round ratio. Each call is also timed in CPU time
(user + system time of the process, columns ``cpu_*``), which hardly grows while other processes
share the cores, and each model's rows carry the load average before and after its rounds. Peak
memory per method is measured after the timing, one call each (:func:`benchmarks.common.peak_memory`).
Before timing, each model's BatchNorm running statistics are set from one batch of the random data
so that deep random networks stay finite (scores are checked for non-finite values).

Scaling (``scaling.csv``): SOSP-H (``separate``) and Taylor on ResNet-20/32/44/56/110 (time against
MACs), and SOSP-I, SOSP-H and Taylor on ResNet-20 with ``width_multiplier`` 0.5/1/1.5/2 (time
against the number of structures ``S``).

Outputs (``--out-dir``, default ``results/benchmarks``): ``scoring.csv``, ``scaling.csv``,
``scoring.png`` and ``scoring.pdf``. Columns: benchmarks/README.md.

    python benchmarks/scoring.py --quick      # smoke sizes, one thread, about a minute
    python benchmarks/scoring.py              # full: four models, batch 128, all cores
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from benchmarks import common  # noqa: E402
from sosp import measure, models, runner  # noqa: E402
from sosp.errors import SospError  # noqa: E402
from sosp.methods.sosp_i import check_pairwise_memory  # noqa: E402
from sosp.registry import names as method_names  # noqa: E402
from sosp.structures import channel_groups, total_structures  # noqa: E402

REFERENCE = "taylor"
# extra option sets per method: one row each (a method not listed runs with its defaults)
VARIANTS: dict[str, list[dict]] = {
    "sosp_h": [
        {"combine": "separate"},
        {"combine": "joint"},
        {"combine": "second_order"},
        {"combine": "separate", "curvature": "hessian"},
    ],
}
EIGENDAMAGE_PARTS = ("factors", "factors+eigh")
FULL_MODELS = ("resnet20", "resnet56", "resnet110", "vgg16")
QUICK_MODELS = ("resnet20",)
MACS_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
QUICK_MACS_MODELS = ("resnet20", "resnet32")
WIDTHS = (0.5, 1.0, 1.5, 2.0)
QUICK_WIDTHS = (0.5, 1.0)


def label(method: str, options: dict) -> str:
    if not options:
        return method
    return f"{method}[{','.join(f'{k}={v}' for k, v in options.items())}]"


# ---------------------------------------------------------------------------------------------
# Models and inputs


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Running statistics of every BatchNorm := the statistics of ``x`` (one train-mode pass)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.train()
    try:
        model(x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()


class Case:
    """One model at CIFAR shape with its groups and one random batch on ``device``."""

    def __init__(self, arch: str, batch_size: int, device="cpu", seed: int = 0, num_classes: int = 10, **model_options):
        self.arch, self.batch_size, self.device = arch, batch_size, torch.device(device)
        self.width_multiplier = model_options.get("width_multiplier", 1.0)
        torch.manual_seed(seed)
        self.model = models.create(arch, num_classes=num_classes, **model_options).to(self.device)
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch_size, 3, 32, 32, generator=gen).to(self.device)
        self.y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(self.device)
        calibrate_batchnorm(self.model, self.x)
        example = self.x[:2]
        self.groups = channel_groups(self.model, example)
        self.S = total_structures(self.groups)
        self.params = measure.count_params(self.model)
        self.macs = measure.count_macs(self.model, self.x[:1])
        self.name = arch if self.width_multiplier == 1.0 else f"{arch}@w{self.width_multiplier:g}"

    def batches(self):
        return [(self.x, self.y)]

    def describe(self) -> dict:
        return {
            "model": self.name,
            "arch": self.arch,
            "width_multiplier": self.width_multiplier,
            "batch_size": self.batch_size,
            "num_structures": self.S,
            "num_groups": len(self.groups),
            "params": self.params,
            "macs_per_sample": self.macs,
            "macs_per_batch": self.macs * self.batch_size,
        }


# ---------------------------------------------------------------------------------------------
# What is timed


def method_entries(case: Case, sosp_i: bool, methods: list[str] | None = None) -> list[dict]:
    """``[{label, method, options, reads_batches, fn | skip}]`` for every method variant on ``case``."""
    names = method_names("saliency") if methods is None else [n for n in methods if n != "eigendamage"]
    if REFERENCE in names:  # the reference first: the rotation order starts from it
        names = [REFERENCE] + [n for n in names if n != REFERENCE]
    entries = []
    for name in names:
        for options in VARIANTS.get(name, [{}]):
            entry = {
                "label": label(name, options),
                "method": name,
                "options": options,
                "reads_batches": name not in ("random", "magnitude"),
            }
            if name == "sosp_i":
                entry["skip"] = None if sosp_i else "not in --sosp-i-models"
                if sosp_i:
                    try:
                        check_pairwise_memory(case.S, next(case.model.parameters()).dtype)
                    except SospError as err:
                        entry["skip"] = f"memory check: {err}"
            entry["fn"] = lambda name=name, options=options: runner.score(
                name, case.model, case.groups, case.batches(), **options
            )
            entries.append(entry)
    if methods is None or "eigendamage" in methods:
        entries += eigendamage_entries(case)
    return entries


def eigendamage_entries(case: Case) -> list[dict]:
    try:
        from sosp_baselines import eigendamage as ed
    except ImportError as err:
        return [
            {
                "label": "eigendamage",
                "method": "eigendamage",
                "options": {},
                "reads_batches": True,
                "skip": f"import failed: {err}",
                "fn": None,
            }
        ]
    layers, _ = ed.candidate_layers(case.model, case.x[:1])
    cores = {name: ed.layer_core(layer) for name, layer in layers.items()}
    fns = {
        "factors": lambda: ed.kfac_factors(case.model, case.batches(), cores),
        "factors+eigh": lambda: ed.score_layers(case.model, case.batches(), layers),
    }
    return [
        {
            "label": label("eigendamage", {"part": part}),
            "method": "eigendamage",
            "options": {"part": part},
            "reads_batches": True,
            "fn": fns[part],
        }
        for part in EIGENDAMAGE_PARTS
    ]


def _runnable(entries: list[dict]) -> tuple[dict[str, Callable], dict[str, str]]:
    """Callables that run once without error (the check doubles as the first warm-up) and failures."""
    ok, failed = {}, {}
    for e in entries:
        if e.get("skip"):
            failed[e["label"]] = f"skipped: {e['skip']}"
            continue
        try:
            e["fn"]()
            ok[e["label"]] = e["fn"]
        except Exception as err:  # one broken method must not end the benchmark of the others
            failed[e["label"]] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            common.log(traceback.format_exc(limit=3))
    return ok, failed


def _cpu_timed(fn: Callable, samples: list[float]) -> Callable:
    """``fn`` that appends the CPU seconds of each call (user + system, every thread of the process)
    to ``samples``: unlike wall time, CPU time hardly grows while other processes hold the cores."""

    def call():
        start = time.process_time()
        try:
            return fn()
        finally:
            samples.append(time.process_time() - start)

    return call


def _load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def benchmark_case(case: Case, entries: list[dict], rounds: int, warmup: int, memory: bool, env: dict) -> list[dict]:
    """One row per entry: time per batch (median, IQR), ratio to Taylor, peak memory."""
    common.log(
        f"{case.name}: S={case.S}, {case.macs / 1e6:.2f} M MACs/sample, batch {case.batch_size}, {len(entries)} methods"
    )
    fns, failed = _runnable(entries)
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    load_before = _load_avg()
    times = (
        common.interleaved(
            {name: _cpu_timed(fn, cpu[name]) for name, fn in fns.items()},
            rounds=rounds,
            warmup=max(0, warmup - 1),
            device=case.device,
            log=common.log,
        )
        if fns
        else {}
    )
    load_after = _load_avg()
    cpu = {name: samples[len(samples) - len(times[name]) :] for name, samples in cpu.items() if name in times}
    mem = {}
    if memory:
        for name, fn in fns.items():
            mem[name] = common.peak_memory(fn, case.device)
    ref = times.get(REFERENCE)
    cpu_ref = cpu.get(REFERENCE)
    rows = []
    for e in entries:
        name = e["label"]
        row = {
            **case.describe(),
            "method": e["method"],
            "label": name,
            "options": json.dumps(e["options"], sort_keys=True),
            "reads_batches": e["reads_batches"],
            "load_avg_1min_before": load_before,
            "load_avg_1min_after": load_after,
        }
        if name in times:
            s = common.summarise(times[name])
            row.update(
                status="ok",
                time_median_ms=1e3 * s["median"],
                time_q25_ms=1e3 * s["q25"],
                time_q75_ms=1e3 * s["q75"],
                time_iqr_ms=1e3 * s["iqr"],
                time_min_ms=1e3 * s["min"],
                rounds=s["n"],
            )
            if ref:
                r = common.paired_ratio(times[name], ref)
                row.update(
                    ratio_to_taylor=r["median"],
                    ratio_to_taylor_iqr=r["iqr"],
                    ratio_of_medians=s["median"] / common.summarise(ref)["median"],
                )
            c = common.summarise(cpu[name])
            row.update(cpu_median_ms=1e3 * c["median"], cpu_iqr_ms=1e3 * c["iqr"])
            if cpu_ref:
                r = common.paired_ratio(cpu[name], cpu_ref)
                row.update(cpu_ratio_to_taylor=r["median"], cpu_ratio_to_taylor_iqr=r["iqr"])
            row["ms_per_sample"] = 1e3 * s["median"] / case.batch_size if e["reads_batches"] else math.nan
            row.update(mem.get(name, {}))
        else:
            row["status"] = failed.get(name, "not run")
        rows.append({**row, **env})
        if name in times:
            common.log(
                f"  {name:40s} {row['time_median_ms']:9.1f} ms  (IQR {row['time_iqr_ms']:.1f})"
                f"  x{row.get('ratio_to_taylor', math.nan):.2f} Taylor"
                f" (CPU time x{row.get('cpu_ratio_to_taylor', math.nan):.2f})"
                f"  peak +{row.get('peak_extra_mib', math.nan):.0f} MiB"
            )
        else:
            common.log(f"  {name:40s} {row['status']}")
    return rows


def scaling_rows(batch_size: int, rounds: int, warmup: int, macs_models, widths, device, env) -> list[dict]:
    rows = []
    plans = [("macs", arch, {}, ["taylor", "sosp_h"]) for arch in macs_models]
    plans += [("structures", "resnet20", {"width_multiplier": w}, ["taylor", "sosp_h", "sosp_i"]) for w in widths]
    for kind, arch, options, methods in plans:
        case = Case(arch, batch_size, device, **options)
        entries = [
            e
            for e in method_entries(case, sosp_i="sosp_i" in methods, methods=methods)
            if e["options"] in ({}, {"combine": "separate"})
        ]
        for row in benchmark_case(case, entries, rounds, warmup, memory=False, env=env):
            rows.append({"sweep": kind, **row})
    return rows


# ---------------------------------------------------------------------------------------------
# Figure


def figure(scoring: list[dict], scaling: list[dict], stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    env = (scoring or scaling)[0]
    fig.suptitle(
        f"Scoring cost per batch — {env['env_device_name']}, torch {env['env_torch_version']}, "
        f"{env['env_threads']} thread(s), {env['env_dtype']}",
        fontsize=10,
    )

    ax = axes[0]
    ok = [
        r
        for r in scoring
        if r.get("status") == "ok"
        and r.get("reads_batches")
        and r.get("ratio_to_taylor") is not None
        and not math.isnan(r.get("ratio_to_taylor", math.nan))
    ]
    labels = list(dict.fromkeys(r["label"] for r in ok))
    cases = list(dict.fromkeys(r["model"] for r in ok))
    width = 0.8 / max(1, len(cases))
    for i, model in enumerate(cases):
        vals = {r["label"]: r for r in ok if r["model"] == model}
        xs = [j + (i - (len(cases) - 1) / 2) * width for j in range(len(labels))]
        h = [vals[lab]["ratio_to_taylor"] if lab in vals else np.nan for lab in labels]
        err = [vals[lab]["ratio_to_taylor_iqr"] / 2 if lab in vals else 0 for lab in labels]
        bs = ok[0]["batch_size"]
        ax.bar(xs, h, width, yerr=err, capsize=2, label=f"{model} (batch {bs})")
    ax.axhline(1, color="black", lw=0.8)
    ax.axhline(2, color="red", ls="--", lw=1, label="SOSP-H cost target (2x Taylor)")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([lab.replace("[", "\n[") for lab in labels], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("time per batch / Taylor's (ratio, median over rounds)")
    ax.set_title("Cost relative to Taylor (error bar: half the IQR)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)

    ax = axes[1]
    macs = [r for r in scaling if r.get("sweep") == "macs" and r.get("status") == "ok"]
    for lab in dict.fromkeys(r["label"] for r in macs):
        pts = sorted(
            (r["macs_per_sample"] / 1e6, r["time_median_ms"], r["time_iqr_ms"], r["model"])
            for r in macs
            if r["label"] == lab
        )
        if pts:
            ax.errorbar(
                [p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] / 2 for p in pts], marker="o", capsize=2, label=lab
            )
            if lab == "taylor":
                for p in pts:
                    ax.annotate(p[3], (p[0], p[1]), fontsize=6, textcoords="offset points", xytext=(3, -9))
    bs = macs[0]["batch_size"] if macs else "?"
    ax.set_xlabel("model cost (M MACs per image, batch 1)")
    ax.set_ylabel(f"time per batch of {bs} (ms)")
    ax.set_title("Time against model MACs (CIFAR ResNets)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)

    ax = axes[2]
    struct = [r for r in scaling if r.get("sweep") == "structures" and r.get("status") == "ok"]
    for lab in dict.fromkeys(r["label"] for r in struct):
        pts = sorted(
            (r["num_structures"], r["time_median_ms"], r["time_iqr_ms"], r["width_multiplier"])
            for r in struct
            if r["label"] == lab
        )
        ax.errorbar(
            [p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] / 2 for p in pts], marker="o", capsize=2, label=lab
        )
        if lab == "sosp_i":
            for p in pts:
                ax.annotate(f"w{p[3]:g}", (p[0], p[1]), fontsize=6, textcoords="offset points", xytext=(3, 3))
    bs = struct[0]["batch_size"] if struct else "?"
    ax.set_xlabel("number of structures S (channels, ResNet-20 x width multiplier)")
    ax.set_ylabel(f"time per batch of {bs} (ms)")
    ax.set_title("Time against S (MACs grow too: ~width$^2$)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths = common.save_figure(fig, stem)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help=f"architectures (default {' '.join(FULL_MODELS)}; quick: {' '.join(QUICK_MODELS)})",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 (quick: 64)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; quick: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (the first counts as a check)")
    parser.add_argument(
        "--sosp-i-models",
        nargs="*",
        default=["resnet20", "resnet56"],
        help="models SOSP-I is timed on (if its memory check passes)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="time only these methods (Taylor, the reference, is always added; 'eigendamage' = its two "
        "scoring parts); default every saliency method and EigenDamage",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--no-scaling", action="store_true", help="skip scaling.csv")
    args = parser.parse_args(argv)
    methods = None
    if args.methods is not None:
        known = [*method_names("saliency"), "eigendamage"]
        unknown = [m for m in args.methods if m not in known]
        if unknown:
            parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
        methods = list(dict.fromkeys([REFERENCE, *args.methods]))
    threads = common.set_threads(args.threads, args.quick)
    models_ = args.models or list(QUICK_MODELS if args.quick else FULL_MODELS)
    batch_size = args.batch_size or (64 if args.quick else 128)
    rounds = args.rounds or (3 if args.quick else 7)
    env = common.environment(args.device)
    common.log(f"scoring benchmark: {threads} thread(s), batch {batch_size}, {rounds} rounds, models {models_}")
    t0 = time.perf_counter()
    rows = []
    for arch in models_:
        case = Case(arch, batch_size, args.device)
        rows += benchmark_case(
            case,
            method_entries(case, sosp_i=arch in args.sosp_i_models, methods=methods),
            rounds,
            args.warmup,
            memory=not args.no_memory,
            env=env,
        )
        del case
    out = common.write_csv(args.out_dir / "scoring.csv", rows)
    common.log(f"wrote {out}")
    scaling = []
    if not args.no_scaling:
        scaling = scaling_rows(
            batch_size,
            rounds,
            args.warmup,
            QUICK_MACS_MODELS if args.quick else MACS_MODELS,
            QUICK_WIDTHS if args.quick else WIDTHS,
            args.device,
            env,
        )
        common.log(f"wrote {common.write_csv(args.out_dir / 'scaling.csv', scaling)}")
    for p in figure(rows, scaling, args.out_dir / "scoring"):
        common.log(f"wrote {p}")
    common.log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
