"""The `lipbound` command line.

    lipbound methods [--json]
    lipbound info MODEL
    lipbound bound MODEL -m METHOD [-m METHOD ...] [--norm 1|2|inf] [--output J]
                   [--center FILE.npy --eps E] [--domain LO HI] [--time-limit S]
                   [--option KEY=VALUE ...] [--json OUT] [--quiet]
    lipbound compare MODEL [same options] [--plot out.png]
    lipbound certify MODEL [--norm N] [--center C.npy --eps E | --vnnlib FILE] [--domain LO HI] [--output J]
                     [--time-limit T] [--target-gap G] [-m METHOD ...] [--exclude METHOD ...] [--seed S]
                     [--json OUT] [--plot PNG] [--quiet]
    lipbound demo [--plot out.png] [--json OUT] [--quiet]
    lipbound sweep MODEL (--inputs X.npy|X.npz [--key NAME] [--ids A:B] --eps E [--eps E2 ...] | --vnnlib FILE ...)
                   --out results.jsonl [--norm N] [-m METHOD ... [--option KEY=VALUE ...]] [--time-limit T] [--domain LO HI]
                   [--workers K | --address ADDR] [--plot PNG] [--seed S] [--quiet]

``--vnnlib FILE`` (bound, compare, certify): the input box(es) of a VNN-LIB property; a disjunction of
boxes is bounded box by box and the constant reported is the maximum over the boxes.

MODEL is a path to an .onnx file or a built-in example (``example:digits_mlp``, ``example:digits_cnn``).
Bad input prints one line ``lipbound: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .errors import LipboundError

EXIT_BAD_INPUT = 2


def _load_model(spec: str):
    from . import examples
    from .io import load

    if spec.startswith("example:"):
        return examples.load_example(spec.split(":", 1)[1])
    if spec in examples.EXAMPLES and not Path(spec).exists():
        return examples.load_example(spec)
    return load(spec)


def _parse_options(items: list[str], method_names: list[str]) -> dict[str, dict]:
    """KEY=VALUE (given to every selected method that declares KEY) or METHOD.KEY=VALUE, validated against
    the methods' declarations (`registry.route_option_items`): method -> typed options."""
    from .registry import route_option_items

    triples = []
    for item in items or []:
        if "=" not in item:
            raise LipboundError(f"option {item!r} is not KEY=VALUE (or METHOD.KEY=VALUE)")
        key, value = item.split("=", 1)
        triples.append((None, key.strip(), value))  # the declaration parses the text (Option.validate)
    return route_option_items(method_names, triples)


def _vnnlib_regions(args, net) -> list | None:
    """The boxes of ``--vnnlib FILE`` fitted to the network input (clipped to ``--domain``), or None."""
    if getattr(args, "vnnlib", None) is None:
        return None
    if args.center is not None or args.eps is not None:
        raise LipboundError("--vnnlib gives the region: do not combine it with --center / --eps")
    from .registry import Region
    from .vnnlib import read_vnnlib

    boxes = read_vnnlib(args.vnnlib, net.n_inputs)
    out = []
    for r in boxes:
        if args.domain is not None:
            lo, hi = np.maximum(r.lower, args.domain[0]), np.minimum(r.upper, args.domain[1])
            if (lo > hi).any():
                raise LipboundError(f"a box of {args.vnnlib} does not meet --domain {args.domain[0]:g} {args.domain[1]:g}")
            r = Region.from_bounds(lo, hi)
        out.append(r.fit(net))
    return out


def _region_args(args, net):
    from .registry import Region

    if args.center is None:
        if args.eps is not None:
            raise LipboundError("--eps needs --center FILE.npy")
        if args.domain is not None:
            lo, hi = args.domain
            return Region.from_bounds(np.full(net.input_shape, lo), np.full(net.input_shape, hi))
        return None
    if args.eps is None:
        raise LipboundError("--center needs --eps")
    path = Path(args.center)
    if not path.exists():
        raise LipboundError(f"center file not found: {path}")
    try:
        center = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise LipboundError(f"cannot read the center file {path} as .npy: {e}") from None
    if center.size != net.n_inputs:
        raise LipboundError(f"the center in {path} has shape {center.shape} ({center.size} values) but the network "
                            f"input {net.input_shape} has {net.n_inputs}")
    return Region.box(center.reshape(net.input_shape), args.eps,
                      None if args.domain is None else tuple(args.domain))


