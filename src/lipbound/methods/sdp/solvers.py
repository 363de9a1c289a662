"""cvxpy formulations of the LipSDP family (private): LipSDP-Neuron / -Layer on the whole chain and the
per-layer SDP of ECLipsE.  The solvers' answers are never returned as bounds directly: the caller turns
them into multipliers and certifies them with `certificate.run_chain`.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ... import cvx
from ...errors import MethodFailed
from .certificate import Stage
from .prepare import Prepared

def _check_backend(name: str) -> str:
    """``name`` as a key of `lipbound.cvx.BACKENDS`, or MethodFailed."""
    key = str(name).lower()
    if key not in cvx.BACKENDS:
        raise MethodFailed(f"unknown solver {name!r} ({' or '.join(cvx.BACKENDS)})")
    return key


def solve_lipsdp(prep: Prepared, *, layer: bool = False, solver: str = "scs", verbose: bool = False,
                 time_limit: float | None = None):
    """Solve min rho s.t. the block-tridiagonal LipSDP LMI (reference §1) on the normalised chain.

    Returns (Ls, rho, info): the rescaled multipliers L_k = 2 T_k / rho (vectors), the solver's rho and
    a dict of solver facts. Raises MethodFailed when the solver does not return a solution."""
    import cvxpy as cp

    Ws, L = prep.Ws, prep.L
    sizes = [Ws[0].shape[1]] + [W.shape[0] for W in Ws[:-1]]
    rho = cp.Variable(nonneg=True)
    lams = []
    for k in range(L - 1):
        n = sizes[k + 1]
        lams.append(cp.Variable(nonneg=True) if layer else cp.Variable(n, nonneg=True))

    def T(k):
        lam = lams[k]
        n = sizes[k + 1]
        return lam * np.eye(n) if layer else cp.diag(lam)

    blocks = [[None] * L for _ in range(L)]
    for i in range(L):
        for j in range(L):
            blocks[i][j] = np.zeros((sizes[i], sizes[j]))
    # (0,0)
    blocks[0][0] = -rho * np.eye(sizes[0])
    for k in range(1, L):  # hidden layer k uses W_k = Ws[k-1], multipliers lams[k-1]
        W = Ws[k - 1]
        p, m = prep.ps[k - 1], prep.ms[k - 1]
        Tk = T(k - 1)
        diag_k = -2 * Tk
        if k == L - 1:
            diag_k = diag_k + Ws[-1].T @ Ws[-1]
        blocks[k][k] = diag_k
        if p != 0:
            if layer:
                blocks[k - 1][k - 1] = blocks[k - 1][k - 1] - 2 * p * lams[k - 1] * (W.T @ W)
            else:
                blocks[k - 1][k - 1] = blocks[k - 1][k - 1] - 2 * p * (W.T @ cp.diag(lams[k - 1]) @ W)
        off = 2 * m * (W.T @ Tk)
        blocks[k - 1][k] = off
        blocks[k][k - 1] = off.T
    Mat = cp.bmat(blocks)
    N = sum(sizes)
    # symmetric by construction; cvxpy wants an explicitly symmetric expression for >> constraints
    cons = [(Mat + Mat.T) / 2 << 0]
    prob = cp.Problem(cp.Minimize(rho), cons)
    backend = _check_backend(solver)
    t0 = time.perf_counter()
    # only SCS gets the time limit here (Clarabel's LipSDP solves are small and run to the end)
    error = cvx.solve(prob, backend, time_limit=time_limit if backend == "scs" else None, min_time=1.0,
                      verbose=verbose)
    if error is not None:
        raise MethodFailed(f"{solver}: {error}")
    info = {"solver": solver, "status": prob.status, "solve_time_s": time.perf_counter() - t0, "lmi_size": N}
    if rho.value is None or any(l.value is None for l in lams):
        raise MethodFailed(f"{solver} returned no solution (status {prob.status})")
    r = float(rho.value)
    if not (r > 0 and math.isfinite(r)):
        raise MethodFailed(f"{solver} returned rho = {r}")
    Ls = []
    for k in range(L - 1):
        v = np.asarray(lams[k].value, dtype=np.float64).reshape(-1)
        if layer:
            v = np.full(sizes[k + 1], float(v[0]))
        Ls.append(np.maximum(2 * v / r, 0.0))
    return Ls, r, info


# per-layer SDPs of ECLipsE: any multipliers are certified afterwards, so a moderate accuracy suffices
STAGE_SCS = {"eps_abs": 1e-5, "eps_rel": 1e-5, "max_iters": 5000}


def eclipse_stage_policy(solver: str = "auto", verbose: bool = False, stats: dict | None = None):
    """The ECLipsE per-layer SDP as a multiplier policy (reference §3):
    maximise s s.t. L - L K L >= s W_{k+1}^T W_{k+1}, L diagonal >= 0, written with K = C C^T as
    [[L - s W'^T W', L C], [C^T L, I]] >= 0 (size n_k + rank). solver "auto": Clarabel (accurate) up to
    LMI size 60, SCS above (Clarabel's dense PSD steps take minutes at size 100). On a solver failure the stage falls back to
    the ECLipsE-Fast choice (counted in ``stats['fallback_stages']``)."""
    import cvxpy as cp
    import scipy.linalg as sla

    from .prepare import lam_max

    stats = stats if stats is not None else {}
    stats.setdefault("fallback_stages", 0)
    stats.setdefault("solve_time_s", 0.0)
    stats.setdefault("sdp_stages", 0)

    def pol(st: Stage):
        stats["sdp_stages"] += 1
        K = st.K
        n = K.shape[0]
        kappa = lam_max(K)
        if kappa <= 0:
            return np.ones(n)
        # K = C C^T from an eigendecomposition (drop the numerically null part)
        w, U = sla.eigh(K / kappa, check_finite=False)
        keep = w > 1e-12
        C = U[:, keep] * np.sqrt(w[keep])[None, :]
        Wn = st.W_next
        G = Wn.T @ Wn
        G = G / max(np.linalg.norm(G, 2), 1e-300)
        lam = cp.Variable(n, nonneg=True)
        s = cp.Variable()
        r = C.shape[1]
        LC = cp.diag(lam) @ C
        Mat = cp.bmat([[cp.diag(lam) - s * G, LC], [LC.T, np.eye(r)]])
        prob = cp.Problem(cp.Maximize(s), [(Mat + Mat.T) / 2 >> 0, s >= 1e-20])
        name = solver if solver != "auto" else ("clarabel" if n + C.shape[1] <= 60 else "scs")
        backend = _check_backend(name)
        t0 = time.perf_counter()
        error = cvx.solve(prob, backend, options=dict(STAGE_SCS) if backend == "scs" else None, verbose=verbose)
        ok = error is None and lam.value is not None and np.all(np.isfinite(lam.value)) and np.max(lam.value) > 0
        stats["solve_time_s"] += time.perf_counter() - t0
        if not ok:
            stats["fallback_stages"] += 1
            return np.full(n, 0.5 / kappa)
        return np.maximum(np.asarray(lam.value, dtype=np.float64), 0.0) / kappa

    return pol
