"""AutoLip / SeqLip benchmark (issue 4), in the shape of Scaman & Virmaux (NeurIPS 2018), tables 1-2.

1. MLPs of 4, 5, 7 and 10 layers (width --width, default 15) trained on a synthetic regression set as in
   the paper: a sample of a 2-D Gaussian process (RBF kernel) at 4 N(0, I_2) points, Adam lr 1e-3, MSE.
   Columns: Frobenius product, AutoLip (certified and power-method), exact SeqLip, greedy SeqLip,
   lower-grad, and SeqLip/AutoLip ratios next to the paper's.
2. The built-in digits networks (lipbound.examples), CNN and MLP.
3. Every shared network (../shared/networks): autolip (certified value, power-method product, time),
   exact / greedy / top-k SeqLip where they apply, lower-grad.

    python benchmarks/autolip_seqlip.py [--quick] [--time-limit S] [--width W] [--steps N]

Timings are on a 2-core machine shared with other jobs: they are inflated by the contention.
Writes benchmarks/results/autolip_seqlip.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import lipbound  # noqa: E402

NETS = ROOT.parent / "shared" / "networks"
PAPER = {4: (648.2, 33.04, 21.47, 21.47, 6.56), 5: (4283.1, 134.4, 72.87, 72.87, 7.1),
         7: (22341, 294.6, 130.2, 130.2, 6.51), 10: (7343800, 19248.2, 2463.44, 2463.36, 17.1)}
# paper columns: Frobenius product, AutoLip, SeqLip exact, greedy SeqLip, best lower bound (grid)


def gp_dataset(n: int, seed: int = 0, lengthscale: float = 1.5):
    """A sample of a zero-mean GP with an RBF kernel at n points drawn from 4 N(0, I_2)."""
    rng = np.random.default_rng(seed)
    X = 4 * rng.normal(size=(n, 2))
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    K = np.exp(-d2 / (2 * lengthscale ** 2)) + 1e-6 * np.eye(n)
    y = np.linalg.cholesky(K) @ rng.normal(size=n)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y[:, None], dtype=torch.float32)


def train_mlp(n_layers: int, width: int, X, y, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    mods = []
    dims = [2] + [width] * (n_layers - 1) + [1]
    for i in range(n_layers):
        mods.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < n_layers - 1:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, X.shape[0], (128,), generator=g)
        loss = torch.nn.functional.mse_loss(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(model(X), y).item()
    return model.eval(), mse


def run(net, method, time_limit, **opts):
    t0 = time.perf_counter()
    try:
        b = lipbound.bound(net, method, norm=2, time_limit=time_limit, **opts)
    except lipbound.LipboundError as e:
        return {"method": method, "status": "error", "reason": str(e), "value": None, "time_s": 0.0}
    d = {"method": method, "kind": b.kind, "value": b.value, "status": b.status, "time_s": time.perf_counter() - t0,
         "reason": b.reason}
    if method == "autolip" and b.value is not None:
        d["power_method_product"] = b.details.get("power_method_product")
        d["certified_over_power_method"] = b.details.get("certified_over_power_method")
    if method.startswith("seqlip") and b.value is not None:
        d["ratio_to_autolip"] = b.details.get("ratio_to_autolip")
        d["layer_ratios"] = [r.get("ratio_to_autolip") for r in b.details.get("layers", [])]
    return d


def fmt(v, w=11):
    if v is None:
        return "—".rjust(w)
    if isinstance(v, str):
        return v.rjust(w)
    return f"{v:.5g}".rjust(w)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer training steps, smaller lower-grad budget")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per method and network")
    ap.add_argument("--width", type=int, default=15, help="MLP width (10-20; exact SeqLip enumerates 2^width)")
    ap.add_argument("--steps", type=int, default=None, help="Adam steps per MLP (default 4000, quick 800)")
    ap.add_argument("--skip-shared", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    steps = args.steps or (800 if args.quick else 4000)
    lg_opts = {"restarts": 8, "steps": 60, "samples": 500} if args.quick else {}
    out = {"config": vars(args) | {"steps": steps}, "mlps": [], "digits": [], "shared": []}

    # 1. synthetic MLPs -------------------------------------------------------------------------
    X, y = gp_dataset(1000)
    print(f"MLPs of width {args.width} trained on a 2-D GP sample ({steps} Adam steps, lr 1e-3, MSE)")
    hdr = (f"{'layers':>6} {'mse':>8} {'Frobenius':>11} {'AutoLip':>11} {'AL(power)':>11} {'SeqLip':>11} "
           f"{'greedySL':>11} {'lower-grad':>11} {'SL/AL':>7} {'paper':>7} {'t_AL':>6} {'t_SL':>6} {'t_gSL':>6}")
    print(hdr)
    for L in (4, 5, 7, 10):
        model, mse = train_mlp(L, args.width, X, y, steps, seed=L)
        net = lipbound.from_torch(model.double(), (2,))
        fro = float(np.prod([np.linalg.norm(layer.W) for layer in net.dense_chain()]))
        r = {m: run(net, m, args.time_limit, **(lg_opts if m == "lower-grad" else {}))
             for m in ("autolip", "seqlip", "seqlip-greedy", "lower-grad")}
        al, sl = r["autolip"]["value"], r["seqlip"]["value"]
        ratio = sl / al if al and sl else None
        pf = PAPER[L]
        row = {"layers": L, "width": args.width, "train_mse": mse, "frobenius_product": fro, "results": r,
               "seqlip_over_autolip": ratio, "paper": {"frobenius": pf[0], "autolip": pf[1], "seqlip": pf[2],
                                                       "greedy": pf[3], "best_lower": pf[4],
                                                       "seqlip_over_autolip": pf[2] / pf[1]}}
        out["mlps"].append(row)
        print(f"{L:>6} {mse:>8.4f} {fmt(fro)} {fmt(al)} {fmt(r['autolip'].get('power_method_product'))} {fmt(sl)} "
              f"{fmt(r['seqlip-greedy']['value'])} {fmt(r['lower-grad']['value'])} "
              f"{fmt(ratio, 7)} {fmt(pf[2] / pf[1], 7)} {r['autolip']['time_s']:6.2f} {r['seqlip']['time_s']:6.2f} "
              f"{r['seqlip-greedy']['time_s']:6.2f}")

    # 2. digits networks --------------------------------------------------------------------------
    methods = ("autolip", "seqlip", "seqlip-greedy", "seqlip-topk", "lower-grad")
    print("\nBuilt-in digits networks")
    print(f"{'network':>12} " + " ".join(f"{m:>14}" for m in methods) + f" {'gSL/AL':>7}")
    try:
        from lipbound import examples

        digits = [("digits_mlp", examples.digits_mlp()), ("digits_cnn", examples.digits_cnn())]
    except Exception as e:  # noqa: BLE001
        print(f"  (lipbound.examples unavailable: {e})")
        digits = []
    for name, net in digits:
        r = {m: run(net, m, args.time_limit, **(lg_opts if m == "lower-grad" else {})) for m in methods}
        al, g = r["autolip"]["value"], r["seqlip-greedy"]["value"]
        out["digits"].append({"network": name, "results": r})
        print(f"{name:>12} " + " ".join(fmt(r[m]["value"] if r[m]["value"] is not None else r[m]["status"], 14)
                                        for m in methods) + f" {fmt(g / al if g and al else None, 7)}")

    # 3. shared networks --------------------------------------------------------------------------
    if not args.skip_shared:
        print("\nShared networks (l2, global)")
        print(f"{'network':>32} {'autolip':>11} {'power':>11} {'cert/pow':>9} {'t_AL':>6} {'seqlip':>11} "
              f"{'greedy':>11} {'topk':>11} {'lower-grad':>11} {'t_LG':>6}")
        for path in sorted(NETS.glob("*.onnx")):
            net = lipbound.load(path)
            r = {m: run(net, m, args.time_limit, **(lg_opts if m == "lower-grad" else {})) for m in methods}
            out["shared"].append({"network": path.name, "results": r})
            a = r["autolip"]
            print(f"{path.name:>32} {fmt(a['value'])} {fmt(a.get('power_method_product'))} "
                  f"{fmt(a.get('certified_over_power_method'), 9)} {a['time_s']:6.2f} "
                  + " ".join(fmt(r[m]["value"] if r[m]["value"] is not None else r[m]["status"])
                             for m in ("seqlip", "seqlip-greedy", "seqlip-topk", "lower-grad"))
                  + f" {r['lower-grad']['time_s']:6.2f}")

    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    path = res_dir / "autolip_seqlip.json"
    path.write_text(json.dumps(out, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))
    print(f"\nwrote {path.relative_to(ROOT)}  (timings inflated by other jobs on the shared 2-core machine)")


if __name__ == "__main__":
    main()
