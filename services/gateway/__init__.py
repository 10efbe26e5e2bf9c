"""The gateway: REST API under /v1 (FastAPI) and the public gRPC Certifier, in one process.

Every /v1 route needs ``Authorization: Bearer <token>`` (``GLS_TOKENS``: one tenant per token); a
tenant sees only its own jobs, datasets and models, and another tenant's id answers 404 like a
missing one. Bad input is a 4xx whose ``detail`` names each field (422: ``[{field, msg, ...}]``);
every error body is ``errors.ErrorBody``, and /openapi.json lists each status a route answers.

    POST   /v1/jobs                  training config (the YAML schema, as JSON) -> 201 job
    GET    /v1/jobs                  this tenant's jobs
    GET    /v1/jobs/{id}             one job
    DELETE /v1/jobs/{id}             cancel, not delete (queued: at once; running: after its current step);
                                     the job stays readable with its final status
    GET    /v1/jobs/{id}/metrics     acknowledged metric rows (?start=N)
    GET    /v1/jobs/{id}/events      server-sent events: history, then live; Last-Event-ID / ?after= resume
    GET    /v1/jobs/{id}/model       the trained model (409 before; ?latest=true: latest checkpoint)
    GET    /v1/jobs/{id}/curves.png  training curves drawn from the metrics so far
    POST   /v1/datasets              multipart .npz/.safetensors (x, y) -> 201 dataset   (also GET, GET/DELETE {id})
    POST   /v1/models                multipart GLS model.safetensors -> 201 model       (also GET, GET/DELETE {id},
                                     GET {id}/download)
    POST   /v1/certify               verdicts for inputs against a stored or inline model
    GET    /healthz /readyz /metrics /docs /openapi.json   (no token)
    GET    /ui/                      the web dashboard (static files; the page sends the token itself)

gRPC ``gls.v1.Certifier`` (Certify, CertifyStream) with health checking and reflection runs on
``GLS_CERTIFIER_PORT``; ``python -m services.gateway`` serves both until SIGTERM/SIGINT.
"""

from .app import create_app
from .context import Gateway
from .server import RunningGateway, serve

__all__ = ["Gateway", "RunningGateway", "create_app", "serve"]
