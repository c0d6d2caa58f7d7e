"""Data-parallel training (sosp.distributed, sosp.train under torchrun) on the CPU with gloo.

The 2-process runs go through the real launcher (``sosp.distributed.launch``, what ``torchrun
--standalone --nproc-per-node 2`` does; the rendezvous picks a free local port) with this file as the
worker script: each worker joins the gloo group, trains, and saves its rank's weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from sosp import data, distributed
from sosp.errors import ConfigError
from sosp.train import TrainConfig, evaluate, runtime_options, train

HERE = Path(__file__).resolve()
CFG = TrainConfig(epochs=2, batch_size=64, lr=0.05)  # 256 digits: 4 global batches per epoch
TOLERANCE = 1e-5  # max abs weight difference, 2 processes vs 1, after 8 steps (measured: ~6e-8)


class Plain(nn.Module):
    """No BatchNorm, no dropout: data-parallel SGD equals single-process SGD up to float rounding."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2), 1))


class WithBN(nn.Module):
    """Conv-BN-ReLU-dropout-linear: BN statistics (rank 0's are kept) and per-rank dropout on resume."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.2),
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.features(x))


MODELS = {"plain": Plain, "bn": WithBN}


def make(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[kind]()


def bundle():
    return data.load("digits", train_subset=256)


# ----------------------------------------------------------------------------------------- worker


def worker(argv: list[str]) -> None:
    """One rank of a 2-process run (or the parent that relaunches itself under torchrun)."""
    p = argparse.ArgumentParser()
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--model", choices=MODELS, action="append", required=True, help="repeatable: trained in turn")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint-dir")
    p.add_argument("--kill-after", type=int, help="rank 0 SIGKILLs itself after this epoch's checkpoint")
    args = p.parse_args(argv)
    distributed.maybe_relaunch(argv, args.nproc, module=None, script=str(HERE))  # returns in the workers
    torch.set_num_threads(1)
    with distributed.process_group("cpu") as device:
        assert distributed.world_size() == args.nproc and device == torch.device("cpu")
        b = bundle()

        def log(record):
            if record["epoch"] == args.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        for kind in args.model:
            model = make(kind)
            checkpoints = args.checkpoint_dir and f"{args.checkpoint_dir}/{kind}"
            history = train(model, b, CFG, seed=3, checkpoint_dir=checkpoints, device=device, progress=False, log=log)
            metrics = evaluate(model, b.test, batch_size=100)  # sharded over the ranks
            out = {"state": model.state_dict(), "history": history, "metrics": metrics}
            torch.save(out, f"{args.out}.{kind}.rank{distributed.rank()}")


def launch(*args: str, nproc: int = 2) -> int:
    """The N workers launched from this process (no relaunching parent: one interpreter fewer)."""
    argv = ["--nproc", str(nproc), *args]
    return distributed.launch(distributed.worker_command(argv, nproc, module=None, script=str(HERE)), nproc)


def ranks(out: Path, kind: str, nproc: int = 2) -> list[dict]:
    return [torch.load(f"{out}.{kind}.rank{r}", weights_only=False) for r in range(nproc)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted 2-process run of both models: ``{kind: [rank 0's result, rank 1's]}``."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    t0 = time.perf_counter()
    assert launch("--model", "plain", "--model", "bn", "--out", str(out)) == 0
    print(f"uninterrupted 2-process run: {time.perf_counter() - t0:.1f} s")
    return {kind: ranks(out, kind) for kind in MODELS}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------- 2 processes


def test_two_processes_match_one_process(uninterrupted):
    """The same global batch (sharded 32 + 32) gives a single process's weights after 8 SGD steps."""
    torch.set_num_threads(1)
    rank0, rank1 = uninterrupted["plain"]
    assert same(rank0["state"], rank1["state"]) and rank0["metrics"] == rank1["metrics"]

    b = bundle()
    single = make("plain")
    h = train(single, b, CFG, seed=3, progress=False)
    diff = max_diff(single.state_dict(), rank0["state"])
    print(f"max |w_2proc - w_1proc| = {diff:.3g}")
    assert diff < TOLERANCE
    assert rank0["history"]["train_loss"] == pytest.approx(h["train_loss"], rel=1e-5)
    assert rank0["history"]["val_top1"] == pytest.approx(h["val_top1"], abs=1 / len(b.val))
    m = evaluate(single, b.test, batch_size=100)
    assert rank0["metrics"]["top1"] == pytest.approx(m["top1"], abs=1 / len(b.test))
    assert rank0["metrics"]["loss"] == pytest.approx(m["loss"], rel=1e-4)


