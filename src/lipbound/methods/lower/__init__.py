"""Certified lower bounds: the Jacobian norm at witness points where the network is differentiable.

Methods: ``lower-sample`` (random points of the region) and ``lower-grad`` (multi-start gradient ascent).
Everything is in `methods`; its helpers are re-exported here so ``lipbound.methods.lower.X`` keeps working.
"""

from .methods import (KINK_TOL, best_of, differentiable_mask, jacobian_norms, lower_grad,  # noqa: F401
                      lower_sample, sample_points)
