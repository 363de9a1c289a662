"""A certified LOWER bound on the LipSDP-Neuron optimum from a dual feasible point (weak duality).

Notation: reference l2-sdp-family.md §2 and §10 (the derivation).  On a dense chain the rescaled LMI is
    A(F, lam) = A_0 + sum_a lam_a A_a - F B  >= 0,
A_0 = blkdiag(I_{n0}, 0, ..., 0), B = blkdiag(0, ..., 0, W_L^T W_L), and for neuron a = (k, j) (hidden
layer k, neuron j, row w_j of W_k) A_a = (u_a v_a^T + v_a u_a^T) / 2 with u_a = e_j - alpha_j w_j,
v_a = e_j - beta_j w_j (e_j in block k, w_j in block k-1), i.e. xi^T A_a xi = (x_j - alpha z_j)(x_j - beta z_j).
LipSDP-Neuron maximises F over lam >= 0; its value (the Lipschitz bound) is 1/sqrt(F*).

Weak duality: for every Z >= 0 with r_a := <Z, A_a> <= 0 for all a and <Z, B> > 0, and every feasible
(F, lam): 0 <= <Z, A(F, lam)> <= tr Z_00 - F <Z, B>, so F* <= tr Z_00 / <Z, B> and
    LipSDP-Neuron optimum >= sqrt(<Z, B> / tr Z_00).
This bounds the LipSDP-Neuron OPTIMUM from below, NOT the Lipschitz constant (which can be far smaller).
The bound is homogeneous in Z (Z and 1.1 Z certify the same number).

Dual point: the barrier's central path.  Newton centring (dense, backtracking down to the damped step) of
phi_t(lam, F) = -t log F - log det A(F, lam) (Hessian H_ab = <A^-1 A_a A^-1, A_b>, plus the F row), then
the Newton-step dual
    Z = A^-1 - A^-1 (sum_a D_a A_a - D_F B) A^-1,   H D = -g,   g_a = -<A^-1, A_a>,
which satisfies <Z, A_a> = 0 exactly in exact arithmetic and is PSD when the Newton decrement is < 1; at
the centre the gap is ~N/t in F.  `DualTracker` follows the path (t x3 per centring) until the certified
gap is below lipsdp-opt's gap_tol; every centred lam is also a primal candidate (certified by run_chain).

Float64 check (`check_dual`, everything on the chain W_k 2^-e_k, an exact power-of-two rescaling of the
network's own matrices): Z >= 0 by a Cholesky factorisation of Z - diag(sigma) with sigma_i above
Demmel's backward error bound (relative to Z_ii); every r_a bounded above with an explicit rounding bound
(`diagonal_repair`, a construction step, first shifts the diagonal so that they are <= 0); a positive residual
that remains is absorbed by D = J J^T, J the linearised chain x^k = m_k z^k (J_0 = I), which has <D, A_a> = -delta_a < 0
(delta_a >= h_a^2 ||row a of W_k J_{k-1}||^2 minus rounding, h = (beta - alpha)/2): every feasible lam then
satisfies sum lam_a delta_a <= n_0, so F* <= (tr Z_00 + n_0 max_a (r_a)_+ / delta_a) / <Z, B>.
Cost: dense, O(N^3 + N^2 n_h + n_h^3) per Newton step and for the check (N = n_0 + hidden neurons).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla

from ...opnorms import CHOLESKY_BACKWARD
from .prepare import Prepared

U = float(np.finfo(np.float64).eps) / 2  # unit round-off
# relative slack on sums of non-negative float terms (their rounding is <= (n - 1) u << 1e-10 for n < 1e5)
SLACK = 1e-10
# Newton centring: stop when the Newton decrement is below this (the dual is PSD for any value < 1)
NEWTON_DECREMENT = 0.25
NEWTON_MAX_STEPS = 20
# lipsdp-opt's Newton path: started at the barrier stage with eps <= START_EPS_FACTOR * gap_tol, t raised by
# PATH_FACTOR per centring, at most PATH_ROUNDS centrings per stage
START_EPS_FACTOR = 100.0
PATH_FACTOR = 3.0
PATH_ROUNDS = 12


class DualCheckError(Exception):
    """The candidate dual point does not pass the float64 check (no lower bound claimed)."""


@dataclass
class DualChain:
    """The chain W_k 2^-e_k (exact rescaling) with its slopes; the LMI offsets of its blocks."""

    Ws: list
    exps: list            # e_k
    alphas: list          # per hidden layer: float or per-neuron array
    betas: list
    sizes: list = field(default_factory=list)
    offs: np.ndarray | None = None

    def __post_init__(self):
        self.sizes = [self.Ws[0].shape[1]] + [W.shape[0] for W in self.Ws[:-1]]
        self.offs = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)

    @property
    def N(self) -> int:
        return int(self.offs[-1])

    def slopes(self, k: int):
        n = self.sizes[k + 1]
        a = np.broadcast_to(np.asarray(self.alphas[k], dtype=np.float64), (n,))
        b = np.broadcast_to(np.asarray(self.betas[k], dtype=np.float64), (n,))
        return a, b


def dual_chain(prep: Prepared) -> tuple[DualChain, list, float]:
    """The power-of-two rescaled chain of ``prep`` and the conversion of prep's normalised quantities to it:
    (chain, per hidden layer the factor lam' = factor * lam, factor F' = factor * F)."""
    raw, inv = prep.raw_and_inverse_scales()
    exps = [int(round(-math.log2(f))) for f in inv]  # 2^e_k ~ c_k = 1 / inv_k
    Ws = [np.ldexp(np.asarray(W, dtype=np.float64), -e) for W, e in zip(raw, exps)]
    for W, R, e in zip(Ws, raw, exps):  # exact unless under/overflow
        if not np.array_equal(np.ldexp(W, e), np.asarray(R, dtype=np.float64)):
            raise DualCheckError("power-of-two rescaling of the weights is not exact (under/overflow)")
    # d_k = c_1...c_k (prep) and d'_k = 2^(e_1+...+e_k): lam' = lam (d'_k / d_k)^2, F' = F (d'_L / d_L)^2
    logc = np.cumsum(np.log(prep.scales))
    loge = np.cumsum(np.asarray(exps, dtype=np.float64)) * math.log(2)
    lam_f = [math.exp(2 * (loge[k] - logc[k])) for k in range(prep.L - 1)]
    F_f = math.exp(2 * (loge[-1] - logc[-1]))
    return DualChain(Ws, exps, list(prep.alphas), list(prep.betas)), lam_f, F_f


def uv_matrices(ch: DualChain) -> tuple[np.ndarray, np.ndarray]:
    """U, V (N x n_h) with A_a = (u_a v_a^T + v_a u_a^T) / 2."""
    nh = sum(ch.sizes[1:])
    Umat, Vmat = np.zeros((ch.N, nh)), np.zeros((ch.N, nh))
    col = 0
    for k in range(len(ch.Ws) - 1):
        W, n = ch.Ws[k], ch.sizes[k + 1]
        a, b = ch.slopes(k)
        p0, p1, q0 = ch.offs[k], ch.offs[k + 1], ch.offs[k + 1]
        idx = np.arange(n)
        Umat[q0 + idx, col + idx] = 1.0
        Vmat[q0 + idx, col + idx] = 1.0
        Umat[p0:p1, col:col + n] = -(W.T * a[None, :])
        Vmat[p0:p1, col:col + n] = -(W.T * b[None, :])
        col += n
    return Umat, Vmat


def assemble(ch: DualChain, Umat, Vmat, F: float, lam: np.ndarray) -> np.ndarray:
    """A(F, lam) dense (exactly symmetric)."""
    A = (Umat * lam[None, :]) @ Vmat.T
    A = (A + A.T) / 2
    A[np.arange(ch.sizes[0]), np.arange(ch.sizes[0])] += 1.0
    s = slice(ch.offs[-2], ch.offs[-1])
    A[s, s] -= F * (ch.Ws[-1].T @ ch.Ws[-1])
    return (A + A.T) / 2


def _newton_system(ch: DualChain, Umat, Vmat, F: float, lam: np.ndarray, t: float):
    """Gradient and Hessian of phi(lam, F) = -t log F - log det A(F, lam) (variables lam, then F), with
    the factor of A and the products the dual point needs.  Raises DualCheckError when A is not PD."""
    A = assemble(ch, Umat, Vmat, F, lam)
    try:
        cf = sla.cho_factor(A, lower=True, check_finite=True)
    except (np.linalg.LinAlgError, ValueError):
        raise DualCheckError("A(F, lam) is not positive definite") from None
    WL = ch.Ws[-1]
    PW = np.zeros((ch.N, WL.shape[0]))
    PW[ch.offs[-2]:, :] = WL.T
    ZU, ZV, Y = sla.cho_solve(cf, Umat), sla.cho_solve(cf, Vmat), sla.cho_solve(cf, PW)
    Guu, Gvv, Gvu = Umat.T @ ZU, Vmat.T @ ZV, Vmat.T @ ZU
    YB = PW.T @ Y  # W_L (A^-1)_{last} W_L^T
    uy, vy = Umat.T @ Y, Vmat.T @ Y
    n = len(lam)
    g = np.empty(n + 1)
    g[:n] = -np.diag(Gvu)
    g[n] = -t / F + float(np.trace(YB))
    H = np.empty((n + 1, n + 1))
    H[:n, :n] = 0.5 * (Gvu * Gvu.T + Guu * Gvv)
    H[:n, n] = H[n, :n] = -np.sum(uy * vy, axis=1)
    H[n, n] = float(np.sum(YB * YB)) + t / F ** 2
    return g, (H + H.T) / 2, (cf, ZU, ZV, Y)


def _central_F(ch: DualChain, Umat, Vmat, lam: np.ndarray, t: float, F: float) -> float:
    """The minimiser over F of phi(lam, F) = -t log F - log det A(F, lam) for fixed lam (as in the barrier:
    F = s / g_max, g the eigenvalues of W_L M_{L-1}^{-1} W_L^T = W_L (A(0, lam)^-1)_{last} W_L^T, s from
    `barrier._inner_s`), or ``F`` itself when A(0, lam) cannot be factorised."""
    from .barrier import _inner_s

    try:
        cf = sla.cho_factor(assemble(ch, Umat, Vmat, 0.0, lam), lower=True, check_finite=True)
    except (np.linalg.LinAlgError, ValueError):
        return F
    WL = ch.Ws[-1]
    PW = np.zeros((ch.N, WL.shape[0]))
    PW[ch.offs[-2]:, :] = WL.T
    G = PW.T @ sla.cho_solve(cf, PW)
    g = np.linalg.eigvalsh((G + G.T) / 2)
    if not (np.isfinite(g[-1]) and g[-1] > 0):
        return F
    return _inner_s(np.clip(g / g[-1], 0.0, 1.0), t) / g[-1]


def newton_dual(ch: DualChain, F: float, lam: np.ndarray, t: float, *,
                deadline: float = math.inf) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Damped Newton centring of phi(lam, F) = -t log F - log det A(F, lam) (the barrier's central point
    for t), then the Newton-step dual point Z (module docstring; the F-direction enters as + dF A^-1 B A^-1).
    Raises DualCheckError when A(F, lam) is not positive definite.  Returns (Z, centred lam, F, info).
    Cost per step: O(N^3 + N^2 n_h + n_h^3)."""
    Umat, Vmat = uv_matrices(ch)
    lam = np.asarray(lam, dtype=np.float64).copy()
    n = len(lam)
    F = _central_F(ch, Umat, Vmat, lam, t, F)
    info = {"newton_steps": 0}
    for it in range(NEWTON_MAX_STEPS + 1):
        g, H, (cf, ZU, ZV, Y) = _newton_system(ch, Umat, Vmat, F, lam, t)
        d = np.sqrt(np.maximum(np.diag(H), 1e-300))  # Jacobi scaling for the solve
        try:
            D = sla.solve(H / d[:, None] / d[None, :], -g / d, assume_a="pos") / d
        except (np.linalg.LinAlgError, ValueError):
            D = np.linalg.lstsq(H, -g, rcond=None)[0]
        dec = math.sqrt(max(float(-g @ D), 0.0))
        info["newton_decrement"] = dec
        if dec <= NEWTON_DECREMENT or it == NEWTON_MAX_STEPS or time.perf_counter() > deadline:
            if dec >= 1.0:  # the Newton-step dual is then not PSD in general
                raise DualCheckError(f"Newton centring stopped at decrement {dec:.3g} >= 1 after {it} steps")
            Ainv = sla.cho_solve(cf, np.eye(ch.N))
            S = (ZU * D[None, :n]) @ ZV.T
            Z = Ainv - (S + S.T) / 2 + D[n] * (Y @ Y.T)
            return (Z + Z.T) / 2, lam, F, info
        phi0 = _phi(ch, Umat, Vmat, F, lam, t)
        step = 1.0
        while step > 1.0 / (1.0 + dec):  # backtracking (Armijo) down to the self-concordant damped step
            if _phi(ch, Umat, Vmat, F + step * D[n], lam + step * D[:n], t) <= phi0 - 0.25 * step * dec * dec:
                break
            step *= 0.5
        step = max(step, 1.0 / (1.0 + dec))
        lam = lam + step * D[:n]
        F = F + step * D[n]
        info["newton_steps"] = it + 1
    raise AssertionError("unreachable")


