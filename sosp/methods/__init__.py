"""Every pruning method by name: SOSP-H, SOSP-I and the baselines, one module each in this package.

A method registers itself on import with :func:`register`, as one of two kinds with one signature each:

- ``saliency`` (:class:`SaliencyFn`): ``fn(model, groups, batches, *, <options>)`` returns one 1-D
  tensor per channel group (higher = more important); :func:`sosp.saliency.score` calls it, and the
  shared selection and surgery of :mod:`sosp.prune` remove the structures;
- ``pruner`` (:class:`PrunerFn`): ``fn(model, batches, ratio, *, example_input, target, num_samples,
  seed, min_channels, min_fraction, <options>)`` does its own selection and surgery and returns a
  :class:`sosp.prune.PruneResult`.

Options are declared once, in the method's module, as :class:`Option` ``(name, type, default, help)``;
the function takes each of them as a keyword-only argument without a default. The registry checks
given options (unknown name, declared type, choices), fills in the defaults and passes every option;
the command line (``sosp prune --help``, ``--option key=value``), the workflow's config check and the
records read the declarations from here. Importing this package imports every built-in method.
"""

from __future__ import annotations

import importlib
import inspect
import json
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Callable as _TypingCallable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from ..prune import PruneResult
    from ..structures import ChannelGroup

KINDS = ("saliency", "pruner")
#: keyword arguments every pruner receives from :func:`sosp.prune.run_ratios`, besides its options
PRUNER_ARGUMENTS = ("example_input", "target", "num_samples", "seed", "min_channels", "min_fraction")
#: the built-in methods' modules, imported (and so registered) with this package
BUILTIN_MODULES = ("sosp_h", "sosp_i", "random", "magnitude", "taylor", "cobd", "eigendamage")


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

    def __call__(
        self,
        model: nn.Module,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        ratio: float,
        *,
        example_input: torch.Tensor,
        target: str,
        num_samples: int | None,
        seed: int,
        min_channels: int,
        min_fraction: float,
        **options: Any,
    ) -> PruneResult: ...


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
    """A registered method: :data:`METHODS` maps each name to one."""

    name: str
    kind: str  # one of KINDS
    fn: SaliencyFn | PrunerFn
    options: tuple[Option, ...]
    policy: SelectionPolicy

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


_REGISTRY: dict[str, Method] = {}
#: every registered method by name (read-only, live)
METHODS: Mapping[str, Method] = MappingProxyType(_REGISTRY)


def register(
    name: str,
    kind: str = "saliency",
    *,
    options: Sequence[Option] = (),
    cost_normalizable: bool | Callable[[dict], bool] | None = None,
    min_fraction: float = 0.0,
):
    """Decorator: add ``fn`` to :data:`METHODS` under ``name``, with its options and
    :class:`SelectionPolicy` (by default a saliency's scores may be divided by cost, a pruner's not).

    The function's keyword-only parameters must be exactly the declared options (plus
    :data:`PRUNER_ARGUMENTS` for a pruner), none with a default: the defaults are the options'."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    options = tuple(options)
    if cost_normalizable is None:
        cost_normalizable = kind == "saliency"

    def decorate(fn: SaliencyFn | PrunerFn) -> SaliencyFn | PrunerFn:
        _check_signature(name, kind, fn, options)
        known = _REGISTRY.get(name)
        if known is not None and (known.fn.__module__, known.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"method {name!r} is registered twice: {known.fn.__module__} and {fn.__module__}")
        _REGISTRY[name] = Method(name, kind, fn, options, SelectionPolicy(cost_normalizable, min_fraction))
        return fn

    return decorate


def _check_signature(name: str, kind: str, fn: Callable, options: tuple[Option, ...]) -> None:
    params = inspect.signature(fn).parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = [p for p in params if p.kind is p.KEYWORD_ONLY]
    declared = [o.name for o in options]
    expected = set(declared) | (set(PRUNER_ARGUMENTS) if kind == "pruner" else set())
    problems = []
    if len(positional) != 3 or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        problems.append("it must take exactly three positional arguments and no *args/**kwargs")
    if len(set(declared)) != len(declared):
        problems.append(f"an option is declared twice: {declared}")
    if {p.name for p in keywords} != expected:
        problems.append(f"its keyword-only parameters {sorted(p.name for p in keywords)} are not {sorted(expected)}")
    if any(p.default is not p.empty for p in keywords if p.name in declared):
        problems.append("an option has a default in the signature (declare it in the Option only)")
    if problems:
        raise TypeError(f"method {name!r} ({fn.__module__}.{fn.__qualname__}): " + "; ".join(problems))


def get(name: str, kind: str | None = None) -> Method:
    """The method ``name`` (of ``kind``, if given); :class:`UnknownNameError` naming the known ones."""
    if name not in _REGISTRY or (kind is not None and _REGISTRY[name].kind != kind):
        raise UnknownNameError(f"{kind} method" if kind else "pruning method", name, names(kind))
    return _REGISTRY[name]


def names(kind: str | None = None) -> list[str]:
    """Sorted names of every method (of ``kind``, if given)."""
    return sorted(n for n, m in _REGISTRY.items() if kind is None or m.kind == kind)


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` of method ``name`` resolved (:meth:`Method.resolve`): unknown names and values of
    the wrong type or outside the choices raise :class:`ConfigError`."""
    return get(name).resolve(options)


def describe(width: int = 100) -> str:
    """Every method, what it is and its options, as text (the end of ``sosp prune --help``)."""

    def wrap(text: str, indent: str) -> list[str]:
        return textwrap.wrap(text.replace("``", ""), width, initial_indent=indent, subsequent_indent=indent + "  ")

    lines = ["methods (--method NAME) and their options (--option KEY=VALUE):"]
    for method in sorted(_REGISTRY.values(), key=lambda m: m.name):
        how = "shared selection and surgery" if method.kind == "saliency" else "own selection and surgery"
        lines += [f"  {method.name} ({method.kind}: {how})", *wrap(method.summary, "      ")]
        for o in method.options:
            if o.type is Callable:
                lines += wrap(f"{o.name} (Python API only): {o.help}", "      ")
            else:
                value = "|".join(o.choices) if o.choices else o.type_name.upper()
                lines += wrap(
                    f"{o.name}={value} (default {'none' if o.default is None else o.default}): {o.help}", "      "
                )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Helpers of the methods' batch loops


def limit_samples(batches: Iterable, num_samples: int | None) -> Iterator:
    """The batches, with the last one cut so that exactly ``num_samples`` samples are used."""
    if num_samples is not None and num_samples <= 0:
        raise ConfigError(f"num_samples must be positive, got {num_samples}")
    seen = 0
    for x, y in batches:
        if num_samples is not None:
            if seen >= num_samples:
                return
            x, y = x[: num_samples - seen], y[: num_samples - seen]
        seen += len(x)
        yield x, y


def to_device(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """``(x, y)`` on the model's device, ``x`` in its dtype if floating."""
    p = next(model.parameters())
    return x.to(p.device, p.dtype if x.is_floating_point() else x.dtype), y.to(p.device)


for _module in BUILTIN_MODULES:
    importlib.import_module(f"{__name__}.{_module}")
