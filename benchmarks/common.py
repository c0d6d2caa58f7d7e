"""Shared helpers of the benchmark scripts: side-by-side timing, peak memory, environment, CSV output.

Timing (:func:`interleaved`): every callable is warmed up, then ``rounds`` rounds each call every
callable once, in an order that rotates by one position per round, so slow drifts of the machine
(another process starting, thermal throttling, a CPU governor) hit all callables alike and none
always runs right after the same neighbour. :func:`summarise` reduces the samples to median and
inter-quartile range; :func:`paired_ratio` gives the ratio to a reference as the median of the
per-round ratios (each taken a few milliseconds apart), which is far less sensitive to load changes
than a ratio of two medians taken minutes apart.

Peak memory (:func:`peak_memory`): on CPU, Linux's per-process high-water mark ``VmHWM`` is reset to
the current RSS by writing ``5`` to ``/proc/self/clear_refs``; after the call ``VmHWM`` minus the RSS
before is the peak extra resident memory of the call. Freed heap memory that glibc keeps is returned
first (``malloc_trim``) so that it does not hide new allocations. On CUDA:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the allocation before.

Output: every CSV goes through :func:`sosp.io.write_atomic` (temporary file + rename) under
``results/benchmarks/`` (:data:`OUT_DIR`), with the environment record (:func:`environment`) repeated
in columns prefixed ``env_`` on every row, so a row is self-describing.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import gc
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from a checkout without an installed package
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sosp import measure  # noqa: E402
from sosp.io import write_atomic  # noqa: E402

OUT_DIR = ROOT / "results" / "benchmarks"


# ---------------------------------------------------------------------------------------------
# Command line and threads


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke sizes (seconds to a minute or two) and one torch thread unless --threads",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: all usable cores; 1 with --quick)"
    )
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the CSVs and figures go")
    return parser


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(threads: int | None, quick: bool) -> int:
    """Set torch's intra-op threads (``None``: 1 in quick mode, else every usable core)."""
    n = threads if threads is not None else (1 if quick else usable_cores())
    if n < 1:
        raise SystemExit(f"--threads must be positive, got {n}")
    torch.set_num_threads(n)
    return n


# ---------------------------------------------------------------------------------------------
# Timing


def synchronizer(device: torch.device | str | None) -> Callable[[], None]:
    """A function that waits for queued device work (a no-op on CPU)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def interleaved(
    callables: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    device: torch.device | str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds of every call of every callable: ``warmup`` untimed rounds, then ``rounds`` timed ones.

    Round ``r`` calls the callables in their given order rotated by ``r`` positions. On CUDA the
    device is synchronised before and after each call, so each sample is the call's full duration.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    names = list(callables)
    sync = synchronizer(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync()
            start = time.perf_counter()
            callables[name]()
            sync()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(elapsed)
        if log is not None:
            log(f"  round {r + 1}/{warmup + rounds}{' (warm-up)' if r < warmup else ''} done")
    return times


def summarise(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and inter-quartile range (``numpy.percentile``, linear), and the count."""
    q25, median, q75 = np.percentile(np.asarray(samples, dtype=float), [25, 50, 75])
    return {
        "median": float(median),
        "q25": float(q25),
        "q75": float(q75),
        "iqr": float(q75 - q25),
        "min": float(min(samples)),
        "n": len(samples),
    }


def paired_ratio(samples: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Median and IQR of the per-round ratios ``samples[r] / reference[r]``."""
    ratios = [a / b for a, b in zip(samples, reference) if b > 0]
    if not ratios:
        return {"median": math.nan, "iqr": math.nan}
    q25, median, q75 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(median), "iqr": float(q75 - q25)}


# ---------------------------------------------------------------------------------------------
# Peak memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_peak_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kib("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def peak_memory(fn: Callable[[], object], device: torch.device | str | None = None) -> dict[str, float]:
    """Peak memory of one call of ``fn`` in MiB.

    ``peak_extra_mib``: the peak above what was in use right before the call (the call's own
    working memory, including its outputs while alive). ``peak_total_mib``: the process's (CPU,
    resident) or the allocator's (CUDA) peak during the call. NaN where it cannot be measured.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {
            "peak_extra_mib": (peak - before) / 2**20,
            "peak_total_mib": peak / 2**20,
            "memory_method": "cuda.max_memory_allocated",
        }
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current VmRSS
        before = _status_kib("VmRSS")
    except (OSError, KeyError):
        fn()
        return {"peak_extra_mib": math.nan, "peak_total_mib": math.nan, "memory_method": "unavailable"}
    fn()
    peak = _status_kib("VmHWM")
    return {
        "peak_extra_mib": (peak - before) / 1024,
        "peak_total_mib": peak / 1024,
        "memory_method": "VmHWM-after-clear_refs",
    }


# ---------------------------------------------------------------------------------------------
# Environment


def git_commit() -> str | None:
    """HEAD of the checkout holding the benchmarks, ``+dirty`` if tracked files changed."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    return measure._cpu_model() or platform.processor() or platform.machine()


def environment(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """What a timing depends on: device, library versions, threads, dtype, code version, load."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = math.nan
    return {
        "env_device": str(device),
        "env_device_name": name,
        "env_torch_version": torch.__version__,
        "env_cuda_version": torch.version.cuda if device.type == "cuda" else None,
        "env_python_version": platform.python_version(),
        "env_threads": torch.get_num_threads(),
        "env_cores": usable_cores(),
        "env_dtype": str(dtype).removeprefix("torch."),
        "env_git_commit": git_commit(),
        "env_load_avg_1min": load1,
        "env_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------
# Output


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping]) -> Path:
    """Write ``rows`` (dicts) as a CSV atomically; columns in first-seen order, blanks for missing."""
    rows = [dict(r) for r in rows]
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _cell(v) for k, v in r.items()})

    path = Path(path)
    write_atomic(path, write)
    return path


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def save_figure(fig, stem: str | os.PathLike) -> list[Path]:
    """``stem.png`` and ``stem.pdf``, each written atomically."""
    paths = []
    for ext in ("png", "pdf"):
        path = Path(f"{stem}.{ext}")
        write_atomic(path, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight"))
        paths.append(path)
    return paths


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
