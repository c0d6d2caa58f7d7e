"""Base models from weights instead of training: published torchvision/timm weights or a checkpoint file.

A *weights spec* names where a base model's weights come from:

``torchvision:<Enum>.<NAME>``
    torchvision's published weights by their name, e.g. ``torchvision:ResNet18_Weights.IMAGENET1K_V1``;
    fetched by torchvision itself (``torch.hub``'s cache: ``$TORCH_HOME/hub/checkpoints/``; the file's
    SHA-256 prefix in its URL is checked when it is downloaded) and loaded by torchvision's own builder,
    so the model is exactly torchvision's pretrained one.
``timm:<model>[.<tag>]``
    timm's pretrained weights, e.g. ``timm:resnet18.a1_in1k``; fetched by timm (the Hugging Face hub
    cache, ``$HF_HOME/hub``) and loaded with its classifier as published (never re-initialised).
``file:<path>``
    a checkpoint file: a state dict, a checkpoint holding one (under ``state_dict`` or ``model``, as
    torchvision's and this suite's training scripts save them; a ``module.`` prefix of DataParallel is
    dropped), a whole saved ``nn.Module``, or a model file of this suite. The architecture is built by
    :func:`sosp.models.create` and must match the file exactly: a missing or unexpected key or a
    shape that differs is an error naming the file and the first mismatching keys.

Fetching (:func:`fetch`) is done once per spec before any base model is built (workflow rule
``fetch_weights``); :func:`load` never downloads unless asked, so parallel jobs never do. Both return
a *source* mapping, stored in the base record's ``details.weights_source``: the spec, the file's name
and SHA-256, and for published weights their URL and published accuracy.

``cache_dir`` (optional, every function) replaces ``$TORCH_HOME`` and ``$HF_HOME``: torchvision files
go to ``<cache_dir>/hub/checkpoints/``, timm's to ``<cache_dir>/hub/`` (the Hugging Face layout).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import ConfigError, DataError, SospError

KINDS = ("torchvision", "timm", "file")
FORMS = "torchvision:<Enum>.<NAME> (e.g. torchvision:ResNet18_Weights.IMAGENET1K_V1), timm:<model>.<tag> or file:<path>"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")  # torch.hub's convention: name-<sha256 prefix>.ext


class WeightsMismatchError(ConfigError):
    """Weights that do not fit the architecture they are loaded into."""


@dataclass(frozen=True)
class Spec:
    kind: str  # torchvision, timm or file
    name: str  # enum name, timm model name or path

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def parse(spec: str) -> Spec:
    """``"torchvision:ResNet18_Weights.IMAGENET1K_V1"`` -> ``Spec("torchvision", "ResNet18_Weights.IMAGENET1K_V1")``."""
    kind, sep, name = str(spec).partition(":")
    if not sep or kind not in KINDS or not name.strip():
        raise ConfigError(f"weights {spec!r}: expected {FORMS}")
    if kind == "torchvision" and not re.fullmatch(r"[A-Za-z0-9_]+\.[A-Za-z0-9_]+", name):
        raise ConfigError(
            f"weights {spec!r}: torchvision weights are named <Enum>.<NAME>, e.g. ResNet18_Weights.IMAGENET1K_V1"
        )
    return Spec(kind, name.strip() if kind != "file" else name)


def _zoo_name(arch: str, zoo: str) -> str:
    prefix = f"{zoo}:"
    if not arch.startswith(prefix):
        raise ConfigError(f"{zoo} weights need a {zoo}:<name> architecture, not {arch!r}")
    return arch[len(prefix) :]


# ---------------------------------------------------------------------------------------------------
# torchvision
# ---------------------------------------------------------------------------------------------------
def _torchvision_weight(arch: str | None, name: str):
    """The torchvision weights enum member ``name``, checked to belong to ``arch`` (if given)."""
    import torchvision

    try:
        weight = torchvision.models.get_weight(name)
    except (ValueError, KeyError):
        raise ConfigError(
            f"unknown torchvision weights {name!r} (names look like ResNet18_Weights.IMAGENET1K_V1; "
            "torchvision.models.get_model_weights('<model>') lists a model's)"
        ) from None
    if arch is not None:
        model = _zoo_name(arch, "torchvision")
        try:
            enum = torchvision.models.get_model_weights(model)
        except (ValueError, KeyError):
            raise ConfigError(f"torchvision model {model!r} has no published weights") from None
        if type(weight) is not enum:
            raise ConfigError(
                f"torchvision weights {name} are not weights of {arch}; its weights: "
                f"{', '.join(f'{enum.__name__}.{w.name}' for w in enum)}"
            )
    return weight


@contextlib.contextmanager
def _torch_hub_dir(cache_dir: str | os.PathLike | None) -> Iterator[Path]:
    """torch.hub's folder (``<cache_dir>/hub`` if given, else torch's own) for the duration."""
    import torch.hub

    if cache_dir is None:
        yield Path(torch.hub.get_dir())
        return
    previous = torch.hub._hub_dir  # noqa: SLF001 (set_dir has no getter for "not set")
    torch.hub.set_dir(str(Path(cache_dir) / "hub"))
    try:
        yield Path(torch.hub.get_dir())
    finally:
        torch.hub._hub_dir = previous  # noqa: SLF001


def _torchvision_file(weight, hub_dir: Path) -> Path:
    return hub_dir / "checkpoints" / os.path.basename(urlparse(weight.url).path)


def _torchvision_source(spec: Spec, weight, path: Path) -> dict:
    import torchvision

    digest = sha256(path)
    found = _HASH_IN_NAME.search(path.name)
    source = {
        "spec": str(spec),
        "kind": "torchvision",
        "name": f"{type(weight).__name__}.{weight.name}",  # DEFAULT resolved to the actual weights
        "url": weight.url,
        "file_name": path.name,
        "sha256": digest,
        "hash_matches_url": digest.startswith(found.group(1)) if found else None,
        "published_metrics": weight.meta.get("_metrics"),
        "recipe": weight.meta.get("recipe"),
        "num_classes": len(weight.meta.get("categories") or []) or None,
        "library_version": torchvision.__version__,
    }
    if source["hash_matches_url"] is False:
        import warnings

        warnings.warn(
            f"{path}: its SHA-256 does not start with the {found.group(1)} of its published name "
            "(torch.hub checks the hash only when downloading); delete the file to fetch it again",
            stacklevel=3,
        )
    return source


# ---------------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------------
def _timm_cfg(arch: str | None, name: str):
    import timm

    model, _, tag = name.partition(".")
    if arch is not None and _zoo_name(arch, "timm") != model:
        raise ConfigError(f"timm weights {name} are weights of timm:{model}, not of {arch}")
    if not timm.is_model(model):
        raise ConfigError(f"unknown timm model {model!r} in weights timm:{name}")
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as exc:
        raise ConfigError(
            f"timm has no pretrained weights {name!r} ({exc}); timm.list_pretrained('{model}*') lists them"
        ) from None
    return cfg


def _timm_hub_cache(cache_dir) -> str | None:
    return None if cache_dir is None else str(Path(cache_dir) / "hub")


def _timm_file(cfg, cache_dir) -> Path | None:
    """The cached file of a timm pretrained cfg, or None when it is not cached."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(
                repo, filename, cache_dir=_timm_hub_cache(cache_dir), revision=revision or None
            )
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        return None
    if cfg.url:
        with _torch_hub_dir(None) as hub:
            folder = Path(_timm_hub_cache(cache_dir)) if cache_dir is not None else hub / "checkpoints"
        path = folder / os.path.basename(urlparse(cfg.url).path)
        return path if path.is_file() else None
    return None


