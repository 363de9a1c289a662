"""The cvxpy back ends lipbound offers, in one place: which conic solvers, their default settings, how a
time limit reaches each, and one solve call that keeps solver warnings out of the output.

Nothing here is certified: every caller re-certifies the solver's answer in float64 (the LipSDP
multipliers by the exact decomposition, the Shor dual by its eigenvalue correction)."""

from __future__ import annotations

import math
import warnings

#: lipbound's name -> (cvxpy's solver name, default settings, the keyword of its time limit)
BACKENDS = {
    "scs": ("SCS", {"eps_abs": 1e-6, "eps_rel": 1e-6, "max_iters": 50_000}, "time_limit_secs"),
    "clarabel": ("CLARABEL", {}, "time_limit"),
}


def installed() -> tuple[str, ...]:
    """The back ends of `BACKENDS` that cvxpy finds installed."""
    import cvxpy as cp

    have = set(cp.installed_solvers())
    return tuple(name for name, (cvx_name, _, _) in BACKENDS.items() if cvx_name in have)


def settings(backend: str) -> dict:
    """A copy of the default settings of ``backend`` (a key of `BACKENDS`, any case)."""
    return dict(BACKENDS[_key(backend)][1])


def solve(problem, backend: str, *, options: dict | None = None, time_limit: float | None = None,
          min_time: float = 0.1, verbose: bool = False) -> str | None:
    """Solve the cvxpy ``problem`` with ``backend`` (``options`` replace its default settings; a finite
    ``time_limit`` is passed under the back end's own keyword, at least ``min_time``). Returns None when the
    solver ran (its status is in ``problem.status``), else the solver's error in one line. Cost: the
    solver's. Accuracy warnings are silenced: the status says 'inaccurate' and callers re-certify."""
    import cvxpy as cp

    cvx_name, defaults, time_key = BACKENDS[_key(backend)]
    opts = dict(defaults if options is None else options)
    if time_limit is not None and math.isfinite(time_limit):
        opts[time_key] = max(min_time, float(time_limit))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            problem.solve(solver=cvx_name, verbose=verbose, **opts)
    except cp.error.SolverError as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def _key(backend: str) -> str:
    key = str(backend).strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"unknown cvxpy back end {backend!r} (one of {', '.join(BACKENDS)})")
    return key
