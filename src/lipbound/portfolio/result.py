"""The answer of `certify`: the certified interval, where each end comes from, how it tightened over time.

`Interval` tracks the best certified ends of one problem as method results arrive (`Interval.offer`): an
end moves only on a certified result (kind upper, lower or exact with status ok or time_limit), every
move is recorded in the timeline with the method that made it. `CertifyResult` is what the user gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..api import VALID_STATUSES, Bound, Report, _fmt, _json_float, _jsonable, interval_gap

#: relative tolerance of "the certificates meet" (exact)
MEET_RTOL = 1e-9


def certified_ends(b: Bound) -> tuple:
    """(lower, lower witness, upper) that the result ``b`` certifies, None where it certifies nothing.

    upper: the value of an ``upper`` result, or of an ``exact`` one (the larger of its value and the upper
    bound in its details, e.g. mip's dual bound: its 'exact' allows a 1e-5 relative tolerance);
    lower: the ``lower`` field of any result (a certified value found on the way, e.g. a MIP incumbent or
    enumerate's autograd re-evaluation; witness in details['lower_witness']), else the value of a ``lower``
    or ``exact`` result (witness ``b.witness``). Estimates, failed and unsupported results certify nothing."""
    if b.status not in VALID_STATUSES:
        return None, None, None
    details = b.details if isinstance(b.details, dict) else {}
    value = b.value if b.value is not None and not math.isnan(b.value) else None
    upper = None
    if value is not None and b.kind in ("upper", "exact") and 0 <= value < math.inf:
        extra = details.get("upper") if b.kind == "exact" else None
        upper = max(value, float(extra)) if isinstance(extra, (int, float)) and math.isfinite(extra) else value
    lower, witness = None, None
    if b.lower is not None and math.isfinite(b.lower):
        lower = b.lower
        witness = details.get("lower_witness", b.witness if b.kind in ("lower", "exact") else None)
    elif value is not None and b.kind in ("lower", "exact") and math.isfinite(value):
        lower, witness = value, b.witness
    return lower, witness, upper


@dataclass
class Interval:
    """The best certified ends of one problem and the timeline of their moves."""

    t0: float
    lower: float | None = None
    upper: float | None = None
    lower_method: str | None = None
    upper_method: str | None = None
    witness: np.ndarray | None = None
    exact_method: str | None = None
    timeline: list = field(default_factory=list)

    def offer(self, b: Bound, now: float, input_shape=None) -> bool:
        """Take the certified ends of ``b``; True when an end moved (then a timeline entry is added)."""
        lo, w, up = certified_ends(b)
        moved = False
        if lo is not None and (self.lower is None or lo > self.lower):
            self.lower, self.lower_method, moved = lo, b.method, True
            self.witness = None if w is None else np.asarray(w, dtype=np.float64).reshape(input_shape or (-1,))
        if up is not None and (self.upper is None or up < self.upper):
            self.upper, self.upper_method, moved = up, b.method, True
        if b.kind == "exact" and b.status == "ok" and self.exact_method is None:
            self.exact_method, moved = b.method, True
        if moved:
            self.timeline.append({"t": round(now - self.t0, 6), "lower": self.lower, "upper": self.upper,
                                  "method": b.method})
        return moved

    @property
    def gap(self) -> float | None:
        return gap_of(self.lower, self.upper)

    @property
    def exact(self) -> bool:
        return self.exact_method is not None or meets(self.lower, self.upper)


def region_text(region: dict | None) -> str:
    """'global', 'box eps=E' or 'box' (a box given by its bounds)."""
    if region is None:
        return "global"
    return f"box eps={region['eps']:g}" if region.get("eps") is not None else "box"


gap_of = interval_gap  # the one definition of the gap, in lipbound.api


def meets(lower, upper) -> bool:
    """The certificates meet: |upper - lower| <= MEET_RTOL x max(|upper|, |lower|) (both present)."""
    if lower is None or upper is None:
        return False
    return abs(upper - lower) <= MEET_RTOL * max(abs(upper), abs(lower), 1e-300)


@dataclass
class CertifyResult:
    """The best certified interval on the Lipschitz constant found by `certify` in its budget.

    lower / upper     -- the best certified lower and upper bounds (None if no method gave one) and the
                         methods that set them (``lower_method``, ``upper_method``); ``witness``: the
                         input at which the lower bound is attained (a Jacobian norm there), input shape;
    gap               -- upper / lower;
    exact             -- True only when the two certificates meet (|upper - lower| <= 1e-9 relative) or a
                         method proved the value (kind 'exact', status 'ok'); ``value`` is then the exact
                         value (else None);
    status            -- 'target_gap' (gap <= target_gap), 'exhausted' (every planned method finished) or
                         'time_limit' (the budget ended first, or a method was cut by its share of it);
    time_s            -- wall time; ``timeline``: every tightening (t, lower, upper, method);
    results           -- every method's own `Bound` record; ``plan``: the `Plan` (chosen, skipped, why);
    boxes             -- for a union of boxes, the result of each box (else empty)."""

    lower: float | None
    upper: float | None
    lower_method: str | None
    upper_method: str | None
    witness: np.ndarray | None
    exact: bool
    value: float | None
    status: str
    time_s: float
    timeline: list
    results: list
    plan: object
    network: dict
    norm: str
    region: dict | None
    output: int | None
    target_gap: float
    time_limit: float
    boxes: list = field(default_factory=list)

    @property
    def gap(self) -> float | None:
        return gap_of(self.lower, self.upper)

    # Report-compatible names (the keys of `bound`'s JSON)
    @property
    def best_lower(self) -> float | None:
        return self.lower

    @property
    def best_upper(self) -> float | None:
        return self.upper

    def report(self) -> Report:
        """The method results as a `Report` (its table and plot)."""
        return Report(list(self.results), self.network, self.norm, self.region, self.output)

    def summary(self) -> str:
        """Three lines: the interval and gap, the method of each end (with the witness), status and time."""
        where = "global" if self.region is None else (
            f"union of {len(self.boxes)} boxes" if self.boxes else region_text(self.region))
        out = f", output {self.output}" if self.output is not None else ""
        if self.exact:
            head = f"Lipschitz constant = {_fmt(self.value)} (exact: "
            head += f"{self.lower_method} meets {self.upper_method})" if self.lower_method != self.upper_method \
                else f"{self.upper_method})"
        else:
            head = f"Lipschitz constant in [{_fmt(self.lower)}, {_fmt(self.upper)}], gap {_fmt(self.gap)}"
        lines = [f"{head}  (norm {self.norm}{out}, {where})",
                 f"  lower {_fmt(self.lower)} from {self.lower_method or '—'}"
                 f"{' (witness input in the JSON)' if self.witness is not None else ''}; "
                 f"upper {_fmt(self.upper)} from {self.upper_method or '—'}",
                 f"  status {self.status} (target gap {self.target_gap:g}, budget {self.time_limit:g} s), "
                 f"{self.time_s:.2f} s; {self.plan.summary() if self.plan is not None else ''}"]
        return "\n".join(lines)

    def table(self) -> str:
        return self.report().table()

    def to_json(self) -> dict:
        """The keys of `bound`'s JSON (network, norm, region, output, results, best_lower, best_upper, gap)
        and time_s, status, exact, value, lower_method, upper_method, witness (flattened), timeline, plan,
        target_gap, time_limit, and boxes (a union: one such object per box)."""
        js = self.report().to_json()
        js.update(best_lower=_json_float(self.lower), best_upper=_json_float(self.upper),
                  gap=_json_float(self.gap))
        if self.boxes:
            for i, box in enumerate(self.boxes):
                for r, b in zip(js["results"][sum(len(x.results) for x in self.boxes[:i]):], box.results):
                    r["box"] = i
        js.update(time_s=round(self.time_s, 6), status=self.status, exact=self.exact,
                  value=_json_float(self.value), lower_method=self.lower_method, upper_method=self.upper_method,
                  witness=None if self.witness is None else np.asarray(self.witness).ravel().tolist(),
                  timeline=[{k: (_json_float(v) if k in ("lower", "upper") else v) for k, v in e.items()}
                            for e in self.timeline],
                  plan=_jsonable(self.plan.to_json()) if self.plan is not None else None,
                  target_gap=_json_float(self.target_gap), time_limit=_json_float(self.time_limit))
        if self.boxes:
            js["boxes"] = [b.to_json() for b in self.boxes]
        return js

    def plot(self, path: str) -> str:
        """The interval against time: lower and upper as step curves on a log scale, each step labelled
        with the method that made it."""
        from .plot import plot_timeline

        return plot_timeline(self, path)
