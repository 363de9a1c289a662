"""Compare the benchmark JSON of two result folders (before / after a refactor).

    python benchmarks/compare_before_after.py benchmarks/results/before benchmarks/results/after \
        [--repeat benchmarks/results/before_repeat] [--json benchmarks/results/comparison.json] [--flagged-only] \
        [--tol-det 1e-6] [--tol-var 1e-3]

Every ``*.json`` of the before folder is matched with the file of the same name in the after folder
(foundation, l2_sdp_family*, autolip_seqlip, lipopt, local_lipschitz, local_l2, exact_mip).  Rows are
matched by (script, case, method), where the case is the network plus the norm / eps / region / output
of the row, and the method the bound method (with its variant: mip bounds mode, lipopt degree ...).

Tolerances on the relative change |after - before| / |before|:
  * deterministic methods (closed forms, LPs, SDP solvers run to completion, training with a seed): 1e-6
  * variable methods: 1e-3, where
      - "sampled":  lower-sample / lower-grad / sampled maxima (seeded, but sensitive to floating-point order)
      - "anytime":  crown-bab, lipsdp-opt, mip, enumerate (anytime / branch and bound with a time limit)
      - "TL":       any method whose status is time_limit in either run (stopped by the clock: its value
                    depends on the machine load and legitimately varies, sometimes by more than 1e-3)
A status change (ok <-> time_limit / unsupported / failed), a value present on one side only, or a row
or file missing on one side is flagged too.  Times are wall-clock seconds on a shared machine: shown, not
judged.  Exit status 1 when anything is flagged, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

SAMPLED = {"lower-sample", "lower-grad", "sampled-max"}
ANYTIME = {"crown-bab", "lipsdp-opt", "mip", "enumerate"}
TL_STATUSES = {"time_limit", "killed"}


def _f(v):
    """JSON value -> float or None ('inf' strings, None, NaN handled)."""
    if v is None:
        return None
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _rec(out, case, method, res, value_key="value", time_key="time_s", status_key="status", base=None):
    """Append one record from a result dict ``res`` (value / time_s / status)."""
    if res is None:
        return
    base = base or method.split("[")[0].split(":")[0].split(" ")[0]
    out.append({"case": case, "method": method, "base": base, "value": _f(res.get(value_key)),
                "time_s": _f(res.get(time_key)) if time_key else None,
                "status": res.get(status_key) if status_key else "ok"})


def _simple(out, case, method, value, base=None, status="ok", time_s=None):
    out.append({"case": case, "method": method, "base": base or method, "value": _f(value), "time_s": time_s,
                "status": status})


# ------------------------------------------------------------------------------------------------
# one parser per script (the JSON layout of benchmarks/*.py)
# ------------------------------------------------------------------------------------------------


def parse_foundation(d):
    out = []
    for r in d["rows"]:
        case = f"{r['network']} norm={r['norm']}"
        for m in ("naive", "lower-sample", "lower-grad"):
            if m in r:
                out.append({"case": case, "method": m, "base": m, "value": _f(r[m]), "time_s": _f(r.get(f"t_{m}")),
                            "status": r.get(f"status_{m}", "ok")})
    return out


def parse_l2_sdp_family(d):
    out = []
    for r in d["rows"]:
        case = r["network"]
        _simple(out, case, "naive-svd", r.get("naive"))
        for m, res in r.get("results", {}).items():
            _rec(out, case, m, res)
    return out


def parse_autolip_seqlip(d):
    out = []
    for r in d.get("mlps", []):
        case = f"mlp {r['layers']} layers w={r['width']}"
        _simple(out, case, "train-mse", r.get("train_mse"))
        _simple(out, case, "frobenius-product", r.get("frobenius_product"))
        for m, res in r["results"].items():
            _rec(out, case, m, res)
            if m == "autolip" and res.get("power_method_product") is not None:
                _simple(out, case, "autolip:power-method", res["power_method_product"], base="autolip")
    for sec in ("digits", "shared"):
        for r in d.get(sec, []):
            case = f"{sec}/{r['network']}"
            for m, res in r["results"].items():
                _rec(out, case, m, res)
                if m == "autolip" and res.get("power_method_product") is not None:
                    _simple(out, case, "autolip:power-method", res["power_method_product"], base="autolip")
    return out


def parse_lipopt(d):
    out = []
    for key in sorted(k for k in d if k.startswith("random") and isinstance(d[k], list)):
        for r in d[key]:
            case = f"{key}/{r['network']}"
            for m in ("lipopt-3", "lipopt-4 dense", "lipopt-4 sparse", "shor-sdp", "naive", "lower-grad"):
                if r.get(m) is not None:
                    base = "lipopt" if m.startswith("lipopt") else m
                    _rec(out, case, m, r[m], base=base)
    for key in sorted(k for k in d if k.startswith("mnist") and isinstance(d[k], dict)):
        mn = d[key]
        for r in mn.get("outputs", []):
            case = f"{key}/{mn['network']} output={r['output']}"
            for m in ("lipopt-3", "shor-sdp", "naive", "lower-grad"):
                if r.get(m) is not None and r[m].get("status") != "skipped":
                    base = "lipopt" if m.startswith("lipopt") else m
                    _rec(out, case, m, r[m], base=base)
    return out


def parse_local_lipschitz(d):
    out = []
    for r in d["rows"]:
        case = f"{r['group']}/{r['network']} eps={r['eps']:.6g}"
        if r.get("test_accuracy") is not None:
            _simple(out, case, "test-accuracy(trained net)", r["test_accuracy"], base="train")
        for m, res in r["results"].items():
            _rec(out, case, m, res)
            if m == "mip" and res.get("lower") is not None:  # the certified lower end of the sandwich
                _simple(out, case, "mip:lower", res["lower"], base="mip", status=res.get("status"),
                        time_s=_f(res.get("time_s")))
    return out


def parse_local_l2(d):
    out = []
    seen = set()
    for r in d["rows"]:
        case = f"{r['network']} eps={r['eps']:.6g}"
        if r["network"] not in seen:  # one global reference per network
            seen.add(r["network"])
            _simple(out, f"{r['network']} global", "eclipse-family(global)", r.get("global_family"),
                    base="eclipse-family")
        for m, res in r["results"].items():
            _rec(out, case, m, res)
    return out


def parse_exact_mip(d):
    out = []
    sampled = {}
    for r in d["rows"]:
        case = f"{r['network']} {r['region']}"
        method = f"{r['method']}[{r['bounds']}]" if r.get("bounds") not in (None, "-") else r["method"]
        _rec(out, case, method, r, base=r["method"])
        if r["method"] == "mip":  # the sandwich (equal to the value when the run finished)
            for k in ("lower", "upper"):
                if r.get(k) is not None:
                    _simple(out, case, f"{method}:{k}", r[k], base=r["method"], status=r.get("status"),
                            time_s=_f(r.get("time_s")))
        sampled.setdefault(case, (r.get("sampled_lower"), r.get("train_accuracy")))
    for case, (s, acc) in sampled.items():
        _simple(out, case, "sampled-max", s)
        if acc is not None:
            _simple(out, case, "train-accuracy(trained net)", acc, base="train")
    return out


PARSERS = [("foundation", parse_foundation), ("l2_sdp_family", parse_l2_sdp_family),
           ("autolip_seqlip", parse_autolip_seqlip), ("lipopt", parse_lipopt),
           ("local_lipschitz", parse_local_lipschitz), ("local_l2", parse_local_l2), ("exact_mip", parse_exact_mip)]


def parser_for(stem):
    for prefix, fn in PARSERS:
        if stem == prefix or stem.startswith(prefix + "_") or stem.startswith(prefix + "."):
            return fn
    return None


def load_records(path: Path):
    fn = parser_for(path.stem)
    if fn is None:
        return None
    return fn(json.loads(path.read_text()))


# ------------------------------------------------------------------------------------------------
# comparison
# ------------------------------------------------------------------------------------------------


def classify(base, st_b, st_a):
    if st_b in TL_STATUSES or st_a in TL_STATUSES:
        return "TL"
    if base in SAMPLED:
        return "sampled"
    if base in ANYTIME:
        return "anytime"
    return "det"


def rel_change(b, a):
    if b is None or a is None:
        return None
    if math.isinf(b) or math.isinf(a):
        return 0.0 if a == b else math.inf
    if b == a:
        return 0.0
    if b == 0.0:
        return math.inf
    return (a - b) / abs(b)


def compare(before: Path, after: Path, tol_det: float, tol_var: float):
    rows, errors = [], []
    files = sorted(p for p in before.glob("*.json") if parser_for(p.stem) is not None)
    extra = sorted(p.name for p in after.glob("*.json") if parser_for(p.stem) is not None
                   and not (before / p.name).exists())
    for name in extra:
        errors.append({"script": Path(name).stem, "error": "result file only in after/"})
    for fb in files:
        script = fb.stem
        fa = after / fb.name
        if not fa.exists():
            errors.append({"script": script, "error": f"{fa} missing (the after run failed or was not run)"})
            continue
        try:
            rb, ra = load_records(fb), load_records(fa)
        except Exception as e:  # noqa: BLE001 - a changed JSON layout must not hide the other scripts
            errors.append({"script": script, "error": f"cannot parse: {type(e).__name__}: {e}"})
            continue
        ia = {}
        for r in ra:
            ia.setdefault((r["case"], r["method"]), r)
        ib_keys = set()
        for b in rb:
            key = (b["case"], b["method"])
            if key in ib_keys:
                continue
            ib_keys.add(key)
            a = ia.get(key)
            row = {"script": script, "case": b["case"], "method": b["method"], "before": b["value"],
                   "after": None if a is None else a["value"], "t_before": b["time_s"],
                   "t_after": None if a is None else a["time_s"], "status_before": b["status"],
                   "status_after": None if a is None else a["status"]}
            if a is None:
                cls = classify(b["base"], b["status"], None)
                row.update(cls=cls, rel=None, flag="MISSING in after" + (" (clock)" if cls == "TL" else ""))
                rows.append(row)
                continue
            cls = classify(b["base"], b["status"], a["status"])
            tol = tol_det if cls == "det" else tol_var
            rel = rel_change(b["value"], a["value"])
            flags = []
            if b["status"] != a["status"]:
                clock = " (clock)" if cls == "TL" else ""
                flags.append(f"status {b['status']}->{a['status']}{clock}")
            if (b["value"] is None) != (a["value"] is None):
                flags.append("value on one side only")
            elif rel is not None and abs(rel) > tol:
                flags.append(f"|rel|>{tol:g}")
            row.update(cls=cls, rel=rel, tol=tol, flag="; ".join(flags))
            rows.append(row)
        for r in ra:
            if (r["case"], r["method"]) not in ib_keys:
                ib_keys.add((r["case"], r["method"]))
                rows.append({"script": script, "case": r["case"], "method": r["method"], "before": None,
                             "after": r["value"], "t_before": None, "t_after": r["time_s"], "status_before": None,
                             "status_after": r["status"], "cls": classify(r["base"], None, r["status"]),
                             "rel": None, "flag": "NEW in after"})
                if rows[-1]["cls"] == "TL":
                    rows[-1]["flag"] += " (clock)"
    return rows, errors


def add_repeat(rows, before: Path, repeat: Path, tol_var: float):
    """Column rel_repeat (repeat vs before) and the '~noise' mark of flagged non-deterministic rows."""
    rep = {}
    for fr in repeat.glob("*.json"):
        if parser_for(fr.stem) is None or not (before / fr.name).exists():
            continue
        try:
            for r in load_records(fr):
                rep.setdefault((fr.stem, r["case"], r["method"]), r)
        except Exception:  # noqa: BLE001
            continue
    for row in rows:
        r = rep.get((row["script"], row["case"], row["method"]))
        row["repeat"] = None if r is None else r["value"]
        row["status_repeat"] = None if r is None else r["status"]
        row["rel_repeat"] = None if r is None else rel_change(row["before"], r["value"])
        row["noise"] = False
        if (row["flag"] and row["cls"] != "det" and r is not None and None not in (row["before"], row["after"], r["value"])
                and not row["flag"].startswith(("MISSING", "NEW"))):
            lo, hi = min(row["before"], r["value"]), max(row["before"], r["value"])
            pad = tol_var * max(abs(lo), abs(hi))
            if lo - pad <= row["after"] <= hi + pad:
                row["noise"] = True
                row["flag"] += " ~noise (within the two before runs)"


def _fmt(v, w, p=7):
    if v is None:
        return "—".rjust(w)
    return f"{v:.{p}g}".rjust(w)


def _fmt_rel(v, w=10):
    if v is None:
        return "—".rjust(w)
    if v == 0:
        return "0".rjust(w)
    return f"{v:+.2e}".rjust(w)


def _fmt_t(v, w=8):
    return "—".rjust(w) if v is None else f"{v:.2f}".rjust(w)


def read_times(folder: Path):
    p = folder / "TIMES.txt"
    out = {}
    if p.exists():
        for line in p.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and not line.startswith("#"):
                out[parts[0]] = " ".join(parts[1:])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--json", type=Path, default=None,
                    help="summary file (default: <after>/../comparison.json)")
    ap.add_argument("--tol-det", type=float, default=1e-6, help="relative tolerance of deterministic methods")
    ap.add_argument("--tol-var", type=float, default=1e-3,
                    help="relative tolerance of sampled / anytime / time-limited methods")
    ap.add_argument("--flagged-only", action="store_true", help="print only the flagged rows")
    ap.add_argument("--repeat", type=Path, default=None,
                    help="a second run of the before commands (e.g. results/before_repeat): its change against "
                         "before is the run-to-run noise; shown as a column, and a flagged sampled / anytime / TL "
                         "row whose after value lies within the spread of the two before runs is marked '~noise'")
    args = ap.parse_args(argv)
    rows, errors = compare(args.before, args.after, args.tol_det, args.tol_var)
    if args.repeat is not None:
        add_repeat(rows, args.before, args.repeat, args.tol_var)

    head = (f"{'script':20s} {'case':44s} {'method':26s} {'before':>14s} {'after':>14s} {'rel.change':>10s} "
            f"{'t_before':>8s} {'t_after':>8s} {'class':7s} "
            + (f"{'rel.repeat':>10s} " if args.repeat is not None else "") + "flag")
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        if args.flagged_only and not r["flag"]:
            continue
        if last is not None and r["script"] != last:
            print()
        last = r["script"]
        mark = "!! " + r["flag"] if r["flag"] else ""
        print(f"{r['script'][:20]:20s} {r['case'][:44]:44s} {r['method'][:26]:26s} {_fmt(r['before'], 14)} "
              f"{_fmt(r['after'], 14)} {_fmt_rel(r['rel'])} {_fmt_t(r['t_before'])} {_fmt_t(r['t_after'])} "
              f"{r['cls']:7s} " + (f"{_fmt_rel(r.get('rel_repeat'))} " if args.repeat is not None else "") + mark)
    flagged = [r for r in rows if r["flag"]]
    tl = [r for r in rows if r["cls"] == "TL"]
    print()
    print(f"classes: det = deterministic (tol {args.tol_det:g}); sampled / anytime / TL (tol {args.tol_var:g}); "
          f"TL = time_limit status in either run (stopped by the clock: legitimately varies with machine load)")
    print(f"{len(rows)} values compared, {len(flagged)} flagged "
          f"({sum(1 for r in flagged if r['cls'] == 'det')} deterministic, "
          f"{sum(1 for r in flagged if r['cls'] != 'det')} sampled/anytime/time-limited"
          + (f", of which {sum(1 for r in flagged if r.get('noise'))} within the spread of the two before runs"
             if args.repeat is not None else "") + ")")
    if args.repeat is not None:
        print("rel.repeat = change of the repeated before run (same code, other moment) against before: "
              "the run-to-run noise of that value")
    if tl:
        print("time-limited rows (values legitimately vary):")
        for r in tl:
            print(f"  {r['script']}: {r['case']} / {r['method']}  status {r['status_before']} -> {r['status_after']}"
                  f"  rel {_fmt_rel(r['rel']).strip()}")
    for e in errors:
        print(f"ERROR {e['script']}: {e['error']}")
    tb, ta = read_times(args.before), read_times(args.after)
    if tb or ta:
        print("\nwall time per command (TIMES.txt):")
        for k in sorted(set(tb) | set(ta)):
            print(f"  {k:28s} before {tb.get(k, '—'):>14s}   after {ta.get(k, '—'):>14s}")

    def clean(v):
        if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
            return str(v)
        return v

    summary = {
        "before": str(args.before), "after": str(args.after),
        "tolerances": {"deterministic": args.tol_det, "sampled_anytime_time_limited": args.tol_var},
        "n_compared": len(rows), "n_flagged": len(flagged),
        "n_flagged_deterministic": sum(1 for r in flagged if r["cls"] == "det"),
        "repeat": None if args.repeat is None else str(args.repeat),
        "n_flagged_within_before_noise": sum(1 for r in flagged if r.get("noise")),
        "errors": errors,
        "flagged": [{k: clean(v) for k, v in r.items()} for r in flagged],
        "time_limited": [{k: clean(r[k]) for k in ("script", "case", "method", "status_before", "status_after", "rel")}
                         for r in tl],
        "wall_times": {"before": tb, "after": ta},
        "rows": [{k: clean(v) for k, v in r.items()} for r in rows],
    }
    out = args.json or (args.after.resolve().parent / "comparison.json")
    out.write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {out}")
    return 1 if (flagged or errors) else 0


if __name__ == "__main__":
    sys.exit(main())
