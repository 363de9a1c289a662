"""The one small optimiser of the project: Adam written out, with an optional projection.

Used by alpha-CROWN (`crown`, slopes projected onto [0, 1]) and by `lower-grad` (gradient ascent on
the Jacobian norm, iterates projected onto the box). Written by hand on purpose: the first use of
``torch.optim`` imports ``torch._dynamo`` (seconds to tens of seconds of start-up, see CONTRIBUTING).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


class Adam:
    """Adam (Kingma & Ba) on a list of tensors, updated in place.

    ``step(grads, lr)`` moves every parameter ``p`` by ``-lr * m_hat / (sqrt(v_hat) + eps)`` (``+`` with
    ``maximize=True``), where ``m_hat``, ``v_hat`` are the bias-corrected first and second moments, then
    calls ``project(p)`` (in place, e.g. ``lambda p: p.clamp_(0, 1)``). A gradient that is None leaves its
    parameter (and its moments) unchanged. The step size is passed at each step, so callers keep their
    own schedules. Cost: a few elementwise operations per parameter entry."""

    def __init__(self, params: Sequence[torch.Tensor], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, maximize: bool = False,
                 project: Callable[[torch.Tensor], object] | None = None):
        self.params = list(params)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.sign = 1.0 if maximize else -1.0
        self.project = project
        self.m1 = [torch.zeros_like(p) for p in self.params]
        self.m2 = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor | None], lr: float) -> None:
        """One update with the gradients ``grads`` (one per parameter, or None) and step size ``lr``."""
        self.t += 1
        b1, b2, t = self.beta1, self.beta2, self.t
        for p, g, m, v in zip(self.params, grads, self.m1, self.m2):
            if g is None:
                continue
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2 ** t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=self.sign * lr / (1 - b1 ** t))
            if self.project is not None:
                self.project(p)