def _add_common(p: argparse.ArgumentParser, require_methods: bool):
    p.add_argument("model", help="an .onnx file or example:digits_mlp / example:digits_cnn")
    p.add_argument("-m", "--method", action="append", dest="methods", required=require_methods,
                   help="method name (repeatable); see `lipbound methods`")
    p.add_argument("--norm", default="2", help="1, 2 or inf (default 2)")
    p.add_argument("--output", type=int, default=None, help="bound only output J (a scalar function)")
    p.add_argument("--center", default=None, help="box center, a .npy file of the input shape")
    p.add_argument("--eps", type=float, default=None, help="box radius (l_inf)")
    p.add_argument("--domain", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="input domain to clip the box to (alone: the box [LO, HI]^n)")
    p.add_argument("--vnnlib", default=None, metavar="FILE",
                   help="the input box(es) of a VNN-LIB property (a disjunction: bounded box by box, the maximum "
                        "reported); not with --center / --eps")
    p.add_argument("--time-limit", type=float, default=None, help="seconds per method")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. degree=4 (or METHOD.KEY=VALUE); repeatable")
    p.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipbound", description="Certified bounds on the Lipschitz constant of neural networks")
    sub = parser.add_subparsers(dest="command", required=True)
    pm = sub.add_parser("methods", help="list the registered methods")
    pm.add_argument("--json", action="store_true", help="print the registry as JSON")
    pi = sub.add_parser("info", help="describe a network")
    pi.add_argument("model")
    pb = sub.add_parser("bound", help="run one or more methods")
    _add_common(pb, require_methods=True)
    pc = sub.add_parser("compare", help="run every applicable method (or those given with -m)")
    _add_common(pc, require_methods=False)
    pc.add_argument("--plot", default=None, metavar="PNG", help="write a comparison plot")
    _add_certify(sub)
    _add_sweep(sub)
    pd = sub.add_parser("demo", help="certify the built-in digits MLP (the certified interval in ~20 s)")
    pd.add_argument("--plot", default="lipbound_demo.png", metavar="PNG", help="the interval against time")
    pd.add_argument("--json", default=None, metavar="OUT")
    pd.add_argument("--norm", default="2")
    pd.add_argument("--time-limit", type=float, default=20.0, help="the budget of certify in seconds (default 20)")
    pd.add_argument("--quiet", action="store_true")
    return parser