def test_killed_two_process_run_resumes(uninterrupted, tmp_path):
    """Rank 0 is SIGKILLed after epoch 1's checkpoint; a second launch resumes from it and ends with
    the weights (bit for bit) and history of an uninterrupted 2-process run."""
    torch.set_num_threads(1)
    common = ("--model", "bn")
    cut = tmp_path / "ck"
    assert launch(*common, "--out", str(tmp_path / "killed"), "--checkpoint-dir", str(cut), "--kill-after", "1") != 0
    assert not list(tmp_path.glob("killed.*"))  # it did die
    assert [p.name for p in (cut / "bn").iterdir()] == ["last.pt"]  # no temporary left behind
    assert torch.load(cut / "bn" / "last.pt", weights_only=False)["epoch"] == 1
    shutil.copytree(cut / "bn", tmp_path / "ck_copy")
    assert launch(*common, "--out", str(tmp_path / "resumed"), "--checkpoint-dir", str(cut)) == 0
    a, b = uninterrupted["bn"], ranks(tmp_path / "resumed", "bn")
    assert same(a[0]["state"], a[1]["state"]) and same(b[0]["state"], b[1]["state"])  # buffers synced too
    assert same(a[0]["state"], b[0]["state"])
    for key in ("epoch", "train_loss", "val_top1", "lr"):
        assert a[0]["history"][key] == b[0]["history"][key]
    assert a[0]["metrics"] == b[0]["metrics"]
    # a 2-process checkpoint resumes in a single process too (the same global batches; BatchNorm
    # then sees all of each, so the weights differ slightly)
    single = make("bn")
    h = train(single, bundle(), CFG, seed=3, checkpoint_dir=tmp_path / "ck_copy", progress=False)
    assert h["epoch"] == [1, 2] and h["train_loss"][0] == a[0]["history"]["train_loss"][0]
    assert max_diff(single.state_dict(), a[0]["state"]) < 0.05


# ----------------------------------------------------------------------------------------- no processes


@pytest.mark.parametrize("n, batch, world, drop_last", [(10, 4, 2, True), (10, 4, 2, False), (7, 6, 3, False)])
def test_sharded_batch_sampler_covers_the_global_batches(n, batch, world, drop_last):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(5)).tolist()
    stop = n - n % batch if drop_last else n
    expected = [order[s : s + batch] for s in range(0, stop, batch)]
    shards = [
        list(
            distributed.ShardedBatchSampler(
                n, batch, r, world, generator=torch.Generator().manual_seed(5), drop_last=drop_last
            )
        )
        for r in range(world)
    ]
    assert all(len(s) == len(expected) == len(distributed.ShardedBatchSampler(n, batch, 0, world, drop_last=drop_last))
               for s in shards)  # fmt: skip
    for i, global_batch in enumerate(expected):
        assert sum((s[i] for s in shards), []) == global_batch


