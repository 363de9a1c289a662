"""The public API: `bound` (one method) and `compare` (many), their `Bound` and `Report` results."""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .errors import LipboundError, MethodFailed, Unsupported
from .network import Network
from .norms import INF, norm_name, parse_norm
from .registry import MethodContext, MethodResult, Region, get_method, load_methods, route_options

VALID_STATUSES = ("ok", "time_limit")


@dataclass
class Bound:
    """One method's answer.

    value   -- the bound (None when the method could not run);
    kind    -- 'upper' (certified), 'lower' (certified, with ``witness``), 'exact', or 'estimate';
    status  -- 'ok', 'time_limit' (best value so far, still valid for its kind), 'failed', 'unsupported';
    lower   -- a certified lower bound the same run also found (e.g. a MIP incumbent), witness in
               details['lower_witness'];
    reason  -- why a method is unsupported or failed."""

    value: float | None
    kind: str
    method: str
    norm: str
    region: dict | None
    time_s: float
    status: str
    witness: np.ndarray | None = None
    details: dict = field(default_factory=dict)
    lower: float | None = None
    output: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in VALID_STATUSES and self.value is not None and math.isfinite(self.value)

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "kind": self.kind,
            "value": _json_float(self.value),
            "time_s": round(self.time_s, 6),
            "status": self.status,
            "witness": None if self.witness is None else np.asarray(self.witness).ravel().tolist(),
            "details": _jsonable(self.details),
            "lower": _json_float(self.lower),
            "output": self.output,
            "reason": self.reason,
        }

    def __str__(self):
        v = "—" if self.value is None else f"{self.value:.6g}"
        return f"{self.method}: {self.kind} {v} ({self.status}, {self.time_s:.2f} s)"


def _json_float(v):
    if v is None:
        return None
    v = float(v)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist()) if obj.size <= 10_000 else f"<array {obj.shape}>"
    if isinstance(obj, (np.floating, float)):
        return _json_float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if hasattr(obj, "detach"):  # torch tensor
        return _jsonable(obj.detach().cpu().numpy())
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def interval_gap(lower: float | None, upper: float | None) -> float | None:
    """upper / lower of a certified interval (inf when the lower end is 0 and the upper is not; 1 when both
    are 0; None when an end is missing)."""
    if lower is None or upper is None:
        return None
    if lower <= 0:
        return INF if upper > 0 else 1.0
    return upper / lower


