"""The hash of a tier config that every record of the workflow carries (record field ``config_hash``).

It covers the config keys that decide what a record holds, and nothing else:

- hashed: ``device``, ``dataset``, ``arch_options``, ``base`` (but ``cache_dir``), ``train``,
  ``finetune``, ``prune`` (but the keys in :data:`LEFT_OUT`), ``bottleneck`` (likewise) and ``measure``
  (likewise);
- left out: which records exist (``archs``, ``seeds``, ``prune.methods``, ``prune.ratios``,
  ``prune.target``, ``bottleneck.enabled``, ``bottleneck.archs``, ``bottleneck.methods``: adding a
  seed or a ratio adds records and leaves the others as they are), pure timing knobs that change no
  value but a time (``prune.timed``, ``prune.warmup_batches``, ``measure.warmup``, ``measure.iters``,
  ``measure.exclusive``), where things go (``tier``, ``results_dir``, ``work_dir``,
  ``base.cache_dir``), the ``report``, ``batch`` and the ``resources`` of the jobs;
- left out as well: the one-shot curve (``prune.oneshot_ratios``, ``prune.oneshot_bn``,
  ``prune.oneshot_bn_images``). Its rows (``results/<tier>/oneshot/``) are not records and carry no
  hash; no record's value depends on these keys (the pruned models and their records are the same
  with or without a one-shot curve), so hashing them would only make valid records look stale. Each
  one-shot row states its own settings (``bn_images``: the images of the BN re-estimation, 0 for
  none), and changing a key reruns the pruning jobs that write the rows (it is one of their params).

Numbers are hashed as floats (``2`` and ``2.0`` hash alike), mappings with sorted keys; recipes are
hashed as written (after the schema's defaults), so ``momentum: 0.9`` written out and left to the
default hash differently (a false alarm, never a missed change). The workflow (``common.smk``) hashes
its validated config once and stamps the hash into every final record (``sosp measure --config-hash``);
``sosp report --config-hash`` (rules ``runs`` and ``figures``) refuses records made by another config.

Standard library only: the Snakefile imports this module while planning, before any job runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: top-level config keys whose content is hashed
HASHED = ("device", "dataset", "arch_options", "base", "train", "finetune", "prune", "bottleneck", "measure")
#: keys below them that are not hashed (which records exist; timing knobs; the one-shot curve)
LEFT_OUT = {
    "base": ("cache_dir",),
    "prune": (
        "methods",
        "ratios",
        "target",
        "timed",
        "warmup_batches",
        "oneshot_ratios",
        "oneshot_bn",
        "oneshot_bn_images",
    ),
    "bottleneck": ("enabled", "archs", "methods"),
    "measure": ("warmup", "iters", "exclusive"),
}
#: hex digits of the hash
LENGTH = 12


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return str(value)


def hashed_config(config: Mapping) -> dict:
    """The part of a tier config that :func:`config_hash` covers, canonical (numbers as floats)."""
    part = {}
    for key in HASHED:
        value = config.get(key)
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in LEFT_OUT.get(key, ())}
        part[key] = _canonical(value)
    return part


def config_hash(config: Mapping) -> str:
    """Hex digest of :func:`hashed_config` (``LENGTH`` characters)."""
    text = json.dumps(hashed_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:LENGTH]