def _add_certify(sub) -> None:
    pc = sub.add_parser("certify", help="the tightest certified interval on the constant within a time budget")
    pc.add_argument("model", help="an .onnx file or example:digits_mlp / example:digits_cnn")
    pc.add_argument("--norm", default="2", help="1, 2 or inf (default 2)")
    pc.add_argument("--output", type=int, default=None, help="bound only output J (a scalar function)")
    pc.add_argument("--center", default=None, help="box center, a .npy file of the input shape")
    pc.add_argument("--eps", type=float, default=None, help="box radius (l_inf)")
    pc.add_argument("--domain", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                    help="input domain to clip the box to (alone: the box [LO, HI]^n)")
    pc.add_argument("--vnnlib", default=None, metavar="FILE",
                    help="the input box(es) of a VNN-LIB property; not with --center / --eps")
    pc.add_argument("--time-limit", type=float, default=60.0, help="the budget in seconds (default 60)")
    pc.add_argument("--target-gap", type=float, default=1.01, help="stop once upper / lower <= G (default 1.01)")
    pc.add_argument("-m", "--method", action="append", dest="methods", default=None,
                    help="use only these methods (repeatable; default: the planner's choice)")
    pc.add_argument("--exclude", action="append", default=[], metavar="METHOD", help="never use METHOD (repeatable)")
    pc.add_argument("--seed", type=int, default=0)
    pc.add_argument("--json", default=None, metavar="OUT", help="write the result as JSON")
    pc.add_argument("--plot", default=None, metavar="PNG", help="plot the interval against time")
    pc.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _add_sweep(sub) -> None:
    ps = sub.add_parser("sweep", help="local constants over a dataset (one box per point and eps), resumable, on Ray")
    ps.add_argument("model", help="an .onnx file or example:digits_mlp / example:digits_cnn")
    ps.add_argument("--inputs", default=None, metavar="X.npy", help="N points (.npy, or an .npz member)")
    ps.add_argument("--key", default=None, help="the array of an .npz with several")
    ps.add_argument("--ids", default=None, metavar="A:B", help="rows A to B-1 only (default: all)")
    ps.add_argument("--vnnlib", nargs="+", default=None, metavar="FILE",
                    help="sweep over VNN-LIB properties (one region each; the id is the file name); not with --eps")
    ps.add_argument("--eps", type=float, action="append", default=None, help="box radius (l_inf); repeatable")
    ps.add_argument("--norm", default="2", help="1, 2 or inf (default 2)")
    ps.add_argument("-m", "--method", action="append", dest="methods", default=None,
                    help="run exactly these methods (repeatable; default: certify)")
    ps.add_argument("--time-limit", type=float, default=10.0,
                    help="seconds per point for certify, per method with -m (default 10)")
    ps.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="method option with -m, e.g. alpha=false (plain CROWN: bounded in batches of points); "
                         "or METHOD.KEY=VALUE; repeatable")
    ps.add_argument("--domain", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                    help="input domain to clip each box to")
    ps.add_argument("--out", required=True, metavar="OUT.jsonl", help="JSON Lines results (resumed if it exists)")
    ps.add_argument("--workers", type=int, default=1, help="K > 1: a local Ray runtime with K CPUs (default 1)")
    ps.add_argument("--address", default=None, help="join the Ray cluster at ADDR instead")
    ps.add_argument("--plot", default=None, metavar="PNG", help="the local constants, sorted, with the global bound")
    ps.add_argument("--seed", type=int, default=0)
    ps.add_argument("--quiet", action="store_true", help="no progress bar")


def _sweep(args) -> int:
    """``lipbound sweep``: records appended to --out as they finish, then the summary table on stdout."""
    import time

    from .norms import norm_name, parse_norm
    from .sweep import report, sweep

    if (args.inputs is None) == (args.vnnlib is None):
        raise LipboundError("give the points with --inputs X.npy or the regions with --vnnlib FILE ... (one of them)")
    if args.vnnlib is not None and args.eps is not None:
        raise LipboundError("--vnnlib gives the region: do not combine it with --eps")
    if args.inputs is not None and args.eps is None:
        raise LipboundError("--inputs needs --eps (the radius of the box around each point)")
    if args.address is not None and args.workers != 1:
        raise LipboundError("--address joins a cluster with its own CPUs: do not combine it with --workers")
    if args.option and not args.methods:
        raise LipboundError("--option sets options of the methods given with -m (certify plans its own)")
    options = _parse_options(args.option, args.methods) if args.option else None
    net = _load_model(args.model)
    t0 = time.perf_counter()
    records = sweep(net, args.inputs if args.vnnlib is None else args.vnnlib, args.eps, norm=args.norm,
                    methods=args.methods, time_limit=args.time_limit, out=args.out, workers=args.workers,
                    address=args.address, ids=args.ids, domain=args.domain, seed=args.seed, progress=not args.quiet,
                    key=args.key, model=args.model, options=options)
    n = sum(1 for _ in records)
    print(report.summary(args.out, time.perf_counter() - t0, n))
    if args.plot:
        from .api import bound

        naive = bound(net, "naive", parse_norm(args.norm))
        report.plot(args.out, args.plot, naive.value if naive.ok else None, norm_name(args.norm))
        print(f"plot written to {args.plot}")
    return 0


def _print_methods(as_json: bool):
    from .api import methods

    rows = methods()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = [("name", "kind", "norms", "regions", "description")]
    for r in rows:
        table.append((r["name"], r["kind"], ",".join(r["norms"]), ",".join(r["regions"]), r["description"]))
    widths = [max(len(t[i]) for t in table) for i in range(4)]
    # each method's options under it: name, type, allowed values, default, doc
    opt_rows = {r["name"]: [(k, o["type"], o["allowed"], "default " + _fmt_default(o["default"]), o["doc"])
                            for k, o in r.get("option_specs", {}).items()] for r in rows}
    all_opts = [o for v in opt_rows.values() for o in v]
    ow = [max((len(o[i]) for o in all_opts), default=0) for i in range(4)]
    for i, t in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(t[:4], widths)) + "  " + t[4])
        if i == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * 11)
            continue
        for o in opt_rows.get(t[0], []):
            print("    " + "  ".join(c.ljust(w) for c, w in zip(o[:4], ow)) + "  " + o[4])


