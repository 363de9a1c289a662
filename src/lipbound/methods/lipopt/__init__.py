"""LiPopt (Latorre, Rolland & Cevher, ICLR 2020): l_inf (and l_1) upper bounds from polynomial
optimisation of the norm-gradient polynomial. Maths: ../shared/reference/lipopt.md.

Methods: ``lipopt`` (Krivine/Handelman LP hierarchy, HiGHS, re-certified in float64) and ``shor-sdp``
(its Shor SDP baseline).

* `core` -- the norm-gradient polynomial (`Poly`, `ScalarProblem`), the LP and its float64 certificate;
* `chain` -- from a dense chain to scalar problems (slope ranges, per-output / per-input polynomials);
* `shor` -- the Shor relaxation and its certificate check;
* `methods` -- the registrations.
"""

from . import methods  # noqa: F401  (registers the methods)
