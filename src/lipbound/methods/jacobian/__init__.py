"""Local l1 / l2 / l_inf upper bounds by bound propagation on the Clarke-Jacobian graph (Shi et al. 2022).

Methods (box regions): ``crown``, ``recurjac``, ``ibp-jacobian`` and ``crown-bab``.

* `graph` -- the backward (Clarke-Jacobian) graph and its interval / CROWN bounds (`JacobianGraph`);
* `bab` -- crown-bab's branch and bound on undecided ReLU neurons (soundness argument in its docstring);
* `methods` -- the registrations.
"""

from . import methods  # noqa: F401  (registers the methods)
