"""Training throughput of :func:`sosp.train.train` against a bare PyTorch loop, side by side.

The comparison is made fair by giving both loops exactly the same work:

- the same architecture with the same initial weights (two deep copies of one model), batch size
  ``--batch-size`` (128), the same in-memory data tensor (``--data random``: random CIFAR-shaped
  3x32x32 images with 10 classes; ``--data digits``: scikit-learn's digits upsampled bilinearly to
  32x32 and repeated over 3 channels), in a :class:`sosp.data.DataBundle` for ``train``;
- the same optimiser: ``torch.optim.SGD`` with the same lr, momentum 0.9 and weight decay 5e-4,
  created afresh for every epoch by both (``train`` builds its own per call);
- the same per-step work: a random permutation of the data per epoch, one gather per batch
  (``x[idx]``), forward, cross-entropy, ``zero_grad(set_to_none=True)``, backward, ``step``, the last
  partial batch dropped;
- no augmentation for either (the bundle has ``crop_padding=0, flip=False``, which makes
  ``sosp.data.batches`` skip it), and no evaluation: the validation and test splits are empty, so
  ``train`` evaluates nothing and writes no checkpoint (``checkpoint_dir=None``, ``progress=False``).

What ``train`` adds on top, and what is therefore measured as its overhead: its set-up per call
(seeding, the LR scheduler and its step per batch, the autocast context, which is disabled on CPU),
the loss finiteness check (every step on CPU) and the bookkeeping of the history.

Timing: one round = one epoch of each loop, in alternating order; a warm-up round, then ``--rounds``
rounds; images per second = images per epoch / epoch seconds; the ratio ``sosp.train / bare`` is the
median of the per-round ratios. If it is below 0.95, both loops are profiled with cProfile (one epoch
each) and the top functions go to ``training_profile_<model>.txt``.

Output: ``results/benchmarks/training.csv`` (columns: benchmarks/README.md).

    python benchmarks/training.py --quick     # resnet20, 4 steps per epoch, one thread
    python benchmarks/training.py             # resnet20 and resnet56, 16 steps per epoch, all cores
"""

from __future__ import annotations

import copy
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import common  # noqa: E402
from sosp import models  # noqa: E402
from sosp.data import DataBundle, Split  # noqa: E402
from sosp.train import TrainConfig, train  # noqa: E402

SLOW = 0.95  # below this fraction of the bare loop's throughput, profile


