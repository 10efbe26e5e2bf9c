"""VNN-LIB properties (the VNN-COMP format) as :class:`Property`, and the competition's result format.

A VNN-LIB file declares inputs ``X_i`` and outputs ``Y_j`` and asserts the *unsafe* set: a box on
the inputs and a disjunction of output constraints. The property holds ("unsat") when no input of
the box reaches the unsafe set. Supported: one input box (``<=``/``>=`` bounds on every ``X_i``) and
an unsafe set that is a disjunction of single linear constraints between outputs and constants, the
shape of the MNIST and CIFAR robustness benchmarks: ``(or (and (>= Y_1 Y_0)) (and (>= Y_2 Y_0)) ...)``
or a single ``(assert (<= Y_0 Y_1))``. Each disjunct ``a . Y + b <= 0`` becomes a row ``a . Y + b`` that
must stay positive. Errors name the file, the line and the column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .property import Property

_TOKEN = re.compile(r"\s+|;[^\n]*|\(|\)|[^\s();]+")
_VARIABLE = re.compile(r"^([XY])_(\d+)$")


class VnnlibError(ValueError):
    """A malformed or unsupported VNN-LIB file; the message starts with the file's path (when read from one),
    then ``line L, column C``."""


@dataclass(frozen=True)
class _Atom:
    text: str
    line: int
    column: int


Expression = _Atom | list  # an atom or a parenthesised list of expressions


def _where(item: Expression) -> str:
    atom = item
    while isinstance(atom, list):
        if not atom:
            return "somewhere"
        atom = atom[0]
    return f"line {atom.line}, column {atom.column}"


def _parse(text: str) -> list[Expression]:
    stack: list[list[Expression]] = [[]]
    opened: list[tuple[int, int]] = []
    line, column = 1, 1
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token == "(":
            stack.append([])
            opened.append((line, column))
        elif token == ")":
            if len(stack) == 1:
                raise VnnlibError(f"line {line}, column {column}: ')' without a matching '('")
            done = stack.pop()
            opened.pop()
            stack[-1].append(done)
        elif not token.isspace() and not token.startswith(";"):
            stack[-1].append(_Atom(token, line, column))
        newlines = token.count("\n")
        if newlines:
            line += newlines
            column = len(token) - token.rfind("\n")
        else:
            column += len(token)
    if len(stack) != 1:
        at_line, at_column = opened[-1]
        raise VnnlibError(f"line {at_line}, column {at_column}: '(' is never closed")
    return stack[0]


def _head(item: Expression) -> str:
    return item[0].text if isinstance(item, list) and item and isinstance(item[0], _Atom) else ""


@dataclass
class _Linear:
    """sum coefficients[name] * name + constant."""

    coefficients: dict[str, float]
    constant: float


def _term(item: Expression) -> _Linear:
    if isinstance(item, _Atom):
        if _VARIABLE.match(item.text):
            return _Linear({item.text: 1.0}, 0.0)
        try:
            return _Linear({}, float(item.text))
        except ValueError:
            raise VnnlibError(f"line {item.line}, column {item.column}: expected a variable or a number, "
                              f"got {item.text!r}") from None
    raise VnnlibError(f"{_where(item)}: only variables and numbers may be compared")


class _Reader:
    def __init__(self, input_shape: Sequence[int], outputs: int) -> None:
        self.input_shape = tuple(input_shape)
        self.inputs, self.outputs = math.prod(self.input_shape), outputs
        self.lower: dict[int, float] = {}
        self.upper: dict[int, float] = {}
        self.unsafe: list[_Linear] = []  # disjuncts, each "expression <= 0"
        self.declared: set[str] = set()
        self.sizes = {"X": 0, "Y": 0}  # the inputs and outputs the file declares (highest index + 1)

    def declare(self, item: list) -> None:
        if len(item) != 3 or not isinstance(item[1], _Atom) or not isinstance(item[2], _Atom):
            raise VnnlibError(f"{_where(item)}: expected (declare-const NAME Real)")
        match = _VARIABLE.match(item[1].text)
        if match is None or item[2].text != "Real":
            raise VnnlibError(f"line {item[1].line}, column {item[1].column}: only X_i and Y_j of sort Real can be "
                              f"declared, got {item[1].text} {item[2].text}")
        kind, number = match.group(1), int(match.group(2))
        limit = self.inputs if kind == "X" else self.outputs
        if number >= limit:
            what = f"inputs (input shape {self.input_shape})" if kind == "X" else "outputs"
            raise VnnlibError(f"line {item[1].line}, column {item[1].column}: {item[1].text} is out of range: the "
                              f"network has {limit} {what}, the property declares {self.sizes[kind]}")
        self.declared.add(item[1].text)

    def comparison(self, item: list) -> _Linear:
        """``(<= a b)`` or ``(>= a b)`` as ``expression <= 0``."""
        if _head(item) not in ("<=", ">=") or len(item) != 3:
            raise VnnlibError(f"{_where(item)}: expected (<= a b) or (>= a b)")
        left, right = _term(item[1]), _term(item[2])
        if _head(item) == ">=":
            left, right = right, left
        coefficients = dict(left.coefficients)
        for name, value in right.coefficients.items():
            coefficients[name] = coefficients.get(name, 0.0) - value
        for name in coefficients:
            if name not in self.declared:
                raise VnnlibError(f"{_where(item)}: {name} is used but never declared")
        return _Linear(coefficients, left.constant - right.constant)

    def assertion(self, item: list) -> None:
        if len(item) != 2:
            raise VnnlibError(f"{_where(item)}: expected (assert EXPRESSION)")
        body = item[1]
        if _head(body) in ("<=", ">="):
            constraint = self.comparison(body)
            names = set(constraint.coefficients)
            if names and all(name.startswith("X") for name in names) and len(names) == 1:
                self.bound(body, constraint)
            elif all(name.startswith("Y") for name in names):
                self.unsafe_conjunction([constraint], body)
            else:
                raise VnnlibError(f"{_where(body)}: a constraint must bound one input or relate outputs only")
        elif _head(body) == "or":
            for disjunct in body[1:]:
                parts = disjunct[1:] if _head(disjunct) == "and" else [disjunct]
                self.unsafe_conjunction([self.comparison(part) for part in parts], disjunct)
        elif _head(body) == "and":
            self.unsafe_conjunction([self.comparison(part) for part in body[1:]], body)
        else:
            raise VnnlibError(f"{_where(body)}: expected a comparison, (and ...) or (or ...)")

    def bound(self, item: list, constraint: _Linear) -> None:
        ((name, coefficient),) = constraint.coefficients.items()
        index = int(name[2:])
        value = -constraint.constant / coefficient  # coefficient * X + constant <= 0
        target = self.upper if coefficient > 0 else self.lower
        if index in target:
            raise VnnlibError(f"{_where(item)}: {name} is bounded twice on the same side")
        target[index] = value

    def unsafe_conjunction(self, constraints: Sequence[_Linear], item: Expression) -> None:
        if len(constraints) != 1:
            raise VnnlibError(f"{_where(item)}: an unsafe case with {len(constraints)} output constraints at once is "
                              "not supported; only disjunctions of single constraints are")
        if any(name.startswith("X") for name in constraints[0].coefficients):
            raise VnnlibError(f"{_where(item)}: output constraints may not mention inputs")
        self.unsafe.append(constraints[0])

    def property(self) -> Property:
        input_shape = self.input_shape
        declared = self.sizes["X"]
        if declared < self.inputs:
            plural = "s" if declared != 1 else ""
            raise VnnlibError(f"the property declares {declared} input{plural}, but the network takes {self.inputs} "
                              f"(input shape {input_shape})")
        missing = [i for i in range(self.inputs) if i not in self.lower or i not in self.upper]
        if missing:
            raise VnnlibError(f"X_{missing[0]} has no lower and upper bound ({len(missing)} inputs lack one)")
        if not self.unsafe:
            raise VnnlibError("no output constraint: the file asserts no unsafe set")
        lower = torch.tensor([self.lower[i] for i in range(self.inputs)], dtype=torch.float64)
        upper = torch.tensor([self.upper[i] for i in range(self.inputs)], dtype=torch.float64)
        if bool((lower > upper).any()):
            raise VnnlibError(f"X_{int((lower > upper).nonzero()[0])}: the lower bound exceeds the upper bound")
        C = torch.zeros(len(self.unsafe), self.outputs, dtype=torch.float64)
        d = torch.zeros(len(self.unsafe), dtype=torch.float64)
        for row, constraint in enumerate(self.unsafe):  # unsafe: a . Y + b <= 0; safe: a . Y + b > 0
            for name, value in constraint.coefficients.items():
                C[row, int(name[2:])] = value
            d[row] = constraint.constant
        return Property(lower.view(*input_shape), upper.view(*input_shape), C, d)


def read_vnnlib(source: str | Path, input_shape: Sequence[int], outputs: int) -> Property:
    """The property of a VNN-LIB file (or its text, when it holds a newline or a parenthesis)."""
    if isinstance(source, str) and ("(" in source or "\n" in source):
        return _read(source, input_shape, outputs)
    path = Path(source)
    try:
        return _read(path.read_text(), input_shape, outputs)
    except OSError as error:
        raise VnnlibError(f"{path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise VnnlibError(f"{path}: not a VNN-LIB text file ({error.reason} at byte {error.start})") from None
    except VnnlibError as error:
        raise VnnlibError(f"{path}: {error}") from None


def _read(text: str, input_shape: Sequence[int], outputs: int) -> Property:
    reader = _Reader(input_shape, outputs)
    items = _parse(text)
    for item in items:  # the sizes first, so a property for another network is named with both sizes
        if isinstance(item, list) and _head(item) == "declare-const" and len(item) > 1 and isinstance(item[1], _Atom):
            match = _VARIABLE.match(item[1].text)
            if match:
                kind, number = match.group(1), int(match.group(2))
                reader.sizes[kind] = max(reader.sizes[kind], number + 1)
    for item in items:
        head = _head(item)
        if head == "declare-const":
            reader.declare(item)  # type: ignore[arg-type]
        elif head == "assert":
            reader.assertion(item)  # type: ignore[arg-type]
        else:
            raise VnnlibError(f"{_where(item)}: expected (declare-const ...) or (assert ...)")
    return reader.property()


def result_text(status: str, counterexample: torch.Tensor | None = None, outputs: torch.Tensor | None = None) -> str:
    """The VNN-COMP result file: ``sat`` with the input and output assignment, or ``unsat``/``timeout``/``unknown``."""
    if status != "sat":
        return f"{status}\n"
    assert counterexample is not None and outputs is not None
    values = [f"(X_{i} {float(v)!r})" for i, v in enumerate(counterexample.reshape(-1).tolist())]
    values += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(outputs.reshape(-1).tolist())]
    return "sat\n(" + "\n ".join(values) + ")\n"