def _phi(ch: DualChain, Umat, Vmat, F: float, lam: np.ndarray, t: float) -> float:
    """phi(lam, F) = -t log F - log det A(F, lam), +inf outside the domain."""
    if not F > 0:
        return math.inf
    try:
        c, _ = sla.cho_factor(assemble(ch, Umat, Vmat, F, lam), lower=True, check_finite=True)
    except (np.linalg.LinAlgError, ValueError):
        return math.inf
    return -t * math.log(F) - 2.0 * float(np.sum(np.log(np.diag(c))))


def _residual_upper(ch: DualChain, Z: np.ndarray, split: bool = False) -> list:
    """Per hidden layer, upper bounds on r_a = <Z, A_a> = Z_jj - 2 m w_j^T Z_{k-1,k}[:, j]
    + p w_j^T Z_{k-1,k-1} w_j for the stored Z, with their rounding bounds added (``split``: the pairs
    (float value, rounding bound) instead)."""
    out = []
    for k in range(len(ch.Ws) - 1):
        W = ch.Ws[k]
        a, b = ch.slopes(k)
        m, p = (a + b) / 2, a * b
        P, C = slice(ch.offs[k], ch.offs[k + 1]), slice(ch.offs[k + 1], ch.offs[k + 2])
        Zp, Zc = Z[P, P], Z[P, C]
        d = np.diag(Z[C, C])
        bv = np.sum(W * Zc.T, axis=1)
        babs = np.sum(np.abs(W) * np.abs(Zc.T), axis=1)
        cv = np.sum((W @ Zp) * W, axis=1)
        cabs = np.sum((np.abs(W) @ np.abs(Zp)) * np.abs(W), axis=1)
        r = d - 2 * m * bv + p * cv
        gam = (4 * W.shape[1] + 16) * U * (1 + SLACK)
        err = gam * (np.abs(d) + 2 * np.abs(m) * babs + np.abs(p) * cabs)
        out.append((r, err) if split else r + err)
    return out