def test_rank_batches_are_shards_of_the_global_batches():
    """Rank r's i-th batch is its slice of the i-th global batch, weighted so that DDP's gradient
    average is the global batch mean (equal shards: weight 1). In memory, the global batches are
    exactly a single process's (augmentation included); streamed, those of ``randperm(n, generator)``."""
    from sosp.data import Split
    from sosp.train import _batches

    b = data.load("digits", train_subset=40)
    n, cpu = len(b.train), torch.device("cpu")
    index_images = torch.arange(n, dtype=torch.float32)[:, None, None, None]  # an image holds its index
    streamed = Split(x=None, y=b.train.y, dataset=torch.utils.data.TensorDataset(index_images, b.train.y))
    for split, batch, drop_last in ((b.train, 16, True), (b.train, 16, False), (streamed, 12, False)):
        shards = [
            list(_batches(split, b, batch, torch.Generator().manual_seed(7), None, cpu, drop_last, (r, 2)))
            for r in (0, 1)
        ]
        if split.in_memory:
            single = list(_batches(split, b, batch, torch.Generator().manual_seed(7), None, cpu, drop_last, None))
            assert all(w == 1.0 for *_, w in single)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(7))
            single = [(index_images[order[i : i + batch]], split.y[order[i : i + batch]]) for i in range(0, n, batch)]
        assert len(shards[0]) == len(shards[1]) == len(single) == (n // batch if drop_last else -(-n // batch))
        for i, (x, y, *_) in enumerate(single):
            assert torch.equal(torch.cat([s[i][0] for s in shards]), x)
            assert torch.equal(torch.cat([s[i][1] for s in shards]), y)
            assert [s[i][2] for s in shards] == [len(s[i][1]) * 2 / len(y) for s in shards]  # sum / world = 1


def test_worker_command(monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.worker_command(["train"], 1) is None and distributed.worker_command(["train"], None) is None
    assert distributed.maybe_relaunch(["train"], 1) is None
    cmd = distributed.worker_command(["train", "--nproc", "4"], 4)
    assert cmd == [sys.executable, "-u", "-m", "sosp", "train", "--nproc", "4"]  # the options reach the workers
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.worker_command(["train"], 4) is None  # already a worker
    assert distributed.maybe_relaunch(["train"], 4) is None


def test_maybe_relaunch_runs_the_command_on_the_workers_and_exits(monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda cmd, n: launched.append((cmd, n)) or 3)
    with pytest.raises(SystemExit) as exit_:
        distributed.maybe_relaunch(["finetune", "--nproc", "2"], 2)
    assert exit_.value.code == 3  # the workers' status
    assert launched == [([sys.executable, "-u", "-m", "sosp", "finetune", "--nproc", "2"], 2)]


def test_single_process_defaults():
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.setup("cpu") == torch.device("cpu")  # outside torchrun: no group
    distributed.barrier()
    distributed.teardown()
    assert [distributed.shard_bounds(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]


def test_precision_options_and_cpu_stays_float32():
    cfg = TrainConfig.from_dict({"epochs": 1, "batch_size": 8, "lr": 0.1, "amp": "bf16", "channels_last": True})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(epochs=1, batch_size=8, lr=0.1, amp=False).amp == "off"  # YAML 1.1 reads `off` as false
    assert TrainConfig(epochs=1, batch_size=8, lr=0.1, channels_last="off").channels_last is False
    for bad in ({"amp": "fp16"}, {"channels_last": "maybe"}, {"channels_last": 1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig(epochs=1, batch_size=8, lr=0.1, **bad)
    auto = TrainConfig(epochs=1, batch_size=8, lr=0.1)
    assert runtime_options(auto, "cpu") == {
        "amp": "off", "channels_last": False, "world_size": 1, "per_rank_batch_size": 8, "device": "cpu"
    }  # fmt: skip
    assert runtime_options(cfg, "cpu")["amp"] == "off"  # bf16 asked, float32 on the CPU
    b = data.load("digits", train_subset=64)
    model = make("plain")
    train(model, b, cfg, seed=0, progress=False)  # channels_last on the CPU: a memory format, still float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.conv.weight.is_contiguous()  # back to the contiguous format after training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_autocast_and_channels_last():
    b = data.load("digits", train_subset=64)
    for amp, expected in (("auto", "bf16" if torch.cuda.is_bf16_supported() else "off"), ("off", "off")):
        cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, amp=amp)
        assert runtime_options(cfg, "cuda")["amp"] == expected
        assert runtime_options(cfg, "cuda")["channels_last"] is True
        model = make("plain")
        h = train(model, b, cfg, seed=0, device="cuda", progress=False)
        assert all(p.dtype == torch.float32 for p in model.parameters()) and h["train_loss"][0] > 0


if __name__ == "__main__":
    worker(sys.argv[1:])


def test_the_cli_trains_on_two_processes_and_rank_0_writes_once(tmp_path):
    """`sosp train --nproc 2` launches two gloo workers; one model and one record come out, and the
    record says how it ran (world size, per-rank batch)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SOSP_DEBUG": ""}
    command = [sys.executable, "-m", "sosp.cli", "train", "--dataset", "digits", "--arch", "resnet20"]
    command += ["--epochs", "1", "--batch-size", "64", "--nproc", "2", "--quiet"]
    command += ["--out", str(tmp_path / "m.pt"), "--record", str(tmp_path / "r.json")]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["details"]["runtime"]["world_size"] == 2
    assert record["details"]["runtime"]["per_rank_batch_size"] == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "r.json"]