@dataclass
class Report:
    """Results of several methods on one network / norm / region."""

    results: list[Bound]
    network: dict
    norm: str
    region: dict | None
    output: int | None = None

    @property
    def best_lower(self) -> float | None:
        vals = []
        for b in self.results:
            if b.status in VALID_STATUSES:
                if b.kind in ("lower", "exact") and b.value is not None:
                    vals.append(b.value)
                if b.lower is not None:
                    vals.append(b.lower)
        return max(vals) if vals else None

    @property
    def best_upper(self) -> float | None:
        vals = [b.value for b in self.results if b.ok and b.kind in ("upper", "exact")]
        return min(vals) if vals else None

    @property
    def gap(self) -> float | None:
        return interval_gap(self.best_lower, self.best_upper)

    def __getitem__(self, method: str) -> Bound:
        for b in self.results:
            if b.method == method:
                return b
        raise KeyError(method)

    def table(self) -> str:
        rows = [("method", "kind", "value", "time (s)", "status", "note")]
        for b in self.results:
            note = b.reason or ""
            if b.lower is not None:
                note = (f"lower {b.lower:.6g}; " + note).strip("; ")
            rows.append((b.method, b.kind, "—" if b.value is None else f"{b.value:.6g}", f"{b.time_s:.2f}",
                         b.status, note[:90]))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lo, up, gap = self.best_lower, self.best_upper, self.gap
        region = "global" if self.region is None else f"box eps={self.region.get('eps')}"
        out = f" output {self.output}" if self.output is not None else ""
        lines.append("")
        lines.append(f"norm {self.norm}{out}, {region}: best lower {_fmt(lo)}, best upper {_fmt(up)}, gap {_fmt(gap)}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "network": _jsonable(self.network),
            "norm": self.norm,
            "region": _jsonable(self.region),
            "output": self.output,
            "results": [b.to_json() for b in self.results],
            "best_lower": _json_float(self.best_lower),
            "best_upper": _json_float(self.best_upper),
            "gap": _json_float(self.gap),
        }

    def plot(self, path: str) -> str:
        """Bar/marker chart of every method's value on a log scale; the certified interval shaded."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = [b for b in self.results if b.ok and b.value > 0]
        fig, ax = plt.subplots(figsize=(10, 0.45 * max(4, len(shown)) + 1.2))
        colors = {"upper": "tab:red", "lower": "tab:blue", "exact": "tab:green", "estimate": "tab:gray"}
        markers = {"upper": "v", "lower": "^", "exact": "D", "estimate": "o"}
        lo, up = self.best_lower, self.best_upper
        if lo is not None and up is not None and lo > 0:
            ax.axvspan(lo, up, color="tab:green", alpha=0.15, label="certified interval")
        for i, b in enumerate(shown):
            ax.hlines(i, min(x.value for x in shown) / 2, b.value, color=colors[b.kind], alpha=0.35, lw=6)
            ax.plot([b.value], [i], markers[b.kind], color=colors[b.kind], ms=9)
        ax.set_yticks(range(len(shown)))
        ax.set_yticklabels([f"{b.method} ({b.kind})" for b in shown])
        ax.set_xscale("log")
        ax.set_xlabel(f"Lipschitz constant bound (norm {self.norm})")
        name = self.network.get("name", "network")
        region = "global" if self.region is None else f"box eps={self.region.get('eps')}"
        ax.set_title(f"{name}, norm {self.norm}, {region}")
        for kind in ("upper", "lower", "exact", "estimate"):
            ax.plot([], [], markers[kind], color=colors[kind], label=kind)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _fmt(v):
    return "—" if v is None else f"{v:.6g}"


def _as_network(net) -> Network:
    if isinstance(net, Network):
        return net
    if isinstance(net, str) or hasattr(net, "__fspath__"):
        from .io import load

        return load(net)
    raise LipboundError("expected a lipbound Network or a path to an .onnx file (use lipbound.from_torch for modules)")


def _as_region(net: Network, region=None, center=None, eps=None, domain=None) -> Region | None:
    if region is None and center is not None:
        if eps is None:
            raise LipboundError("a box region needs eps along with the center")
        center = np.asarray(center, dtype=np.float64)
        if center.size != net.n_inputs:
            raise LipboundError(f"the center has {center.size} values (shape {center.shape}) but the network input "
                                f"{net.input_shape} has {net.n_inputs}")
        region = Region.box(center.reshape(net.input_shape), eps, domain)
    elif region is None and eps is not None:
        raise LipboundError("eps given without a center")
    if region is not None:
        region = region.fit(net)
    return region


def bound(net, method: str, norm=2, region: Region | None = None, time_limit: float | None = None, *,
          output: int | None = None, center=None, eps: float | None = None, domain=None, quiet: bool = True,
          seed: int = 0, shared: dict | None = None, **options) -> Bound:
    """Run one registered method and return its `Bound` (never raises for an unsupported request:
    the Bound has status 'unsupported' and a reason). ``options`` are the method's declared options
    (`lipbound.methods()`: 'option_specs'), validated before the method runs. Bad input (unknown method,
    bad shapes, an option the method does not declare or a value it does not allow) raises `LipboundError`.
    ``shared``: the blackboard of a run of several methods (`MethodContext.shared`: best bounds so far, the
    best witness, cached pre-activation bounds), read and written by the method; `certify` passes one."""
    net = _as_network(net)
    spec = get_method(method)
    p = parse_norm(norm)
    region = _as_region(net, region, center, eps, domain)
    if output is not None:
        if not (isinstance(output, (int, np.integer)) and 0 <= int(output) < net.n_outputs):
            raise LipboundError(f"output {output} is out of range: the network has {net.n_outputs} outputs")
        output = int(output)
    options = spec.validate_options(options)  # unknown option / bad value: LipboundError before running
    region_json = None if region is None else region.to_json()
    t0 = time.perf_counter()
    reason = spec.unsupported_reason(net, p, region)
    if reason is not None:
        return Bound(None, spec.kind, method, norm_name(p), region_json, 0.0, "unsupported", details={}, output=output,
                     reason=reason)
    ctx = MethodContext(norm=p, region=region, output=output, time_limit=time_limit, options=dict(options),
                        quiet=quiet, seed=seed, start=t0, method=method,
                        shared=shared if shared is not None else {})
    try:
        res: MethodResult = spec.func(net, ctx)
    except Unsupported as e:
        return Bound(None, spec.kind, method, norm_name(p), region_json, time.perf_counter() - t0, "unsupported",
                     output=output, reason=str(e))
    except MethodFailed as e:
        return Bound(None, spec.kind, method, norm_name(p), region_json, time.perf_counter() - t0, "failed",
                     output=output, reason=str(e))
    except LipboundError:
        raise
    except (MemoryError, np.linalg.LinAlgError, ArithmeticError, RuntimeError) as e:
        return Bound(None, spec.kind, method, norm_name(p), region_json, time.perf_counter() - t0, "failed",
                     output=output, reason=f"{type(e).__name__}: {e}".splitlines()[0],
                     details={"traceback": traceback.format_exc(limit=3)})
    elapsed = time.perf_counter() - t0
    kind = res.kind or spec.kind
    details = dict(res.details)
    if res.lower_witness is not None:
        details["lower_witness"] = np.asarray(res.lower_witness).ravel()
    value = None if res.value is None else float(res.value)
    status = res.status
    if value is not None and not math.isfinite(value) and status == "ok" and kind != "upper":
        status = "failed"
    return Bound(value, kind, method, norm_name(p), region_json, elapsed, status,
                 None if res.witness is None else np.asarray(res.witness, dtype=np.float64),
                 details, None if res.lower is None else float(res.lower), output, res.reason)


def methods(net: Network | None = None, norm=None, region: Region | None = None) -> list[dict]:
    """The registry as a list of dicts (name, kind, norms, regions, description, ...); with a network
    (and norm/region), only the methods that support it."""
    reg = load_methods()
    out = []
    for name in sorted(reg, key=lambda n: (reg[n].family, n)):
        spec = reg[name]
        if net is not None and spec.unsupported_reason(net, norm if norm is not None else spec.norms[0], region):
            continue
        out.append(spec.to_json())
    return out


def compare(net, methods: Iterable[str] | None = None, norm=2, region: Region | None = None,
            time_limit: float | None = None, *, output: int | None = None, center=None, eps: float | None = None,
            domain=None, quiet: bool = True, seed: int = 0, options: dict | None = None) -> Report:
    """Run several methods (default: every method registered for compare that supports the network,
    norm and region) each with ``time_limit`` seconds, and collect a `Report`. ``options`` maps a method
    name to its option dict, or an option name to a value for every method run that declares it; all of
    them are validated before any method runs (`registry.route_options`: an option no method run declares,
    options of a method not run, or a bad value raise `LipboundError`)."""
    net = _as_network(net)
    reg = load_methods()
    p = parse_norm(norm)
    region = _as_region(net, region, center, eps, domain)
    if methods is None:
        names = [n for n in sorted(reg, key=lambda n: (reg[n].family, n))
                 if reg[n].in_compare and reg[n].unsupported_reason(net, p, region) is None]
    else:
        names = list(methods)
        for n in names:
            get_method(n)
    per_method = route_options(names, options)
    results = []
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(names, desc="compare", leave=False, dynamic_ncols=True)
    for n in names:
        if bar is not None:
            bar.set_description(n)
        results.append(bound(net, n, p, region, time_limit, output=output, quiet=quiet, seed=seed,
                             **per_method[n]))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return Report(results, net.summary(), norm_name(p), None if region is None else region.to_json(), output)


@dataclass
class UnionReport:
    """`compare` on a union of boxes (a VNN-LIB disjunction), box by box: one `Report` per box.

    ``best_lower`` = the max over the boxes of their best lower bounds, ``best_upper`` = the max of their
    best upper bounds (None unless every box has one): a certified interval on the largest local Lipschitz
    constant over the boxes (the sup of the Jacobian norm over the union; the constant for pairs of points
    in one box). It is a lower bound on the constant of f over the union as a whole, not an upper one."""

    reports: list[Report]
    network: dict
    norm: str
    output: int | None = None

    @property
    def results(self) -> list[Bound]:
        return [b for r in self.reports for b in r.results]

    @property
    def region(self) -> dict:
        return {"type": "union", "n_boxes": len(self.reports), "boxes": [r.region for r in self.reports]}

    @property
    def best_lower(self) -> float | None:
        vals = [r.best_lower for r in self.reports if r.best_lower is not None]
        return max(vals) if vals else None

    @property
    def best_upper(self) -> float | None:
        vals = [r.best_upper for r in self.reports]
        return max(vals) if vals and all(v is not None for v in vals) else None

    @property
    def gap(self) -> float | None:
        return interval_gap(self.best_lower, self.best_upper)

    def table(self) -> str:
        parts = [f"box {i} of {len(self.reports)}:\n{r.table()}" for i, r in enumerate(self.reports)]
        parts.append(f"union of {len(self.reports)} boxes (max over the boxes): best lower {_fmt(self.best_lower)}, "
                     f"best upper {_fmt(self.best_upper)}, gap {_fmt(self.gap)}")
        return "\n\n".join(parts)

    def to_json(self) -> dict:
        """The keys of `Report.to_json` (results flattened, each with its "box" index; region of type
        "union"), and "boxes": each box's own report."""
        results = []
        for i, r in enumerate(self.reports):
            for b in r.results:
                results.append({**b.to_json(), "box": i})
        return {"network": _jsonable(self.network), "norm": self.norm, "region": _jsonable(self.region),
                "output": self.output, "results": results, "best_lower": _json_float(self.best_lower),
                "best_upper": _json_float(self.best_upper), "gap": _json_float(self.gap),
                "boxes": [r.to_json() for r in self.reports]}

    def plot(self, path: str) -> str:
        """The comparison plot with every box's results (method names suffixed with the box)."""
        import dataclasses

        renamed = [dataclasses.replace(b, method=f"{b.method} [box {i}]")
                   for i, r in enumerate(self.reports) for b in r.results]
        merged = _FixedEnds(renamed, self.network, self.norm, self.region, self.output)
        merged.ends = (self.best_lower, self.best_upper)  # the union's interval is shaded, not min / max of all
        return merged.plot(path)


class _FixedEnds(Report):
    """A `Report` whose best_lower / best_upper are given (``ends``), for plotting a union."""

    ends: tuple = (None, None)

    @property
    def best_lower(self):
        return self.ends[0]

    @property
    def best_upper(self):
        return self.ends[1]


def compare_boxes(net, regions: list, methods: Iterable[str] | None = None, norm=2, time_limit: float | None = None,
                  *, output: int | None = None, quiet: bool = True, seed: int = 0,
                  options: dict | None = None) -> UnionReport:
    """`compare` on each box of ``regions`` (a list of `Region`, e.g. from `lipbound.vnnlib.read_vnnlib`), each
    method with ``time_limit`` seconds per box; see `UnionReport` for what the union's interval means."""
    net = _as_network(net)
    if not regions:
        raise LipboundError("the list of regions is empty")
    reports = [compare(net, methods, norm, r, time_limit, output=output, quiet=quiet, seed=seed, options=options)
               for r in regions]
    return UnionReport(reports, net.summary(), reports[0].norm, output)