def diagonal_repair(ch: DualChain, Z: np.ndarray) -> np.ndarray:
    """A construction step before `check_dual` (which certifies whatever it gets): subtract from the
    diagonal of each hidden neuron's row the amount that makes its residual certifiably <= 0, i.e. its
    float residual plus twice its rounding bound plus 4u|Z_jj|.  <e_j e_j^T, A_a> = 1 for the neuron's own
    constraint and p W_ij^2 for the next layer's (<= 0 change when p >= 0), so the other residuals do not
    grow when p >= 0; Z stays PSD when the shifts are below lambda_min(Z) (checked by `check_dual`).  On
    deep chains this replaces the correction direction D, whose delta_a decays geometrically with depth."""
    Z = np.array(Z, dtype=np.float64)
    for k, (r, err) in enumerate(_residual_upper(ch, Z, split=True)):
        idx = np.arange(ch.offs[k + 1], ch.offs[k + 2])
        d = Z[idx, idx]
        eps = r + 2 * err + 4 * U * np.abs(d)
        Z[idx, idx] = d - np.where(eps > 0, eps, 0.0)  # residuals all from the unrepaired Z: see above
    return Z


def _delta_lower(ch: DualChain) -> list:
    """Per hidden layer, lower bounds on delta_a = -<D, A_a> for D = J J^T, J the linearised chain
    (J_0 = I, J_k = fl(m_k fl(W_k J_{k-1}))): with z = W_k J_{k-1} exact, zf its float value, |z - zf| <= ez
    and x = J_k, -(x - alpha z)(x - beta z) >= h^2 zf^2 - 2 h^2 |zf| ez - (|rho| + |alpha| ez)(|rho| + |beta| ez),
    rho = x - m zf, |rho| <= u |m zf|."""
    out = []
    J = np.eye(ch.sizes[0])
    for k in range(len(ch.Ws) - 1):
        W = ch.Ws[k]
        a, b = ch.slopes(k)
        m, h = ((a + b) / 2)[:, None], ((b - a) / 2)[:, None]
        zf = W @ J
        ez = (2 * W.shape[1] + 4) * U * (1 + SLACK) * (np.abs(W) @ np.abs(J))
        rho = U * np.abs(m * zf)
        main = np.sum(h * h * zf * zf, axis=1) * (1 - SLACK)
        err = np.sum(2 * h * h * np.abs(zf) * ez + (rho + np.abs(a)[:, None] * ez) * (rho + np.abs(b)[:, None] * ez),
                     axis=1) * (1 + SLACK)
        out.append(main - err)
        J = m * zf
    return out


