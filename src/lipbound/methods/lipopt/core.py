"""Core of LiPopt: the norm-gradient polynomial and the Krivine/Handelman LP, built from the weights.

Everything here is vectorised numpy / scipy.sparse; no symbolic algebra.

A *scalar problem* (`ScalarProblem`) is the multilinear polynomial

    p(x_0, ..., x_{d-1}) = x_0^T M_1 diag(x_1) M_2 ... diag(x_{d-1}) v

whose layer-l variables range over boxes x_l in [a_l, a_l + w_l] (w_l >= 0; w_l = 0 is a constant).
For the l_inf Lipschitz constant of output j: x_0 = t in [-1, 1]^n (the dual l1 ball), M_l = W_l^T,
x_l = the derivatives of the l-th activation, v = W_d[j]; then max p = max ||grad f_j||_1.
For l_1 the chain is transposed (x_0 = u over the outputs, v = a column of W_1).

Every variable is normalised to y = (x - a) / w in [0, 1]; p becomes a multilinear polynomial in y
whose monomials are sets of variables (at most one per layer). The level-k LP (Handelman
certificate) is

    min lambda  s.t.  lambda - p == sum_h c_h h  (coefficient identity),  c >= 0,

over products h = prod_{j in A} y_j prod_{j in J \\ A} (1 - y_j) for the chosen k-subsets J of
variables (all of them: dense; those inside the reachability cliques: sparse). Any (lambda, c) gives a
certified bound lambda - min_{[0,1]^m} r, with r the residual polynomial, bounded via its coefficients
because every monomial lies in [0, 1] on the cube (see `certify`).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ...intervals import U, gamma  # the rounding-error factor gamma_n = n u / (1 - n u) (Higham)


class CoverageError(RuntimeError):
    """A monomial of the polynomial is not a monomial of any product: the product set is wrong."""


# --------------------------------------------------------------------------------------------------
# scalar problems
# --------------------------------------------------------------------------------------------------


def interval_bounds(Ms: list, a: list, w: list, V: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Certified upper bounds on max p, one per column v of ``V``, for the problems that share ``Ms`` and
    the ranges (the scalar problems of one chain differ only in v), by midpoint-radius interval
    arithmetic from v towards x_0: z = c +- r, every float64 rounding added to r, so the bound holds in
    exact arithmetic. Cost: per layer one sparse product and one |M| product with as many columns as V
    (``chunk`` columns at a time: 16 was the fastest on Convnet_avgpool's 784 l_1 problems, 0.5 s)."""
    V = np.asarray(V, dtype=np.float64)
    ranges = [_midpoint_radius(a[l], w[l]) for l in range(len(a))]
    abs_Ms = [abs(M) for M in Ms]
    return np.concatenate([_interval_bound_columns(Ms, abs_Ms, ranges, V[:, i:i + chunk])
                           for i in range(0, V.shape[1], chunk)])


def _interval_bound_columns(Ms, abs_Ms, ranges, c) -> np.ndarray:
    r = np.zeros_like(c)
    for l in range(len(ranges) - 1, 0, -1):
        mid, rad = ranges[l]
        absc = np.abs(c)
        # x z - mid c = mid (z - c) + (x - mid) z, and fl(mid c) errs by at most u |mid c|
        g = gamma(8)
        r = (np.abs(mid) * (r + U * absc) + rad * (absc + r)) * (1 + g)
        c = mid * c
        n = Ms[l - 1].shape[1]
        g = gamma(n + 4)
        r = (abs_Ms[l - 1] @ (r + g * np.abs(c))) * (1 + g)  # fl(M c) errs by at most gamma_n |M| |c|
        c = Ms[l - 1] @ c
    mid, rad = ranges[0]  # max over x_0 in its box of x_0 . z, summed over the entries of x_0
    g = gamma(len(mid) + 8)
    absc = np.abs(c)
    return np.sum((np.abs(mid) * (absc + r) + rad * (absc + r)) * (1 + g), axis=0) * (1 + g)


