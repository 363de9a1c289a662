"""The one cvxpy service: every offered back end is installed and solves a tiny SDP whose optimum is known
by hand (min t s.t. [[t, 1], [1, 1]] PSD: t = 1), and a bad back end name is refused."""

import cvxpy as cp
import numpy as np
import pytest

from lipbound import cvx


@pytest.mark.parametrize("backend", sorted(cvx.BACKENDS))
def test_backend_installed_and_solves_a_known_sdp(backend):
    assert backend in cvx.installed()
    t = cp.Variable()
    one = np.ones((1, 1))
    X = cp.bmat([[cp.reshape(t, (1, 1), order="F"), one], [one, one]])
    prob = cp.Problem(cp.Minimize(t), [(X + X.T) / 2 >> 0])
    assert cvx.solve(prob, backend.upper(), time_limit=30) is None
    assert float(t.value) == pytest.approx(1.0, abs=1e-4)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown cvxpy back end"):
        cvx.solve(cp.Problem(cp.Minimize(0)), "mosek")
