"""Cost of a model: parameters, MACs (FLOPs = 2 x MACs) and latency, as in docs/method.md section 9.

MACs count conv/linear/matmul multiply-accumulates only (no BN, activation or pooling terms), so that
the two independent counters, torch's ``FlopCounterMode`` and fvcore, must agree exactly: a mismatch
flags an op one of them misses.
"""

import platform
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import ConfigError, is_positive_int
from .utils import eval_mode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """MACs of one forward pass on ``example_input`` (its batch size included)."""
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(example_input)
    return int(counter.get_total_flops()) // 2


def count_macs_fvcore(model: nn.Module, example_input: torch.Tensor) -> int:
    """The same count by fvcore (JIT trace), which counts one fused multiply-add as one flop."""
    with warnings.catch_warnings():  # fvcore's import calls the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis
        from fvcore.nn import jit_handles as h
    # Only conv/linear/matmul, as in count_macs: fvcore's defaults also count BN and pooling (+0.9% on
    # resnet20), and set_op_handle(op, None) cannot switch a default handle off, hence the clear.
    mac_ops = {
        "aten::_convolution": h.conv_flop_jit,
        "aten::linear": h.linear_flop_jit,
        "aten::addmm": h.addmm_flop_jit,
        "aten::mm": h.matmul_flop_jit,
        "aten::matmul": h.matmul_flop_jit,
        "aten::bmm": h.bmm_flop_jit,
        "aten::einsum": h.einsum_flop_jit,
    }
    with eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter, not about the count
        analysis = (
            FlopCountAnalysis(model, example_input)
            .clear_op_handles()
            .set_op_handle(**mac_ops)
            .unsupported_ops_warnings(False)
            .uncalled_modules_warnings(False)
        )
        return int(analysis.total())


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model() or platform.processor() or device.type


def _cpu_model() -> str | None:
    """The CPU's marketing name from /proc/cpuinfo (Linux); ``platform.processor()`` is often empty."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def measure_latency(
    model: nn.Module, example_input: torch.Tensor, device="cpu", warmup: int = 10, iters: int = 30
) -> dict:
    """Forward latency per batch in ms (median and inter-quartile range over ``iters`` timed runs).

    The model is moved to ``device`` for the measurement and moved back afterwards.
    """
    if warmup < 0 or iters < 1:
        raise ConfigError(f"latency needs warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    home = next(model.parameters(), torch.empty(0)).device
    x = example_input.to(device)
    cuda = device.type == "cuda"
    benchmark = torch.backends.cudnn.benchmark
    times = []
    try:
        model.to(device)
        torch.backends.cudnn.benchmark = cuda or benchmark
        with eval_mode(model), torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(iters):
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    torch.cuda.synchronize(device)
                    start.record()
                    model(x)
                    end.record()
                    torch.cuda.synchronize(device)
                    times.append(start.elapsed_time(end))
                else:
                    start = time.perf_counter()
                    model(x)
                    times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.backends.cudnn.benchmark = benchmark
        model.to(home)
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return {
        "device": str(device),
        "device_name": _device_name(device),
        "torch_version": torch.__version__,
        "dtype": str(x.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "batch_size": int(x.shape[0]),
        "warmup": warmup,
        "iters": iters,
        "median_ms": float(median),
        "iqr_ms": float(q75 - q25),
    }


def measure(
    model: nn.Module,
    input_shape: tuple,
    latency_batches=(1, 256),
    device="cpu",
    latency: bool = True,
    warmup: int = 10,
    iters: int = 30,
) -> dict:
    """Params, MACs (both counters, batch 1), FLOPs and, if asked, latency at each batch size.

    ``input_shape`` is one sample's shape without the batch dimension, e.g. ``(3, 32, 32)``;
    ``warmup``/``iters`` go to ``measure_latency`` (smaller values only for smoke tests).
    """
    shape = tuple(input_shape)
    if not shape or not all(map(is_positive_int, shape)):
        raise ConfigError(f"input_shape must be a tuple of positive integers such as (3, 32, 32), got {input_shape!r}")
    param = next(model.parameters(), torch.empty(0))
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    macs = count_macs(model, x)
    result = {
        "params": count_params(model),
        "macs": macs,
        "flops": 2 * macs,
        "macs_fvcore": count_macs_fvcore(model, x),
        "latency": [],
    }
    if latency:
        result["latency"] = [
            measure_latency(model, x.expand(b, *shape).contiguous(), device, warmup, iters) for b in latency_batches
        ]
    return result


def latency_devices(device: str = "cpu", gpu_latency: str = "auto") -> list[str]:
    """Where to time a model: the CPU always, and a GPU too when ``device`` is a CUDA device or
    ``gpu_latency`` is ``always`` (both an error without one) or ``auto`` with one present (``never``:
    the CPU only)."""
    devices = ["cpu"]
    gpu = device if device.startswith("cuda") else "cuda"
    if gpu_latency == "always" or device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"GPU latency asked for ({'--device ' + device if device != 'cpu' else '--gpu-latency always'}), "
                "but torch sees no CUDA device"
            )
        devices.append(gpu)
    elif gpu_latency == "auto" and torch.cuda.is_available():
        devices.append(gpu)
    return devices


def measure_on(
    model: nn.Module,
    input_shape: tuple,
    devices: Sequence[str] = ("cpu",),
    latency_batches=(1, 256),
    warmup: int = 10,
    iters: int = 30,
) -> dict:
    """:func:`measure` with the latency timed at each batch size on every device of ``devices`` (e.g.
    from :func:`latency_devices`; empty: counts only): the CPU entries first, then those of each GPU."""
    shape = tuple(input_shape)
    on_cpu = "cpu" in devices
    result = measure(
        model,
        shape,
        latency_batches=latency_batches if on_cpu else (),
        device="cpu",
        latency=on_cpu,
        warmup=warmup,
        iters=iters,
    )
    for device in devices:
        if device == "cpu":
            continue
        x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
        result["latency"] += [
            measure_latency(model, x.expand(b, *shape).contiguous(), device, warmup, iters) for b in latency_batches
        ]
    return result