def _midpoint_radius(a: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, h) with [a, a + w] inside [m - h, m + h] in exact arithmetic, as column vectors."""
    a = np.asarray(a, dtype=np.float64)
    mid = a + 0.5 * np.asarray(w, dtype=np.float64)
    rad = np.nextafter(0.5 * np.asarray(w, dtype=np.float64) + 2 * np.spacing(np.abs(mid)), np.inf)
    return mid[:, None], rad[:, None]


@dataclass
class ScalarProblem:
    """max of x_0^T M_1 diag(x_1) ... diag(x_{d-1}) v over x_l in [a_l, a_l + w_l].

    ``Ms[l-1]`` is M_l (n_{l-1} x n_l, scipy csr), ``a[l]``, ``w[l]`` the ranges of layer l."""

    Ms: list
    a: list
    w: list
    v: np.ndarray
    label: str = ""

    @property
    def depth(self) -> int:
        return len(self.a)

    def pruned(self) -> "ScalarProblem":
        """The same polynomial without the neurons that lie on no non-zero path (dead neurons, zero
        weights). Exact: the removed neurons contribute nothing to p."""
        d = self.depth
        alive = [((np.abs(self.a[l]) > 0) | (self.w[l] > 0)) for l in range(d)]
        fwd = [alive[0].copy()]
        for l in range(1, d):
            reach = (abs(self.Ms[l - 1]).T @ fwd[l - 1].astype(float)) > 0
            fwd.append(reach & alive[l])
        bwd = [None] * d
        bwd[d - 1] = fwd[d - 1] & (self.v != 0)
        for l in range(d - 2, -1, -1):
            reach = (abs(self.Ms[l]) @ bwd[l + 1].astype(float)) > 0
            bwd[l] = reach & fwd[l]
        keep = [np.flatnonzero(b) for b in bwd]
        Ms = [sp.csr_matrix(self.Ms[l - 1][keep[l - 1]][:, keep[l]]) for l in range(1, d)]
        for M in Ms:
            M.eliminate_zeros()
        return ScalarProblem(Ms, [self.a[l][keep[l]] for l in range(d)], [self.w[l][keep[l]] for l in range(d)],
                             self.v[keep[d - 1]], self.label)

    def naive_bound(self) -> float:
        """A certified (up to the stated rounding margin) upper bound on max p: the |W|-product
        1^T |M_1| S_1 ... S_{d-1} |v| with S_l = max |x_l|. Cost: one sparse mat-vec per layer."""
        z = np.abs(self.v) * np.maximum(np.abs(self.a[-1]), np.abs(self.a[-1] + self.w[-1]))
        n_ops = len(z)
        for l in range(self.depth - 1, 0, -1):
            z = abs(self.Ms[l - 1]) @ z
            n_ops += self.Ms[l - 1].shape[1]
            z = z * np.maximum(np.abs(self.a[l - 1]), np.abs(self.a[l - 1] + self.w[l - 1]))
        val = float(z.sum())
        return val * (1 + gamma(n_ops + 4 * self.depth + len(z) + 8))

    def interval_bound(self) -> float:
        """A certified upper bound on max p by interval arithmetic (`interval_bounds`): signs kept, so at
        most `naive_bound` up to rounding. Cost: one sparse mat-vec and one |M| mat-vec per layer."""
        return float(interval_bounds(self.Ms, self.a, self.w, self.v[:, None])[0])

    def vertex_max(self, max_vertices: int = 2 ** 22) -> float:
        """The exact maximum of p over its box by enumerating the vertices of layers 1..d-1 (p is
        multilinear; layer 0 is maximised in closed form). For tiny problems / tests only."""
        d = self.depth
        var = [np.flatnonzero(self.w[l] > 0) for l in range(1, d)]
        nv = sum(len(x) for x in var)
        if 2 ** nv > max_vertices:
            raise ValueError("too many vertices")
        M = [m.toarray() for m in self.Ms]
        best = -np.inf
        for bits in itertools.product((0, 1), repeat=nv):
            pos = 0
            z = self.v.copy()
            xs = []
            for l in range(1, d):
                x = self.a[l].copy()
                for i in var[l - 1]:
                    x[i] += self.w[l][i] * bits[pos]
                    pos += 1
                xs.append(x)
            for l in range(d - 1, 0, -1):
                z = M[l - 1] @ (xs[l - 1] * z)
            # layer 0: maximise the linear function over the box
            val = float(np.sum(np.maximum(self.a[0] * z, (self.a[0] + self.w[0]) * z)))
            best = max(best, val)
        return best


# --------------------------------------------------------------------------------------------------
# the polynomial in normalised variables
# --------------------------------------------------------------------------------------------------


@dataclass
class Poly:
    """A multilinear polynomial in variables y_0..y_{m-1} in [0,1].

    ``monos``: (n, d) int64, the variable ids of each monomial in increasing order, padded with -1;
    ``coef``: float64 values; ``abs_err``: a bound on the rounding error of each coefficient."""

    m: int
    monos: np.ndarray
    coef: np.ndarray
    abs_err: np.ndarray
    layer_of_var: np.ndarray
    var_ids: list  # per layer: array mapping neuron index -> var id (-1 for constants)


def gradient_polynomial(prob: ScalarProblem) -> Poly:
    """Expand p in the normalised variables y = (x - a)/w of the non-constant neurons.

    For each subset S of layers, the monomials with one variable in each layer of S and none in the
    others have coefficients  prod_{l in S} w_l[i_l] * (the chain contracted with a_l on l not in S);
    these are computed by sparse matrix products along the chain (the rows of the state are the
    partial monomials). The same computation with |M|, |a|, |v| bounds the rounding error.
    Cost: sum over S of the number of partial paths; 2^d subsets."""
    d = prob.depth
    var_ids, offset = [], 0
    layer_of_var = []
    for l in range(d):
        ids = -np.ones(len(prob.a[l]), dtype=np.int64)
        isvar = prob.w[l] > 0
        ids[isvar] = offset + np.arange(int(isvar.sum()))
        offset += int(isvar.sum())
        layer_of_var.append(np.full(int(isvar.sum()), l))
        var_ids.append(ids)
    m = offset
    absM = [abs(M) for M in prob.Ms]
    n_ops = 4 * d + 8 + sum(len(a) for a in prob.a)
    g = gamma(n_ops)
    monos_all, coef_all, err_all = [], [], []
    for S in range(2 ** d):
        in_S = [(S >> l) & 1 == 1 for l in range(d)]
        vals = []
        for signed in (True, False):
            a = [x if signed else np.abs(x) for x in prob.a]
            Ms = prob.Ms if signed else absM
            v = prob.v if signed else np.abs(prob.v)
            # layer 0
            n0 = len(a[0])
            if in_S[0]:
                idx = np.flatnonzero(var_ids[0] >= 0)
                R = sp.csr_matrix((prob.w[0][idx], (np.arange(len(idx)), idx)), shape=(len(idx), n0))
                free = var_ids[0][idx][:, None]
            else:
                R = sp.csr_matrix(a[0][None, :])
                free = np.zeros((1, 0), dtype=np.int64)
            for l in range(1, d):
                R = (R @ Ms[l - 1]).tocsr()
                R.eliminate_zeros()
                if in_S[l]:
                    C = R.tocoo()
                    keep = var_ids[l][C.col] >= 0
                    rows, cols, data = C.row[keep], C.col[keep], C.data[keep]
                    data = data * prob.w[l][cols]
                    R = sp.csr_matrix((data, (np.arange(len(rows)), cols)), shape=(len(rows), len(a[l])))
                    free = np.hstack([free[rows], var_ids[l][cols][:, None]])
                else:
                    R = (R @ sp.diags(a[l])).tocsr()
            vals.append(np.asarray(R @ v).ravel())
        coef, absval = vals
        nz = coef != 0
        k = free.shape[1]
        mon = -np.ones((int(nz.sum()), d), dtype=np.int64)
        mon[:, :k] = free[nz]
        monos_all.append(mon)
        coef_all.append(coef[nz])
        err_all.append(g * absval[nz])
    monos = np.vstack(monos_all)
    coef = np.concatenate(coef_all)
    err = np.concatenate(err_all)
    lov = np.concatenate(layer_of_var) if layer_of_var else np.zeros(0, dtype=np.int64)
    return Poly(m, monos, coef, err, lov, var_ids)


# --------------------------------------------------------------------------------------------------
# product sets
# --------------------------------------------------------------------------------------------------


def _combos(r: int, k: int) -> np.ndarray:
    if k > r or k < 0:
        return np.zeros((0, max(k, 0)), dtype=np.int64)
    n = math.comb(r, k)
    return np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(r), k)),
                       dtype=np.int64, count=n * k).reshape(n, k)


def count_products_dense(m: int, k: int) -> int:
    k = min(k, m)
    return math.comb(m, k) * 2 ** k


def dense_subsets(m: int, k: int) -> np.ndarray:
    """All k-subsets (rows sorted) of the m variables (all m if m < k)."""
    return _combos(m, min(k, m))


def input_cliques(prob: ScalarProblem, poly: Poly) -> list[np.ndarray]:
    """For each layer-0 variable v, the clique {v} union R(v): the variable neurons lying on a non-zero
    path from v to the output (the reachability cone of v inside the cone of the output).
    Every monomial of p lies in one of these cliques (each path starts at some layer-0 neuron)."""
    d = prob.depth
    n0 = len(prob.a[0])
    # forward reachability from each input (boolean sparse matrices), then intersect with backward
    back = [None] * d
    back[d - 1] = prob.v != 0
    for l in range(d - 2, -1, -1):
        back[l] = (abs(prob.Ms[l]) @ back[l + 1].astype(float)) > 0
    reach = sp.identity(n0, format="csr", dtype=np.float64)
    members = [[] for _ in range(n0)]
    for l in range(1, d):
        reach = (reach @ (abs(prob.Ms[l - 1]) > 0).astype(np.float64)).tocsr()
        reach.data[:] = 1.0
        # keep only neurons co-reachable to the output (the others carry no path to it)
        reach = (reach @ sp.diags(back[l].astype(np.float64))).tocsr()
        reach.eliminate_zeros()
        ids = poly.var_ids[l]
        for i in range(n0):
            cols = reach.indices[reach.indptr[i]:reach.indptr[i + 1]]
            vid = ids[cols]
            members[i].append(vid[vid >= 0])
    cliques = []
    for i in range(n0):
        head = poly.var_ids[0][i]
        rest = np.concatenate(members[i]) if members[i] else np.zeros(0, dtype=np.int64)
        clique = np.sort(np.concatenate([[head] if head >= 0 else [], rest]).astype(np.int64))
        if len(clique):
            cliques.append(clique)
    return cliques


def clique_subsets(cliques: list[np.ndarray], k: int, m: int, anchored: bool = False,
                   layer_of_var: np.ndarray | None = None) -> np.ndarray:
    """The distinct k-subsets (sorted rows) of the cliques (the whole clique when it has < k members);
    rows of different lengths are padded with -1 at the end. ``anchored``: only the subsets that
    contain the clique's anchor (its layer-0 variable, the smallest id) -- enough for coverage, since
    every monomial of p inside a clique extends to a path through the anchor."""
    out = []
    for c in cliques:
        if anchored and len(c) > k and layer_of_var[c[0]] == 0:
            rest = c[1:]
            sub = rest[_combos(len(rest), k - 1)]
            sub = np.hstack([np.full((len(sub), 1), c[0]), sub])
        else:
            kk = min(k, len(c))
            sub = c[_combos(len(c), kk)]
            if kk < k:
                sub = np.hstack([sub, -np.ones((len(sub), k - kk), dtype=np.int64)])
        out.append(sub)
    if not out:
        return np.zeros((0, k), dtype=np.int64)
    allsub = np.vstack(out)
    return np.unique(allsub, axis=0)


def path_subsets(poly: Poly) -> np.ndarray:
    """The variable sets of the monomials of p (rows padded with -1): the cheapest product set that
    covers p -- one k = depth product family per non-zero path, without the same-layer pairs."""
    monos = poly.monos
    if len(monos) == 0:
        return np.zeros((0, monos.shape[1]), dtype=np.int64)
    rows = np.sort(np.where(monos >= 0, monos, np.iinfo(np.int64).max), axis=1)
    rows = np.where(rows == np.iinfo(np.int64).max, -1, rows)
    rows = rows[(rows >= 0).any(axis=1)]
    return np.unique(rows, axis=0)


def count_clique_products(cliques: list[np.ndarray], k: int, anchored: bool = False) -> int:
    """An upper estimate (before de-duplication) of the number of products of the cliques."""
    if anchored:
        return sum(math.comb(len(c) - 1, k - 1) * 2 ** k if len(c) > k else 2 ** len(c) for c in cliques)
    return sum(math.comb(len(c), min(k, len(c))) * 2 ** min(k, len(c)) for c in cliques)


# --------------------------------------------------------------------------------------------------
# the LP
# --------------------------------------------------------------------------------------------------


def _encoder(m: int, k: int):
    base = m + 1
    if base ** max(k, 1) >= 2 ** 62:
        raise OverflowError("monomial keys do not fit 64 bits")
    powers = base ** np.arange(k, dtype=np.int64)

    def encode(rows: np.ndarray) -> np.ndarray:
        """Key of each row (sorted variable ids, -1 = absent): sum (v+1) base^position over present ids,
        positions counted among the present ids."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape[1] == 0:
            return np.zeros(len(rows), dtype=np.int64)
        present = rows >= 0
        pos = np.cumsum(present, axis=1) - 1
        pw = np.where(present, powers[np.clip(pos, 0, k - 1)], 0)
        return np.sum(np.where(present, rows + 1, 0) * pw, axis=1)

    return encode


