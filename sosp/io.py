"""Atomic file output and model checkpoints.

Every file the suite writes goes to a temporary name in the same folder and is renamed when complete,
so an interrupted job never leaves a partial output that Snakemake (or a user) would mistake for a
finished one.

torch is imported by the two functions that need it (model files), not with the module: reading and
writing records, CSVs and figures (``sosp report``, the workflow's report jobs) does without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    def _write(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")

    write_atomic(path, _write)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist") and hasattr(obj, "detach"):  # a torch tensor (without importing torch)
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_model(path: str | os.PathLike, model: torch.nn.Module, meta: dict | None = None) -> None:
    """Save the whole module (pruned models have irregular shapes, so a state dict is not enough)."""
    import torch

    payload = {"model": model, "meta": dict(meta or {})}
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The model and metadata :func:`save_model` wrote. A model saved by an older layout of the suite,
    whose classes no longer exist at their saved paths, is refused naming the file and the class."""
    import torch

    from .errors import DataError

    if not Path(path).exists():
        raise DataError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except (ModuleNotFoundError, AttributeError) as error:
        raise DataError(
            f"model file {path} refers to code that no longer exists ({error}); it was saved by an older "
            "version of the suite: recreate it (e.g. rerun the workflow rule that wrote it)"
        ) from None
    return payload["model"], payload.get("meta", {})
