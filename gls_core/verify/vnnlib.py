"""VNN-LIB properties (the VNN-COMP format) as :class:`Property`, and the competition's result format.

A VNN-LIB file declares inputs ``X_i`` and outputs ``Y_j`` and asserts the *unsafe* set; the
property holds ("unsat") when no input reaches it. The assertions are conjoined (as in SMT-LIB) and
may nest ``and`` and ``or`` over comparisons ``(<= a b)`` / ``(>= a b)``, each of which bounds one
input or relates outputs and constants. The conjunction is read in disjunctive normal form: unsafe
cases, each an input box and a conjunction of output constraints ``a . Y + b <= 0``. Cases with the
same box become one :class:`Property` whose groups are the cases (a group's rows ``a . Y + b``: one
must stay positive); different boxes (ACAS Xu's disjunctions of input boxes) become several. The
MNIST and CIFAR robustness benchmarks give one box and one row per group:
``(or (and (>= Y_1 Y_0)) (and (>= Y_2 Y_0)) ...)``. Errors name the file, the line and the column.
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
MAX_CASES = 100_000
"""Largest disjunctive normal form read (the conjunction of (or ...) assertions multiplies their cases)."""


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
        self.cases: list[list[tuple[_Linear, Expression]]] = [[]]  # the asserted set in disjunctive normal form
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
        """Conjoin one ``(assert ...)`` with those before it, in disjunctive normal form."""
        if len(item) != 2:
            raise VnnlibError(f"{_where(item)}: expected (assert EXPRESSION)")
        cases = self.normal_form(item[1])
        if len(self.cases) * len(cases) > MAX_CASES:
            raise VnnlibError(f"{_where(item)}: the assertions expand to more than {MAX_CASES} cases")
        self.cases = [before + case for before in self.cases for case in cases]

    def normal_form(self, body: Expression) -> list[list[tuple[_Linear, Expression]]]:
        """``body`` as a disjunction of conjunctions of comparisons (each ``expression <= 0``)."""
        head = _head(body)
        if head in ("<=", ">="):
            return [[(self.comparison(body), body)]]  # type: ignore[arg-type]
        if head == "or":
            return [case for part in body[1:] for case in self.normal_form(part)]  # type: ignore[index]
        if head == "and":
            cases: list[list[tuple[_Linear, Expression]]] = [[]]
            for part in body[1:]:  # type: ignore[index]
                cases = [before + case for before in cases for case in self.normal_form(part)]
                if len(cases) > MAX_CASES:
                    raise VnnlibError(f"{_where(body)}: the assertions expand to more than {MAX_CASES} cases")
            return cases
        raise VnnlibError(f"{_where(body)}: expected a comparison, (and ...) or (or ...)")

    def box_and_outputs(self, case: list[tuple[_Linear, Expression]]) -> tuple[tuple[float, ...], tuple[float, ...],
                                                                               list[_Linear]]:
        """One unsafe case: its input box (bounds intersected) and its output constraints."""
        lower = [-math.inf] * self.inputs
        upper = [math.inf] * self.inputs
        outputs = []
        for constraint, item in case:
            names = set(constraint.coefficients)
            if len(names) == 1 and all(name.startswith("X") for name in names):
                ((name, coefficient),) = constraint.coefficients.items()
                index, value = int(name[2:]), -constraint.constant / coefficient  # coefficient * X + constant <= 0
                if coefficient > 0:
                    upper[index] = min(upper[index], value)
                else:
                    lower[index] = max(lower[index], value)
            elif all(name.startswith("Y") for name in names):
                outputs.append(constraint)
            else:
                raise VnnlibError(f"{_where(item)}: a constraint must bound one input or relate outputs only")
        return tuple(lower), tuple(upper), outputs

    def properties(self) -> list[Property]:
        """One :class:`Property` per distinct input box; its unsafe cases are its groups of rows."""
        input_shape = self.input_shape
        declared = self.sizes["X"]
        if declared < self.inputs:
            plural = "s" if declared != 1 else ""
            raise VnnlibError(f"the property declares {declared} input{plural}, but the network takes {self.inputs} "
                              f"(input shape {input_shape})")
        boxes: dict[tuple[tuple[float, ...], tuple[float, ...]], list[list[_Linear]]] = {}
        for case in self.cases:
            lower, upper, outputs = self.box_and_outputs(case)
            if any(l > u for l, u in zip(lower, upper)):
                continue  # contradictory input bounds: this case is empty
            if not outputs:
                raise VnnlibError("no output constraint: an unsafe case of the file constrains no output")
            boxes.setdefault((lower, upper), []).append(outputs)
        if not boxes:
            raise VnnlibError("no output constraint: the file asserts no unsafe set")
        return [self.property(lower, upper, groups) for (lower, upper), groups in boxes.items()]

    def property(self, lower_bounds: tuple[float, ...], upper_bounds: tuple[float, ...],
                 groups: list[list[_Linear]]) -> Property:
        missing = [i for i in range(self.inputs) if not (math.isfinite(lower_bounds[i])
                                                         and math.isfinite(upper_bounds[i]))]
        if missing:
            raise VnnlibError(f"X_{missing[0]} has no lower and upper bound ({len(missing)} inputs lack one)")
        rows = [constraint for group in groups for constraint in group]
        C = torch.zeros(len(rows), self.outputs, dtype=torch.float64)
        d = torch.zeros(len(rows), dtype=torch.float64)
        for row, constraint in enumerate(rows):  # unsafe: a . Y + b <= 0; safe: a . Y + b > 0
            for name, value in constraint.coefficients.items():
                C[row, int(name[2:])] += value
            d[row] = constraint.constant
        group_of = torch.tensor([g for g, group in enumerate(groups) for _ in group], dtype=torch.int64)
        shape = self.input_shape
        return Property(torch.tensor(lower_bounds, dtype=torch.float64).view(*shape),
                        torch.tensor(upper_bounds, dtype=torch.float64).view(*shape), C, d,
                        None if len(rows) == len(groups) else group_of)


def read_vnnlib_cases(source: str | Path, input_shape: Sequence[int], outputs: int) -> list[Property]:
    """The properties of a VNN-LIB file (or its text, when it holds a newline or a parenthesis): one per input box.

    The file holds ("unsat") when every one of them holds.
    """
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


def read_vnnlib(source: str | Path, input_shape: Sequence[int], outputs: int) -> Property:
    """The property of a VNN-LIB file with one input box (see :func:`read_vnnlib_cases` for several)."""
    cases = read_vnnlib_cases(source, input_shape, outputs)
    if len(cases) != 1:
        raise VnnlibError(f"the file has {len(cases)} input boxes; read it with read_vnnlib_cases")
    return cases[0]


def _read(text: str, input_shape: Sequence[int], outputs: int) -> list[Property]:
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
    return reader.properties()


def result_text(status: str, counterexample: torch.Tensor | None = None, outputs: torch.Tensor | None = None) -> str:
    """The VNN-COMP result file: ``sat`` with the input and output assignment, or ``unsat``/``timeout``/``unknown``."""
    if status != "sat":
        return f"{status}\n"
    assert counterexample is not None and outputs is not None
    values = [f"(X_{i} {float(v)!r})" for i, v in enumerate(counterexample.reshape(-1).tolist())]
    values += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(outputs.reshape(-1).tolist())]
    return "sat\n(" + "\n ".join(values) + ")\n"