@dataclass
class LP:
    """min lambda s.t. A [lambda; c] = b, c >= 0; row i <-> monomial key ``keys[i]``."""

    A_prod: sp.csc_matrix  # rows x n_products (coefficients of the products)
    b: np.ndarray  # = -p coefficients per row
    p_err: np.ndarray  # rounding-error bound of p's coefficients per row
    const_row: int
    keys: np.ndarray
    subsets: np.ndarray
    k: int
    n_products: int
    build_time: float = 0.0

    @property
    def n_rows(self) -> int:
        return self.A_prod.shape[0]

    @property
    def n_cols(self) -> int:
        return self.A_prod.shape[1] + 1

    @property
    def nnz(self) -> int:
        return self.A_prod.nnz + 1

    def sizes(self) -> dict:
        return {"rows": int(self.n_rows), "columns": int(self.n_cols), "nonzeros": int(self.nnz),
                "products": int(self.n_products), "subsets": int(len(self.subsets)), "degree": int(self.k)}


def build_lp(poly: Poly, subsets: np.ndarray, k: int, check_coverage: bool = True) -> LP:
    """Rows: the union U of the monomials of p and of all products; one column per product
    prod_{A} y prod_{J\\A} (1 - y) for each subset J (rows of ``subsets``, -1 padded) and sign pattern A.

    Expansion: prod_A y prod_{J\\A}(1-y) = sum_{A <= M <= J} (-1)^{|M\\A|} y^M; 3^|J| non-zeros per subset.
    Raises `CoverageError` if a monomial of p is in no product (the LP would otherwise silently drop
    it and return a wrong 'bound'). Cost: O(#subsets 3^k) time and memory."""
    t0 = time.perf_counter()
    m = poly.m
    d = poly.monos.shape[1]
    J = np.asarray(subsets, dtype=np.int64)
    kk = max(k, d, J.shape[1] if J.ndim == 2 else 0)
    encode = _encoder(m, kk)
    nslots = (J >= 0).sum(axis=1) if len(J) else np.zeros(0, dtype=np.int64)
    # expand each group of subsets of equal size
    pieces = []  # (keys of rows, column ids, values)
    col_offset = 0
    for size in np.unique(nslots):
        Jg = J[nslots == size, :size]
        ng = len(Jg)
        mk = {}
        for M in range(2 ** size):
            cols = [i for i in range(size) if (M >> i) & 1]
            sub = np.full((ng, kk), -1, dtype=np.int64)
            sub[:, :len(cols)] = Jg[:, cols]
            mk[M] = encode(sub)
        for A in range(2 ** size):
            rest = [i for i in range(size) if not (A >> i) & 1]
            for r in range(len(rest) + 1):
                for extra in itertools.combinations(rest, r):
                    M = A | sum(1 << i for i in extra)
                    pieces.append((mk[M], col_offset + np.arange(ng) * 2 ** size + A, (-1.0) ** r))
        col_offset += ng * 2 ** size
    n_products = col_offset
    p_keys = encode(np.pad(poly.monos, ((0, 0), (0, kk - d)), constant_values=-1)) if len(poly.monos) else \
        np.zeros(0, dtype=np.int64)
    prod_keys = np.concatenate([pc[0] for pc in pieces]) if pieces else np.zeros(0, dtype=np.int64)
    keys, inv = np.unique(np.concatenate([p_keys, np.zeros(1, dtype=np.int64), prod_keys]), return_inverse=True)
    p_rows = inv[:len(p_keys)]
    const_row = int(inv[len(p_keys)])
    prod_rows = inv[len(p_keys) + 1:]
    if check_coverage:
        covered = np.zeros(len(keys), dtype=bool)
        covered[prod_rows] = True
        if not covered[p_rows].all():
            missing = int((~covered[p_rows]).sum())
            raise CoverageError(f"{missing} monomial(s) of the gradient polynomial appear in no product "
                                f"of the LP (the product set does not cover p)")
    cols = np.concatenate([pc[1] for pc in pieces]) if pieces else np.zeros(0, dtype=np.int64)
    vals = np.concatenate([np.full(len(pc[1]), pc[2]) for pc in pieces]) if pieces else np.zeros(0)
    A_prod = sp.csc_matrix((vals, (prod_rows, cols)), shape=(len(keys), n_products))
    b = np.zeros(len(keys))
    p_err = np.zeros(len(keys))
    np.add.at(b, p_rows, -poly.coef)
    np.add.at(p_err, p_rows, poly.abs_err)
    return LP(A_prod, b, p_err, const_row, keys, J, kk, n_products, time.perf_counter() - t0)


