"""The one error for a bad argument, naming it, so every layer reports the same problem the same way.

:class:`InvalidInput` carries the argument's ``field`` (a dotted path: ``x``, ``perturbation.eps``,
``labels.3``), a short ``value`` (a bounded repr, never a whole tensor) and the ``reason`` in words.
It is a ``ValueError``, so ``except ValueError`` keeps working; servers map it to their "bad request"
status and read the field from it instead of parsing the message.
"""

from __future__ import annotations

from typing import Any

import torch

MAX_VALUE = 80
"""Characters of ``InvalidInput.value``: enough to recognise a value, too few to echo a payload back."""
_UNSET: Any = object()


def bounded_repr(value: object, limit: int = MAX_VALUE) -> str:
    """repr(value) in about ``limit`` characters; a tensor of more than a few elements is summarised, not printed."""
    if isinstance(value, str) and len(value) > limit // 2:  # a long name: its start and its length
        return f"{value[:limit // 2]!r}... ({len(value)} characters)"
    if isinstance(value, torch.Tensor) and value.numel() > 4:
        text = f"tensor of shape {list(value.shape)} and dtype {str(value.dtype).removeprefix('torch.')}"
    else:
        try:
            text = repr(value)
        except Exception:  # a broken __repr__ must not hide the error being reported
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class InvalidInput(ValueError):
    """``field`` is wrong for ``reason``; str(error) is ``"{field}: {reason}"``."""

    def __init__(self, field: str, reason: str, value: object = _UNSET) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.value: str | None = None if value is _UNSET else bounded_repr(value)

    def within(self, prefix: str) -> InvalidInput:
        """The same error one level down: ``spec.name`` under ``inline`` is ``inline.spec.name``."""
        error = InvalidInput(f"{prefix}.{self.field}" if prefix else self.field, self.reason)
        error.value = self.value
        return error

    def violations(self) -> list[tuple[str, str]]:
        """(field, reason) pairs, one per bad field (one here; a server's request errors may name several)."""
        return [(self.field, self.reason)]

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (e.g. out of a worker process) with its field
        return (_rebuild, (type(self), self.field, self.reason, self.value))


def _rebuild(cls: type[InvalidInput], field: str, reason: str, value: str | None) -> InvalidInput:
    error = cls.__new__(cls)
    InvalidInput.__init__(error, field, reason)
    error.value = value
    return error


class Interrupted(Exception):
    """Work stopped early because its caller asked (a ``should_stop`` said so): nothing partial is returned.

    Raised between units of work (a step's member blocks), so what was already stored is unchanged and the
    work can be redone from its start, bit-identical.
    """
