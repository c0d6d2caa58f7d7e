"""The GPU benchmarks in one prepared script (needs CUDA; exits with status 2 and a message without).

Sections, each writing its CSV as soon as it is done so that a time-out keeps what finished:

1. ``gpu_scoring.csv``: the scoring benchmark of ``benchmarks/scoring.py`` on CUDA: every method of
   :data:`sosp.methods.METHODS` (SOSP-H per ``combine`` and with ``curvature=hessian``, SOSP-I where
   its memory check passes) and the EigenDamage factor pass, time per batch of 128 at CIFAR shape and
   its ratio to Taylor measured side by side (device synchronised around every call), and peak
   memory (``torch.cuda.max_memory_allocated``) on resnet20/56/110 and vgg16.
2. ``gpu_training.csv``: ResNet-56 CIFAR training throughput with the data resident on the GPU
   (random 3x32x32 tensors, batch 128, SGD): :func:`sosp.train.train` (which uses channels-last and
   bf16 autocast on CUDA) against bare loops in fp32 NCHW, fp32 channels-last, and channels-last with
   bf16 autocast (the like-for-like reference for ``sosp.train``), one epoch each per round,
   interleaved.
3. ``gpu_latency.csv``: :func:`sosp.measure.measure_latency` (CUDA events, ``cudnn.benchmark``,
   10 warm-up + 30 timed iterations, median and IQR) of resnet20/56 and vgg16 at batch 1 and 256, in
   fp32 NCHW, fp32 channels-last and bf16 channels-last.

Every row carries the environment (GPU name, torch and CUDA versions, dtype, TF32 flags, git commit).
Total time on an H100/H200-class GPU: about 3-5 minutes; ``--budget-s`` (default 450) skips what
would not fit and says so in the log.

    python benchmarks/gpu.py            # everything
    python benchmarks/gpu.py --quick    # smoke sizes (a minute)
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import common  # noqa: E402


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, needed: float, what: str) -> bool:
        if self.left() < needed:
            common.log(f"SKIPPED {what}: {self.left():.0f} s of the budget left, about {needed:.0f} s needed")
            return False
        return True


def gpu_env(device) -> dict:
    env = common.environment(device)
    env.update(
        env_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        env_tf32_cudnn=torch.backends.cudnn.allow_tf32,
        env_cudnn_version=torch.backends.cudnn.version(),
    )
    return env


# ---------------------------------------------------------------------------------------------
# 1. Scoring


def scoring_section(args, device, budget: Budget) -> None:
    from benchmarks import scoring

    env = gpu_env(device)
    rows = []
    for arch in args.models:
        if not budget.allows(40 if not args.quick else 10, f"scoring on {arch}"):
            break
        case = scoring.Case(arch, args.batch_size, device)
        rows += scoring.benchmark_case(
            case, scoring.method_entries(case, sosp_i=arch in args.sosp_i_models), args.rounds, 1, memory=True, env=env
        )
        del case
        torch.cuda.empty_cache()
        common.write_csv(args.out_dir / "gpu_scoring.csv", rows)
    common.log(f"wrote {args.out_dir / 'gpu_scoring.csv'}")


# ---------------------------------------------------------------------------------------------
# 2. Training throughput


def bare_epoch(model, x, y, lr, generator, batch_size, channels_last: bool, bf16: bool) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    n = len(x)
    order = torch.randperm(n, generator=generator).to(x.device)
    for start in range(0, n - n % batch_size, batch_size):
        idx = order[start : start + batch_size]
        xb = x[idx]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model(xb)
        loss = F.cross_entropy(out.float(), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def training_section(args, device, budget: Budget) -> None:
    from benchmarks.training import make_bundle
    from sosp import models
    from sosp.train import TrainConfig, train

    if not budget.allows(60 if not args.quick else 15, "training throughput"):
        return
    torch.backends.cudnn.benchmark = True
    env = gpu_env(device)
    steps, bs = (10 if args.quick else 50), args.batch_size
    bundle = make_bundle("random", steps * bs)
    bundle.train = bundle.train.to(device)  # GPU-resident data: no host-to-device traffic per batch
    x, y = bundle.train.x, bundle.train.y
    config = TrainConfig(epochs=1, batch_size=bs, lr=0.01, momentum=0.9, weight_decay=5e-4)
    rows = []
    for arch in args.train_models:
        torch.manual_seed(0)
        base = models.create(arch, num_classes=10).to(device)
        variants = {
            "bare_fp32": (False, False),
            "bare_channels_last": (True, False),
            "bare_channels_last_bf16": (True, True),
        }
        nets = {name: copy.deepcopy(base) for name in [*variants, "sosp.train"]}
        for name, (cl, _) in variants.items():
            if cl:
                nets[name].to(memory_format=torch.channels_last)
        state = {"round": 0}

        def make(name, nets=nets, state=state, variants=variants):
            if name == "sosp.train":

                def run():
                    state["round"] += 1
                    train(nets[name], bundle, config, seed=state["round"], device=device, progress=False)

                return run
            cl, bf16 = variants[name]
            return lambda: bare_epoch(
                nets[name], x, y, config.lr, torch.Generator().manual_seed(state["round"]), bs, cl, bf16
            )

        loops = {name: make(name) for name in nets}
        times = common.interleaved(loops, rounds=args.rounds, warmup=1, device=device, log=common.log)
        ref = times["bare_channels_last_bf16"]
        n_images = steps * bs
        for name, samples in times.items():
            s = common.summarise(samples)
            ips = common.summarise([n_images / t for t in samples])
            ratio = common.paired_ratio(ref, samples)
            rows.append(
                {
                    "model": arch,
                    "loop": name,
                    "batch_size": bs,
                    "images_per_epoch": n_images,
                    "data": "random, GPU-resident",
                    "epoch_seconds_median": s["median"],
                    "epoch_seconds_iqr": s["iqr"],
                    "rounds": s["n"],
                    "images_per_second_median": ips["median"],
                    "images_per_second_iqr": ips["iqr"],
                    "throughput_ratio_to_bare_channels_last_bf16": ratio["median"],
                    "throughput_ratio_iqr": ratio["iqr"],
                    **env,
                }
            )
            common.log(f"  {arch} {name:26s} {ips['median']:9.0f} images/s  x{ratio['median']:.3f} of bare cl+bf16")
        del nets, base
        torch.cuda.empty_cache()
    common.log(f"wrote {common.write_csv(args.out_dir / 'gpu_training.csv', rows)}")


# ---------------------------------------------------------------------------------------------
# 3. Latency


def latency_section(args, device, budget: Budget) -> None:
    from sosp import models
    from sosp.measure import measure_latency

    env = gpu_env(device)
    rows = []
    variants = {
        "fp32": (torch.float32, False),
        "fp32_channels_last": (torch.float32, True),
        "bf16_channels_last": (torch.bfloat16, True),
    }
    for arch in args.latency_models:
        if not budget.allows(15 if not args.quick else 5, f"latency of {arch}"):
            break
        torch.manual_seed(0)
        base = models.create(arch, num_classes=10).eval()
        for vname, (dtype, cl) in variants.items():
            model = copy.deepcopy(base).to(device=device, dtype=dtype)
            fmt = torch.channels_last if cl else torch.contiguous_format
            model.to(memory_format=fmt)
            for b in args.latency_batches:
                x = torch.randn(b, 3, 32, 32, device=device, dtype=dtype).contiguous(memory_format=fmt)
                r = measure_latency(model, x, device=device, warmup=10, iters=30)
                rows.append(
                    {
                        "model": arch,
                        "variant": vname,
                        "batch_size": b,
                        "median_ms": r["median_ms"],
                        "iqr_ms": r["iqr_ms"],
                        "images_per_second": b / (r["median_ms"] / 1e3),
                        "warmup": r["warmup"],
                        "iters": r["iters"],
                        **env,
                        "env_dtype": r["dtype"],
                    }
                )
                common.log(f"  {arch} {vname:20s} batch {b:4d}: {r['median_ms']:.3f} ms (IQR {r['iqr_ms']:.3f})")
            del model
        torch.cuda.empty_cache()
    common.log(f"wrote {common.write_csv(args.out_dir / 'gpu_latency.csv', rows)}")


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=450, help="stop starting new sections after this")
    parser.add_argument(
        "--sections", nargs="+", default=["scoring", "training", "latency"], choices=["scoring", "training", "latency"]
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; quick: 3)")
    parser.add_argument("--models", nargs="+", default=None, help="scoring models")
    parser.add_argument("--sosp-i-models", nargs="*", default=["resnet20", "resnet56"])
    parser.add_argument("--train-models", nargs="+", default=["resnet56"])
    parser.add_argument("--latency-models", nargs="+", default=None)
    parser.add_argument("--latency-batches", nargs="+", type=int, default=[1, 256])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "benchmarks/gpu.py needs a CUDA GPU: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Nothing was run or written.",
            file=sys.stderr,
        )
        return 2
    device = torch.device(args.device)
    if device.type != "cuda":
        print(f"--device must be a CUDA device, got {args.device!r}", file=sys.stderr)
        return 2
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    common.set_threads(args.threads, quick=False)  # host threads: only the CPU side of the loops
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.models = args.models or (["resnet20"] if args.quick else ["resnet20", "resnet56", "resnet110", "vgg16"])
    args.latency_models = args.latency_models or (["resnet56"] if args.quick else ["resnet20", "resnet56", "vgg16"])
    budget = Budget(args.budget_s)
    common.log(f"GPU benchmarks on {torch.cuda.get_device_name(device)}, budget {args.budget_s:.0f} s")
    sections = {"scoring": scoring_section, "training": training_section, "latency": latency_section}
    for name in args.sections:
        t0 = time.perf_counter()
        sections[name](args, device, budget)
        common.log(f"section {name}: {time.perf_counter() - t0:.0f} s")
    common.log(f"done in {time.perf_counter() - budget.start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