@dataclass
class LPSolution:
    value: float | None  # certified bound (None if none)
    lam: float | None
    status: str
    solve_time: float
    correction: float = 0.0
    info: dict = field(default_factory=dict)


def certify(lp: LP, lam: float, c: np.ndarray) -> tuple[float, float]:
    """Certified upper bound on max_{[0,1]^m} p from any (lambda, c), and the correction added.

    With c+ = max(c, 0), r = (lambda - p) - sum c+_h h exactly; then for y in [0,1]^m,
    p(y) = lambda - sum c+_h h(y) - r(y) <= lambda - r(y) <= lambda - r_0 + sum_{mu != 0} max(0, -r_mu),
    since every monomial y^mu lies in [0, 1]. r is computed in float64 and each coefficient is enlarged
    by a rounding-error bound gamma_n (|lambda| + |p_mu| + (|A| c+)_mu) plus p's own coefficient error."""
    c = np.maximum(np.asarray(c, dtype=np.float64), 0.0)
    Ac = lp.A_prod @ c
    absAc = abs(lp.A_prod) @ c
    r = lp.b - Ac  # = -p - A c
    r[lp.const_row] += lam
    nnz_col = np.diff(lp.A_prod.tocsr().indptr)
    err = gamma(int(nnz_col.max(initial=0)) + 4) * (np.abs(lp.b) + absAc) + lp.p_err
    err[lp.const_row] += gamma(4) * abs(lam)
    neg = np.maximum(0.0, -r) + err
    neg[lp.const_row] = 0.0
    correction = -r[lp.const_row] + err[lp.const_row] + float(neg.sum())
    value = lam + correction
    value = value + gamma(len(r) + 8) * (abs(lam) + abs(correction))
    return float(value), float(value - lam)


