"""The bound worker: a stateless gRPC service that evaluates relaxations for many weight vectors at once."""

from .server import RunningWorker, serve

__all__ = ["RunningWorker", "serve"]
