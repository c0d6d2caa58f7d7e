"""Cost measurement: the two MAC counters agree, modes are restored, latency records what docs/method.md asks."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sosp import models
from sosp.errors import ConfigError
from sosp.measure import (
    count_macs,
    count_macs_fvcore,
    count_params,
    latency_devices,
    measure,
    measure_latency,
    measure_on,
)

LATENCY_KEYS = {
    "device",
    "device_name",
    "torch_version",
    "dtype",
    "threads",
    "batch_size",
    "warmup",
    "iters",
    "median_ms",
    "iqr_ms",
}


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_fvcore_agrees_with_flop_counter(shortcut):
    # fvcore counts one fused multiply-add as one flop, FlopCounterMode counts two: restricted to the same
    # conv/linear ops, fvcore's total equals FlopCounterMode's FLOPs / 2 exactly.
    model, x = models.create("resnet20", num_classes=10, shortcut=shortcut), torch.zeros(1, 3, 32, 32)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(x)
    assert count_macs_fvcore(model, x) == count_macs(model, x) == counter.get_total_flops() // 2


def test_macs_scale_with_batch_and_restore_modes():
    model = models.create("vgg11", num_classes=10, in_channels=1)
    model.train()
    model.features[1].eval()  # a mixed state must come back as it was
    one, two = torch.zeros(1, 1, 8, 8), torch.zeros(2, 1, 8, 8)
    assert count_macs(model, two) == 2 * count_macs(model, one)
    assert count_macs_fvcore(model, two) == 2 * count_macs_fvcore(model, one)
    assert model.training and not model.features[1].training and model.features[0].training


def test_latency_record():
    model = models.create("resnet8", num_classes=10, in_channels=1, width_multiplier=0.25)
    record = measure_latency(model, torch.randn(3, 1, 8, 8), warmup=1, iters=4)
    assert set(record) == LATENCY_KEYS
    assert record["batch_size"] == 3 and record["iters"] == 4 and record["dtype"] == "float32"
    assert record["device"] == "cpu" and record["threads"] == torch.get_num_threads()
    assert record["torch_version"] == torch.__version__ and record["device_name"]
    assert record["median_ms"] > 0 and record["iqr_ms"] >= 0
    assert model.training
    with pytest.raises(ConfigError):
        measure_latency(model, torch.randn(1, 1, 8, 8), iters=0)


def test_measure():
    model = models.create("resnet8", num_classes=10, in_channels=1, width_multiplier=0.25)
    result = measure(model, (1, 8, 8), latency_batches=(1, 4), warmup=1, iters=3)
    assert result["params"] == count_params(model)
    assert result["macs"] == result["macs_fvcore"] == count_macs(model, torch.zeros(1, 1, 8, 8)) > 0
    assert result["flops"] == 2 * result["macs"]
    assert [r["batch_size"] for r in result["latency"]] == [1, 4]
    assert all(set(r) == LATENCY_KEYS and r["iters"] == 3 for r in result["latency"])
    assert measure(model, (1, 8, 8), latency=False)["latency"] == []
    with pytest.raises(ConfigError, match="input_shape"):
        measure(model, (1, 0, 8), latency=False)


def test_measure_on_devices():
    model = models.create("resnet8", num_classes=10, in_channels=1, width_multiplier=0.25)
    assert latency_devices("cpu", "never") == ["cpu"]
    counts = measure_on(model, (1, 8, 8), devices=[], latency_batches=(1, 4))
    assert counts["latency"] == [] and counts["macs"] == count_macs(model, torch.zeros(1, 1, 8, 8))
    result = measure_on(model, (1, 8, 8), devices=["cpu"], latency_batches=(1, 4), warmup=1, iters=3)
    assert [(r["device"], r["batch_size"]) for r in result["latency"]] == [("cpu", 1), ("cpu", 4)]
    if torch.cuda.is_available():
        assert latency_devices("cpu", "auto") == ["cpu", "cuda"] == latency_devices("cpu", "always")
        result = measure_on(model, (1, 8, 8), devices=["cpu", "cuda"], latency_batches=(2,), warmup=1, iters=3)
        assert [r["device"].split(":")[0] for r in result["latency"]] == ["cpu", "cuda"]
    else:
        assert latency_devices("cpu", "auto") == ["cpu"]
        with pytest.raises(ConfigError, match="no CUDA device"):
            latency_devices("cuda", "never")