def solve_lp(lp: LP, time_limit: float | None = None, solver: str = "ipm", threads: int = 1) -> LPSolution:
    """Solve min lambda with HiGHS (`lipbound.highs`) and certify the result with `certify`.

    ``solver``: 'ipm' (interior point without crossover; fast on large LPs) or 'simplex'. A solve that
    stops on the time limit still yields a certified value when HiGHS returns a primal point (feasible or
    not: the residual correction accounts for any violation)."""
    from ... import highs

    n_rows = lp.A_prod.shape[0]
    # column 0 = lambda (coefficient -1 on the constant row), then the products
    lam_col = sp.csc_matrix((np.array([-1.0]), (np.array([lp.const_row]), np.array([0]))), shape=(n_rows, 1))
    A = sp.hstack([lam_col, lp.A_prod], format="csc")
    cost = np.zeros(A.shape[1])
    cost[0] = 1.0
    lower = np.zeros(A.shape[1])
    lower[0] = -np.inf
    opts = {"threads": int(threads), "solver": solver if solver in ("ipm", "simplex") else None,
            "crossover": False if solver == "ipm" else None}
    if time_limit is not None and math.isfinite(time_limit):
        opts["time_limit"] = max(0.05, float(time_limit))
    t0 = time.perf_counter()
    r = highs.solve(cost, A, lp.b, lp.b, lower, None, sense="min", **opts)
    solve_time = time.perf_counter() - t0
    status = r.highs_status
    extra = {"highs_status": status, "highs_objective": r.objective if r.objective is not None else math.nan,
             "ipm_iterations": r.ipm_iterations, "simplex_iterations": r.simplex_iterations}
    x = r.primal
    if x is None or len(x) != A.shape[1] or not np.isfinite(x).all():
        return LPSolution(None, None, status, solve_time, info=extra)
    lam = float(x[0])
    value, corr = certify(lp, lam, x[1:])
    if not math.isfinite(value):
        return LPSolution(None, lam, status, solve_time, info=extra)
    return LPSolution(value, lam, status, solve_time, corr, extra)