def check_dual(ch: DualChain, Z: np.ndarray) -> tuple[float, dict]:
    """Float64 check of a candidate dual point Z (N x N, symmetrised here) of the chain ``ch``; returns
    (a certified lower bound on the LipSDP-Neuron optimum of the ORIGINAL network, i.e. of the chain
    times 2^(sum e_k), info).  Raises DualCheckError when Z is not certified PSD, <Z, B> is not certified
    positive, or a positive residual cannot be absorbed.  Cost: one N x N Cholesky factorisation + O(N^2 n)."""
    Z = np.asarray(Z, dtype=np.float64)
    Z = (Z + Z.T) / 2
    if not np.all(np.isfinite(Z)):
        raise DualCheckError("non-finite dual matrix")
    N = Z.shape[0]
    dz = np.diag(Z)
    if np.any(dz <= 0):
        raise DualCheckError("a diagonal entry of Z is not positive")
    # Z - diag(sigma) factorised: a float Cholesky that succeeds on H is exact for H + E with
    # |E_ij| <= g sqrt(h_ii h_jj), g = gamma_{N+1} / (1 - gamma_{N+1}) <= CHOLESKY_BACKWARD (N + 1) (Demmel);
    # by Cauchy-Schwarz x^T E x <= g (sum_i sqrt(h_ii) |x_i|)^2 <= sum_i sigma'_i x_i^2 when
    # sigma'_i = N g h_ii, and forming H rounds h_ii by <= u Z_ii: so sigma_i = (N g + 2u) Z_ii suffices
    # (a per-row margin: Z's diagonal spans many orders of magnitude on deep chains)
    sigma = (CHOLESKY_BACKWARD * (N + 1) * N + 2 * U) * dz * (1 + SLACK)
    H = Z.copy()
    H[np.arange(N), np.arange(N)] -= sigma
    try:
        sla.cholesky(H, lower=True, check_finite=True)
    except np.linalg.LinAlgError:
        raise DualCheckError(f"Z - diag(sigma) is not positive definite (relative margin "
                             f"{float(sigma[0] / dz[0]):.3g})") from None
    n0 = ch.sizes[0]
    tr00 = float(np.sum(dz[:n0])) * (1 + SLACK) * (1 + 2 * U)
    WL = ch.Ws[-1]
    s = slice(ch.offs[-2], ch.offs[-1])
    zb = float(np.sum((WL @ Z[s, s]) * WL))
    zb_abs = float(np.sum((np.abs(WL) @ np.abs(Z[s, s])) * np.abs(WL))) * (1 + SLACK)
    zb_low = zb - (4 * (WL.shape[1] + WL.shape[0]) + 16) * U * zb_abs
    if not zb_low > 0:
        raise DualCheckError("<Z, B> is not certified positive")
    res, dl = _residual_upper(ch, Z), _delta_lower(ch)
    c, worst = 0.0, 0.0
    for r, d in zip(res, dl):
        pos = r > 0
        if np.any(pos):
            if np.any(d[pos] <= 0):
                raise DualCheckError("a positive dual residual on a neuron without a correction direction")
            c = max(c, float(np.max(r[pos] / d[pos])) * (1 + SLACK))
        worst = max(worst, float(np.max(r)))
    UF = (tr00 + c * n0) * (1 + 2 * U) / zb_low * (1 + 2 * U)
    low_chain = math.sqrt(1.0 / UF) * (1 - 4 * U)
    lower = math.ldexp(low_chain, int(sum(ch.exps)))
    info = {"relative_psd_margin": float(sigma[0] / dz[0]), "trace_00": tr00, "z_b": zb_low,
            "max_residual": worst, "residual_correction": c * n0 / tr00, "lmi_size": N}
    return lower, info


