"""The cluster demo: start the local topology, train through REST, certify through gRPC, print a table.

    python -m services.demo [--workers 2] [--run-dir gls-demo] [--images 200]

1. `gls cluster up` as processes: redis-server, gateway, coordinator, bound workers.
2. POST /v1/jobs with configs/demo-mnist-cnn3tiny-dp-pgpe.yaml (DeepPoly-PGPE on real MNIST).
3. Follow the job's server-sent events with a progress bar.
4. Certify MNIST test images with the trained model through the public gRPC Certifier.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gls_core.data import load_dataset
from gls_core.relaxations import ALPHA_CROWN, CROWN_IBP, DEEPPOLY, IBP

from .client import CertifierClient, GlsClient
from .cluster import up

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo-mnist-cnn3tiny-dp-pgpe.yaml"


def watch(client: GlsClient, job_id: str, console: Console) -> dict:
    """Progress from the job's event stream until it ends; returns the final job."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(job_id, total=None, status="queued")
        for event in client.events(job_id):
            if event.get("type") == "metrics" and event.get("kind") == "step":
                bar.update(task, completed=event["step"],
                           status=f"{event['stage']} loss {event['loss']:.3f} eps {event['eps']:.3f}")
            elif event.get("type") == "metrics" and event.get("kind") == "epoch":
                console.print(f"  {event['stage']:>7} epoch {event['epoch']}: natural {event['natural_acc']:.1%}, "
                              f"PGD {event['adversarial_acc']:.1%}, DeepPoly-certified {event['certified_acc']:.1%}")
            elif event.get("type") == "status":  # the coordinator announces total_steps when it starts the job
                if str(event.get("total_steps", "0")).isdigit() and int(event.get("total_steps", 0)):
                    bar.update(task, total=int(event["total_steps"]))
                if "status" in event:
                    bar.update(task, status=str(event["status"]))
    return client.job(job_id)


def main() -> None:
    parser = argparse.ArgumentParser(description="GLS cluster demo")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run-dir", type=Path, default=Path("gls-demo"))
    parser.add_argument("--images", type=int, default=200, help="MNIST test images to certify")
    parser.add_argument("--eps", type=float, default=0.1)
    args = parser.parse_args()
    console = Console()
    test = load_dataset("mnist", "test", subset=args.images)  # fail early when MNIST is missing

    console.print(f"[bold]1.[/bold] starting the local cluster ({args.workers} bound workers) in {args.run_dir}")
    cluster = up(args.run_dir, workers=args.workers)
    try:
        console.print(f"   gateway {cluster.gateway_url}, certifier {cluster.certifier_address}")
        with GlsClient(cluster.gateway_url, cluster.token) as client:
            console.print(f"[bold]2.[/bold] POST /v1/jobs  {CONFIG.relative_to(ROOT)}")
            job = client.submit(CONFIG)
            console.print(f"[bold]3.[/bold] watching {job['id']} (server-sent events)")
            final = watch(client, job["id"], console)
            if final["status"] != "succeeded":
                raise SystemExit(f"job {job['id']} ended {final['status']}: {final.get('error')}")
            rows = [row for row in client.metrics(job["id"]) if row["kind"] == "epoch"]
        console.print(f"[bold]4.[/bold] certifying {len(test)} MNIST test images via gRPC Certifier (eps {args.eps})")
        table = Table(title=f"model {final['model_id']} on {len(test)} MNIST test images, eps = {args.eps}")
        for column in ("relaxation", "correct", "certified", "certified %"):
            table.add_column(column, justify="right")
        with CertifierClient(cluster.certifier_address, cluster.token) as certifier:
            for method in (IBP, CROWN_IBP, DEEPPOLY, ALPHA_CROWN):
                result = certifier.certify(test.x, test.y, args.eps, method, model_id=final["model_id"])
                correct = sum(verdict["correct"] for verdict in result["verdicts"])
                table.add_row(method, str(correct), str(result["certified"]),
                              f"{100 * result['certified'] / result['total']:.1f}%")
        console.print(table)
        start, end = rows[0], rows[-1]
        console.print(f"training: DeepPoly-certified {start['certified_acc']:.1%} at start, "
                      f"{rows[-2]['certified_acc']:.1%} after the PGD warm-up, {end['certified_acc']:.1%} after PGPE "
                      f"(first {end['n']} test images)")
    finally:
        console.print("stopping the cluster")
        cluster.stop()


if __name__ == "__main__":
    main()