def _fmt_default(v) -> str:
    from .registry import Option

    return Option.format_value(tuple(v) if isinstance(v, list) else v)


def _run(args) -> int:
    from . import api
    from .norms import parse_norm

    if args.command == "methods":
        _print_methods(args.json)
        return 0
    if args.command == "info":
        net = _load_model(args.model)
        print(repr(net))
        print(json.dumps(net.summary(), indent=2))
        return 0
    if args.command == "demo":
        return _demo(args)
    if args.command == "certify":
        return _certify(args)
    if args.command == "sweep":
        return _sweep(args)
    norm = parse_norm(args.norm)
    net = _load_model(args.model)
    boxes = _vnnlib_regions(args, net)
    region = _region_args(args, net) if boxes is None else boxes[0]
    if args.output is not None and not 0 <= args.output < net.n_outputs:
        raise LipboundError(f"--output {args.output} is out of range: the network has {net.n_outputs} outputs")
    if args.command == "compare" and not args.methods:
        names = [m["name"] for m in api.methods(net, norm, region)]
        names = [n for n in names if api.get_method(n).in_compare]
    else:
        names = list(dict.fromkeys(args.methods))
        for n in names:
            api.get_method(n)
    options = _parse_options(args.option, names)
    if boxes is not None and len(boxes) > 1:
        report = api.compare_boxes(net, boxes, names, norm=norm, time_limit=args.time_limit, output=args.output,
                                   quiet=args.quiet, seed=args.seed, options=options)
    else:
        report = api.compare(net, names, norm=norm, region=region, time_limit=args.time_limit, output=args.output,
                             quiet=args.quiet, seed=args.seed, options=options)
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2))
    if getattr(args, "plot", None):
        report.plot(args.plot)
    if args.command == "bound" and all(b.status == "unsupported" for b in report.results):
        reasons = "; ".join(b.reason or "unsupported" for b in report.results)
        print(f"lipbound: error: {reasons}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _certify(args) -> int:
    """``lipbound certify``: the interval, the gap and the method of each end on stdout (and the table of
    every method's result), progress on stderr unless --quiet."""
    from .certify import certify
    from .norms import parse_norm

    norm = parse_norm(args.norm)
    net = _load_model(args.model)
    boxes = _vnnlib_regions(args, net)
    region = _region_args(args, net) if boxes is None else boxes
    res = certify(net, norm, region=region, output=args.output, time_limit=args.time_limit,
                  target_gap=args.target_gap, methods=args.methods, exclude=args.exclude, seed=args.seed,
                  progress=not args.quiet)
    _print_certify(res, args.json, args.plot)
    return 0


def _print_certify(res, json_path, plot_path) -> None:
    print(res.table())
    print()
    print(res.summary())
    if json_path:
        Path(json_path).write_text(json.dumps(res.to_json(), indent=2))
        print(f"JSON written to {json_path}")
    if plot_path:
        res.plot(plot_path)
        print(f"plot written to {plot_path}")


def _demo(args) -> int:
    """``lipbound demo``: certify on the built-in digits MLP, then how to compare every method."""
    from .certify import certify
    from .examples import digits_mlp
    from .norms import norm_name, parse_norm

    norm = parse_norm(args.norm)
    net = digits_mlp()
    print(f"lipbound demo: certify on the built-in digits MLP {net.summary()['input_shape']} -> 10, norm "
          f"{norm_name(norm)}, global, budget {args.time_limit:g} s")
    res = certify(net, norm, time_limit=args.time_limit, progress=not args.quiet)
    _print_certify(res, args.json, args.plot)
    print(f"\nevery applicable method side by side: lipbound compare example:digits_mlp --norm {norm_name(norm)} "
          "--time-limit 10 --plot compare.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except LipboundError as e:
        print(f"lipbound: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("lipbound: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
