"""One configuration model for every service, read from environment variables (prefix GLS_).

The same variables drive `gls cluster up`, docker-compose and the Kubernetes manifests, so an
operator configures a process the same way wherever it runs.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .tls import ServerTLS

LOOPBACK = "127.0.0.1"
"""Where every listener binds unless configured: nothing is reachable from other machines by accident."""
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")
"""Bind addresses that mean every interface; others dial such a server on loopback from the same machine."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GLS_", extra="ignore", frozen=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("GLS_REDIS_URL", "REDIS_URL"),
                           description="the only shared state")
    data_dir: Path | None = Field(None, description="built-in datasets (default ~/.cache/gls/data)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, gt=0, description="torch intra-op threads per process")
    max_message_mb: int = Field(256, gt=0, description="largest gRPC message, both directions")

    # bound worker
    worker_host: str = Field(LOOPBACK, description="address the worker listens on (0.0.0.0: every interface; "
                                                  "containers set it, with GLS_WORKER_TOKEN)")
    worker_port: int = Field(50051, ge=0, le=65535)
    worker_advertise: str | None = Field(None, description="address others dial (default host:port)")
    worker_concurrency: int = Field(2, gt=0, description="requests evaluated at once")
    worker_cache_mb: int = Field(512, gt=0, description="content-addressed blob cache")
    worker_register: bool = Field(True, description="announce the worker in Redis (off: static addresses only)")
    worker_grace_s: float = Field(10.0, ge=0, description="on SIGTERM, how long running requests may finish")
    worker_token: str = Field("", description="shared secret every BoundWorker call must carry (empty: none "
                                            "asked; set it wherever workers are reachable by others)")
    internal_tls_cert_file: Path | None = Field(None, description="PEM certificate (chain) of this process "
                                                "between services: workers serve gRPC with it, the coordinator "
                                                "and gateway show it when dialling workers (mutual TLS)")
    internal_tls_key_file: Path | None = Field(None, description="PEM private key of GLS_INTERNAL_TLS_CERT_FILE")
    internal_tls_ca_file: Path | None = Field(None, description="PEM CA of the services: workers require a client "
                                              "certificate it signed, callers trust only it for workers")
    internal_tls_server_name: str = Field("", description="name callers check in every worker's certificate "
                                          "instead of the dialled host (one certificate for all workers, e.g. "
                                          "'gls-worker'; empty: the advertised host must be in its SANs)")
    worker_addresses: str = Field("", description="static comma-separated worker list (besides Redis discovery)")
    verify_max_timeout_s: float = Field(300.0, gt=0, description="longest branch and bound per input a worker runs")
    heartbeat_s: float = Field(2.0, gt=0)
    heartbeat_ttl_s: float = Field(6.0, gt=0)

    # coordinator
    rpc_timeout_s: float = Field(300.0, gt=0, description="one worker call; on timeout its share is re-sent")
    shares_per_worker: int = Field(4, gt=0, description="a step's members go out in this many block-aligned shares "
                                   "per live worker: progress is reported, and work rebalanced, as each comes back")
    checkpoint_every_steps: int = Field(1, gt=0, description="steps between checkpoints (each acknowledges steps)")
    job_stale_s: float = Field(5.0, gt=0, description="a job whose coordinator is silent this long is taken over "
                               "(its claim is refreshed every quarter of this, from a thread of its own; the "
                               "owner fence stops the silent one from committing afterwards)")
    job_slice_s: float = Field(60.0, ge=0, description="a running job that has run this long yields at its next "
                               "step to a queued job of a tenant with fewer running jobs (0: never preempt)")
    coordinator_id: str | None = Field(None, description="consumer name in the job group (default host-pid; "
                                       "`gls cluster up` gives a stable one per host and run directory)")

    # gateway
    gateway_host: str = Field(LOOPBACK, description="address REST and the gRPC Certifier listen on (0.0.0.0: "
                                                   "every interface)")
    gateway_port: int = Field(8000, ge=0, le=65535)
    certifier_port: int = Field(50052, ge=0, le=65535)
    tokens: str = Field("", description="bearer tokens: 'token=tenant,token2=tenant2'")
    max_upload_mb: int = Field(512, gt=0, description="largest POST /v1/datasets or /v1/models body (a file); a "
                               "larger one answers 413 before the rest is read")
    upload_max_decoded_mb: int = Field(1024, gt=0, description="largest arrays an upload may decode to (x as held: "
                                       "uint8, or float32; y as int64), judged from the file's headers before "
                                       "anything is decoded (a compressed .npz counts what it expands to)")
    max_body_kb: int = Field(64, gt=0, description="largest body of every other route (a job config is a few KiB; "
                             "the rest take none); a larger one answers 413 before the rest is read")
    certify_max_inputs: int = Field(10000, gt=0)
    certify_max_body_mb: int = Field(256, gt=0, description="largest POST /v1/certify body (JSON); a larger one "
                                     "answers 413 before the rest is read. 256 MiB holds 10,000 MNIST inputs "
                                     "written with float64 digits")
    certify_complete_timeout_s: float = Field(30.0, gt=0, description="method complete: default seconds per input")
    certify_complete_max_timeout_s: float = Field(120.0, gt=0, description="method complete: largest per-input limit")
    certify_complete_max_inputs: int = Field(256, gt=0, description="method complete: inputs per request or message")
    job_max_epochs: int = Field(500, gt=0, description="largest schedule.epochs (+ warmup.epochs) a job may ask for")
    job_max_popsize: int = Field(4096, gt=0, description="largest pgpe.popsize and rgs.samples")
    job_max_steps: int = Field(1000, gt=0, description="largest PGD and alpha-CROWN step counts, training or eval")
    job_max_steps_per_epoch: int = Field(100_000, gt=0, description="largest schedule.steps_per_epoch")
    job_max_examples: int = Field(1_000_000, gt=0, description="largest data.train_subset, data.test_subset, "
                                  "data.batch_size and evaluation.batch_size")
    job_max_params: int = Field(100_000_000, gt=0, description="largest network a job may train, in parameters "
                                "(cnn7 on tinyimagenet has 67.6 million)")
    tenant_max_jobs: int = Field(8, gt=0, description="queued or running jobs a tenant may have at once; another "
                                 "submission answers 429 (finished, failed and cancelled jobs do not count)")
    tenant_max_stored_mb: int = Field(1024, gt=0, description="MiB of uploaded models and datasets a tenant may "
                                      "store; an upload beyond it answers 429 (deleting frees the space)")
    tls_cert_file: Path | None = Field(None, description="PEM certificate (chain) of the gateway's REST and gRPC "
                                       "Certifier: both then speak TLS only (with GLS_TLS_KEY_FILE)")
    tls_key_file: Path | None = Field(None, description="PEM private key of GLS_TLS_CERT_FILE")
    tls_client_ca_file: Path | None = Field(None, description="PEM CA: REST and Certifier clients must present a "
                                            "certificate it signed (mutual TLS)")
    metrics_key: str = Field("", description="secret of this deployment that keys the tenant pseudonyms on /metrics "
                             "(HMAC-SHA256); empty: no per-tenant series. `gls cluster up` makes one per cluster")
    sse_heartbeat_s: float = Field(15.0, gt=0, description="comment sent on an idle event stream (keeps proxies open)")
    certifier_threads: int = Field(8, gt=0, description="gRPC Certifier requests served at once")
    certifier_queue: int = Field(64, ge=0, description="Certifier requests that wait (within their deadline) for "
                                                      "a free slot; beyond them callers get RESOURCE_EXHAUSTED")

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("tokens")
    @classmethod
    def _tokens_well_formed(cls, value: str) -> str:
        for item in filter(None, (part.strip() for part in value.split(","))):
            token, sep, tenant = item.partition("=")
            if not sep or not token.strip() or not tenant.strip():
                raise ValueError(f"GLS_TOKENS entries must be token=tenant, got {item!r}")
        return value

    @model_validator(mode="after")
    def _tls_files_together(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("GLS_TLS_CERT_FILE and GLS_TLS_KEY_FILE go together: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("GLS_TLS_CLIENT_CA_FILE (mutual TLS) needs GLS_TLS_CERT_FILE and GLS_TLS_KEY_FILE")
        internal = (self.internal_tls_cert_file, self.internal_tls_key_file, self.internal_tls_ca_file)
        if any(path is None for path in internal) and any(path is not None for path in internal):
            raise ValueError("GLS_INTERNAL_TLS_CERT_FILE, GLS_INTERNAL_TLS_KEY_FILE and GLS_INTERNAL_TLS_CA_FILE "
                             "go together (mutual TLS between the services): set all three or none")
        if self.internal_tls_server_name and self.internal_tls_cert_file is None:
            raise ValueError("GLS_INTERNAL_TLS_SERVER_NAME needs the GLS_INTERNAL_TLS_* certificate files")
        return self

    @cached_property
    def server_tls(self) -> ServerTLS | None:
        """The gateway's certificate files, read and checked (TLSConfigError names the setting), or None."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return ServerTLS.load(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)

    @cached_property
    def internal_tls(self) -> ServerTLS | None:
        """This process's certificate between services, read and checked (TLSConfigError names the setting)."""
        if self.internal_tls_cert_file is None or self.internal_tls_key_file is None or \
                self.internal_tls_ca_file is None:
            return None
        return ServerTLS.load_internal(self.internal_tls_cert_file, self.internal_tls_key_file,
                                       self.internal_tls_ca_file)

    @cached_property
    def tenants_by_token(self) -> dict[str, str]:
        pairs = (item.partition("=") for item in self.tokens.split(",") if item.strip())
        return {token.strip(): tenant.strip() for token, _, tenant in pairs}

    @cached_property
    def static_workers(self) -> list[str]:
        return [address.strip() for address in self.worker_addresses.split(",") if address.strip()]

    @property
    def grpc_options(self) -> list[tuple[str, int]]:
        size = self.max_message_mb * 1024 * 1024
        return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]

    @property
    def tenant_max_stored_bytes(self) -> int:
        return self.tenant_max_stored_mb * 1024 * 1024

    @property
    def advertised_worker_address(self) -> str:
        return self.worker_advertise or f"{dialable(self.worker_host)}:{self.worker_port}"


def dialable(host: str) -> str:
    """The address a local client dials for a server bound to ``host`` (a wildcard bind: loopback)."""
    return LOOPBACK if host in WILDCARD_HOSTS else host


ENVIRONMENT_VARIABLES = sorted({"REDIS_URL"} | {f"GLS_{name.upper()}" for name in Settings.model_fields})
