"""Installed-package stand-ins for the plug-in tests: a folder holding a package and its real
``<name>-<version>.dist-info`` metadata (``METADATA``, ``entry_points.txt``), which
``importlib.metadata`` reads exactly as it reads a pip-installed package once the folder is on the path."""

from __future__ import annotations

import shutil
from pathlib import Path

EXAMPLE = Path(__file__).parent / "plugin" / "sosp_example_plugin"


def make_distribution(
    site: Path, name: str, version: str, entry_points: dict[str, str], sources: dict[str, str] | None = None
) -> Path:
    """Write distribution ``name`` into the folder ``site``: its ``sosp.methods`` entry points and the
    module ``sources`` (``{"module_name": "code"}``); returns ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[sosp.methods]", *(f"{key} = {value}" for key, value in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, code in (sources or {}).items():
        (site / f"{module}.py").write_text(code)
    return site


def example_plugin(site: Path) -> Path:
    """The example plug-in (tests/plugin/sosp_example_plugin) installed into ``site``."""
    shutil.copytree(EXAMPLE, site / EXAMPLE.name)
    return make_distribution(site, "sosp-example-plugin", "0.1.0", {"filter_l2": "sosp_example_plugin:filter_l2"})
