"""Records, their aggregation over seeds, and the tables made from them (one module each); this
package re-exports their public names, so ``from sosp import results; results.collect(...)`` works.

The record and collection names are imported with the package; the aggregation and table names (and
:mod:`.oneshot`, the one-shot curves' table) when first used, so the verbs that only write records
(train, prune, finetune, measure) do not import pandas.
"""

from importlib import import_module

from .collection import (  # noqa: F401
    check_config_hash,
    collect,
    read_record,
    read_runs_csv,
    record_paths,
    tidy,
    write_runs_csv,
)
from .records import (  # noqa: F401
    COLUMNS,
    NO_METHOD,
    ORIGINAL,
    SCHEMA_VERSION,
    STAGES,
    UNPRUNED,
    canonical_options,
    finetuned_record,
    git_commit,
    is_column,
    latency_column,
    make_record,
    measurement_fields,
    method_label,
    metric_fields,
    min_kept_fraction,
    prune_fields,
    pruned_record,
    removed_per_layer,
    update_record,
)

#: name -> module of this package that defines it, imported on first access (these modules import pandas)
_LAZY = {
    "GROUP_COLUMNS": "aggregation",
    "summary_table": "aggregation",
    "COMPARISON": "tables",
    "TABLE_FORMATS": "tables",
    "TABLES": "tables",
    "format_summary": "tables",
    "paper_sections": "tables",
    "summary_latex": "tables",
    "summary_markdown": "tables",
    "timing_sections": "tables",
    "write_named_tables": "tables",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
