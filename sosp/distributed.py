"""Data-parallel training on the GPUs of one node (or several CPU processes) under ``torchrun``.

A job that asks for ``N > 1`` processes relaunches itself on ``N`` worker processes as ``torchrun
--standalone --nproc-per-node N`` would (:func:`maybe_relaunch`); each of the ``N`` processes joins the
process group that torchrun describes in its environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) with :func:`setup` (``nccl`` on CUDA, one GPU per process, GPU =
``LOCAL_RANK``; ``gloo`` on the CPU) and leaves it with :func:`teardown`. :func:`sosp.train.train`
and :func:`sosp.train.evaluate` notice an initialised group of more than one process by themselves:

- **One global batch.** ``TrainConfig.batch_size`` stays the *global* batch: every rank draws the
  same permutation and augmentation from the same ``(seed, epoch)`` generator and trains on its
  contiguous shard (``batch_size / world_size`` examples, which must divide) of each global batch
  (:class:`ShardedBatchSampler` for streamed data sets). The loss is the mean over the global batch
  (DDP averages the ranks' gradients), so a run on ``N`` processes follows the single-process run up to
  float rounding, and a checkpoint written by ``N`` processes resumes on any other number.
- **BatchNorm** normalises each rank's shard with that shard's statistics, as in standard DDP
  practice (no SyncBatchNorm, which needs a GPU); networks with BatchNorm therefore differ slightly
  from a single process at the same global batch (as a smaller batch would), networks without it do
  not. Rank 0's running statistics are the model's: DDP broadcasts them before every forward pass and
  :func:`sosp.train.train` once more before every evaluation and checkpoint.
- **Randomness.** Data order and augmentation are the same on every rank (they choose the global
  batch); dropout and other global draws are seeded per rank (rank 0 as a single process would be).
- **Checkpoints, records and logs** are written by rank 0 only (atomically); the other ranks wait at
  a barrier after each checkpoint, and all ranks read the checkpoint on resume (they must find the
  same epoch). Callers write their outputs under ``if is_main():``.
- **Evaluation**: each rank evaluates a contiguous shard of the split; correct counts, loss sums and
  counts are summed across the ranks, so every rank returns the metrics of the whole split.

Outside torchrun (or with one process) every function here is a no-op and training is exactly the
single-process code path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

from .errors import ConfigError

__all__ = [
    "ShardedBatchSampler",
    "barrier",
    "broadcast_buffers",
    "is_distributed",
    "is_main",
    "launch",
    "launched",
    "local_device",
    "local_rank",
    "maybe_relaunch",
    "process_group",
    "rank",
    "setup",
    "shard_bounds",
    "teardown",
    "worker_command",
    "world_size",
]


# ----------------------------------------------------------------------------------------- the group


def launched() -> bool:
    """Whether this process was started by torchrun (its ``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised (training is data-parallel)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the initialised group; 0 without one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the initialised group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its node (torchrun's ``LOCAL_RANK``); 0 outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Whether this process writes checkpoints, models, records and logs: rank 0 of the group, or,
    before :func:`setup`, the process torchrun started with ``RANK=0`` (so that a process can silence
    its logging before joining the group); always true outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", 0)) == 0


def local_device(device="cpu") -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA device in a process group (one GPU per
    process, whatever index was asked for), else ``device`` unchanged."""
    device = torch.device(device)
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def setup(device="cpu") -> torch.device:
    """Join the process group torchrun describes and return this rank's device.

    Backend ``nccl`` for a CUDA ``device`` (this process uses GPU ``LOCAL_RANK``), ``gloo`` for the
    CPU. Outside torchrun, with ``WORLD_SIZE=1`` or in an already initialised group it initialises
    nothing and returns ``device`` (the local GPU in a group).
    """
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        return local_device(device)
    if not launched() or int(os.environ["WORLD_SIZE"]) <= 1:
        return device
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed: run with one process")
    if device.type == "cuda":
        local = local_rank()
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"process {local} of this node needs GPU {local} but only {torch.cuda.device_count()} "
                f"are visible: ask for at most that many processes"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return device


def teardown(wait: bool = True) -> None:
    """Leave and destroy the process group (a no-op without one). With ``wait``, first wait for every
    rank, so that no rank closes its connections while another still uses them (gloo aborts the
    process on a connection closed by a peer); an error path passes ``wait=False``."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device="cpu") -> Iterator[torch.device]:
    """``with process_group(args.device) as device:`` :func:`setup`, then :func:`teardown` on exit
    (without waiting for the other ranks when the block raised)."""
    device = setup(device)
    try:
        yield device
    except BaseException:
        teardown(wait=False)
        raise
    teardown()


def barrier() -> None:
    """Wait for every rank (a no-op without a group of more than one process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks, in place (unchanged without a group); returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_equal(value: int) -> bool:
    """Whether every rank passed the same integer (collective: every rank must call it)."""
    if not is_distributed():
        return True
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value, -value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # [max, -min]
    return int(t[0]) == -int(t[1])


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank."""
    if is_distributed():
        for b in module.buffers():
            dist.broadcast(b, src)


# ----------------------------------------------------------------------------------------- sharding


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous shard of ``n`` items split over ``world`` ranks
    (sizes differ by at most one; equal when ``world`` divides ``n``)."""
    return (rank * n) // world, ((rank + 1) * n) // world


class ShardedBatchSampler(torch.utils.data.Sampler):
    """Batch sampler of one rank: this rank's shard of every *global* batch of one permutation.

    Every rank draws the same permutation of ``range(n)`` (``torch.randperm`` with a generator seeded
    identically on every rank; none: in order), cuts it into global batches of ``batch_size``
    (dropping a last partial batch with ``drop_last``) and yields its contiguous shard of each
    (:func:`shard_bounds`): the union over the ranks of their ``i``-th batches is the ``i``-th global
    batch of a single process with the same permutation. For ``DataLoader(batch_sampler=...)``; the
    permutation is drawn when iteration starts.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        rank: int,
        world: int,
        *,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.generator, self.drop_last = generator, drop_last

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.generator is not None else None
        stop = self.n - self.n % self.batch_size if self.drop_last else self.n
        for start in range(0, stop, self.batch_size):
            size = min(self.batch_size, self.n - start)
            lo, hi = shard_bounds(size, self.rank, self.world)
            if order is None:
                yield list(range(start + lo, start + hi))
            else:
                yield order[start + lo : start + hi].tolist()


# ----------------------------------------------------------------------------------------- launching


def worker_command(
    argv: Sequence[str],
    nproc: int | None,
    *,
    module: str | None = "sosp",
    script: str | None = None,
) -> list[str] | None:
    """The command each of ``nproc`` workers runs (``python -u -m <module> <argv...>``, or ``python -u
    <script> <argv...>``), or None when this process should run ``argv`` itself: ``nproc`` is None or
    1, or this process already is a worker (runs under torchrun)."""
    if nproc is None or nproc <= 1 or launched():
        return None
    if (module is None) == (script is None):
        raise ValueError("give exactly one of module and script")
    target = ["-m", module] if module is not None else [str(script)]
    return [sys.executable, "-u", *target, *map(str, argv)]


def launch(command: Sequence[str], nproc: int) -> int:
    """Run ``command`` on ``nproc`` local worker processes as ``torchrun --standalone
    --nproc-per-node N`` does (torch's elastic launcher, a rendezvous on a free local port, no
    restarts) and return the exit status: 0, or the failing worker's (1 for a signal).

    The command's arguments are handed to the workers untouched; passing them through torchrun's own
    command line would not be safe (its parser reads ``--nproc`` as ``--nproc-per-node``). A SIGTERM
    or SIGINT stops the workers. Workers get ``OMP_NUM_THREADS=1`` unless it is set.
    """
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=int(nproc),
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port
        max_restarts=0,
        monitor_interval=0.1,
    )
    set_threads = "OMP_NUM_THREADS" not in os.environ
    if set_threads:
        os.environ["OMP_NUM_THREADS"] = "1"  # the workers inherit this environment
    handlers = {}  # the launcher installs its own; restored for callers that go on (tests)
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"):
            if hasattr(signal, name):
                handlers[getattr(signal, name)] = signal.getsignal(getattr(signal, name))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        elastic_launch(config, command[0])(*command[1:])
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
        print(f"worker {rank} of {nproc} failed with exit code {failure.exitcode}", file=sys.stderr, flush=True)
        return code
    finally:
        if set_threads:
            os.environ.pop("OMP_NUM_THREADS", None)
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    return 0


def maybe_relaunch(argv: Sequence[str], nproc: int | None, *, module: str | None = "sosp", script=None) -> None:
    """Run this command on ``nproc`` data-parallel worker processes and exit with their status
    (``SystemExit``); return only when there is nothing to do (``nproc`` is None or 1, or this process
    already is a worker).

    This process becomes the launcher (what ``torchrun --standalone --nproc-per-node N`` would be:
    it holds no model and no data, stops the workers on SIGTERM and fails when any worker fails); each
    worker runs the same command line, finds itself under the launcher, and proceeds. ``--nproc`` may
    stay in ``argv``.

    How a verb uses it (``sosp train --nproc 2 ...``, ``sosp finetune --nproc 2 ...``)::

        def cmd_train(args):
            distributed.maybe_relaunch(sys.argv[1:], args.nproc)  # returns in the workers only
            with distributed.process_group(args.device) as device:  # nccl on cuda, gloo on cpu
                ...
                history = train.train(model, bundle, config, seed=seed, device=device, ...)
                fields = evaluate(model, bundle, args)  # every rank: evaluation is sharded
                if distributed.is_main():
                    save(args.out, model, meta, record, args.record)
                    drop_checkpoint(checkpoints, args.keep_checkpoint)

    Call it first, before loading data or building the model (the launcher's work would be wasted).
    ``sys.argv[1:]`` is the verb and its options whether the suite ran as ``sosp`` or ``python -m
    sosp``.
    """
    command = worker_command(argv, nproc, module=module, script=script)
    if command is not None:
        raise SystemExit(launch(command, nproc))
