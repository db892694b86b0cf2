"""What a check found: per regime, whether the loss reached the claimed optimum, how far it is, and the tolerance.

``Report.ok`` is false iff some regime *missed* its claim or *errored*. Regimes where the named optimum makes no
claim, or claims only a limit (no finite minimiser), are reported — where the loss went — and never count as
failures. ``str(report)`` is the table (and, for each failure, the small problem that reproduces it);
``report.to_dict()`` is the same as JSON-ready data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mdpalign.testing.regimes import Problem

__all__ = ["RegimeResult", "Report", "STATUSES", "FAILING"]

#: reached: certified within tolerance of the claim; missed: certified (or stuck) away from it; limit: the claim is
#: a limit without a finite minimiser (reported); no claim: the optimum says nothing about this regime (reported);
#: landed: no ``expect`` given, a certified stationary point found; diverges: no ``expect``, no certified stationary
#: point (the logits diverge; the infimum is not attained); error: the loss failed (NaN, exception) during the fit
STATUSES = ("reached", "missed", "limit", "no claim", "landed", "diverges", "error")
FAILING = ("missed", "error")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2e}"


@dataclass
class RegimeResult:
    regime: str
    status: str
    claim: str
    distance: float | None
    tolerance: float | None
    attained: bool | None
    grad_norm: float | None
    loss: float | None
    detail: str
    problem: Problem
    seconds: float = 0.0
    policy: np.ndarray | None = None
    nearest: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    def to_dict(self) -> dict:
        return {
            "regime": self.regime, "status": self.status, "claim": self.claim, "distance": self.distance,
            "tolerance": self.tolerance, "attained": self.attained, "grad_norm": self.grad_norm, "loss": self.loss,
            "detail": self.detail, "seconds": round(self.seconds, 3),
            "landed_policy": None if self.policy is None else np.asarray(self.policy).round(12).tolist(),
            "distance_to": {k: v for k, v in self.nearest.items()},
            "problem": self.problem.describe() if self.failed else None,
        }


@dataclass
class Report:
    kind: str
    loss: str
    expect: str
    beta: float | None
    results: list[RegimeResult]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(r.failed for r in self.results)

    def __bool__(self) -> bool:
        return self.ok

    def result(self, regime: str) -> RegimeResult:
        for r in self.results:
            if r.regime == regime:
                return r
        raise KeyError(regime)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "loss": self.loss, "expect": self.expect, "beta": self.beta, "ok": self.ok,
                "seconds": round(self.seconds, 3), "regimes": [r.to_dict() for r in self.results]}

    def table(self) -> str:
        head = ("regime", "status", "distance", "tolerance", "attained", "claim")
        rows = [head] + [(r.regime, r.status, _fmt(r.distance), _fmt(r.tolerance),
                          "-" if r.attained is None else ("yes" if r.attained else "no"), r.claim)
                         for r in self.results]
        w = [max(len(row[k]) for row in rows) for k in range(len(head) - 1)]
        return "\n".join("  ".join(c.ljust(w[k]) for k, c in enumerate(row[:-1])) + "  " + row[-1] for row in rows)

    def __str__(self) -> str:
        beta = "" if self.beta is None else f", beta {self.beta:g}"
        verdict = "OK" if self.ok else "FAILED"
        out = [f"{verdict}: {self.kind} loss {self.loss}, expect {self.expect}{beta} ({self.seconds:.1f} s)",
               self.table()]
        for r in self.results:
            out.append(f"- {r.regime}: {r.detail}")
            if r.nearest:
                out.append("    distance to " + ", ".join(f"{k} {v:.2e}" for k, v in r.nearest.items()))
            if r.failed:
                body = "\n".join("    " + line for line in r.problem.describe().splitlines())
                out.append("    reproduce with:\n" + body)
        return "\n".join(out)

    __repr__ = __str__

    def failures(self) -> list[RegimeResult]:
        return [r for r in self.results if r.failed]

    def summary(self) -> dict[str, Any]:
        return {r.regime: (r.status, r.distance, r.tolerance) for r in self.results}
