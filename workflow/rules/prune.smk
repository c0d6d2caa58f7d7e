# One-shot pruning of a base model by one method to every target and ratio of the tier: one job per
# (net, seed, method) computes the saliencies once (they depend on neither the ratio nor the target)
# and runs selection and surgery per (target, ratio), each with its own model and draft record (one
# `sosp prune --target ... --ratio ...` call: start-up, imports and data loading once per method).
# Rule `prune` for the original nets (every target of prune.target), `prune_widened` for the widened
# nets of the bottleneck study (the first target only). A ratio or target added to the tier changes
# the job's outputs, so Snakemake reruns it; the re-pruned models of the other ratios come out with the
# same weights, and the fine-tuning family reuses their kept fine-tunings (finetune.smk).
#
# With prune.oneshot_ratios, the job of an original net also prunes to each of those ratios of every
# target from the same saliencies and evaluates them one-shot (test top-1 and loss, BN statistics as
# they are and, with prune.oneshot_bn, re-estimated), without model files or fine-tuning: one CSV row
# per (target, ratio) in results/<tier>/oneshot/<net>/s<seed>/<method>.csv (rule `oneshot` in
# report.smk gathers them).

ONESHOT_RATIOS = [ratio_label(r) for r in PRUNE["oneshot_ratios"]]
ONESHOT_ROWS = f"{R}/oneshot/{{net}}/s{{seed}}/{{method}}.csv"


def _pruned(stem, targets):
    """`stem` of every target and ratio of one (net, seed, method), targets first (the order of
    `sosp prune --out/--record`)."""
    return [
        stem.replace("{target}", t).replace("{ratio}", r)
        for t in targets
        for r in RATIOS
    ]


def _oneshot_args(wildcards, output):
    if not ONESHOT_RATIOS:
        return ""
    return (
        f"--oneshot-ratio {' '.join(ONESHOT_RATIOS)} --oneshot-out {output.oneshot} "
        f"--oneshot-bn {' '.join(PRUNE['oneshot_bn'])} "
        f"--oneshot-bn-images {PRUNE['oneshot_bn_images']}"
    )


for _name, _nets, _targets, _oneshot in (
    ("prune", r"[^/+]+", PRUNE_TARGETS, [ONESHOT_ROWS] if ONESHOT_RATIOS else []),
    ("prune_widened", r"[^/+]+\+(bottleneck|uniform)", [TARGET], []),
):

    rule:
        name:
            _name
        input:
            model=f"{W}/models/{BASE}.pt",
        output:
            models=[f"{W}/models/{stem}.pt" for stem in _pruned(PRUNED, _targets)],
            records=[f"{W}/records/{stem}.json" for stem in _pruned(PRUNED, _targets)],
            oneshot=_oneshot,
        log:
            f"{W}/logs/prune/{{net}}/s{{seed}}/{{method}}.log",
        benchmark:
            f"{R}/benchmarks/prune/{{net}}/s{{seed}}/{{method}}.tsv"
        wildcard_constraints:
            net=_nets,
        threads: timed_threads("prune") if PRUNE["timed"] else res("prune", "threads")
        resources:
            mem_mb=res("prune", "mem_mb"),
            runtime=res("prune", "runtime"),
            gpu=res("prune", "gpu"),
            timed=1 if PRUNE["timed"] else 0,
        params:
            tier=TIER,
            device=DEVICE,
            data=data_args(),
            targets=" ".join(_targets),
            ratios=" ".join(RATIOS),
            oneshot=_oneshot_args if _oneshot else "",
            options=lambda wc: " ".join(
                f"--option {shlex.quote(f'{k}={json.dumps(v)}')}"
                for k, v in sorted(PRUNE.get("options", {}).get(wc.method, {}).items())
            ),
            min_channels=PRUNE["min_channels"],
            min_fraction=PRUNE["min_fraction"],
            normalize=PRUNE["normalize"],
            samples=PRUNE["samples"],
            score_batch_size=PRUNE["score_batch_size"],
            warmup=PRUNE["warmup_batches"],
            calibration=f"--calibration-split {PRUNE['calibration']['split']}"
            + (" --calibration-augment" if PRUNE["calibration"]["augment"] else ""),
        shell:
            "{SOSP} prune --model {input.model} --method {wildcards.method} --target {params.targets} "
            "--ratio {params.ratios} --min-channels {params.min_channels} --min-fraction {params.min_fraction} "
            "--normalize {params.normalize} "
            "{params.options} --samples {params.samples} --score-batch-size {params.score_batch_size} "
            "--warmup-batches {params.warmup} {params.calibration} {params.oneshot} "
            "{params.data} --seed {wildcards.seed} --tier {params.tier} --device {params.device} --threads {threads} "
            "--out {output.models} --record {output.records} > {log} 2>&1"
