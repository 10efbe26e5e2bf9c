"""Every relaxation as one record: its names, what it offers, the options it takes and how they travel.

Callers never spell a relaxation's name or its options: the command line, the training config,
evaluation, the wire codec, the gateway's REST and gRPC edges, the bound workers and the verifier
read these records. A new relaxation is one :func:`register` call here beside its bound function;
a new option of one is a field of its options dataclass (made with :func:`option`) and its use in
the bound function. Nothing here imports torch: validating a config and `gls --help` stay fast,
and a record names its bound function by module and attribute, imported on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

IBP, HBOX, CROWN_IBP, DEEPPOLY, ALPHA_CROWN = "ibp", "hbox", "crown-ibp", "deeppoly", "alpha-crown"
MAX_RATE = 10.0
"""Largest learning rate, step size and noise scale: beyond it a step overflows float32 instead of training."""


@dataclass(frozen=True)
class Option:
    """One option of a relaxation: a number (``kind``) in [minimum, maximum], or one of ``words``."""

    name: str
    kind: type[int] | type[float]
    default: Any
    help: str
    minimum: float = 0.0
    maximum: float | None = None
    words: tuple[str, ...] = ()
    served_max: int | None = None  # most a server runs per request: more is a request for unbounded work
    work: bool = False  # multiplies a job's work: a gateway caps it with its step limit
    wire: str | None = None  # its own field of gls.v1.Relaxation (None: the generic ``options`` map)
    wire_flag: str | None = None  # a bool field of gls.v1.Relaxation set when the value is ``words[0]``

    def maximum_for(self, served: bool) -> float | None:
        return self.served_max if served and self.served_max is not None else self.maximum

    def check(self, value: object, field: str, served: bool = False) -> Any:
        """The value, checked: raises :class:`~gls_core.errors.InvalidInput` naming ``field``."""
        from .errors import InvalidInput, bounded_repr
        from .validation import check_count

        if isinstance(value, str) and value in self.words:
            return value
        top = self.maximum_for(served)
        if self.kind is int and not self.words:
            return check_count(value, field, int(self.minimum), None if top is None else int(top))
        number = None if isinstance(value, bool) or not isinstance(value, numbers.Real) else float(value)
        if number is None or not math.isfinite(number) or number < self.minimum or (top is not None and number > top):
            span = f">= {self.minimum:g}" if top is None else f"in [{self.minimum:g}, {top:g}]"
            words = "".join(f"{word!r} or " for word in self.words)
            raise InvalidInput(field, f"must be {words}a number {span}, got {bounded_repr(value)}", value)
        return int(number) if self.kind is int else number


def option(default: Any, help: str, *, minimum: float = 0.0, maximum: float | None = None,
           words: tuple[str, ...] = (), served_max: int | None = None, work: bool = False, wire: str | None = None,
           wire_flag: str | None = None) -> Any:
    """A field of an options dataclass: its default, range and wire field (see :class:`Option`)."""
    spec = {"help": help, "minimum": minimum, "maximum": maximum, "words": words, "served_max": served_max,
            "work": work, "wire": wire, "wire_flag": wire_flag}
    return field(default=default, metadata={"option": spec})


@dataclass(frozen=True)
class Relaxation:
    """A relaxation: how it is called, what it can do, and the options it takes."""

    name: str
    bound: str  # "module:function" computing a Box from (spec, params, input_box, C, sides=..., **options)
    differentiable: bool  # gives gradients in the weights (else evaluated without them: PGPE)
    summary: str
    options_type: type | None = None  # a frozen dataclass of option() fields; None: takes none
    evaluation: Mapping[str, Any] = field(default_factory=dict)  # option values when evaluating and certifying
    aliases: tuple[str, ...] = ()
    footprint: Literal["activations", "coefficients"] = "coefficients"  # the largest tensor, for chunking
    stoppable: bool = False  # takes ``should_stop``, polled between its steps
    section: str | None = None  # key of its options in a training config (default: the name)

    @cached_property  # read on every compute_bounds call: built once
    def options(self) -> tuple[Option, ...]:
        if self.options_type is None:
            return ()
        return tuple(Option(f.name, type(f.default) if isinstance(f.default, int | float) else float, f.default,
                            **f.metadata["option"]) for f in dataclasses.fields(self.options_type))

    @property
    def config_key(self) -> str:
        return self.section or self.name

    def defaults(self, evaluating: bool = False) -> dict[str, Any]:
        values = {item.name: item.default for item in self.options}
        return {**values, **self.evaluation} if evaluating else values

    def bound_function(self) -> Callable[..., Any]:
        module, name = self.bound.split(":")
        function: Callable[..., Any] = getattr(importlib.import_module(module), name)
        return function

    def check(self, given: Mapping[str, Any], field: str = "", *, served: bool = False, evaluating: bool = False,
              names: Mapping[str, str] | None = None, called: str = "") -> dict[str, Any]:
        """Every option: those ``given`` (None leaves one out) checked, the others at their defaults.

        Errors name ``field.option`` (``names`` maps an option to another name, e.g. its wire field) and the
        method as ``called`` (an alias) or by its name.
        """
        from .errors import InvalidInput

        prefix = f"{field}." if field else ""
        given = {key: value for key, value in given.items() if value is not None}
        known = {item.name: item for item in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown and not known:
            takers = [record.name for record in records() if set(unknown) & {o.name for o in record.options}]
            where = ", ".join(takers) if takers else "no relaxation"
            raise InvalidInput(field or unknown[0], f"{unknown} only apply to {where}, not {called or self.name}")
        if unknown:
            raise InvalidInput(field or unknown[0], f"{self.name} options are {list(known)}, got unknown {unknown}")
        values = self.defaults(evaluating)
        for key, value in given.items():
            values[key] = known[key].check(value, f"{prefix}{(names or {}).get(key, key)}", served)
        return values


_RECORDS: dict[str, Relaxation] = {}
_NAMES: dict[str, Relaxation] = {}  # names and aliases


def register(record: Relaxation) -> Relaxation:
    """Add a relaxation; every caller accepts it from then on. A name already taken is refused."""
    taken = [name for name in (record.name, *record.aliases) if name in _NAMES]
    if taken:
        raise ValueError(f"relaxation names {taken} are already registered")
    _RECORDS[record.name] = record
    _NAMES.update({name: record for name in (record.name, *record.aliases)})
    return record


def unregister(name: str) -> None:
    """Remove a relaxation (tests that register one put things back)."""
    record = _RECORDS.pop(name)
    for alias in (record.name, *record.aliases):
        del _NAMES[alias]


def records() -> tuple[Relaxation, ...]:
    return tuple(_RECORDS.values())


def names() -> tuple[str, ...]:
    """Every name a caller may give, aliases included, in registration order."""
    return tuple(_NAMES)


def differentiable() -> frozenset[str]:
    return frozenset(name for name, record in _NAMES.items() if record.differentiable)


def lookup(method: object, field: str = "method", extra: Iterable[str] = ()) -> Relaxation:
    """The record of a name or alias; anything else raises InvalidInput naming ``field`` and the choices."""
    from .errors import InvalidInput, bounded_repr

    record = _NAMES.get(method) if isinstance(method, str) else None
    if record is None:
        shown = "is empty" if method == "" else f"unknown relaxation {bounded_repr(method)}"
        raise InvalidInput(field, f"{shown}; expected one of {', '.join(sorted([*_NAMES, *extra]))}", method)
    return record


def check_relaxation(method: object, options: Mapping[str, Any], field: str = "", *, served: bool = False,
                     evaluating: bool = False) -> tuple[str, dict[str, Any]]:
    """A method and all its options (checked, defaults filled in); errors name ``field.method``, ``field.steps``."""
    record = lookup(method, f"{field}.method" if field else "method")
    return str(method), record.check(options, field, served=served, evaluating=evaluating, called=str(method))


# --------------------------------------------------------------------------------------------- records

@dataclass(frozen=True)
class AlphaCrownOptions:
    """alpha-CROWN's slope optimisation; the defaults are the paper's training setting (App. E)."""

    steps: int = option(1, "slope optimisation steps (the paper trains with 1)", served_max=1000, work=True,
                        wire="alpha_steps")
    step_size: float = option(0.5, "step size (learning rate) of the slopes", maximum=MAX_RATE,
                              wire="alpha_step_size")
    init: float | str = option(0.5, "initial lower slope of unstable ReLUs: a constant in [0, 1] or 'deeppoly'",
                               maximum=1.0, words=("deeppoly",), wire="alpha_init", wire_flag="alpha_init_deeppoly")


register(Relaxation(IBP, "gls_core.bounds.methods:ibp_bounds", True, "interval bound propagation (Gowal et al.)",
                    footprint="activations"))
register(Relaxation(HBOX, "gls_core.bounds.methods:hbox_bounds", True, "hybrid zonotope (Mirman et al.)"))
register(Relaxation(CROWN_IBP, "gls_core.bounds.methods:crown_ibp_bounds", True,
                    "IBP intermediate bounds, DeepPoly for the output (Zhang et al.)"))
register(Relaxation(DEEPPOLY, "gls_core.bounds.methods:deeppoly_bounds", True,
                    "back-substituted bounds (Singh et al.), the same as CROWN", aliases=("crown",)))
register(Relaxation(ALPHA_CROWN, "gls_core.bounds.alpha_crown:alpha_crown_bounds", False,
                    "DeepPoly with optimised lower slopes (Xu et al.)", AlphaCrownOptions,
                    # at evaluation: more optimisation than training's single step, started from DeepPoly's
                    # slopes so that (the best bound seen being returned) it is never looser than DeepPoly
                    evaluation={"steps": 20, "step_size": 0.1, "init": "deeppoly"}, stoppable=True,
                    section="alpha"))