def _timm_source(spec: Spec, cfg, path: Path | None) -> dict:
    import timm

    return {
        "spec": str(spec),
        "kind": "timm",
        "name": f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture,
        "hf_hub_id": cfg.hf_hub_id,
        "url": cfg.url,
        "file_name": path.name if path else None,
        "sha256": sha256(path) if path else None,
        "num_classes": cfg.num_classes,
        "library_version": timm.__version__,
    }


# ---------------------------------------------------------------------------------------------------
# checkpoint files
# ---------------------------------------------------------------------------------------------------
def _is_state_dict(obj: Any) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """The state dict in a checkpoint file, and how it was found (``format``, ``meta`` of a suite file).

    Tries ``torch.load(weights_only=True)`` first; a file that pickles other objects (a whole module,
    a training checkpoint with its arguments) is loaded in full: give only files you trust."""
    import torch
    from torch import nn

    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file not found: {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # holds more than tensors: a module or a training checkpoint
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated, not a torch file, a class that no longer exists
        raise DataError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}".replace("\n", " ")) from None
    info: dict[str, Any] = {}
    if isinstance(obj, nn.Module):
        state, info["format"] = obj.state_dict(), "saved module"
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), nn.Module):
        state, info["format"] = obj["model"].state_dict(), "sosp model file"
        info["meta"] = dict(obj.get("meta") or {})
    elif _is_state_dict(obj):
        state, info["format"] = dict(obj), "state dict"
    else:
        keys = [k for k in ("state_dict", "model", "model_state_dict", "module") if isinstance(obj, Mapping)]
        key = next((k for k in keys if k in obj and _is_state_dict(obj[k])), None)
        if key is None:
            what = (
                f"a mapping with keys {', '.join(map(str, list(obj)[:8]))}"
                if isinstance(obj, Mapping)
                else type(obj).__name__
            )
            raise DataError(
                f"weights file {path} holds no state dict ({what}); expected a state dict, a checkpoint "
                "with one under 'state_dict' or 'model', a saved nn.Module or a model file of sosp"
            )
        state, info["format"] = dict(obj[key]), f"checkpoint[{key!r}]"
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
        info["stripped_prefix"] = "module."
    return state, info


