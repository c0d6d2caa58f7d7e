"""`snakemake --lint`, with every finding either fixed or justified here; exits 1 on any other finding.

Run from the repository root (`make lint` does): python workflow/lint.py
"""

from __future__ import annotations

import re
import subprocess
import sys

#: lint title (as snakemake prints it) -> why this workflow keeps doing it
JUSTIFIED = {
    "Specify a conda environment or container for each rule.": (
        "every rule runs the `sosp` of the Python environment that runs Snakemake itself (one package, "
        "installed by `make install` or environment.yml); a per-rule environment would install the "
        "same package once per rule"
    ),
    "Shell command directly uses variable SOSP from outside of the rule": (
        "SOSP is the path of that environment's `sosp`; as a param it would count as a changed "
        "parameter whenever the checkout moves, and rerun every job"
    ),
    "No log directive defined": (
        "only rule `figures`, run by hand to rebuild tables and figures from results/: it prints to "
        "the terminal on purpose"
    ),
}

_HEADER = re.compile(r"^Lints for (.+):$")
_TITLE = re.compile(r"^\s+\* (.+?):$")


def findings(text: str) -> list[tuple[str, str]]:
    """``(where, title)`` of every lint in snakemake's text output."""
    where, out = "?", []
    for line in text.splitlines():
        if m := _HEADER.match(line):
            where = m.group(1)
        elif m := _TITLE.match(line):
            out.append((where, m.group(1)))
    return out


def main() -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--cores", "1"], capture_output=True, text=True, check=False
    )
    found = findings(proc.stdout + proc.stderr)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not found):
        sys.stderr.write(proc.stdout + proc.stderr)
        print("snakemake --lint failed to run", file=sys.stderr)
        return 2
    unjustified = [(w, t) for w, t in found if t not in JUSTIFIED]
    for title, why in JUSTIFIED.items():
        count = sum(t == title for _, t in found)
        if count:
            print(f"justified ({count}x): {title} -- {why}")
    for where, title in unjustified:
        print(f"LINT: {where}: {title}", file=sys.stderr)
    return 1 if unjustified else 0


if __name__ == "__main__":
    sys.exit(main())
