"""The population forward pass under the name its callers import; it lives in :mod:`gls_core.nets.forward`."""

from __future__ import annotations

from .nets.forward import forward

__all__ = ["forward"]
