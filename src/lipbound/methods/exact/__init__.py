"""Exact local Lipschitz constants of ReLU-like dense chains (ReLU, LeakyReLU, Abs) on boxes (LipMIP, Jordan &
Dimakis 2020).

Methods: ``mip`` (mixed-integer program on HiGHS, anytime sandwich) and ``enumerate`` (activation-pattern
enumeration, the test oracle for a few unstable neurons).

* `mip_core` -- the building blocks: interval / LP-tightened pre-activation bounds, the MIP model;
* `enumerate` -- pattern geometry (max-slack points) and the tree search over realisable patterns;
* `methods` -- the registrations.
"""

from . import methods  # noqa: F401  (registers the methods)