def sdp_lower_bound(prep: Prepared, Ls: list, F_norm: float, t: float, *,
                    deadline: float = math.inf) -> tuple[float, list, dict]:
    """Certified lower bound on the LipSDP-Neuron optimum of the original network (a value of the l2
    Lipschitz scale, NOT a lower bound of the Lipschitz constant) from normalised multipliers ``Ls`` (prep's
    normalisation): F set to the barrier's minimiser for these multipliers (``F_norm`` only when A(0, Ls)
    cannot be factorised), the Newton-centred dual point at t, then `check_dual`.
    Returns (lower bound, the centred multipliers in prep's normalisation -- a primal candidate, to be
    certified by `certificate.run_chain` like any other --, info).  t is the barrier parameter of the
    centring (gap ~ N/t in F).  Raises DualCheckError when nothing is certified.
    Cost: dense, O(N^3 + N^2 n_h + n_h^3) per Newton step."""
    ch, lam_f, F_f = dual_chain(prep)
    lam = np.concatenate([np.asarray(l, dtype=np.float64) * f for l, f in zip(Ls, lam_f)])
    t0 = time.perf_counter()
    Z, lam_c, _, info = newton_dual(ch, F_norm * F_f, lam, t, deadline=deadline)
    pos, Lc = 0, []
    for l, f in zip(Ls, lam_f):  # the centred multipliers in prep's normalisation (a primal candidate)
        Lc.append(lam_c[pos:pos + len(l)] / f)
        pos += len(l)
    lower, cinfo = check_dual(ch, diagonal_repair(ch, Z))
    info.update(cinfo)
    info["time_s"] = time.perf_counter() - t0
    return lower, Lc, info


