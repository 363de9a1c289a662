"""The one HiGHS wrapper: LPs and MIPs built from arrays, solved silently, results as plain numpy.

Every LP / MIP of lipbound goes through `Problem` (or the one-shot `solve`):

    p = Problem(c, A, row_lower, row_upper, col_lower, col_upper, integrality=None, sense="max",
                time_limit=10, threads=1, solver="ipm", crossover=False, mip_rel_gap=1e-6)
    r = p.solve()          # Result: status, objective, primal, row_dual, col_dual, dual_bound, ...
    p.set_cost(c2); p.add_row(lo, hi, cols, vals); p.delete_rows(k); p.set_start(x); p.solve()

* ``A``: a scipy sparse matrix or a dense array (rows x columns); bounds may be +-inf (HiGHS infinity);
  ``integrality``: a boolean array (True = integer), or None for an LP.
* Options (`Problem.set_options`): ``time_limit`` (s), ``threads`` (HiGHS's thread scheduler is
  process-wide and fixed by the first solve; a solve asking for another count rebuilds it rather than
  failing with status "Not Set"), ``solver`` ("ipm", "simplex",
  "choose", "pdlp"), ``crossover`` (bool), ``mip_rel_gap``, ``mip_abs_gap``, ``random_seed``, ``verbose``
  (solver log on stdout); any other HiGHS option by its own name (``mip_heuristic_run_rins=False``).
* `Result.status` is a `Status` (a ``str`` enum: "optimal", "infeasible", "time_limit", ...);
  ``highs_status`` keeps HiGHS's own wording. ``primal`` is the column vector whenever HiGHS has one
  (``primal_feasible`` says whether HiGHS considers it feasible: an interior point stopped on the time
  limit may not be); ``dual_bound`` is the MIP's best bound in the objective's sense (an upper bound
  when maximising), None for an LP (`Problem.is_mip` false: HiGHS's mip_dual_bound is then 0.0, not a
  bound; bound an LP from its duals). Nothing here is certified: callers re-check what they claim (weak duality, residual
  corrections, re-evaluation of witnesses).

**No output of its own.** ``highspy.Highs()`` prints a two-line banner ("Running HiGHS 1.16.0 ...") on
file descriptor 1 when the first instance of the process is constructed, before any option can be set
(highspy takes no options at construction and reads no environment variable for it). `new_highs`
therefore constructs with fd 1 pointed at /dev/null (Python's and C's buffers flushed first, fd 1
restored in a ``finally``) and sets ``output_flag`` off at once. The redirection lasts the constructor
only (microseconds) and is done for every construction, so it does not depend on HiGHS printing the
banner once per process; output of another thread in that window would be lost (lipbound prints from
its main thread only).
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

try:
    import highspy
except ImportError:  # pragma: no cover - highspy is a declared dependency
    highspy = None

from .errors import Unsupported

INF = math.inf
_REDIRECT_LOCK = threading.Lock()


class Status(str, enum.Enum):
    """Outcome of a solve (compares equal to its string value)."""

    OPTIMAL = "optimal"
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"
    UNBOUNDED_OR_INFEASIBLE = "unbounded_or_infeasible"
    TIME_LIMIT = "time_limit"
    ITERATION_LIMIT = "iteration_limit"
    SOLUTION_LIMIT = "solution_limit"
    OBJECTIVE_BOUND = "objective_bound"
    INTERRUPTED = "interrupted"
    EMPTY = "empty"
    ERROR = "error"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    @property
    def stopped_early(self) -> bool:
        """A limit (time, iterations, solutions, interrupt) stopped the solver before it finished."""
        return self in (Status.TIME_LIMIT, Status.ITERATION_LIMIT, Status.SOLUTION_LIMIT, Status.INTERRUPTED)


def _status_table() -> dict:
    if highspy is None:  # pragma: no cover
        return {}
    S = highspy.HighsModelStatus
    table = {"kOptimal": Status.OPTIMAL, "kInfeasible": Status.INFEASIBLE, "kUnbounded": Status.UNBOUNDED,
             "kUnboundedOrInfeasible": Status.UNBOUNDED_OR_INFEASIBLE, "kTimeLimit": Status.TIME_LIMIT,
             "kIterationLimit": Status.ITERATION_LIMIT, "kSolutionLimit": Status.SOLUTION_LIMIT,
             "kObjectiveBound": Status.OBJECTIVE_BOUND, "kObjectiveTarget": Status.OBJECTIVE_BOUND,
             "kInterrupt": Status.INTERRUPTED, "kHighsInterrupt": Status.INTERRUPTED, "kModelEmpty": Status.EMPTY,
             "kNotset": Status.UNKNOWN, "kUnknown": Status.UNKNOWN, "kLoadError": Status.ERROR,
             "kModelError": Status.ERROR, "kPresolveError": Status.ERROR, "kSolveError": Status.ERROR,
             "kPostsolveError": Status.ERROR, "kMemoryLimit": Status.ERROR}
    return {getattr(S, k): v for k, v in table.items() if hasattr(S, k)}


_STATUS = _status_table()


def _flush_c_stdout() -> None:
    """fflush(NULL): C stdio buffers reach the file descriptors (a no-op where libc is not reachable)."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # pragma: no cover - platform without a C runtime handle
        pass


