"""Bottleneck detection from SOSP-H's global ranking, then widening (docs/method.md section 7).

Global ranking decides how much each layer loses. Layers that lose the *least* are the ones the
network needs most: the bottlenecks. Widening them (and only them) is compared with widening every
layer uniformly, at equal parameter counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch.nn as nn

from .errors import ConfigError, DataError, is_positive_int

SELECTIONS = ("fraction", "threshold")


def width_ratios(report: Mapping, model: nn.Module) -> dict[str, float]:
    """Pruning ratio of every width key of ``model`` (a CIFAR model with ``width_key``).

    All producers of one group share a key (a ResNet stage's residual stream, one block's inner
    channels, one VGG conv), so the ratio of a key is its group's removed fraction.
    """
    if not hasattr(model, "width_key"):
        raise ConfigError(
            f"{type(model).__name__} has no width keys: the bottleneck study needs a CIFAR "
            "ResNet or VGG from sosp.models"
        )
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
        return "layer" + key[len("stage") :]
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


def choose_bottlenecks(ratios: Mapping[str, float], selection: str = "fraction", value: float = 0.25) -> list[str]:
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
        return ordered[: max(1, round(value * len(ordered)))]
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


def width_options(
    spec: Mapping | None,
    *,
    arch: str,
    variant: str | None = None,
    width_multiplier: float | None = None,
    source: str = "--widths",
) -> tuple[dict, str]:
    """Model options and variant label of a network to train: ``spec`` is an analysis of
    :func:`analyse` (choose one of its ``variants``) or a plain ``{width key: channels}`` mapping;
    ``width_multiplier`` scales every width."""
    from .results import ORIGINAL

    options, label = {}, ORIGINAL
    if spec:
        if "variants" in spec:  # an analysis of `sosp bottleneck`
            variants = spec["variants"]
            if not variant or variant not in variants:
                raise ConfigError(
                    f"--widths {source} holds the variants {', '.join(variants)}: choose "
                    f"one with --variant" + (f" (not {variant!r})" if variant else "")
                )
            if spec.get("arch") and spec["arch"] != arch:
                raise ConfigError(f"--widths {source} was computed for {spec['arch']}, not {arch}")
            chosen = variants[variant]
            options["widths"], label = dict(chosen["widths"]), chosen.get("label", variant)
        else:
            bad = [k for k, v in spec.items() if not is_positive_int(v)]
            if bad:
                raise ConfigError(f"--widths must map width keys to positive channel counts; bad: {', '.join(bad)}")
            options["widths"], label = dict(spec), variant or "custom"
    if width_multiplier is not None:
        if not width_multiplier > 0:
            raise ConfigError(f"--width-multiplier must be positive, got {width_multiplier}")
        options["width_multiplier"] = width_multiplier
        if not spec:
            label = variant or f"uniform-x{width_multiplier:g}"
    elif variant and not spec:
        raise ConfigError("--variant needs --widths or --width-multiplier")
    return options, label


def ratios_by_pruning_ratio(records: Sequence[Mapping], model: nn.Module) -> dict[str, dict]:
    """``{ratio: {"seeds": [...], "layers": {key: [per seed]}, "blocks": {block: [per seed]}}}`` from
    records of ``sosp prune`` (their ``details.prune_report``)."""
    by_ratio: dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: (r["ratio"], r["seed"])):
        layers = width_ratios(rec["details"]["prune_report"], model)
        entry = by_ratio.setdefault(str(float(rec["ratio"])), {"seeds": [], "layers": {}, "blocks": {}})
        entry["seeds"].append(rec["seed"])
        for key, value in layers.items():
            entry["layers"].setdefault(key, []).append(value)
        for key, value in block_ratios(layers).items():
            entry["blocks"].setdefault(key, []).append(value)
    return by_ratio


def analyse(
    model: nn.Module,
    meta: Mapping,
    records: Sequence[Mapping],
    *,
    ratio: float | None = None,
    selection: str = "fraction",
    value: float = 0.25,
    level: str = "layer",
    factor: float = 2.0,
    uniform_factor: float = 1.1,
    tier: str | None = None,
    record_names: Sequence[str] = (),
) -> dict:
    """The bottleneck analysis of one base model (docs/method.md section 7): layer-wise and block-wise
    pruning ratios of its pruned records (every ratio, every seed), the bottlenecks at ``ratio`` (the
    middle ratio if None), and the widths and parameter counts of the bottleneck-widened and the
    uniformly widened networks."""
    from . import models, results

    for name, number in (("factor", factor), ("uniform_factor", uniform_factor)):
        if not number > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {number}")
    if not hasattr(model, "width_key"):
        raise ConfigError(
            f"the model is a {type(model).__name__}: the bottleneck study needs a CIFAR ResNet "
            "or VGG from sosp.models (width keys)"
        )
    names = list(record_names) or [f"record {i}" for i in range(len(records))]
    for name, rec in zip(names, records):
        if not (rec.get("details") or {}).get("prune_report", {}).get("per_layer"):
            raise DataError(f"{name} has no details.prune_report.per_layer: give records of `sosp prune`")
    methods = {(r.get("method"), results.canonical_options(r.get("method_options"))) for r in records}
    archs = {r.get("arch") for r in records}
    if len(methods) > 1 or len(archs) > 1:
        raise DataError(f"records mix methods/architectures {sorted(methods)} / {sorted(archs)}: give one of each")
    arch = archs.pop()
    if meta.get("arch") and meta["arch"] != arch:
        raise DataError(f"records are of {arch}, the model is {meta['arch']}")
    by_ratio = ratios_by_pruning_ratio(records, model)
    ratios = sorted(float(r) for r in by_ratio)
    ratio = ratio if ratio is not None else ratios[(len(ratios) - 1) // 2]
    if str(float(ratio)) not in by_ratio:
        raise ConfigError(f"--ratio {ratio}: no record at that ratio (records have {', '.join(map(str, ratios))})")
    chosen_ratio = by_ratio[str(float(ratio))]
    mean = {k: sum(v) / len(v) for k, v in chosen_ratio["layers"].items()}
    block_mean = {k: sum(v) / len(v) for k, v in chosen_ratio["blocks"].items()}
    spec = model.width_spec()
    if level == "layer":
        keys = choose_bottlenecks(mean, selection, value)
        blocks = sorted({block_of(k) for k in keys})
    else:
        blocks = choose_bottlenecks(block_mean, selection, value)
        keys = block_keys(list(spec), blocks)
    if not keys:
        raise ConfigError(f"no layer is pruned by at most {value} at ratio {ratio}: raise --value")
    original = meta.get("arch_options") or {}
    base_options = {k: v for k, v in original.items() if k not in ("widths", "width_multiplier")}
    num_classes = meta.get("num_classes")
    in_channels = (meta.get("input_shape") or [3])[0]

    def params_of(widths: dict) -> int | None:
        if num_classes is None:
            return None
        net = models.create(arch, num_classes=num_classes, in_channels=in_channels, **base_options, widths=widths)
        return sum(p.numel() for p in net.parameters())

    widened = widened_widths(model, keys, factor)
    uniform = uniform_widths(model, uniform_factor)
    base_rec = meta.get("record") or {}
    return {
        "tier": tier or records[0].get("tier"),
        "dataset": records[0].get("dataset"),
        "arch": arch,
        "arch_options": base_options,
        "method": records[0].get("method"),
        "method_options": results.canonical_options(records[0].get("method_options")),
        "target": records[0].get("target"),
        "ratio": float(ratio),
        "selection": selection,
        "value": value,
        "level": level,
        "seeds": sorted({r["seed"] for r in records}),
        "by_ratio": by_ratio,
        "layer_ratios": mean,
        "block_ratios": block_mean,
        "bottlenecks": keys,
        "bottleneck_blocks": blocks,
        "widths": spec,
        "params": params_of(spec) or base_rec.get("params"),
        "variants": {
            "bottleneck": {
                "label": f"bottleneck-x{factor:g}",
                "factor": factor,
                "keys": keys,
                "widths": widened,
                "params": params_of(widened),
            },
            "uniform": {
                "label": f"uniform-x{uniform_factor:g}",
                "factor": uniform_factor,
                "keys": list(spec),
                "widths": uniform,
                "params": params_of(uniform),
            },
        },
        "records": list(record_names),
        "git_commit": results.git_commit(),
    }
