"""Joint first-order optimisation of the LipSDP-Neuron multipliers of the exact decomposition (private).

Parameterisation (reference §2, "gradient-optimised multipliers"): at hidden stage k,
    L_k = c_k P_k / lambda_max(P_k^{1/2} K_k P_k^{1/2}),   P_k = diag(exp theta_k),  c_k = sigmoid(eta_k),
with K_k = m_k^2 W_k M_{k-1}^{-1} W_k^T (alpha*beta term dropped, which only enlarges M_k when
alpha*beta >= 0).  Then M_k = L_k^{1/2}(I - L_k^{1/2} K_k L_k^{1/2}) L_k^{1/2} is positive definite for
every parameter value, so every iterate is a LipSDP-Neuron feasible point; every diagonal L_k > 0 with
M_k > 0 is reached (P = L, c = lambda_max(L^{1/2} K L^{1/2})), so the infimum is the LipSDP-Neuron
optimum.  The objective is log lambda_max(W_L M_{L-1}^{-1} W_L^T) (float64 torch autograd).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ._sdp_core import Prepared, lam_max

DT = torch.float64


class _Infeasible(Exception):
    pass


def init_params(prep: Prepared, Ls: list):
    """(theta, eta) reproducing given feasible multipliers exactly (p-term dropped in K)."""
    thetas, etas = [], []
    M = None
    import scipy.linalg as sla

    for k in range(prep.L - 1):
        W = prep.Ws[k]
        m = prep.ms[k]
        if M is None:
            K = (W @ W.T) * m * m
        else:
            R = sla.cholesky(M, lower=True)
            C = sla.solve_triangular(R, W.T, lower=True)
            K = (C.T @ C) * m * m
        K = (K + K.T) / 2
        lam = np.asarray(Ls[k], dtype=np.float64)
        sq = np.sqrt(lam)
        A = sq[:, None] * K * sq[None, :]
        mu = lam_max((A + A.T) / 2)
        c = min(max(mu, 1e-9), 1 - 1e-9)
        thetas.append(np.log(lam))
        etas.append(math.log(c / (1 - c)))
        M = np.diag(lam) - (lam[:, None] * K) * lam[None, :]
        M = (M + M.T) / 2
    return thetas, etas


class Objective:
    """log of the squared bound of the normalised chain as a function of (theta, eta)."""

    def __init__(self, prep: Prepared):
        self.Ws = [torch.as_tensor(W, dtype=DT) for W in prep.Ws]
        self.ms = [float(m) for m in prep.ms]
        self.ps = [float(p) for p in prep.ps]
        self.L = prep.L

    def multipliers(self, thetas, etas):
        """Forward pass: the L_k tensors and the final log lambda_max (raises _Infeasible on a float
        failure of a Cholesky factorisation)."""
        R = None
        Ls = []
        for k in range(self.L - 1):
            W = self.Ws[k]
            m = self.ms[k]
            if R is None:
                C = W.T
            else:
                C = torch.linalg.solve_triangular(R, W.T, upper=False)
            K = (C.T @ C) * (m * m)
            K = (K + K.T) / 2
            P = torch.exp(thetas[k] - thetas[k].max().detach())
            sq = torch.sqrt(P)
            A = sq[:, None] * K * sq[None, :]
            mu = torch.linalg.eigvalsh((A + A.T) / 2)[-1]
            lam = torch.sigmoid(etas[k]) * P / mu
            if self.ps[k] != 0.0:
                Mprev = torch.eye(W.shape[1], dtype=DT) if R is None else R @ R.T
                X = Mprev + self.ps[k] * (W.T * lam) @ W
                RX, info = torch.linalg.cholesky_ex((X + X.T) / 2)
                if int(info) != 0:
                    raise _Infeasible()
                CX = torch.linalg.solve_triangular(RX, W.T, upper=False)
                KX = (CX.T @ CX) * (m * m)
                KX = (KX + KX.T) / 2
            else:
                KX = K
            M = torch.diag(lam) - lam[:, None] * KX * lam[None, :]
            R, info = torch.linalg.cholesky_ex((M + M.T) / 2)
            if int(info) != 0:
                raise _Infeasible()
            Ls.append(lam)
        C = self.Ws[-1].T if R is None else torch.linalg.solve_triangular(R, self.Ws[-1].T, upper=False)
        G = C.T @ C
        val = torch.linalg.eigvalsh((G + G.T) / 2)[-1]
        if not torch.isfinite(val) or val <= 0:
            raise _Infeasible()
        return Ls, torch.log(val)


def optimise(prep: Prepared, Ls0: list, *, time_budget: float, max_iter: int = 2000, progress=None,
             rtol: float = 4e-5, patience: int = 10, history: int = 20):
    """Minimise the bound over (theta, eta) from the multipliers Ls0 within ``time_budget`` seconds by
    L-BFGS with a backtracking (Armijo) line search; a trial point whose Cholesky fails in float64 counts as
    a failed step.  (torch.optim is not used: its first use imports torch._dynamo, ~10 s.)

    Returns (best_Ls as a numpy list, history dict)."""
    obj = Objective(prep)
    th0, et0 = init_params(prep, Ls0)
    sizes = [len(t) for t in th0]
    x = np.concatenate([np.concatenate(th0), np.asarray(et0, dtype=np.float64)])
    nth = sum(sizes)
    t_start = time.perf_counter()
    best = {"loss": math.inf, "Ls": None}
    hist = {"iterations": 0, "evaluations": 0, "infeasible_evaluations": 0}

    def fg(xv):
        xt = torch.tensor(xv, dtype=DT, requires_grad=True)
        thetas, pos = [], 0
        for n in sizes:
            thetas.append(xt[pos:pos + n])
            pos += n
        etas = [xt[nth + k] for k in range(len(sizes))]
        try:
            Ls, loss = obj.multipliers(thetas, etas)
        except _Infeasible:
            hist["infeasible_evaluations"] += 1
            return None, None
        (g,) = torch.autograd.grad(loss, xt)
        hist["evaluations"] += 1
        lv = float(loss.detach())
        if not np.isfinite(lv) or not torch.isfinite(g).all():
            hist["infeasible_evaluations"] += 1
            return None, None
        if lv < best["loss"]:
            best["loss"] = lv
            best["Ls"] = [l.detach().numpy().copy() for l in Ls]
        return lv, g.numpy().copy()

    f, g = fg(x)
    if f is None:
        return [np.asarray(l) for l in Ls0], hist
    hist["start_log"] = f
    S, Y = [], []
    trace = [f]
    step0 = 1.0 / max(np.linalg.norm(g), 1e-12)
    while hist["iterations"] < max_iter and time.perf_counter() - t_start < time_budget:
        # two-loop recursion
        q = g.copy()
        alphas = []
        for s_, y_ in zip(reversed(S), reversed(Y)):
            a = s_ @ q / (y_ @ s_)
            alphas.append(a)
            q -= a * y_
        if S:
            q *= (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1])
        else:
            q *= step0
        for (s_, y_), a in zip(zip(S, Y), reversed(alphas)):
            b = y_ @ q / (y_ @ s_)
            q += (a - b) * s_
        d = -q
        gd = g @ d
        if not gd < 0:
            S, Y = [], []
            d = -g * step0
            gd = g @ d
        t = 1.0
        accepted = False
        for _ in range(40):
            xn = x + t * d
            fn, gn = fg(xn)
            if fn is not None and fn <= f + 1e-4 * t * gd:
                accepted = True
                break
            t *= 0.5
            if time.perf_counter() - t_start > time_budget:
                break
        if not accepted:
            if S:  # retry once from steepest descent
                S, Y = [], []
                continue
            break
        s_, y_ = xn - x, gn - g
        if s_ @ y_ > 1e-12 * (np.linalg.norm(s_) * np.linalg.norm(y_) + 1e-300):
            S.append(s_)
            Y.append(y_)
            if len(S) > history:
                S.pop(0)
                Y.pop(0)
        x, f, g = xn, fn, gn
        hist["iterations"] += 1
        if progress is not None:
            progress(best["loss"])
        trace.append(best["loss"])
        # converged: the log of the squared bound improved by less than rtol over the last `patience` steps
        if len(trace) > patience and trace[-1 - patience] - trace[-1] < rtol:
            hist["converged"] = True
            break
    hist["time_s"] = time.perf_counter() - t_start
    hist["best_log"] = best["loss"]
    return best["Ls"], hist
