"""``sosp data``: load (and download) a data set once and summarise its splits."""

from __future__ import annotations

import json

from .args import add_data
from .common import data_options, load_data, log


def add_parser(sub) -> None:
    p = sub.add_parser(
        "data",
        help="load (and download) a data set once; write a summary",
        description="Load a data set (downloading it with --download), check it, and write a "
        "JSON summary of its splits; run once before parallel jobs read it.",
    )
    p.add_argument("--out", help="JSON summary to write (default: print it)")
    add_data(p, required=True)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_data(args) -> None:
    from ..io import write_json

    options = data_options(args)
    bundle = load_data(options, args.download)
    summary = {
        "data": options,
        "num_classes": bundle.num_classes,
        "in_channels": bundle.in_channels,
        "image_size": bundle.image_size,
        "input_shape": list(bundle.example_input.shape[1:]),
        "train": len(bundle.train),
        "val": len(bundle.val),
        "test": len(bundle.test),
        "classes": list(bundle.classes),
    }
    if args.out:
        write_json(args.out, summary)
        log(f"wrote {args.out}")
    else:
        print(json.dumps(summary, indent=2))
