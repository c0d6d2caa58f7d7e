"""Exceptions that the command line turns into one-line messages (exit code 2).

Everything a user can get wrong (a name, a path, a ratio, a config key) raises a subclass of
``SospError`` with a message that says what was wrong and how to fix it, so no user ever sees a bare
traceback for bad input. :func:`check_positive_int` is the one check of a positive-integer option.
"""


class SospError(Exception):
    """Base class of every error caused by user input rather than by a bug."""


class UnknownNameError(SospError, KeyError):
    """An unknown model, dataset or method name."""

    def __init__(self, kind: str, name: str, known):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return self.args[0]


class DataError(SospError):
    """Missing or malformed data set files."""


class ConfigError(SospError, ValueError):
    """A bad option value or configuration key."""


class UnsupportedModelError(SospError):
    """A model containing a layer whose channels cannot be gated or pruned exactly."""


class TrainingDivergedError(SospError):
    """A NaN or inf loss during training."""


def is_positive_int(value) -> bool:
    """An integer >= 1; a bool is not one."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_positive_int(name: str, value) -> int:
    """``value`` if it is a positive integer (:func:`is_positive_int`), else a :class:`ConfigError`
    naming ``name``."""
    if not is_positive_int(value):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_non_negative_int(name: str, value) -> int:
    """``value`` if it is an integer >= 0 (not a bool), else a :class:`ConfigError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    return value
