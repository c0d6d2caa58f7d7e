# Fine-tuning. With `batch.finetune: family` (the default), one job per (net, seed, method) fine-tunes
# every target and ratio that method pruned the net to (one `sosp finetune` call with several
# --model/--out/--record: start-up, imports and data loading are paid once per family, not once per
# model; rule `finetune` for the original nets, `finetune_widened` for the widened ones, whose targets
# differ); with `batch.finetune: model` (GPU tiers: one model per GPU, all at once), one job per model.
# Either way every model is fine-tuned on its own and keeps its own model file, draft record and
# checkpoint folder.
#
# Resume and partial reruns: each model's checkpoint folder (work/<tier>/checkpoints/<net>/s<seed>/
# <method>/finetune/<digest of pruned weights, data, recipe, seed>) holds its end-of-epoch checkpoint
# while it trains and, once it is done, the finished model (a hard link to the output: no extra disk)
# with its history (--keep-checkpoint). Snakemake deletes a job's outputs before it reruns the job, but
# not these folders, so a rerun of the family (after an interruption, after a ratio was added, which
# also reruns the family's pruning, or with --forceall) re-fine-tunes only the models whose pruned
# weights, data, recipe or seed changed; the others are evaluated and written again in well under a
# second (their records keep the original finetune_seconds and say `details.finetune_reused`). Delete
# work/<tier>/checkpoints/ to fine-tune everything again.


def _family(stem, targets):
    """`stem` of every target and ratio of one (net, seed, method)."""
    return [
        stem.replace("{target}", t).replace("{ratio}", r)
        for t in targets
        for r in RATIOS
    ]


_FAMILY = "{net}/s{seed}/{method}"
if config["batch"]["finetune"] == "family":
    _finetune_jobs = [  # rule, nets, pruned and fine-tuned stems of one job, job stem
        (
            "finetune",
            r"[^/+]+",
            _family(PRUNED, PRUNE_TARGETS),
            _family(FINETUNED, PRUNE_TARGETS),
            _FAMILY,
        ),
        (
            "finetune_widened",
            r"[^/+]+\+(bottleneck|uniform)",
            _family(PRUNED, [TARGET]),
            _family(FINETUNED, [TARGET]),
            _FAMILY,
        ),
    ]
else:  # one job per model: target and ratio stay wildcards
    _finetune_jobs = [
        (
            "finetune",
            r"[^/+]+(\+(bottleneck|uniform))?",
            [PRUNED],
            [FINETUNED],
            FINETUNED,
        )
    ]

for _name, _nets, _inputs, _outputs, _job in _finetune_jobs:

    rule:
        name:
            _name
        input:
            models=[f"{W}/models/{stem}.pt" for stem in _inputs],
        output:
            models=[f"{W}/models/{stem}.pt" for stem in _outputs],
            records=[f"{W}/records/{stem}.json" for stem in _outputs],
        log:
            f"{W}/logs/finetune/{_job}.log",
        benchmark:
            f"{R}/benchmarks/finetune/{_job}.tsv"
        wildcard_constraints:
            net=_nets,
        threads: res("finetune", "threads")
        resources:
            mem_mb=res("finetune", "mem_mb"),
            runtime=res("finetune", "runtime"),
            gpu=res("finetune", "gpu"),
        params:
            tier=TIER,
            device=DEVICE,
            data=data_args(),
            nproc=max(1, res("finetune", "gpu")),  # data-parallel over the job's GPUs
            recipe=quoted_json(config["finetune"]),
            checkpoints=lambda wc: f"{W}/checkpoints/{_FAMILY.format(**wc)}/finetune",
        shell:
            "{SOSP} finetune --model {input.models} {params.data} --train-config {params.recipe} "
            "--checkpoint-dir {params.checkpoints} --keep-checkpoint --seed {wildcards.seed} "
            "--tier {params.tier} --device {params.device} --threads {threads} --nproc {params.nproc} "
            "--out {output.models} --record {output.records} > {log} 2>&1"
