"""SOSP: second-order structured pruning (SOSP-H, SOSP-I) and a benchmark suite around it."""

from importlib import import_module

__version__ = "0.1.0"
_SUBMODULES = (
    "models",
    "data",
    "train",
    "structures",
    "curvature",
    "methods",
    "saliency",
    "prune",
    "bottleneck",
    "measure",
    "results",
    "plots",
    "io",
    "errors",
    "utils",
)


def __getattr__(name):  # lazy: `import sosp` stays cheap for the command line
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sosp' has no attribute {name!r}")
