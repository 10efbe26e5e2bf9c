"""Client verbs of `gls`: talk to a running gateway (``gls submit``, ``jobs``, ``watch``, ``certify``, ...).

Where to connect comes from ``--url``/``--token`` (or ``GLS_URL``/``GLS_TOKEN``), else from the
``cluster.json`` that ``gls cluster up`` writes (``--cluster``). Exit codes: 0 success, 1 the
server refused the request or the watched job failed, 2 bad usage, 3 the watched job was cancelled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gls_core.cli.console import Reporter, epoch_line
from gls_core.cli.evaluate import MethodOption

if TYPE_CHECKING:  # imported when a verb runs: `gls --help` need not load torch and grpc
    from .client import GlsClient
    from .tls import ClientTLS

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

UrlOption = Annotated[str | None, typer.Option("--url", envvar="GLS_URL", help="gateway URL, e.g. http://host:8000")]
TokenOption = Annotated[str | None, typer.Option("--token", envvar="GLS_TOKEN", help="bearer token of your tenant")]
ClusterOption = Annotated[Path | None, typer.Option("--cluster", envvar="GLS_CLUSTER",
                                                    help="cluster.json of `gls cluster up` (or its directory)")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON")]


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    certifier_address: str | None
    tls: ClientTLS | None = None  # an https gateway (its Certifier then speaks TLS too)


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print("error:", message, style="red", markup=False, highlight=False)
    return typer.Exit(code)


def resolve(url: str | None, token: str | None, cluster: Path | None) -> Target:
    """Options and environment first, then cluster.json for whatever is still missing."""
    info: dict[str, Any] = {}
    if cluster is not None:
        path = cluster / "cluster.json" if cluster.is_dir() else cluster
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise _fail(f"cannot read {path}: {error}", 2) from None
    url = url or info.get("gateway_url")
    token = token or info.get("token")
    if not url or not token:
        raise _fail("say where the gateway is: --url and --token (or GLS_URL and GLS_TOKEN), or --cluster "
                    "cluster.json", 2)
    return Target(str(url), str(token), info.get("certifier_address"), client_tls(str(url)))


def client_tls(url: str) -> ClientTLS | None:
    """TLS settings from GLS_CA_FILE, GLS_CLIENT_CERT_FILE and GLS_CLIENT_KEY_FILE; None for a plain http gateway."""
    files = {name: os.environ.get(f"GLS_{name.upper()}") or None for name in ("ca_file", "client_cert_file",
                                                                            "client_key_file")}
    if not url.startswith("https://") and not any(files.values()):
        return None
    from .tls import ClientTLS, TLSConfigError

    try:
        tls = ClientTLS(*(Path(value) if value else None for value in files.values()))
    except TLSConfigError as error:
        raise _fail(str(error), 2) from None
    for setting, path in zip(("GLS_CA_FILE", "GLS_CLIENT_CERT_FILE", "GLS_CLIENT_KEY_FILE"),
                             (tls.ca_file, tls.cert_file, tls.key_file)):
        if path is not None and not path.is_file():
            raise _fail(f"{setting}={path}: no such file", 2)
    return tls


@contextmanager
def connect(url: str | None, token: str | None, cluster: Path | None) -> Iterator[GlsClient]:
    from .client import ClientError, GlsClient

    target = resolve(url, token, cluster)
    with GlsClient(target.url, target.token, tls=target.tls) as client:
        try:
            yield client
        except ClientError as error:
            raise _fail(str(error)) from None


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A table on a terminal; piped or redirected, plain aligned columns with every value whole (ids to copy)."""
    cells = [[" ".join(str("" if row.get(column) is None else row[column]).split()) for column in columns]
             for row in rows]
    if not out.is_terminal:
        widths = [max([len(column), *(len(line[index]) for line in cells)]) for index, column in enumerate(columns)]
        for line in [columns, *cells]:
            typer.echo("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip())
        return
    table = Table(title=title)
    for index, column in enumerate(columns):
        if column == "id":  # never cut: an id is for copying
            table.add_column(column, no_wrap=True, min_width=max([2, *(len(line[index]) for line in cells)]))
        else:
            table.add_column(column)
    for line in cells:
        table.add_row(*line)
    out.print(table)


# jobs ---------------------------------------------------------------------------------------------

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a field: key.path=value")]


def submit(config: Annotated[Path, typer.Argument(help="training config (YAML)")], overrides: SetOption = None,
           url: UrlOption = None, token: TokenOption = None, cluster: ClusterOption = None) -> None:
    """Submit a training job; prints its id."""
    with connect(url, token, cluster) as client:
        job = client.submit(config, overrides or [])
    console.print(f"submitted {job['id']} ({job['status']})")
    typer.echo(job["id"])


def jobs(url: UrlOption = None, token: TokenOption = None, cluster: ClusterOption = None,
         as_json: JsonOption = False) -> None:
    """List your jobs."""
    with connect(url, token, cluster) as client:
        rows = client.jobs()
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        row["progress"] = f"{row['step']}/{row['total_steps'] or '?'}{_in_step(row)}"
    _table("jobs", rows, ["id", "name", "status", "progress", "model_id", "error"])


def job(job_id: Annotated[str, typer.Argument(help="job id")], url: UrlOption = None, token: TokenOption = None,
        cluster: ClusterOption = None, as_json: JsonOption = False) -> None:
    """Show one job: status, progress and its latest metrics (the last step and the last evaluation)."""
    with connect(url, token, cluster) as client:
        current = client.job(job_id)
        rows = client.metrics(job_id)
    if as_json:
        _print_json(current)
        return
    step = next((row for row in reversed(rows) if row.get("kind") == "step"), None)
    evaluation = next((row for row in reversed(rows) if row.get("kind") == "epoch"), None)
    name = f" ({current['name']})" if current.get("name") else ""
    out.print(f"{job_id}{name}: {current['status']}, step {current['step']}/"
              f"{current['total_steps'] or '?'}{_in_step(current)}"
              + (f", error: {current['error']}" if current.get("error") else ""), markup=False, highlight=False)
    if step is not None:
        out.print(f"latest step {step['step']} ({step['stage']}, epoch {step['epoch']}): "
                  f"{_describe(step)} lr {step.get('lr')}", markup=False, highlight=False)
    if evaluation is not None:
        out.print(f"latest evaluation: {epoch_line(evaluation)}", markup=False, highlight=False)
    if step is None and evaluation is None:
        out.print("no metrics yet", markup=False)


def cancel(job_id: Annotated[str, typer.Argument(help="job id")], url: UrlOption = None, token: TokenOption = None,
           cluster: ClusterOption = None) -> None:
    """Cancel a job (a running one stops within seconds, abandoning the step in progress)."""
    with connect(url, token, cluster) as client:
        result = client.cancel(job_id)
    console.print(f"{job_id}: {result['status']}" + (" (cancel requested)" if result["cancel_requested"] else ""))


def _in_step(job: dict[str, Any]) -> str:
    """Progress within a long step, as the coordinator last wrote it (running jobs only)."""
    if job.get("status") != "running" or not _number(job.get("members")):
        return ""
    return f" (step {int(job['step']) + 1}: {job.get('members_done', 0)}/{job['members']} members)"


def _number(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _describe(row: dict[str, Any]) -> str:
    parts = [str(row["stage"])] if "stage" in row else []
    for key in ("loss", "eps"):
        if isinstance(row.get(key), int | float):
            parts.append(f"{key} {row[key]:.4f}")
    return " ".join(parts)


def watch(job_id: Annotated[str, typer.Argument(help="job id")], url: UrlOption = None, token: TokenOption = None,
          cluster: ClusterOption = None) -> None:
    """Follow a job's progress live until it finishes; exit 0 if it succeeded, 1 if it failed, 3 if cancelled.

    A bar on a terminal, plain lines (every GLS_LOG_EVERY_S seconds) otherwise; one line per evaluated epoch.
    """
    with connect(url, token, cluster) as client:
        current = client.job(job_id)
        final = current
        with Reporter(current.get("name") or job_id, current["total_steps"] or None,
                      completed=current["step"]) as bar:
            bar.update(status=current["status"])
            for event in client.events(job_id):
                kind = event.get("type")
                if kind == "end":
                    final = event.get("job", final)
                    break
                step = _number(event.get("step"))
                if kind == "status":
                    members = _number(event.get("members"))
                    within = f"members {event.get('members_done')}/{members} of the step" if members else None
                    bar.update(total=_number(event.get("total_steps")) or None,
                               status=str(event["status"]) if "status" in event else within)
                elif kind == "metrics" and event.get("kind") == "epoch":
                    bar.note(epoch_line(event))
                elif kind == "metrics":
                    bar.update(status=_describe(event))
                if step is not None:
                    bar.update(step)
    status = final.get("status")
    message = f"{job_id} {status}" + (f": {final['error']}" if final.get("error") else "")
    if status == "succeeded":
        console.print(message + (f" (model {final['model_id']})" if final.get("model_id") else ""))
        return
    console.print(message, style="red", markup=False, highlight=False)
    raise typer.Exit(3 if status == "cancelled" else 1)


def download(job_id: Annotated[str, typer.Argument(help="job id")],
             path: Annotated[Path, typer.Option("--out", help="where to write model.safetensors")],
             latest: Annotated[bool, typer.Option(help="the latest checkpoint if the job has not finished")] = False,
             url: UrlOption = None, token: TokenOption = None, cluster: ClusterOption = None) -> None:
    """Download a job's trained model."""
    with connect(url, token, cluster) as client:
        written = client.download_model(job_id, path, latest=latest)
    console.print(f"wrote {written.resolve()}", markup=False, highlight=False)


# certification --------------------------------------------------------------------------------------

def certify(model: Annotated[str, typer.Option("--model", help="model id (or the id of the job that trained it)")],
            data: Annotated[str, typer.Option("--data", help="built-in dataset whose test split is certified")],
            eps: Annotated[float, typer.Option(min=0.0, max=1.0, help="L_inf radius in [0, 1] pixel space")],
            method: MethodOption = "deeppoly",
            limit: Annotated[int, typer.Option(min=1, help="first N test images")] = 100,
            data_dir: Annotated[Path | None, typer.Option(help="dataset directory")] = None,
            use_grpc: Annotated[bool, typer.Option("--grpc", help="use the gRPC Certifier (streaming)")] = False,
            certifier: Annotated[str | None, typer.Option(envvar="GLS_CERTIFIER",
                                                          help="Certifier address host:port")] = None,
            chunk: Annotated[int, typer.Option(min=1, help="inputs per request / stream message")] = 500,
            url: UrlOption = None, token: TokenOption = None, cluster: ClusterOption = None,
            as_json: JsonOption = False) -> None:
    """Certify the first --limit test images of --data against a stored model (--json: fractions and verdicts)."""
    from gls_core.cli.console import percent
    from gls_core.data import load_dataset

    from .client import CertifierClient, ClientError, GlsClient

    target = resolve(url, token, cluster)
    try:
        test = load_dataset(data, "test", data_dir, subset=limit)
    except (FileNotFoundError, ValueError) as error:
        raise _fail(str(error), 2) from None
    verdicts: list[dict[str, Any]] = []
    address = certifier or target.certifier_address
    if use_grpc and not address:
        raise _fail("--grpc needs --certifier host:port (or GLS_CERTIFIER, or --cluster)", 2)
    try:
        with (GlsClient(target.url, target.token, tls=target.tls) as client,
              Reporter(f"certify {method} eps={eps:g}", len(test), unit="input") as bar):  # on stderr
            if model.startswith("job-"):
                model = client.job(model)["model_id"] or model
            if use_grpc:
                assert address is not None
                with CertifierClient(address, target.token, tls=target.tls) as grpc_client:
                    for verdict in grpc_client.certify_stream(test.x, test.y, eps, method, model_id=model,
                                                              chunk_size=chunk):
                        verdicts.append(verdict)
                        bar.update(len(verdicts))
            else:
                for start in range(0, len(test), chunk):
                    answer = client.certify(test.x[start:start + chunk], test.y[start:start + chunk], eps, method,
                                            model_id=model)
                    verdicts += [{**v, "index": v["index"] + start} for v in answer["verdicts"]]
                    bar.update(len(verdicts))
    except ClientError as error:
        raise _fail(str(error)) from None
    certified = sum(v["certified"] for v in verdicts)
    correct = sum(v["correct"] for v in verdicts)
    n = len(verdicts)
    summary = {"model": model, "data": data, "n": n, "eps": eps, "method": method,
               "natural_acc": correct / n, "certified_acc": certified / n}
    if as_json:
        _print_json({**summary, "verdicts": verdicts})
        return
    shown = {**summary, "natural_acc": percent(correct / n), "certified_acc": percent(certified / n)}
    _table(f"{model} on {n} {data} test images", [shown], ["n", "eps", "method", "natural_acc", "certified_acc"])


# datasets and models ----------------------------------------------------------------------------------

datasets_app = typer.Typer(help="Your datasets on the gateway (train on one with data.dataset: file and "
                                "data.dataset_id): upload, list, delete.", no_args_is_help=True)
models_app = typer.Typer(help="Your models on the gateway, uploaded or trained by your jobs: upload, list, download, "
                              "delete.", no_args_is_help=True)


@datasets_app.command("list")
def datasets_list(url: UrlOption = None, token: TokenOption = None, cluster: ClusterOption = None,
                  as_json: JsonOption = False) -> None:
    """List your uploaded datasets: id, name, size, input shape and classes."""
    with connect(url, token, cluster) as client:
        rows = client.datasets()
    if as_json:
        _print_json(rows)
        return
    _table("datasets", rows, ["id", "name", "n", "shape", "num_classes", "dtype"])


@datasets_app.command("upload")
def datasets_upload(path: Annotated[Path, typer.Argument(help=".npz or .safetensors holding x and y")],
                    name: Annotated[str | None, typer.Option(help="default: the file name")] = None,
                    num_classes: Annotated[int | None, typer.Option(help="default: largest label + 1")] = None,
                    url: UrlOption = None, token: TokenOption = None, cluster: ClusterOption = None) -> None:
    """Upload a dataset; prints its id (use it as data.dataset_id with data.dataset: file)."""
    with connect(url, token, cluster) as client:
        info = client.upload_dataset(path, name, num_classes)
    console.print(f"uploaded {info['name']}: {info['n']} examples of shape {info['shape']}, "
                  f"{info['num_classes']} classes")
    typer.echo(info["id"])


@datasets_app.command("delete")
def datasets_delete(dataset_id: Annotated[str, typer.Argument(help="dataset id (see `gls datasets list`)")],
                    url: UrlOption = None, token: TokenOption = None, cluster: ClusterOption = None) -> None:
    """Delete one of your uploaded datasets."""
    with connect(url, token, cluster) as client:
        client.delete_dataset(dataset_id)
    console.print(f"deleted {dataset_id}")


@models_app.command("list")
def models_list(url: UrlOption = None, token: TokenOption = None, cluster: ClusterOption = None,
                as_json: JsonOption = False) -> None:
    """List your models, uploaded or trained by your jobs: id, architecture, dataset, size and source."""
    with connect(url, token, cluster) as client:
        rows = client.models()
    if as_json:
        _print_json(rows)
        return
    _table("models", rows, ["id", "arch", "dataset", "num_params", "source"])


@models_app.command("upload")
def models_upload(path: Annotated[Path, typer.Argument(help="a GLS model.safetensors")],
                  url: UrlOption = None, token: TokenOption = None, cluster: ClusterOption = None) -> None:
    """Upload a model; prints its id (for certify --model, or model.checkpoint_id to train on from it)."""
    with connect(url, token, cluster) as client:
        info = client.upload_model(path)
    console.print(f"uploaded {info['arch']} for {info['dataset']} ({info['num_params']} parameters)")
    typer.echo(info["id"])


@models_app.command("download")
def models_download(model_id: Annotated[str, typer.Argument(help="model id (see `gls models list`)")],
                    path: Annotated[Path, typer.Option("--out", help="where to write it")],
                    url: UrlOption = None, token: TokenOption = None, cluster: ClusterOption = None) -> None:
    """Download a stored model as a GLS model.safetensors (for `gls evaluate` or `gls verify`)."""
    with connect(url, token, cluster) as client:
        written = client.download_stored_model(model_id, path)
    console.print(f"wrote {written.resolve()}", markup=False, highlight=False)


@models_app.command("delete")
def models_delete(model_id: Annotated[str, typer.Argument(help="model id (see `gls models list`)")],
                  url: UrlOption = None, token: TokenOption = None, cluster: ClusterOption = None) -> None:
    """Delete one of your stored models."""
    with connect(url, token, cluster) as client:
        client.delete_model(model_id)
    console.print(f"deleted {model_id}")


def job_curves(job_id: str) -> bytes:
    """A job's curves for `gls plot JOB`, from the gateway named by GLS_URL/GLS_TOKEN or GLS_CLUSTER."""
    import os

    cluster = os.environ.get("GLS_CLUSTER")
    with connect(os.environ.get("GLS_URL"), os.environ.get("GLS_TOKEN"), Path(cluster) if cluster else None) as client:
        return client.curves(job_id)


def register(app: typer.Typer) -> None:
    """Add the client verbs to the `gls` app."""
    from gls_core.cli.plot import JOB_CURVES

    if job_curves not in JOB_CURVES:
        JOB_CURVES.append(job_curves)
    for command in (submit, jobs, job, cancel, watch, download, certify):
        app.command()(command)
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(models_app, name="models")
