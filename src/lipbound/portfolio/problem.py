"""What the planner knows about a problem: the class (norm, global or box, one output or all) and the
network's sizes, measured once before any method runs.

`describe_problem` reads sizes from the graph (no dense matrices are built). On a box it also computes
certified CROWN pre-activation bounds (`crown.preactivation_bounds`, alpha=False) through the blackboard's
cache (`MethodContext.cached`, key "crown"), so that the number of unstable neurons is known (the cost of
`enumerate` and `mip` is exponential in it) and the bounds are there for the methods that reuse them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..network import Activation, Add, MaxMin, MaxPool2d, Network
from ..norms import norm_name
from ..registry import RELU_LIKE, MethodContext, Region

#: pre-activation bounds are computed for the plan only when their estimated cost is below this share of
#: the budget (else the unstable count stays unknown and the exact methods are planned pessimistically)
PREACT_BUDGET_SHARE = 0.25
#: lipopt's probe (up to about a second on a conv chain) runs only for budgets of at least this many seconds
LIPOPT_PROBE_MIN_BUDGET = 20.0


@dataclass
class Problem:
    """The facts the planner decides from (all sizes are counts; ``unstable`` is None when unknown)."""

    norm: float
    region: Region | None
    output: int | None
    n_inputs: int
    n_outputs: int
    n_params: int
    widths: list            # neurons per activation layer, graph order
    chain: bool             # an affine / activation chain (dense_chain() applies)
    has_maxpool: bool
    activations: frozenset  # activation names
    relu_like: bool         # every activation is max(z, 0) + a min(z, 0)
    n_nodes: int = 0        # operations in the graph
    flops: int = 0          # multiply-adds of one forward pass
    flops_below: list = field(default_factory=list)  # per activation layer: multiply-adds of the graph below it
    elementwise: int = 0    # entries of the non-affine nodes (activations, pooling, sums): memory-bound work
    unstable: int | None = None
    unstable_per_layer: list | None = None
    unstable_by: str | None = None  # "ibp" or "crown": the bounds the count is under
    preact_time_s: float | None = None
    lipopt_s: float | None = None  # lipopt's own estimate from its first scalar problem (l1 / linf chains)
    notes: list = field(default_factory=list)

    @property
    def is_box(self) -> bool:
        return self.region is not None

    @property
    def depth(self) -> int:
        """Number of activation layers."""
        return len(self.widths)

    @property
    def neurons(self) -> int:
        return int(sum(self.widths))

    @property
    def max_width(self) -> int:
        return int(max(self.widths, default=0))

    @property
    def out_dims(self) -> int:
        """Outputs that matter for the bound (1 with ``output``)."""
        return 1 if self.output is not None else self.n_outputs

    def problem_class(self) -> str:
        where = "box" if self.is_box else "global"
        out = f", output {self.output}" if self.output is not None else ""
        return f"norm {norm_name(self.norm)}, {where}{out}"

    def to_json(self) -> dict:
        return {"class": self.problem_class(), "norm": norm_name(self.norm), "region": "box" if self.is_box else "global",
                "output": self.output, "n_inputs": self.n_inputs, "n_outputs": self.n_outputs,
                "n_params": self.n_params, "n_nodes": self.n_nodes, "flops": self.flops,
                "elementwise": self.elementwise, "depth": self.depth, "widths": list(self.widths), "chain": self.chain,
                "max_pool": self.has_maxpool, "activations": sorted(self.activations), "relu_like": self.relu_like,
                "unstable": self.unstable, "unstable_per_layer": self.unstable_per_layer,
                "unstable_by": self.unstable_by,
                "preact_time_s": None if self.preact_time_s is None else round(self.preact_time_s, 4),
                "lipopt_s": self.lipopt_s,
                "notes": list(self.notes)}


def describe_problem(net: Network, norm, region: Region | None, output: int | None, ctx: MethodContext,
                     budget: float) -> Problem:
    """The `Problem` of ``net`` for (norm, region, output). On a box without max pooling, the unstable
    neurons under CROWN pre-activation bounds, when their estimated cost (`preact_cost`) fits in
    `PREACT_BUDGET_SHARE` of ``budget``; ``ctx`` carries the blackboard whose cache keeps the bounds.
    Cost: a pass over the graph, plus one CROWN pass on a box."""
    kinds = net.op_kinds()
    acts = net.activations()
    names = frozenset(a.name for a in acts)
    widths = [int(n.size) for n in net.nodes if isinstance(n.op, Activation)]
    flops, below, elementwise = _flops(net)
    chain = net.is_chain() and not any(isinstance(n.op, (MaxPool2d, Add, MaxMin)) for n in net.nodes)
    prob = Problem(norm=norm, region=region, output=output, n_inputs=int(net.n_inputs), n_outputs=int(net.n_outputs),
                   n_params=int(net.n_parameters()), widths=widths, chain=chain, has_maxpool="MaxPool2d" in kinds,
                   activations=names, relu_like=bool(names) and names <= RELU_LIKE and "MaxMin" not in kinds,
                   n_nodes=len(net.nodes) - 1, flops=flops, flops_below=below,
                   elementwise=elementwise)
    if norm != 2 and chain and widths and budget >= LIPOPT_PROBE_MIN_BUDGET:
        prob.lipopt_s = _lipopt_probe(net, prob)
    if region is not None and not prob.has_maxpool and widths:
        _count_unstable(net, prob, ctx, "ibp")  # one interval pass: an upper bound on the unstable count
        est = preact_cost(prob)
        if est <= PREACT_BUDGET_SHARE * budget:
            _count_unstable(net, prob, ctx, "crown")
        else:
            prob.notes.append(f"CROWN pre-activation bounds not computed for the plan (estimated {est:.2g} s > "
                              f"{PREACT_BUDGET_SHARE:g} x budget): unstable neurons counted under interval bounds")
    return prob


def _lipopt_probe(net: Network, prob: Problem) -> float | None:
    """lipopt's estimate from its first scalar problem (`lipopt.methods.estimate_seconds`), None when the
    probe cannot build it. The size formula alone was 130x too high on a one-hidden-layer conv net whose
    sparse LPs are small (Convnet_avgpool, l1, global: 5,816 s estimated, 45 s measured)."""
    from ..methods.lipopt.methods import estimate_seconds

    try:
        return estimate_seconds(net, prob.norm, prob.region, prob.output)
    except Unsupported:
        return None


def preact_cost(prob: Problem) -> float:
    """Estimated seconds of `crown.preactivation_bounds` (see `costs.CROWN_S_PER_UNIT`)."""
    from .costs import crown_preact_cost

    return crown_preact_cost(prob)


def _flops(net: Network) -> tuple[int, list, int]:
    """Multiply-adds of one forward pass, for each activation layer those of the nodes before it, and the
    entries of the other nodes (activations, pooling, sums; a reshape is a view and counts nothing)."""
    from ..network import Conv2d, Linear, Reshape

    total, below, elementwise = 0, [], 0
    for node in net.nodes[1:]:
        op = node.op
        if isinstance(op, Activation):
            below.append(total)
        if isinstance(op, Linear):
            total += int(op.W.numel())
        elif isinstance(op, Conv2d):
            w = op.weight.shape
            total += int(node.size) * int(w[1]) * int(w[2]) * int(w[3])
        elif not isinstance(op, Reshape):
            total += int(node.size)
            elementwise += int(node.size)
    return total, below, elementwise


def _count_unstable(net: Network, prob: Problem, ctx: MethodContext, how: str) -> None:
    """Unstable neurons (pre-activation range across a kink; any non-trivial range for a smooth activation)
    under ``how`` = "ibp" (interval propagation) or "crown" bounds, cached in the blackboard."""
    from ..crown import forward_bounds
    from ..errors import Unsupported

    t0 = time.perf_counter()
    acts = [i for i, n in enumerate(net.nodes) if isinstance(n.op, Activation)]
    try:
        if how == "crown":  # the form of crown.preactivation_bounds(net, region, alpha=False)
            from ..crown import preactivation_bounds
            bounds = ctx.cached(net, "crown", lambda: preactivation_bounds(net, prob.region, alpha=False))
        else:
            known = ctx.cached(net, "forward:ibp", lambda: forward_bounds(net, prob.region, method="ibp"))
            bounds = [known[i] for i in acts]
    except (Unsupported, RuntimeError, MemoryError, ArithmeticError) as e:
        prob.notes.append(f"{how} pre-activation bounds failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return
    per = []
    for op, (lo, hi) in zip(net.activations(), bounds):
        lo, hi = np.asarray(lo, dtype=np.float64).ravel(), np.asarray(hi, dtype=np.float64).ravel()
        kinks = [k[0] for k in op.fn.kinks()]  # (position, slope left, slope right)
        undecided = np.zeros(lo.shape, dtype=bool)
        for k in kinks:
            undecided |= (lo < k) & (hi > k)
        if not kinks:  # smooth activation: every neuron with a non-trivial range counts
            undecided = hi > lo
        per.append(int(undecided.sum()))
    prob.unstable_per_layer = per
    prob.unstable = int(sum(per))
    prob.unstable_by = how
    if how == "crown":
        prob.preact_time_s = time.perf_counter() - t0


__all__ = ["Problem", "describe_problem"]
