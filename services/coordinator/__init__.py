"""The coordinator: claims training jobs from Redis and runs them, with evaluation on the bound workers."""

from .service import Coordinator

__all__ = ["Coordinator"]