def _shape(value) -> tuple | None:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else None


def load_state_dict_checked(model, state: Mapping, *, source: str, what: str, limit: int = 5) -> None:
    """Load ``state`` into ``model`` if it fits exactly (same keys, same shapes; a missing BatchNorm
    ``num_batches_tracked`` is tolerated, as torch itself does for old files), else raise
    :class:`WeightsMismatchError` naming ``source``, ``what`` and the first ``limit`` mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {list(_shape(state[k]) or ())} in the file, {list(_shape(v) or ())} in the model"
        for k, v in own.items()
        if k in state and _shape(state[k]) != _shape(v)
    ]
    if missing or unexpected or shapes:

        def first(items):
            more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        problems = [
            f"{len(items)} {label}: {first(items)}"
            for label, items in (
                ("shape mismatch(es)", shapes),
                ("key(s) missing from the file", missing),
                ("unexpected key(s) in the file", unexpected),
            )
            if items
        ]
        raise WeightsMismatchError(f"weights {source} do not fit {what}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)  # strict in effect: only num_batches_tracked may be absent


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# the API: check, fetch, load
# ---------------------------------------------------------------------------------------------------
def check(arch: str, spec: str) -> Spec:
    """The parsed ``spec``, checked against ``arch`` without downloading or reading weights: the zoo
    matches, the published weights exist and belong to the architecture, a file exists."""
    parsed = parse(spec)
    if parsed.kind == "torchvision":
        _torchvision_weight(arch, parsed.name)
    elif parsed.kind == "timm":
        _timm_cfg(arch, parsed.name)
    elif not Path(parsed.name).is_file():
        raise DataError(f"weights file not found: {parsed.name}")
    return parsed


def fetch(spec: str, cache_dir: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Download ``spec``'s published weights into the cache unless already there (a file: just read
    it), check that they load, and return their source mapping."""
    parsed = parse(spec)
    if parsed.kind == "torchvision":
        weight = _torchvision_weight(None, parsed.name)
        with _torch_hub_dir(cache_dir) as hub:
            try:  # downloads once (hash in the name checked), then loads: a broken file fails here
                weight.get_state_dict(progress=progress, check_hash=True, weights_only=True)
            except Exception as exc:
                raise DataError(f"cannot fetch torchvision weights {parsed.name} ({weight.url}): {exc}") from exc
            return _torchvision_source(parsed, weight, _torchvision_file(weight, hub))
    if parsed.kind == "timm":
        import timm

        cfg = _timm_cfg(None, parsed.name)
        try:
            timm.create_model(parsed.name, pretrained=True, cache_dir=_timm_hub_cache(cache_dir))
        except Exception as exc:
            raise DataError(f"cannot fetch timm weights {parsed.name}: {type(exc).__name__}: {exc}") from exc
        return _timm_source(parsed, cfg, _timm_file(cfg, cache_dir))
    _, info = read_checkpoint(parsed.name)
    return _file_source(parsed, info)