def make_bundle(kind: str, n: int, seed: int = 0) -> DataBundle:
    """An in-memory bundle of ``n`` CIFAR-shaped training images; empty validation and test splits."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        x = torch.randn(n, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
    elif kind == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
        x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
        x = (x - x.mean()) / x.std()
        y = torch.tensor(d.target, dtype=torch.long)
        idx = torch.randint(0, len(x), (n,), generator=gen)  # n images, repeating the 1797 if needed
        x, y = x[idx].contiguous(), y[idx]
    else:
        raise SystemExit(f"--data must be random or digits, got {kind!r}")
    fill = torch.zeros(3)
    empty = Split(x=torch.empty(0, 3, 32, 32), y=torch.empty(0, dtype=torch.long), fill=fill)
    return DataBundle(
        train=Split(x=x, y=y, fill=fill),
        val=empty,
        test=empty,
        num_classes=10,
        in_channels=3,
        image_size=32,
        name=f"{kind}-cifar-shape",
        crop_padding=0,
        flip=False,
    )


def bare_epoch(model, x, y, config: TrainConfig, generator: torch.Generator, device) -> float:
    """The reference: one epoch of the plainest correct SGD loop over an in-memory tensor."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    model.train()
    n, bs = len(x), config.batch_size
    order = torch.randperm(n, generator=generator).to(x.device)
    loss = None
    for start in range(0, n - n % bs, bs):
        idx = order[start : start + bs]
        out = model(x[idx])
        loss = F.cross_entropy(out, y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def run_model(
    arch: str,
    bundle: DataBundle,
    config: TrainConfig,
    rounds: int,
    warmup: int,
    device,
    env: dict,
    out_dir: Path,
    profile: bool,
) -> list[dict]:
    torch.manual_seed(0)
    base = models.create(arch, num_classes=10).to(device)
    m_sosp, m_bare = copy.deepcopy(base), copy.deepcopy(base)
    x, y = bundle.train.x.to(device), bundle.train.y.to(device)
    n_images = (len(x) // config.batch_size) * config.batch_size
    state = {"round": 0}

    def sosp_epoch():
        state["round"] += 1
        train(m_sosp, bundle, config, seed=state["round"], device=device, progress=False)

    def bare():
        bare_epoch(m_bare, x, y, config, torch.Generator().manual_seed(state["round"]), device)

    loops = {"bare": bare, "sosp.train": sosp_epoch}
    common.log(f"{arch}: {n_images} images/epoch ({n_images // config.batch_size} steps of {config.batch_size})")
    times = common.interleaved(loops, rounds=rounds, warmup=warmup, device=device, log=common.log)
    rows = []
    for name, samples in times.items():
        s = common.summarise(samples)
        ratio = common.paired_ratio(times["bare"], samples)  # bare time / this time = this speed / bare's
        ips = common.summarise([n_images / t for t in samples])
        row = {
            "model": arch,
            "loop": name,
            "data": bundle.name,
            "batch_size": config.batch_size,
            "images_per_epoch": n_images,
            "steps_per_epoch": n_images // config.batch_size,
            "epoch_seconds_median": s["median"],
            "epoch_seconds_iqr": s["iqr"],
            "rounds": s["n"],
            "images_per_second_median": ips["median"],
            "images_per_second_iqr": ips["iqr"],
            "throughput_ratio_to_bare": ratio["median"],
            "throughput_ratio_to_bare_iqr": ratio["iqr"],
            "overhead_ms_per_step": 1e3
            * (s["median"] - common.summarise(times["bare"])["median"])
            / (n_images // config.batch_size),
            "optimizer": f"SGD(lr={config.lr}, momentum={config.momentum}, weight_decay={config.weight_decay})",
            "augmentation": "none (both)",
            **env,
        }
        rows.append(row)
        common.log(
            f"  {name:12s} {ips['median']:8.1f} images/s  epoch {s['median']:.3f} s (IQR {s['iqr']:.3f})"
            f"  x{ratio['median']:.3f} of bare"
        )
    ratio = rows[1]["throughput_ratio_to_bare"]
    if profile or ratio < SLOW:
        path = out_dir / f"training_profile_{arch}.txt"
        common.log(
            f"  sosp.train at x{ratio:.3f} of the bare loop{f' (< {SLOW:.2f})' if ratio < SLOW else ''}: "
            f"profiling into {path}"
        )
        text = [profile_text("sosp.train (one epoch)", sosp_epoch), profile_text("bare loop (one epoch)", bare)]
        common.write_atomic(path, lambda tmp: tmp.write_text("\n\n".join(text)))
    return rows


def profile_text(title: str, fn) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs()
    buf.write(f"==== {title}: by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(30)
    buf.write(f"==== {title}: by own time\n")
    stats.sort_stats("tottime").print_stats(20)
    return buf.getvalue()


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="default resnet20 resnet56 (quick: resnet20)")
    parser.add_argument("--data", default="random", choices=["random", "digits"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default 16; quick: 4)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5; quick: 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="profile even if sosp.train is not slow")
    args = parser.parse_args(argv)
    threads = common.set_threads(args.threads, args.quick)
    archs = args.models or (["resnet20"] if args.quick else ["resnet20", "resnet56"])
    steps = args.steps or (4 if args.quick else 16)
    rounds = args.rounds or (3 if args.quick else 5)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    bundle = make_bundle(args.data, steps * args.batch_size)
    env = common.environment(args.device)
    common.log(
        f"training benchmark: {threads} thread(s), {args.data} data, batch {args.batch_size}, "
        f"{steps} steps/epoch, {rounds} rounds"
    )
    t0 = time.perf_counter()
    rows = []
    for arch in archs:
        rows += run_model(arch, bundle, config, rounds, args.warmup, args.device, env, args.out_dir, args.profile)
    common.log(f"wrote {common.write_csv(args.out_dir / 'training.csv', rows)} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
