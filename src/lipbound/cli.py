"""The `lipbound` command line.

    lipbound methods [--json]
    lipbound info MODEL
    lipbound bound MODEL -m METHOD [-m METHOD ...] [--norm 1|2|inf] [--output J]
                   [--center FILE.npy --eps E] [--domain LO HI] [--time-limit S]
                   [--option KEY=VALUE ...] [--json OUT] [--quiet]
    lipbound compare MODEL [same options] [--plot out.png]
    lipbound demo [--plot out.png] [--json OUT] [--quiet]

MODEL is a path to an .onnx file or a built-in example (``example:digits_mlp``, ``example:digits_cnn``).
Bad input prints one line ``lipbound: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
    pd = sub.add_parser("demo", help="compare on the built-in digits MLP")
    pd.add_argument("--plot", default="lipbound_demo.png", metavar="PNG")
    pd.add_argument("--json", default=None, metavar="OUT")
    pd.add_argument("--norm", default="2")
    pd.add_argument("--time-limit", type=float, default=10.0, help="seconds per method (default 10)")
    pd.add_argument("--quiet", action="store_true")
    return parser


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
        from .examples import digits_mlp

        net = digits_mlp()
        print(f"lipbound demo: every method on the built-in digits MLP {net.summary()['input_shape']} -> 10, "
              f"norm {args.norm}, global, {args.time_limit:g} s per method")
        t0 = time.perf_counter()
        report = api.compare(net, norm=args.norm, time_limit=args.time_limit, quiet=args.quiet)
        print(report.table())
        print(f"total {time.perf_counter() - t0:.1f} s")
        if args.plot:
            report.plot(args.plot)
            print(f"plot written to {args.plot}")
        if args.json:
            Path(args.json).write_text(json.dumps(report.to_json(), indent=2))
        return 0

    norm = parse_norm(args.norm)
    net = _load_model(args.model)
    region = _region_args(args, net)
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
