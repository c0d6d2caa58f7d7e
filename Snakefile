# The default workflow: `make workflow` (= snakemake --cores 2 --profile workflow/profiles/default).
# Another tier: add --configfile config/<tier>.yaml. Every rule is a thin call of `sosp <verb>`.
# `snakemake --cores 1 figures` rebuilds runs.csv, tables and figures from results/<tier>/ alone;
# `snakemake --report report.html` bundles every table and figure with its caption.
import re
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


def _check_config(config):
    """Checks across keys that a JSON schema cannot express; the first failure stops the run with one
    line naming the key."""
    bottleneck, ratios = config["bottleneck"], [
        float(r) for r in config["prune"]["ratios"]
    ]
    dataset = config["dataset"]
    if dataset["name"] in ("imagefolder", "imagenet") and not dataset.get("root"):
        yield "dataset.root", f"the {dataset['name']} data set needs the folder that holds train/ and test/ (or val/)"
    if bottleneck["enabled"]:
        if not bottleneck["archs"]:
            yield "bottleneck.archs", "the bottleneck study is enabled but names no architecture"
        for i, arch in enumerate(bottleneck["archs"]):
            if arch not in config["archs"]:
                yield f"bottleneck.archs[{i}]", f"{arch!r} is not one of archs {config['archs']}"
            elif not re.fullmatch(r"resnet\d+|vgg\d+", arch):
                yield f"bottleneck.archs[{i}]", f"{arch!r} has no width keys (a CIFAR resnet<6n+2> or vgg<11|13|16|19> is needed)"
        if float(bottleneck["ratio"]) not in ratios:
            yield "bottleneck.ratio", f"{bottleneck['ratio']} is not one of prune.ratios {config['prune']['ratios']}"
    if config["prune"]["options"]:  # each method's declared options (this imports the methods, and torch)
        from sosp import methods
        from sosp.errors import SospError

        for method, options in config["prune"]["options"].items():
            if method not in methods.METHODS:
                yield f"prune.options.{method}", f"unknown pruning method {method!r}; known: {', '.join(methods.names())}"
                continue
            for key, value in options.items():
                try:
                    methods.get(method).option(key).check(value)
                except SospError as error:
                    yield f"prune.options.{method}.{key}", str(error)


for _key, _message in _check_config(config):
    raise WorkflowError(f"invalid config: {_key}: {_message}")


include: "workflow/rules/common.smk"


rule all:
    default_target: True
    input:
        lambda wildcards: TARGETS,


for _rules in sorted(Path(workflow.basedir, "workflow", "rules").glob("*.smk")):
    if _rules.name != "common.smk":

        include: str(_rules)