@contextlib.contextmanager
def _fd1_to_devnull():
    """Point file descriptor 1 at /dev/null for the duration of the block (flushing Python's and C's
    stdout buffers before and after), then restore it. Does nothing if fd 1 cannot be duplicated."""
    with _REDIRECT_LOCK:
        try:
            sys.stdout.flush()
        except (AttributeError, ValueError, OSError):
            pass
        try:
            saved = os.dup(1)
        except OSError:  # no fd 1 (closed): nothing to protect
            yield
            return
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
            finally:
                os.close(devnull)
            yield
        finally:
            _flush_c_stdout()
            os.dup2(saved, 1)
            os.close(saved)


def new_highs():
    """A ``highspy.Highs`` instance constructed without printing anything (see the module docstring),
    with ``output_flag`` off. Raises `Unsupported` when highspy is missing."""
    if highspy is None:  # pragma: no cover
        raise Unsupported("highspy (HiGHS) is not installed")
    with _fd1_to_devnull():
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
    return h


@dataclass
class Result:
    """What one solve returned (plain floats and numpy arrays; nothing certified)."""

    status: Status
    highs_status: str
    objective: float | None = None       # objective of the primal point (None without one)
    primal: np.ndarray | None = None      # column values whenever HiGHS has a primal point
    primal_feasible: bool = False         # HiGHS's own judgement of that point
    row_dual: np.ndarray | None = None    # row duals (HiGHS's sign convention) when valid
    col_dual: np.ndarray | None = None
    dual_bound: float | None = None       # MIP: the best bound, in the objective's sense
    mip_gap: float | None = None
    nodes: int = 0
    ipm_iterations: int = 0
    simplex_iterations: int = 0
    time: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def optimal(self) -> bool:
        return self.status == Status.OPTIMAL

    def summary(self) -> dict:
        """JSON-friendly facts of the solve."""
        return {"status": self.status.value, "highs_status": self.highs_status, "objective": self.objective,
                "dual_bound": self.dual_bound, "nodes": self.nodes, "ipm_iterations": self.ipm_iterations,
                "simplex_iterations": self.simplex_iterations, "time_s": self.time}


def _as_csc(A, n_rows: int | None, n_cols: int):
    import scipy.sparse as sp

    if sp.issparse(A):
        M = sp.csc_matrix(A)
    else:
        M = sp.csc_matrix(np.asarray(A, dtype=np.float64).reshape(-1, n_cols))
    if n_rows is not None and M.shape != (n_rows, n_cols):
        raise ValueError(f"constraint matrix of shape {M.shape}, expected {(n_rows, n_cols)}")
    M.sum_duplicates()
    M.sort_indices()
    return M


