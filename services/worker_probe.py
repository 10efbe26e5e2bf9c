"""``python -m services.worker_probe``: exit 0 when the bound worker configured in GLS_* answers SERVING.

The probe of containers (compose healthcheck, a Kubernetes exec probe): it dials the address the
worker advertises (GLS_WORKER_ADVERTISE, else its host and port) the way the worker's callers do,
so with GLS_INTERNAL_TLS_* set it speaks mutual TLS with the worker's own certificate, which a
plain gRPC health probe cannot. It imports neither torch nor the worker, so it starts quickly.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .settings import Settings
from .tls import TLSConfigError, peer_channel


def check(settings: Settings, timeout_s: float = 3.0) -> str:
    """The worker's health status name (SERVING, NOT_SERVING, ...); raises grpc.RpcError when it cannot answer."""
    channel = peer_channel(settings.advertised_worker_address, settings.internal_tls,
                           settings.internal_tls_server_name, settings.grpc_options)
    with channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                           timeout=timeout_s)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def main() -> int:
    settings = Settings()
    try:
        status = check(settings)
    except TLSConfigError as error:
        print(error, file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        print(f"{settings.advertised_worker_address}: {error.code().name} {error.details()}", file=sys.stderr)
        return 1
    print(f"{settings.advertised_worker_address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
