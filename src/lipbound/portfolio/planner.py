"""The planner of `certify`: which methods to run on a problem, in which order, with which share of the
time, and which to skip and why.

Rules (the cost of each method comes from `costs.estimate`, from sizes):

* a method is a candidate when it is certified (kind upper, lower or exact: never an estimate), applies
  to the problem (`MethodSpec.unsupported_reason`: norm, global / box, operations, activations), is not
  excluded, and is among ``methods`` when the caller chose them;
* dominated methods are skipped when the method that dominates them is a candidate: lipsdp-neuron and
  lipsdp-layer (lipsdp-opt reaches the LipSDP-Neuron optimum without a solver), eclipse and the single
  closed forms (eclipse-family is the minimum over the members; lipsdp-opt starts from it), recurjac and
  ibp-jacobian (weaker relaxations than crown; ibp-jacobian stays, in phase 1, when crown is estimated above PHASE1_S); in phase 2 also eclipse-family when lipsdp-opt can start
  (it starts from eclipse-family's value) and crown when crown-bab runs (its root bound is crown's) and
  reaches its root within `BAB_START_SHARE` of the budget (crown is anytime: cut at its limit it keeps
  interval bounds from there);
* phase 1, a certified finite interval within about a second: every cheap upper bound that applies
  (naive; autolip in l2; eclipse-fast on l2 chains; crown, except globally in l2 on chains) whose estimate is below
  `PHASE1_S` (at least the cheapest one, whatever its cost), and lower-sample with few samples;
* phase 2, the methods that can shrink the interval for this class: the SDP family (eclipse-family,
  lipsdp-opt; with per-neuron slopes on a box) for l2 on chains; crown globally (every neuron undecided,
  the activations' global slope ranges; not l2 on chains) and crown and crown-bab on a box (crown-bab
  with the largest weight when the network has few inputs: it splits the box and closes the interval
  itself); enumerate when at most `ENUMERATE_MAX_UNSTABLE` neurons are unstable under CROWN bounds (every
  norm), and mip for l1 / linf, on a box (ReLU-like chains); lipopt (l1, linf) and shor-sdp (linf, one or two hidden layers) when their
  estimate fits; exact SeqLip (l2) on narrow layers; lower-grad for the lower end. Each has a weight, the
  share of the gap it is expected to close for this class (from the benchmarks in benchmarks/results);
* order of phase 2: quick methods that cannot be interrupted (estimate below `QUICK_SHARE` of the time
  left), then enumerate, then lower-grad (its witness seeds mip, its value lets crown-bab stop early),
  then the slow ones that cannot be interrupted, then the anytime methods by weight. At run time
  (`share`), a method that cannot be interrupted is skipped when its estimate exceeds the time left; an
  anytime one gets ``weight / (sum of the weights still to run)`` of the time left after the estimates of
  the later uninterruptible ones, at least what it needs to hold a value (`costs.min_time`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..norms import INF
from ..registry import RELU_LIKE, MethodSpec
from . import costs
from ..methods.jacobian.bab import INPUT_SPLIT_MAX_DIM
from .problem import Problem

#: phase 1 runs the cheap upper bounds estimated below min(PHASE1_S, PHASE1_SHARE x budget) seconds (or
#: 2% of the budget if larger), and always the cheapest one whatever the budget
PHASE1_S = 1.0
PHASE1_SHARE = 0.1
#: phase-1 lower-sample: as many samples as fit in this many seconds, within [SAMPLES_MIN, SAMPLES_MAX]
PHASE1_LOWER_S = 0.5
SAMPLES_MIN, SAMPLES_MAX = 20, 200
#: a method that cannot be interrupted is "quick" when its estimate is below this share of the time left
QUICK_SHARE = 0.1
#: enumerate is planned up to this many unstable neurons under CROWN bounds (its own limit, max_unstable=20,
#: applies after LP tightening, which can only lower the count)
ENUMERATE_MAX_UNSTABLE = 20
#: mip gets a large weight up to this many unstable neurons (exact within the budget is likely; on the
#: digits MLP with ~50 unstable neurons a few seconds of mip stayed above crown's bound)
MIP_EASY_UNSTABLE = 30
#: ... and a small one beyond this many: its share goes to crown-bab (the VNN-LIB MNIST box, 91 unstable
#: neurons, T = 60 s: the mip's 20 s moved nothing, gap 2.18; without it crown-bab reached 2.01)
MIP_HARD_UNSTABLE = 60
#: lower-grad takes at most this share of the time left (the lower end is often the weak one on boxes:
#: ACAS Xu eps 0.05, lower-sample 0.106 vs lower-grad 0.330 in 1 s), and `LOWER_GRAD_SHARE_ZERO` when
#: the lower end is still 0 (every sample on a flat piece: mnist-net_256x2 eps 0.01, where lower-grad
#: needs ~2 s to find 1.21 and the gap is infinite until then)
LOWER_GRAD_SHARE = 0.3
LOWER_GRAD_SHARE_ZERO = 0.5
#: ... and `LOWER_GRAD_SHARE_STARVED` when the lower end holds a value and crown follows and cannot finish
#: in the time left: there the upper end is the loose one (resnet_2b box l_inf at
#: T = 10 s: lower-grad 2.9 s for 25.9 against lower-sample's 24.2, while crown, cut at 5.4 s, gave 2136
#: where 8 s give 1395)
LOWER_GRAD_SHARE_STARVED = 0.1
#: eclipse-family is run on its own only when lipsdp-opt (which starts from it) cannot start within this
#: share of the budget
OPT_START_SHARE = 0.5
#: crown is planned on a box beside crown-bab (instead of being left to crown-bab's root) when crown-bab's
#: root bound is estimated above this share of the budget
BAB_START_SHARE = 0.5
#: lipopt / shor-sdp / seqlip are planned only when their estimate is below this share of the budget
SLOW_SHARE = 0.3

#: method -> (the method that dominates it, why)
DOMINATED = {
    "lipsdp-neuron": ("lipsdp-opt", "lipsdp-opt reaches the LipSDP-Neuron optimum (anytime, no SDP solver)"),
    "lipsdp-layer": ("lipsdp-opt", "LipSDP-Layer is a restriction of LipSDP-Neuron, which lipsdp-opt reaches"),
    "eclipse": ("lipsdp-opt", "ECLipsE's per-layer SDPs restrict LipSDP-Neuron, which lipsdp-opt reaches"),
    "eclipse-g1": ("eclipse-family", "eclipse-family is the minimum over the closed-form members"),
    "eclipse-g2-balance": ("eclipse-family", "eclipse-family is the minimum over the closed-form members"),
    "eclipse-g2-jacobi": ("eclipse-family", "eclipse-family is the minimum over the closed-form members"),
    "eclipse-g2-gershgorin": ("eclipse-family", "eclipse-family is the minimum over the closed-form members"),
    "eclipse-g3": ("eclipse-family", "eclipse-family is the minimum over the closed-form members"),
    "eclipse-g3-balance": ("eclipse-family", "eclipse-family is the minimum over the closed-form members"),
    "recurjac": ("crown", "a weaker relaxation of the Jacobian graph than crown"),
    "ibp-jacobian": ("crown", "interval propagation is looser than crown"),
}


@dataclass
class Step:
    """One planned method run. ``weight``: the expected share of the gap it closes (anytime shares)."""

    method: str
    phase: int
    role: str                 # "upper", "lower" or "exact" (both ends)
    estimate_s: float
    anytime: bool
    weight: float = 0.0
    options: dict = field(default_factory=dict)
    why: str = ""
    min_s: float = 0.0
    # filled by the runner
    share_s: float | None = None
    outcome: str = "planned"  # planned, ran, skipped
    note: str | None = None

    def to_json(self) -> dict:
        return {"method": self.method, "phase": self.phase, "role": self.role,
                "estimate_s": _round(self.estimate_s), "anytime": self.anytime, "weight": self.weight,
                "options": dict(self.options), "why": self.why, "share_s": _round(self.share_s),
                "outcome": self.outcome, "note": self.note}


@dataclass
class Plan:
    """The methods chosen (``steps``, in order), those skipped with the reason, and notes."""

    problem: Problem
    steps: list
    skipped: list            # {"method", "reason"}
    notes: list = field(default_factory=list)
    #: what the blackboard held at the end (best bounds, witness or not, cache kinds and reuses)
    blackboard: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"problem": self.problem.to_json(), "steps": [s.to_json() for s in self.steps],
                "skipped": list(self.skipped), "notes": list(self.notes), "blackboard": dict(self.blackboard)}

    def summary(self) -> str:
        ran = [s.method for s in self.steps if s.outcome == "ran"]
        skipped = [s.method for s in self.steps if s.outcome == "skipped"]
        text = f"ran {', '.join(ran) or 'nothing'}"
        if skipped:
            text += f"; planned but skipped {', '.join(skipped)}"
        return text


def _round(v):
    return None if v is None else (v if not math.isfinite(v) else round(float(v), 4))


def candidates(net, prob: Problem, registry: dict, methods=None, exclude=()) -> tuple[dict, list]:
    """name -> spec of the methods that may run, and the skipped ones with the reason (see module doc)."""
    chosen = None if methods is None else set(methods)
    out, skipped = {}, []
    for name in sorted(registry):
        spec: MethodSpec = registry[name]
        if name.startswith("test-"):
            continue
        if chosen is not None and name not in chosen:
            continue
        if name in exclude:
            skipped.append({"method": name, "reason": "excluded"})
            continue
        if spec.kind == "estimate":
            skipped.append({"method": name, "reason": "an estimate (no guarantee): certify uses certified "
                                                      "results only"})
            continue
        reason = spec.unsupported_reason(net, prob.norm, prob.region)
        if reason is not None:
            skipped.append({"method": name, "reason": reason})
            continue
        out[name] = spec
    for name in list(out):
        dom = DOMINATED.get(name)
        if dom is not None and dom[0] in out and (chosen is None or dom[0] in chosen):
            if name == "ibp-jacobian" and costs.estimate("crown", prob) > PHASE1_S:
                continue  # crown may not fit the budget: the interval bound is the cheap fallback (phase 1)
            del out[name]
            skipped.append({"method": name, "reason": f"dominated by {dom[0]}: {dom[1]}"})
    return out, skipped


def make_plan(net, prob: Problem, registry: dict, budget: float, methods=None, exclude=()) -> Plan:
    """The `Plan` for ``prob`` in ``budget`` seconds (see the module doc for the rules)."""
    cands, skipped = candidates(net, prob, registry, methods, exclude)
    plan = Plan(prob, [], skipped)
    phase1 = _phase1(prob, cands, budget, plan)
    phase2 = _phase2(prob, cands, budget, plan, {s.method for s in phase1})
    plan.steps = phase1 + _order_phase2(phase2, budget)
    taken = {s.method for s in plan.steps} | {s["method"] for s in plan.skipped}
    for name in cands:
        if name not in taken:
            plan.skipped.append({"method": name, "reason": f"not useful for {prob.problem_class()} here"})
    return plan


def _phase1(prob: Problem, cands: dict, budget: float, plan: Plan) -> list:
    """Cheap certified upper bounds and a quick sampled lower bound."""
    cheap = [m for m in ("naive", "autolip", "eclipse-fast", "crown", "ibp-jacobian") if m in cands]
    if prob.norm != 2:
        cheap = [m for m in cheap if m not in ("autolip", "eclipse-fast")]
    if not prob.chain:
        cheap = [m for m in cheap if m != "eclipse-fast"]
    if not prob.is_box and prob.norm == 2 and prob.chain:  # global l2 on chains: the closed forms are better
        cheap = [m for m in cheap if m != "crown"]
    if not cheap:  # the caller's methods: the cheapest upper-capable one opens the interval
        cheap = [m for m in cands if cands[m].kind in ("upper", "exact")]
    est = {m: costs.estimate(m, prob) for m in cheap}
    ordered = sorted(cheap, key=lambda m: est[m])
    limit = max(min(PHASE1_S, PHASE1_SHARE * budget), 0.02 * budget)
    steps = [Step(m, 1, "upper", est[m], m in costs.ANYTIME, why="cheap certified upper bound")
             for i, m in enumerate(ordered) if i == 0 or est[m] <= limit]
    for m in ordered[1:]:
        if est[m] > limit:
            plan.notes.append(f"{m} not in phase 1: estimated {est[m]:.2g} s > {limit:.2g} s")
    if "lower-sample" in cands:  # right after the first upper bound: the interval is then finite
        per = costs.sample_cost(prob, 1000) / 1000
        n = int(min(SAMPLES_MAX, max(SAMPLES_MIN, PHASE1_LOWER_S / max(per, 1e-9))))
        steps.insert(1, Step("lower-sample", 1, "lower", costs.sample_cost(prob, n), True, options={"samples": n},
                             why="quick sampled lower bound"))
    return steps


def _phase2(prob: Problem, cands: dict, budget: float, plan: Plan, done: set) -> list:
    """The tightening methods for this problem class, each with its weight (see module doc)."""
    steps = []

    def add(method, weight, why, role="upper", options=None):
        if method not in cands or method in done:
            return
        est = costs.estimate(method, prob, options)
        steps.append(Step(method, 2, role, est, method in costs.ANYTIME, weight, dict(options or {}), why,
                          costs.min_time(method, prob)))

    def skip(method, reason):
        if method in cands and method not in done:
            plan.skipped.append({"method": method, "reason": reason})

    box, p, u = prob.is_box, prob.norm, prob.unstable
    if p == 2 and prob.chain:
        opt_start = costs.min_time("lipsdp-opt", prob)
        if "lipsdp-opt" in cands and opt_start <= OPT_START_SHARE * budget:
            skip("eclipse-family", "lipsdp-opt starts from the best closed form (eclipse-family's value) and "
                                   "improves on it")
        else:
            add("eclipse-family", 0.4 if box else 0.5, "closed-form LipSDP family" + (" with local slopes" if box else ""))
            if costs.estimate("eclipse-family", prob) > OPT_START_SHARE * budget:
                # the family may not fit: its cheapest member, when phase 1 left it out (cifar_base_kw global at
                # T = 10 s: eclipse-fast ~4 s, 10.1 against naive's 20.5)
                add("eclipse-fast", 0.1, "the cheapest closed form (too slow for phase 1)")
        # with few inputs crown-bab's input splitting closes l2 boxes and the local SDP stays far above it
        # (ACAS Xu 1_1 eps 0.05: 1535 after 3 s against crown-bab's 3.07 after 5 s): a small share
        bab_splits_input = box and prob.n_inputs <= INPUT_SPLIT_MAX_DIM and "crown-bab" in cands
        add("lipsdp-opt", 0.1 if bab_splits_input else (0.7 if box else 0.9),
            "LipSDP-Neuron optimum" + (" with local slopes" if box else ""))
    if not box and not (p == 2 and prob.chain):  # every neuron undecided: its global slope range
        add("crown", 0.5, "CROWN on the Jacobian graph with the activations' global slope ranges")
    if box:
        few_inputs = prob.n_inputs <= INPUT_SPLIT_MAX_DIM
        # a chain of smooth activations (no ReLU-like neuron) with many inputs: crown-bab has nothing to split
        # and returns its root, crown's bound, after sharing the time with crown (ffnnSIGMOID 6x200 l1 box,
        # T = 60 s: both cut, 6825 where crown alone gives 5833 in 30 s)
        splits_nothing = (not few_inputs and prob.chain and not prob.has_maxpool and bool(prob.activations)
                          and not prob.activations & RELU_LIKE)
        bab_starts = costs.min_time("crown-bab", prob) <= BAB_START_SHARE * budget
        if splits_nothing:
            skip("crown-bab", "no ReLU-like neuron to split and too many inputs to split the box: it would return "
                              "crown's bound")
        if "crown-bab" in cands and "crown-bab" not in done and bab_starts and not splits_nothing:
            skip("crown", "crown-bab starts from crown's bound (its root) and is anytime from there")
        else:  # crown-bab would not reach its root bound in time: crown, cut at its limit, keeps intervals
            add("crown", 0.5 if p == INF else 0.3, "CROWN on the Jacobian graph")
        # with few inputs crown-bab splits the box and closes the interval itself (exact with a witness)
        if not splits_nothing:
            add("crown-bab", 1.0 if few_inputs else (0.6 if p == INF else 0.4),
                "branch and bound " + ("on the input box (few inputs)" if few_inputs else "on unstable neurons")
                + " with lower bounds inside the search (anytime)")
    if box:
        if u is None:
            skip("enumerate", "the number of unstable neurons is unknown (no pre-activation bounds)")
        elif u <= ENUMERATE_MAX_UNSTABLE:
            add("enumerate", 1.0, f"{u} unstable neurons: exact by enumeration")
        else:
            skip("enumerate", f"{u} unstable neurons under CROWN bounds (> {ENUMERATE_MAX_UNSTABLE}): 2^{u} patterns")
        easy = u is not None and u <= MIP_EASY_UNSTABLE
        # with few inputs crown-bab's input splitting closes boxes the MIP cannot: the MIP gets a small share
        if p != 2:
            hard = u is not None and u > MIP_HARD_UNSTABLE
            add("mip", 0.9 if easy else (0.1 if prob.n_inputs <= INPUT_SPLIT_MAX_DIM or hard else 0.3),
                f"exact MIP ({'few' if easy else 'many'} unstable neurons), anytime sandwich")
    _maybe_slow(prob, cands, budget, add, skip)
    # in l_inf (per-output domains) crown-bab's probes find the maximum; in l1 / l2 they stayed far below
    # lower-grad's ascent (ACAS Xu 1_1 eps 0.05, l2: 0.086 against 0.39)
    if box and p == INF and prob.n_inputs <= INPUT_SPLIT_MAX_DIM and "crown-bab" in cands and "crown-bab" not in done:
        skip("lower-grad", "crown-bab splits the input box and probes every piece it keeps for certified "
                           "gradients: its own lower bound (few inputs, l_inf)")
    else:
        add("lower-grad", 0.5, "gradient ascent for the lower end", role="lower")
    return steps


def _maybe_slow(prob: Problem, cands: dict, budget: float, add, skip) -> None:
    """lipopt, shor-sdp and exact SeqLip: planned only when their estimate fits (`SLOW_SHARE`)."""
    limit = SLOW_SHARE * budget
    rules = []
    if prob.norm != 2 and prob.chain:
        rules.append(("lipopt", 0.5, "LiPopt LP hierarchy"))
    if prob.norm == INF and prob.chain and prob.depth <= 2:
        rules.append(("shor-sdp", 0.5, "Shor SDP relaxation"))
    if prob.norm == 2 and prob.chain:
        rules.append(("seqlip", 0.2, "exact SeqLip on narrow layers"))
    for method, weight, why in rules:
        est = costs.estimate(method, prob)
        if est <= limit:
            add(method, weight, why)
        else:
            skip(method, f"estimated {est:.3g} s > {SLOW_SHARE:g} x budget ({limit:.3g} s)")
    if prob.norm == INF and prob.depth > 2:
        skip("shor-sdp", f"{prob.depth} hidden layers (shor-sdp handles one or two)")


def _order_phase2(steps: list, budget: float) -> list:
    """Quick uninterruptible methods, enumerate, lower-grad, slow uninterruptible ones, anytime ones."""
    def key(s: Step):
        if not s.anytime and s.estimate_s <= QUICK_SHARE * budget:
            return (0, s.estimate_s)
        if s.method == "enumerate":
            return (1, 0.0)
        if s.method == "lower-grad":
            return (2, 0.0)
        if not s.anytime:
            return (3, s.estimate_s)
        return (4, -s.weight)
    return sorted(steps, key=key)


def share(step: Step, later: list, left: float, lower_zero: bool = False,
          box: bool = True) -> tuple[float | None, str | None]:
    """The time limit of ``step`` when ``left`` seconds remain and ``later`` steps follow: (seconds, None),
    or (None, reason) when it should not start (see the module doc). ``lower_zero``: the lower end is
    still 0 or missing (lower-grad then gets a larger share); ``box``: the problem is on a box."""
    if left <= 0:
        return None, "no time left"
    if not step.anytime:
        if step.estimate_s > left:
            return None, f"cannot be interrupted and needs ~{step.estimate_s:.3g} s > {left:.3g} s left"
        return left, None
    reserve = sum(s.estimate_s for s in later if not s.anytime and s.estimate_s <= left)
    pool = max(left - reserve, 0.0)
    weights = step.weight + sum(s.weight for s in later if s.anytime)
    give = pool if weights <= 0 else pool * step.weight / weights
    if not any(s.anytime for s in later):
        give = pool
    runnable = [s for s in later if (s.min_s if s.anytime else s.estimate_s) <= left]
    if step.method == "lower-grad" and not runnable:  # the last step that can run: one ascent with all the
        # time (restarts scaled to it) rather than several short ones
        give = pool
    elif step.method == "lower-grad":  # the only lower-end method: its own cap, not a weighted share
        # (crown cut short keeps interval bounds from the cut on: every second counts there; lipsdp-opt and
        # crown-bab improve gradually and do not starve the lower end)
        # on a box only: globally a cut crown keeps its partial walk and the lower end decides the gap
        # (resnet_2b global l_inf, T = 60 s: 10% gave lower 65, gap 2107; 30% gives 105, gap 1387)
        starved = (not lower_zero and box
                   and any(s.method == "crown" and s.estimate_s > pool for s in later))
        cap = LOWER_GRAD_SHARE_ZERO if lower_zero else LOWER_GRAD_SHARE_STARVED if starved else LOWER_GRAD_SHARE
        give = min(pool, cap * left, step.estimate_s)
    if step.min_s > give and step.min_s > pool:
        return None, f"needs ~{step.min_s:.3g} s to hold a value, {pool:.3g} s available"
    return max(give, min(step.min_s, pool)), None
