"""Records, their aggregation over seeds, and the tables made from them (one module each); this
package re-exports their public names, so ``from sosp import results; results.collect(...)`` works."""

from .aggregation import (  # noqa: F401
    GROUP_COLUMNS,
    summary_table,
)
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
from .tables import (  # noqa: F401
    COMPARISON,
    TABLE_FORMATS,
    TABLES,
    format_summary,
    paper_sections,
    summary_latex,
    summary_markdown,
    timing_sections,
    write_named_tables,
)
