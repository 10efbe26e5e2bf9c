"""Complete verification by branch and bound on batched subdomains, with exact MILP leaves."""

from .bab import Verdict, VerifyOptions, verify, verify_cases, verify_each, verify_property
from .property import Property, robustness
from .report import summarize

__all__ = ["Property", "Verdict", "VerifyOptions", "robustness", "summarize", "verify", "verify_cases", "verify_each",
           "verify_property"]
