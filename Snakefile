# The default workflow: `make workflow` (= snakemake --cores 2 --profile workflow/profiles/default).
# Another tier: add --configfile config/<tier>.yaml. Every rule is a thin call of `sosp <verb>`.
# `snakemake --cores 1 figures` rebuilds runs.csv, tables and figures from results/<tier>/ alone;
# `snakemake --report report.html` bundles every table and figure with its caption.
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# Before any job: snakemake's validate (it also fills in the schema's defaults), its error cut to one
# line naming the offending key, e.g. `invalid config: prune.ratios[1]: 1.0 is greater than ...`.
try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError as _error:
    _cause = _error.__context__
    if not hasattr(_cause, "absolute_path"):
        raise
    _where = "".join(
        f"[{p}]" if isinstance(p, int) else f".{p}" for p in _cause.absolute_path
    )
    raise WorkflowError(
        f"invalid config: {_where.lstrip('.') or '(top level)'}: {_cause.message}"
    ) from None


include: "workflow/rules/common.smk"


rule all:
    default_target: True
    input:
        lambda wildcards: TARGETS,


for _rules in sorted(Path(workflow.basedir, "workflow", "rules").glob("*.smk")):
    if _rules.name != "common.smk":

        include: str(_rules)
