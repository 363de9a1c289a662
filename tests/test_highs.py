"""The HiGHS wrapper (lipbound.highs): optima of tiny LPs / MIPs worked out by hand, statuses, row
changes and warm starts, and that nothing is printed on file descriptor 1."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

from lipbound import highs
from lipbound.highs import Problem, Status, solve

# max 3x + 2y  s.t.  x + 2y <= 4,  3x + y <= 6,  x, y >= 0.
# By hand: the vertices are (0,0), (2,0), (0,2) and (8/5, 6/5) (both rows tight): objective 0, 6, 4, 36/5.
# The dual (min 4 u + 6 v, u + 3v = 3, 2u + v = 2, u, v >= 0) has u = 3/5, v = 4/5: value 36/5 too.
# Integer points: (0,0) (1,0) (2,0) (0,1) (1,1) (0,2) ((2,1) and (1,2) violate a row): the best is (2,0), 6.
C = np.array([3.0, 2.0])
A = np.array([[1.0, 2.0], [3.0, 1.0]])
RU = np.array([4.0, 6.0])


def test_lp_optimum_and_duals_by_hand():
    r = solve(C, A, None, RU, [0, 0], [np.inf, np.inf], sense="max")
    assert r.status == Status.OPTIMAL and r.status == "optimal" and r.optimal
    assert r.objective == pytest.approx(36 / 5, abs=1e-9)
    np.testing.assert_allclose(r.primal, [8 / 5, 6 / 5], atol=1e-9)
    assert r.primal_feasible
    np.testing.assert_allclose(np.abs(r.row_dual), [3 / 5, 4 / 5], atol=1e-9)
    assert r.dual_bound is None  # an LP has no MIP bound


def test_lp_minimisation_sparse_matrix_and_ipm():
    # min -3x - 2y is the same problem; interior point with and without crossover, sparse input
    for crossover in (True, False):
        r = solve(-C, sp.csr_matrix(A), None, RU, 0.0, None, sense="min", solver="ipm", crossover=crossover)
        assert r.status == Status.OPTIMAL
        assert r.objective == pytest.approx(-36 / 5, abs=1e-6)
        assert r.ipm_iterations > 0


def test_mip_optimum_bound_cutoff_and_start():
    p = Problem(C, A, None, RU, [0, 0], [10, 10], integrality=[True, True], sense="max", mip_rel_gap=0.0)
    r = p.solve()
    assert r.status == Status.OPTIMAL
    assert r.objective == pytest.approx(6.0, abs=1e-9)
    np.testing.assert_allclose(r.primal, [2, 0], atol=1e-9)
    assert r.dual_bound == pytest.approx(6.0, abs=1e-6)
    # a cut-off row 3x + 2y <= 5: the best integer point becomes (1, 1), value 5 (by the list above)
    p.add_row(-np.inf, 5.0, [0, 1], [3.0, 2.0])
    r = p.solve()
    assert r.objective == pytest.approx(5.0, abs=1e-9)
    np.testing.assert_allclose(r.primal, [1, 1], atol=1e-9)
    # popping the row restores the problem; a start point is accepted
    p.delete_rows(1)
    p.set_start([2.0, 0.0])
    assert p.solve().objective == pytest.approx(6.0, abs=1e-9)
    # a new cost: max y -> (0, 2), value 2
    p.set_cost([0.0, 1.0])
    r = p.solve()
    assert r.objective == pytest.approx(2.0, abs=1e-9)


def test_mixed_integrality_only_where_flagged():
    # max 3x + 2y on the same rows with only x integer: for x = 0, 1, 2 the best y is min((4-x)/2, 6-3x),
    # i.e. y = 2, 3/2, 0 with objectives 4, 6, 6 -- a tie of (1, 3/2) and (2, 0) at 6, below the LP's 36/5.
    # Flagging y instead: y = 0, 1, 2 gives x = 2, 5/3, 0 and objectives 6, 7, 4 -- (5/3, 1) at 7.
    r = solve(C, A, None, RU, [0, 0], [10, 10], integrality=[True, False], sense="max", mip_rel_gap=0.0)
    assert r.objective == pytest.approx(6.0, abs=1e-9)
    assert r.primal[0] == pytest.approx(round(r.primal[0]), abs=1e-9)
    r = solve(C, A, None, RU, [0, 0], [10, 10], integrality=[False, True], sense="max", mip_rel_gap=0.0)
    assert r.objective == pytest.approx(7.0, abs=1e-9)
    np.testing.assert_allclose(r.primal, [5 / 3, 1.0], atol=1e-9)
    # all flags false: an LP (row duals, no MIP bound), whatever the integrality argument says
    r = solve(C, A, None, RU, [0, 0], [10, 10], integrality=[False, False], sense="max")
    assert r.objective == pytest.approx(36 / 5, abs=1e-9) and r.row_dual is not None and r.dual_bound is None


def test_infeasible_and_empty_row_set():
    # x + y >= 3 with x, y in [0, 1]: infeasible
    r = solve([1.0, 1.0], [[1.0, 1.0]], [3.0], [np.inf], [0, 0], [1, 1])
    assert r.status == Status.INFEASIBLE
    assert r.objective is None or not r.primal_feasible
    # no rows at all: the box alone (max x - y over [0,1]^2 = 1)
    r = solve([1.0, -1.0], np.zeros((0, 2)), None, None, [0, 0], [1, 1], sense="max")
    assert r.status in (Status.OPTIMAL, Status.EMPTY) and r.objective == pytest.approx(1.0)


def test_time_limit_status():
    # a random 0-1 knapsack-like MIP that cannot be solved in a millisecond
    rng = np.random.default_rng(0)
    n, m = 120, 40
    Am = rng.integers(1, 60, size=(m, n)).astype(float)
    r = solve(rng.integers(1, 100, size=n).astype(float), Am, None, Am.sum(1) / 3, 0, 1,
              integrality=np.ones(n, bool), sense="max", time_limit=1e-3, threads=1)
    assert r.status == Status.TIME_LIMIT and r.status.stopped_early
    # the best bound is an upper bound (possibly still +inf so early), never below the incumbent
    assert r.dual_bound is not None and not np.isnan(r.dual_bound)
    assert r.objective is None or r.dual_bound >= r.objective - 1e-9


def test_bad_arguments():
    with pytest.raises(ValueError):
        Problem(C, A, None, RU, sense="maximise")
    with pytest.raises(ValueError):
        Problem(C, np.ones((2, 3)), None, RU)
    with pytest.raises(ValueError):
        Problem(C, A, None, RU, solver="barrier")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_nothing_printed_on_stdout():
    """Constructing and solving through the wrapper prints nothing on fd 1, in a fresh process (the banner
    of the first highspy.Highs() of a process is what would appear)."""
    proc = _run("""
        import numpy as np
        from lipbound.highs import Problem, solve, new_highs
        r = solve([3.0, 2.0], [[1.0, 2.0], [3.0, 1.0]], None, [4.0, 6.0], 0, None, sense="max")
        p = Problem([1.0], np.zeros((0, 1)), col_upper=[1.0], integrality=[True], sense="max")
        p.solve()
        new_highs()
        assert abs(r.objective - 7.2) < 1e-9
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


def test_redirection_restores_stdout_and_catches_c_output():
    """The fd-1 redirection swallows Python and C-level output inside the block only, and restores fd 1
    (output before and after the block arrives in order)."""
    proc = _run("""
        import ctypes, os, sys
        from lipbound.highs import _fd1_to_devnull
        print("before")
        with _fd1_to_devnull():
            print("python inside")
            os.write(1, b"raw inside\\n")
            ctypes.CDLL(None).printf(b"C inside\\n")
        print("after")
        os.write(1, b"raw after\\n")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "before\nafter\nraw after\n"


def test_status_enum_is_a_string():
    assert Status.TIME_LIMIT == "time_limit" and str(Status.OPTIMAL) == "optimal"
    assert not Status.OPTIMAL.stopped_early
    assert highs.new_highs().getOptionValue("output_flag")[1] is False


def test_thread_count_change_between_solves():
    """HiGHS's scheduler is process-wide: a solve asking for another thread count than the previous one
    must still run (status optimal, not 'Not Set')."""
    for threads in (2, 1, None, 1):
        r = solve(C, A, None, RU, sense="max", threads=threads)
        assert r.status == Status.OPTIMAL and r.objective == pytest.approx(36 / 5, abs=1e-9)
