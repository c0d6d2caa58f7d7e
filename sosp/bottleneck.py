"""Bottleneck detection from SOSP-H's global ranking, then widening (method.md section 7).

Global ranking decides how much each layer loses. Layers that lose the *least* are the ones the
network needs most: the bottlenecks. Widening them (and only them) is compared with widening every
layer uniformly, at equal parameter counts.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

import torch.nn as nn

from .errors import ConfigError

SELECTIONS = ("fraction", "threshold")


def width_ratios(report: Mapping, model: nn.Module) -> dict[str, float]:
    """Pruning ratio of every width key of ``model`` (a CIFAR model with ``width_key``).

    All producers of one group share a key (a ResNet stage's residual stream, one block's inner
    channels, one VGG conv), so the ratio of a key is its group's removed fraction.
    """
    if not hasattr(model, "width_key"):
        raise ConfigError(f"{type(model).__name__} has no width keys: the bottleneck study needs a CIFAR "
                          "ResNet or VGG from sosp.models")
    removed, channels = defaultdict(int), defaultdict(int)
    seen = set()
    for row in report["per_layer"]:
        key = model.width_key(row["layer"])
        if (key, row["group"]) in seen:
            continue
        seen.add((key, row["group"]))
        removed[key] += row["removed"]
        channels[key] += row["channels"]
    return {key: removed[key] / channels[key] for key in model.width_spec() if key in channels}


def block_of(key: str) -> str:
    """The block/stage a width key belongs to: ``layer2.0`` -> ``layer2``, ``stage2`` -> ``layer2``; a
    key outside any stage (a VGG ``conv3``) is its own block."""
    if key.startswith("stage"):
        return "layer" + key[len("stage"):]
    if key.startswith("layer"):
        return key.split(".")[0]
    return key


def block_ratios(ratios: Mapping[str, float], model: nn.Module | None = None) -> dict[str, float]:
    """Ratios averaged per block/stage: ``layer2.0`` -> ``layer2``, ``stage2`` -> ``layer2``."""
    blocks = defaultdict(list)
    for key, ratio in ratios.items():
        blocks[block_of(key)].append(ratio)
    return {block: sum(v) / len(v) for block, v in blocks.items()}


def block_keys(keys: Sequence[str], blocks: Sequence[str]) -> list[str]:
    """The width keys (of ``keys``, in their order) that belong to any of ``blocks``."""
    chosen = set(blocks)
    return [k for k in keys if block_of(k) in chosen]


def choose_bottlenecks(ratios: Mapping[str, float], selection: str = "fraction",
                       value: float = 0.25) -> list[str]:
    """The width keys with the lowest pruning ratios.

    ``selection="fraction"``: the lowest ``value`` fraction of keys (at least one);
    ``selection="threshold"``: every key pruned by at most ``value``.
    """
    if selection not in SELECTIONS:
        raise ConfigError(f"bottleneck selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if not ratios:
        raise ConfigError("no layer ratios: was anything pruned?")
    ordered = sorted(ratios, key=lambda k: (ratios[k], k))
    if selection == "fraction":
        if not 0 < value <= 1:
            raise ConfigError(f"bottleneck fraction must be in (0, 1], got {value}")
        return ordered[:max(1, round(value * len(ordered)))]
    return [k for k in ordered if ratios[k] <= value]


def widened_widths(model: nn.Module, keys: Sequence[str], factor: float = 2.0) -> dict[str, int]:
    """The width spec of ``model`` with ``keys`` multiplied by ``factor`` (for ``create(widths=...)``)."""
    if factor <= 0:
        raise ConfigError(f"widening factor must be positive, got {factor}")
    spec = dict(model.width_spec())
    unknown = [k for k in keys if k not in spec]
    if unknown:
        raise ConfigError(f"unknown width keys {unknown}; known: {', '.join(spec)}")
    return {k: (max(1, int(w * factor + 0.5)) if k in keys else w) for k, w in spec.items()}


def uniform_widths(model: nn.Module, factor: float = 1.1) -> dict[str, int]:
    """Every width of ``model`` multiplied by ``factor``: the uniform-widening baseline."""
    return widened_widths(model, list(model.width_spec()), factor)
