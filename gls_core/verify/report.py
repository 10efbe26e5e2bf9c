"""Summaries of many verdicts: counts, time per input and search throughput."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .bab import Verdict


def summarize(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """``n``, ``verified``, ``falsified``, ``unknown``, seconds per input (median, p95) and subdomains per second."""
    seconds = torch.tensor([v.seconds for v in verdicts], dtype=torch.float64)
    subdomains = sum(v.subdomains for v in verdicts)
    total = float(seconds.sum()) if verdicts else 0.0
    return {
        "n": len(verdicts),
        "verified": sum(v.status == "verified" for v in verdicts),
        "falsified": sum(v.status == "falsified" for v in verdicts),
        "unknown": sum(v.status == "unknown" for v in verdicts),
        "seconds_median": round(float(seconds.median()), 4) if verdicts else 0.0,
        "seconds_p95": round(float(torch.quantile(seconds, 0.95)), 4) if verdicts else 0.0,
        "seconds_total": round(total, 3),
        "subdomains": subdomains,
        "subdomains_per_second": round(subdomains / total, 1) if total > 0 else 0.0,
    }