def _vec(v, n: int, fill: float) -> np.ndarray:
    if v is None:
        return np.full(n, fill, dtype=np.float64)
    out = np.asarray(v, dtype=np.float64)
    return np.broadcast_to(out, (n,)).astype(np.float64) if out.shape != (n,) else out.astype(np.float64, copy=False)


# HiGHS option names of the wrapper's short names
_OPTION_NAMES = {"mip_gap": "mip_rel_gap"}


class Problem:
    """An LP or MIP ``opt c^T x  s.t.  row_lower <= A x <= row_upper,  col_lower <= x <= col_upper``
    (``x_j`` integer where ``integrality[j]``) loaded into one HiGHS instance, silently.

    ``sense``: "min" or "max"; options as keyword arguments (see `set_options`). The instance is kept:
    `set_cost`, `set_col_bounds`, `add_row` / `delete_rows` (cut-offs, rows pushed and popped along a
    search), `set_start` (a MIP start) and repeated `solve` calls reuse it (warm starts)."""

    def __init__(self, c, A, row_lower=None, row_upper=None, col_lower=None, col_upper=None, integrality=None,
                 sense: str = "min", **options):
        c = np.asarray(c, dtype=np.float64).ravel()
        n = c.size
        M = _as_csc(A, None, n)
        m = M.shape[0]
        self.n_cols, self.n_rows = n, m
        self.sense = str(sense).lower()
        if self.sense not in ("min", "max"):
            raise ValueError(f"sense must be min or max, not {sense!r}")
        if highspy is None:  # pragma: no cover
            raise Unsupported("highspy (HiGHS) is not installed")
        self.is_mip = integrality is not None and bool(np.any(integrality))
        integ = (np.asarray(integrality, dtype=bool).astype(np.int32) if self.is_mip
                 else np.zeros(n, dtype=np.int32))  # HighsVarType: 0 continuous, 1 integer
        self.h = new_highs()
        self._threads = None
        self.set_options(**options)
        # the array overload of passModel: numpy arrays cross as buffers (a HighsLp's vector fields are
        # converted element by element, 4 ms for a 20 x 784 dense LP against 1 ms this way)
        sense_code = int(highspy.ObjSense.kMaximize if self.sense == "max" else highspy.ObjSense.kMinimize)
        self.h.passModel(n, m, int(M.nnz), int(highspy.MatrixFormat.kColwise), sense_code, 0.0, c,
                         _vec(col_lower, n, 0.0), _vec(col_upper, n, INF), _vec(row_lower, m, -INF),
                         _vec(row_upper, m, INF), M.indptr.astype(np.int32), M.indices.astype(np.int32),
                         M.data.astype(np.float64), integ)
        self._all = np.arange(n, dtype=np.int32)

    # -- options ----------------------------------------------------------------------------------
    def set_options(self, *, time_limit: float | None = None, threads: int | None = None, solver: str | None = None,
                    crossover: bool | None = None, verbose: bool | None = None, **raw) -> "Problem":
        """Set HiGHS options: ``time_limit`` (s; None or inf: none), ``threads``, ``solver`` (ipm, simplex,
        choose, pdlp), ``crossover`` (bool), ``verbose`` (solver log on stdout), ``mip_gap`` (=
        mip_rel_gap) and any HiGHS option by its name. None leaves an option unchanged."""
        h = self.h
        if time_limit is not None:
            h.setOptionValue("time_limit", float(time_limit) if math.isfinite(time_limit) else INF)
        if threads is not None:
            h.setOptionValue("threads", int(threads))
            self._threads = int(threads)
        if solver is not None:
            if solver not in ("ipm", "simplex", "choose", "pdlp"):
                raise ValueError(f"HiGHS solver {solver!r}: use ipm, simplex, choose or pdlp")
            h.setOptionValue("solver", solver)
        if crossover is not None:
            h.setOptionValue("run_crossover", "on" if crossover else "off")
        if verbose is not None:
            h.setOptionValue("output_flag", bool(verbose))
        for k, v in raw.items():
            if v is None:
                continue
            h.setOptionValue(_OPTION_NAMES.get(k, k), v)
        return self

    # -- model changes ----------------------------------------------------------------------------
    def set_cost(self, c) -> "Problem":
        """Replace the whole cost vector (the basis is kept: the next solve warm-starts)."""
        c = np.asarray(c, dtype=np.float64).ravel()
        if c.size != self.n_cols:
            raise ValueError(f"cost of length {c.size}, expected {self.n_cols}")
        self.h.changeColsCost(self.n_cols, self._all, c)
        return self

    def set_col_bounds(self, lower, upper) -> "Problem":
        self.h.changeColsBounds(self.n_cols, self._all, _vec(lower, self.n_cols, 0.0), _vec(upper, self.n_cols, INF))
        return self

    def add_row(self, lower: float, upper: float, cols, vals) -> int:
        """Append the row ``lower <= sum vals_i x_{cols_i} <= upper`` (e.g. an objective cut-off); returns
        its index."""
        cols = np.asarray(cols, dtype=np.int32).ravel()
        vals = np.asarray(vals, dtype=np.float64).ravel()
        self.h.addRow(float(lower), float(upper), len(cols), cols, vals)
        self.n_rows += 1
        return self.n_rows - 1

    def delete_rows(self, count: int = 1) -> "Problem":
        """Delete the last ``count`` rows (the reverse of `add_row`, for depth-first searches)."""
        if count <= 0:
            return self
        idx = np.arange(self.n_rows - count, self.n_rows, dtype=np.int32)
        self.h.deleteRows(len(idx), idx)
        self.n_rows -= count
        return self

    def set_start(self, x) -> "Problem":
        """A starting point (MIP: an incumbent candidate, checked by HiGHS)."""
        sol = highspy.HighsSolution()
        sol.col_value = list(np.asarray(x, dtype=np.float64).ravel())
        sol.value_valid = True
        self.h.setSolution(sol)
        return self

    # -- solve ------------------------------------------------------------------------------------
    def solve(self) -> Result:
        """Run HiGHS and collect the result (never raises for an infeasible or interrupted solve)."""
        h = self.h
        t0 = time.perf_counter()
        run = h.run()
        if (self._threads is not None and run == highspy.HighsStatus.kError
                and h.getModelStatus() == highspy.HighsModelStatus.kNotset):
            # HiGHS refuses to run when ``threads`` differs from its process-wide scheduler, which the
            # first solve of the process created: rebuild the scheduler with this count and run again
            highspy.Highs.resetGlobalScheduler(True)
            h.run()
        dt = time.perf_counter() - t0
        st = h.getModelStatus()
        info = h.getInfo()
        sol = h.getSolution()
        res = Result(_STATUS.get(st, Status.UNKNOWN), h.modelStatusToString(st), time=dt)
        res.ipm_iterations = int(info.ipm_iteration_count)
        res.simplex_iterations = int(info.simplex_iteration_count)
        feasible = int(info.primal_solution_status) == 2  # kSolutionStatusFeasible
        if sol.value_valid:
            x = np.asarray(sol.col_value, dtype=np.float64)
            if x.size == self.n_cols:
                res.primal = x
                res.primal_feasible = feasible
                res.objective = float(info.objective_function_value)
        if sol.dual_valid:
            res.row_dual = np.asarray(sol.row_dual, dtype=np.float64)
            res.col_dual = np.asarray(sol.col_dual, dtype=np.float64)
        if self.is_mip:
            res.dual_bound = float(info.mip_dual_bound)
            res.mip_gap = float(info.mip_gap)
            res.nodes = int(info.mip_node_count)
            if not feasible:  # a MIP's col_value without a feasible incumbent is meaningless
                res.primal, res.objective = None, None
        return res


def solve(c, A, row_lower=None, row_upper=None, col_lower=None, col_upper=None, integrality=None,
          sense: str = "min", **options) -> Result:
    """Build a `Problem` and solve it once (the arguments of `Problem`)."""
    return Problem(c, A, row_lower, row_upper, col_lower, col_upper, integrality, sense, **options).solve()
