"""``sosp weights``: fetch published weights once (or check a checkpoint file) and summarise their source."""

from __future__ import annotations

import json


def add_weights_cache(p) -> None:
    p.add_argument(
        "--weights-cache",
        metavar="DIR",
        help="folder used instead of $TORCH_HOME and $HF_HOME: torchvision files in DIR/hub/checkpoints/, "
        "timm's in DIR/hub/ (default: torch's and Hugging Face's own caches)",
    )


def add_parser(sub) -> None:
    p = sub.add_parser(
        "weights",
        help="fetch published weights once (or check a weights file); write their source",
        description="Download published weights into the cache unless they are there already (each "
        "spec once, before parallel jobs read them), check that they load, and write their source: "
        "spec, file name, SHA-256, URL and published accuracy. `sosp base` then builds base models "
        "from them without downloading.",
    )
    p.add_argument(
        "--weights",
        required=True,
        nargs="+",
        metavar="SPEC",
        help="torchvision:<Enum>.<NAME> (e.g. torchvision:ResNet18_Weights.IMAGENET1K_V1), "
        "timm:<model>.<tag> (e.g. timm:resnet18.a1_in1k) or file:<path>",
    )
    add_weights_cache(p)
    p.add_argument("--out", help="JSON summary to write: spec -> source (default: print it)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_weights(args) -> None:
    from .. import weights
    from ..io import write_json
    from .common import log, quiet

    summary = {}
    for spec in args.weights:
        log(f"fetching weights {spec}")
        summary[spec] = weights.fetch(spec, cache_dir=args.weights_cache, progress=not quiet())
        log(f"{spec}: {summary[spec]['file_name']} (sha256 {str(summary[spec]['sha256'])[:12]}...)")
    if args.out:
        write_json(args.out, summary)
        log(f"wrote {args.out}")
    else:
        print(json.dumps(summary, indent=2))
