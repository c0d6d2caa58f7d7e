"""Every pruning method by name, found through package metadata: SOSP-H and SOSP-I (:mod:`sosp.methods`),
the reimplemented baselines (``sosp_baselines``) and any installed plug-in, all the same way.

A method is a :class:`Method`, made by the :func:`method` decorator in its own module, and declared
under the entry-point group :data:`ENTRY_POINT_GROUP` of the package that provides it::

    [project.entry-points."sosp.methods"]
    my_method = "my_package.my_module:my_method"

The registry reads the declarations without importing anything and imports a method only when it is
asked for (:func:`get`); a name declared by two packages, or a plug-in that fails to import, is a
:class:`PluginError` naming the package. Each loaded method knows the package and version that
provided it, and every record states them.

Two kinds, with one signature each:

- ``saliency`` (:class:`SaliencyFn`): ``fn(model, groups, batches, *, <options>)`` returns one 1-D
  tensor per channel group (higher = more important); :func:`sosp.runner.score` calls it, and the
  shared selection and surgery of :mod:`sosp.selection` remove the structures;
- ``pruner`` (:class:`PrunerFn`): ``fn(request, *, <options>)`` with one
  :class:`sosp.selection.PruneRequest` (model, batches, ratio, target, floor, ...) does its own
  selection and surgery and returns a :class:`sosp.selection.PruneResult`. New request fields never
  break a pruner.

Options are declared once, in the method's module, as :class:`Option` ``(name, type, default, help)``;
the function takes each of them as a keyword-only argument without a default. The registry checks
given options (unknown name, declared type, choices), fills in the defaults and passes every option;
the command line (``sosp prune --help``, ``--option key=value``), the workflow's config check and the
records read the declarations from here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Callable as _TypingCallable
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigError, SospError, UnknownNameError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from .selection import PruneRequest, PruneResult
    from .structures import ChannelGroup

KINDS = ("saliency", "pruner")
#: the loss terms through which calibration samples enter a score (sosp.calibration)
CALIBRATION_TERMS = ("gradient", "curvature")
#: the entry-point group under which every package declares its methods
ENTRY_POINT_GROUP = "sosp.methods"
#: positional parameters of each kind's function (the options follow as keyword-only parameters)
POSITIONAL = {"saliency": ("model", "groups", "batches"), "pruner": ("request",)}


class PluginError(SospError):
    """A method declared by two packages, or a plug-in that does not load or is not a :class:`Method`."""


class SaliencyFn(Protocol):
    """A channel-saliency method: one 1-D tensor per group, higher = more important."""

    def __call__(
        self,
        model: nn.Module,
        groups: Sequence[ChannelGroup],
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        **options: Any,
    ) -> list[torch.Tensor]: ...


class PrunerFn(Protocol):
    """A whole pruning method: its own selection and surgery, to ``ratio`` of ``target``."""

    def __call__(self, request: PruneRequest, **options: Any) -> PruneResult: ...


_TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    Callable: "a Python callable",
}


@dataclass(frozen=True)
class Option:
    """One option of a method: its name, type (``bool``, ``int``, ``float``, ``str`` or ``Callable``),
    default (``None`` makes the option nullable), one line of help and, for a string, its choices."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple = ()

    def __post_init__(self):
        if self.type is _TypingCallable:
            object.__setattr__(self, "type", Callable)
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"option {self.name!r}: type must be one of bool, int, float, str, Callable")
        if self.default is not None:
            self.check(self.default)

    @property
    def type_name(self) -> str:
        return "callable" if self.type is Callable else self.type.__name__

    def check(self, value: Any) -> Any:
        """``value`` if it has the declared type (an int is a float; a bool is no number) and is one of
        the choices, else a :class:`ConfigError` naming the option."""
        if value is None and self.default is None:
            return None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type in (int, float) and isinstance(value, bool)):
            nullable = " or null" if self.default is None else ""
            raise ConfigError(f"{self.name} must be {_TYPE_NAMES[self.type]}{nullable}, got {value!r}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        return value

    def parse(self, text: str) -> Any:
        """The value of ``--option name=text``: JSON (``3``, ``0.5``, ``true``, ``"exact"``, ``null``) or a
        bare word, checked as :meth:`check`; a string option takes any text as it is."""
        if self.type is Callable:
            raise ConfigError(f"{self.name} takes a Python callable; it cannot be given on the command line")
        try:
            value = json.loads(text)
        except ValueError:
            value = {"true": True, "false": False, "none": None, "null": None}.get(text.strip().lower(), text)
        if self.type is str and not isinstance(value, str) and not (value is None and self.default is None):
            value = text
        return self.check(value)


@dataclass(frozen=True)
class SelectionPolicy:
    """How the shared selection may treat a method's scores (docs/method.md section 5).

    ``cost_normalizable``: whether ``normalize="cost"`` may divide the scores by the MACs a structure
    frees. Only scores on a common, global scale (a predicted loss change, a norm ranked globally)
    can be traded against cost; random draws and within-group ranks cannot, so for them the option
    is not applied (and recorded as ``none``). A bool, or a function of the method's options (with
    the defaults filled in). ``min_fraction``: the per-group floor the method's authors use; the run's
    floor is the larger of this and the configured ``min_fraction``.
    """

    cost_normalizable: bool | Callable[[dict], bool] = True
    min_fraction: float = 0.0

    def normalizable(self, options: dict) -> bool:
        flag = self.cost_normalizable
        return bool(flag(options) if callable(flag) else flag)


@dataclass(frozen=True)
class Method:
    """A pruning method: its function, declared options and selection policy; :func:`get` adds the
    package (distribution) and version that provided it. Calling it calls the function."""

    name: str
    kind: str  # one of KINDS
    fn: SaliencyFn | PrunerFn
    options: tuple[Option, ...]
    policy: SelectionPolicy
    calibration_terms: tuple[str, ...] = CALIBRATION_TERMS
    package: str | None = None
    version: str | None = None

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    @property
    def provider(self) -> str | None:
        """``"<package> <version>"`` of the distribution that declared the method (None before :func:`get`)."""
        return f"{self.package} {self.version}" if self.package else None

    @property
    def summary(self) -> str:
        """The first paragraph of the function's docstring, on one line."""
        return (inspect.getdoc(self.fn) or "").split("\n\n")[0].replace("\n", " ")

    def option(self, name: str) -> Option:
        for option in self.options:
            if option.name == name:
                return option
        raise ConfigError(
            f"method {self.name!r} has no option {name!r}; options: {', '.join(o.name for o in self.options) or 'none'}"
        )

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every option: the ``given`` ones checked (:meth:`Option.check`), the others at their default."""
        checked = {key: self.option(key).check(value) for key, value in given.items()}
        return {o.name: checked[o.name] if o.name in checked else o.default for o in self.options}

    def parse(self, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
        """``{name: value}`` of the command line's ``--option name=text`` pairs (:meth:`Option.parse`)."""
        return {key: self.option(key).parse(text) for key, text in pairs}


def method(
    name: str,
    kind: str = "saliency",
    *,
    options: Sequence[Option] = (),
    cost_normalizable: bool | Callable[[dict], bool] | None = None,
    min_fraction: float = 0.0,
    calibration_terms: Sequence[str] = CALIBRATION_TERMS,
) -> Callable[[SaliencyFn | PrunerFn], Method]:
    """Decorator: the function as a :class:`Method` named ``name``, with its options and
    :class:`SelectionPolicy` (by default a saliency's scores may be divided by cost, a pruner's not)
    and the loss terms its score reads the calibration data through (``calibration_terms``, some of
    :data:`CALIBRATION_TERMS`; ``()`` for a data-free method): :mod:`sosp.calibration` warns when
    those rest on too few samples. Declare the result under :data:`ENTRY_POINT_GROUP` to make it a
    method of the suite.

    The function takes :data:`POSITIONAL` of its kind, then exactly the declared options as keyword-only
    parameters, none with a default (the defaults are the options')."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    options, terms = tuple(options), tuple(calibration_terms)
    if cost_normalizable is None:
        cost_normalizable = kind == "saliency"
    if not set(terms) <= set(CALIBRATION_TERMS):
        raise ValueError(f"calibration_terms must be some of {CALIBRATION_TERMS}, got {terms}")

    def decorate(fn: SaliencyFn | PrunerFn) -> Method:
        _check_signature(name, kind, fn, options)
        return Method(name, kind, fn, options, SelectionPolicy(cost_normalizable, min_fraction), terms)

    return decorate


def _check_signature(name: str, kind: str, fn: Callable, options: tuple[Option, ...]) -> None:
    params = inspect.signature(fn).parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = [p for p in params if p.kind is p.KEYWORD_ONLY]
    declared = [o.name for o in options]
    problems = []
    if len(positional) != len(POSITIONAL[kind]) or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        problems.append(
            f"a {kind} takes exactly the positional arguments ({', '.join(POSITIONAL[kind])}) and no *args/**kwargs"
        )
    if len(set(declared)) != len(declared):
        problems.append(f"an option is declared twice: {declared}")
    if {p.name for p in keywords} != set(declared):
        problems.append(f"its keyword-only parameters {sorted(p.name for p in keywords)} are not {sorted(declared)}")
    if any(p.default is not p.empty for p in keywords):
        problems.append("an option has a default in the signature (declare it in the Option only)")
    if problems:
        raise TypeError(f"method {name!r} ({fn.__module__}.{fn.__qualname__}): " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Discovery through package metadata


@functools.cache
def _declarations() -> dict[str, tuple[metadata.EntryPoint, ...]]:
    """Every declared method name and its entry points (one unless two packages declare it)."""
    found: dict[str, list[metadata.EntryPoint]] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        same = found.setdefault(entry.name, [])
        if all(known.value != entry.value for known in same):  # a package seen twice on sys.path is one
            same.append(entry)
    return {name: tuple(entries) for name, entries in found.items()}


_LOADED: dict[str, Method] = {}


def _package(entry: metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = entry.dist
    return (dist.name, dist.version) if dist is not None else (None, None)


def _origin(entry: metadata.EntryPoint) -> str:
    package, version = _package(entry)
    return f"package {package or '(unknown)'} {version or ''}".rstrip() + f" ({entry.value})"


def _load(name: str, entry: metadata.EntryPoint) -> Method:
    try:
        loaded = entry.load()
    except Exception as error:  # a broken plug-in: say which package, keep the cause
        raise PluginError(
            f"method {name!r} of {_origin(entry)} failed to load: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(loaded, Method):
        raise PluginError(
            f"method {name!r} of {_origin(entry)} is a {type(loaded).__name__}, not a method made with "
            "the sosp.registry.method decorator"
        )
    if loaded.name != name:
        raise PluginError(f"{_origin(entry)} declares method {name!r} but its object is named {loaded.name!r}")
    package, version = _package(entry)
    return dataclasses.replace(loaded, package=package, version=version)


def get(name: str, kind: str | None = None) -> Method:
    """The method ``name`` (of ``kind``, if given), imported on first use; :class:`UnknownNameError`
    naming the known ones, :class:`PluginError` for a name two packages declare or a broken plug-in."""
    if name not in _LOADED:
        entries = _declarations().get(name)
        if not entries:
            raise UnknownNameError(f"{kind} method" if kind else "pruning method", name, names())
        if len(entries) > 1:
            raise PluginError(
                f"method {name!r} is declared twice: by {' and by '.join(map(_origin, entries))}; "
                "uninstall one of the packages"
            )
        _LOADED[name] = _load(name, entries[0])
    found = _LOADED[name]
    if kind is not None and found.kind != kind:
        raise UnknownNameError(f"{kind} method", name, names(kind))
    return found


def names(kind: str | None = None) -> list[str]:
    """Sorted names of every declared method; with ``kind``, of every method of that kind (this
    imports them all)."""
    declared = sorted(_declarations())
    return declared if kind is None else [n for n in declared if get(n).kind == kind]


def refresh() -> None:
    """Read the installed packages' declarations again (after installing a plug-in in this process)."""
    _declarations.cache_clear()
    _LOADED.clear()


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` of method ``name`` resolved (:meth:`Method.resolve`): unknown names and values of
    the wrong type or outside the choices raise :class:`ConfigError`."""
    return get(name).resolve(options)


def describe(width: int = 100) -> str:
    """Every method, what it is and its options, as text (the end of ``sosp prune --help``)."""

    def wrap(text: str, indent: str) -> list[str]:
        return textwrap.wrap(text.replace("``", ""), width, initial_indent=indent, subsequent_indent=indent + "  ")

    lines = ["methods (--method NAME) and their options (--option KEY=VALUE):"]
    for entry in map(get, names()):
        how = "shared selection and surgery" if entry.kind == "saliency" else "own selection and surgery"
        lines += [f"  {entry.name} ({entry.kind}: {how}; {entry.provider})", *wrap(entry.summary, "      ")]
        for o in entry.options:
            if o.type is Callable:
                lines += wrap(f"{o.name} (Python API only): {o.help}", "      ")
            else:
                value = "|".join(o.choices) if o.choices else o.type_name.upper()
                lines += wrap(
                    f"{o.name}={value} (default {'none' if o.default is None else o.default}): {o.help}", "      "
                )
    return "\n".join(lines)