def _file_source(spec: Spec, info: dict) -> dict:
    source = {"spec": str(spec), "kind": "file", "name": spec.name, "file_name": Path(spec.name).name}
    source.update(sha256=sha256(spec.name), format=info["format"])
    if info.get("stripped_prefix"):
        source["stripped_prefix"] = info["stripped_prefix"]
    if info.get("meta", {}).get("arch"):
        source["file_arch"] = info["meta"]["arch"]
    return source


def _not_cached(spec: Spec, where) -> SospError:
    return DataError(
        f"weights {spec} are not in the cache ({where}); fetch them once first: `sosp weights --weights {spec}` "
        "(the workflow's rule fetch_weights), or let this command download them (--fetch)"
    )


def load(
    arch: str,
    spec: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    arch_options: Mapping | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    progress: bool = False,
):
    """The model ``arch`` with the weights ``spec`` (on the CPU) and their source mapping.

    ``num_classes`` and ``in_channels`` are the data set's: published weights must have as many
    classes (their classifier is kept, never replaced) and 3 input channels. Never downloads unless
    ``download``: a spec that is not cached is an error telling how to fetch it."""
    from . import models

    parsed = parse(spec)
    options = dict(arch_options or {})
    what = f"{arch} with {num_classes} classes and {in_channels} input channels" + (
        f" (options {options})" if options else ""
    )
    if parsed.kind == "file":
        state, info = read_checkpoint(parsed.name)
        file_arch = info.get("meta", {}).get("arch")
        model = models.create(arch, num_classes=num_classes, in_channels=in_channels, **options)
        try:
            load_state_dict_checked(model, state, source=f"file {parsed.name}", what=what)
        except WeightsMismatchError as exc:
            if file_arch and file_arch != arch:
                raise WeightsMismatchError(f"{exc} (the file is a sosp model of {file_arch})") from None
            raise
        return model, _file_source(parsed, info)

    published = _torchvision_weight(arch, parsed.name) if parsed.kind == "torchvision" else _timm_cfg(arch, parsed.name)
    if in_channels != 3:
        raise WeightsMismatchError(f"{parsed} read 3 input channels; the data set has {in_channels}")
    if parsed.kind == "torchvision":
        import torchvision

        weight = published
        classes = len(weight.meta.get("categories") or []) or None
        if classes is not None and classes != num_classes:
            raise WeightsMismatchError(
                f"{parsed} classify {classes} classes; the data set has {num_classes} (published weights keep "
                "their classifier: use a data set with the same classes, or a file: checkpoint)"
            )
        with _torch_hub_dir(cache_dir) as hub:
            path = _torchvision_file(weight, hub)
            if not download and not path.is_file():
                raise _not_cached(parsed, f"expected {path}")
            try:  # torchvision's own builder: exactly its pretrained model (and any loading quirk of it)
                model = torchvision.models.get_model(
                    _zoo_name(arch, "torchvision"), weights=weight, progress=progress, **options
                )
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{arch} with {parsed}: {exc}") from exc
            except RuntimeError as exc:  # a cached file that does not fit (load_state_dict)
                raise WeightsMismatchError(
                    f"weights {parsed} ({path}) do not fit {arch}: {str(exc).splitlines()[0]}"
                ) from None
            return model, _torchvision_source(parsed, weight, path)

    import timm

    cfg = published
    if cfg.num_classes and cfg.num_classes != num_classes:
        raise WeightsMismatchError(f"{parsed} classify {cfg.num_classes} classes; the data set has {num_classes}")
    path = _timm_file(cfg, cache_dir)
    if path is None and not download:
        raise _not_cached(parsed, f"hub id {cfg.hf_hub_id or cfg.url}")
    kwargs: dict[str, Any] = {"pretrained": True, **options}
    if path is not None:  # read the cached file directly: no network at all
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    else:
        kwargs["cache_dir"] = _timm_hub_cache(cache_dir)
    try:
        model = timm.create_model(parsed.name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{arch} with {parsed}: {exc}") from exc
    except RuntimeError as exc:
        raise WeightsMismatchError(f"weights {parsed} do not fit {arch}: {str(exc).splitlines()[0]}") from None
    return model, _timm_source(parsed, cfg, path or _timm_file(cfg, cache_dir))