class DualTracker:
    """lipsdp-opt's duality-gap rule (global bounds, LMI size <= the dense limit): called after each barrier
    stage (`barrier.polish`'s stage_hook), it computes the Newton-centred dual at that stage's t, keeps the
    best certified lower bound on the LipSDP-Neuron optimum and the best centred primal candidate, and
    asks to stop once upper / lower - 1 <= gap_tol.  Evaluated once the path's eps = nu / t is at most
    START_EPS_FACTOR gap_tol; from there a dense Newton path (`evaluate`) usually reaches the gap.
    Cost per centring: see `sdp_lower_bound`."""

    def __init__(self, prep: Prepared, gap_tol: float, deadline=lambda: math.inf):
        self.prep, self.gap_tol, self.deadline = prep, gap_tol, deadline
        self.nu = prep.widths[0] + prep.n_hidden + 1
        self.lower, self.info, self.failures = None, None, []
        self.best_Ls, self.best_value_hat = None, math.inf  # centred primal candidate (normalised, certified)
        self.rounds = 0  # successful Newton centrings
        self.given_up, self.start_failures = False, 0

    def evaluate(self, Ls: list, t: float) -> float | None:
        """Newton path following from the stage point (Ls, t): centre at t, check the dual, and while the
        gap is above gap_tol (and time is left) raise t (x PATH_FACTOR, capped at N / gap_tol, where the gap
        is about gap_tol / 2) and recentre (measured on mnist-net_256x2: 3-7 Newton steps per x3 from a
        centred point, where x10 jumps from the L-BFGS points needed > 50).  Returns the best certified
        lower bound or None (failures recorded)."""
        N = self.nu - 1
        for r in range(PATH_ROUNDS):
            Lc = self._one(Ls, t)
            if Lc is None and r == 0:
                self.start_failures += 1
                self.given_up = self.start_failures >= 2  # two stage points could not be centred: stop trying
            if Lc is None or self.gap(math.inf) <= self.gap_tol or time.perf_counter() > self.deadline():
                break
            Ls, t = Lc, max(min(PATH_FACTOR * t, N / self.gap_tol), 2.0 * t)
        return self.lower

    def _one(self, Ls: list, t: float):
        """One centring at t and its dual check: the centred multipliers, or None on a failure."""
        from ...errors import MethodFailed
        from .certificate import run_chain

        try:
            low, Lc, info = sdp_lower_bound(self.prep, Ls, 1.0, t, deadline=self.deadline())
            cc = run_chain(self.prep, None, fixed=Lc)
        except (DualCheckError, MethodFailed, np.linalg.LinAlgError, ValueError) as e:
            self.failures.append(f"t={t:.3g}: {e}"[:200])
            return None
        info["t"] = t
        self.rounds += 1
        if cc.value_hat < self.best_value_hat:
            self.best_Ls, self.best_value_hat = cc.Ls, cc.value_hat
        if self.lower is None or low > self.lower:
            self.lower, self.info = low, info
        return cc.Ls

    def gap(self, value_hat: float) -> float:
        """upper / lower - 1 for the normalised upper value ``value_hat`` (inf without a lower bound)."""
        if self.lower is None:
            return math.inf
        return self.prep.unscale(min(value_hat, self.best_value_hat)) / self.lower - 1.0

    def __call__(self, Ls: list, t: float, best_log: float) -> bool:
        if self.nu / t > START_EPS_FACTOR * self.gap_tol or self.given_up:
            return False
        self.evaluate(Ls, t)
        return self.gap(math.exp(best_log / 2)) <= self.gap_tol

    def details(self, value: float) -> dict:
        """The report: sdp_lower (a certified lower bound on the LipSDP-Neuron OPTIMUM, not on the Lipschitz
        constant), sdp_gap = value / sdp_lower - 1, and how the dual was obtained and checked."""
        if self.lower is None:
            why = "; ".join(self.failures[-3:]) or "the path stopped before the dual was evaluated"
            return {"sdp_lower_note": f"no certified dual point: {why}"}
        meaning = ("sdp_lower bounds the LipSDP-Neuron optimum from below (weak duality, float64-checked dual "
                   "point); it is NOT a lower bound on the Lipschitz constant")
        return {"sdp_lower": self.lower, "sdp_gap": value / self.lower - 1.0,
                "sdp_dual": {**self.info, "centrings": self.rounds, "meaning": meaning, "failures": self.failures}}
