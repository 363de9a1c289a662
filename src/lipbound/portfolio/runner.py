"""Running a plan on one box (or globally): `BoxRun` holds the problem, its plan, its blackboard (the
`MethodContext.shared` dict every method of the run sees), the method results and the interval."""

from __future__ import annotations

import math
import sys
import time

from ..api import bound
from ..registry import MethodContext
from . import costs
from .planner import Plan, Step, make_plan, share
from .problem import Problem, describe_problem
from .result import Interval

#: statuses that mean "a method stopped at its time limit" (more time could have helped)
_CUT = ("time_limit",)


class BoxRun:
    """One problem (network, norm, one region or global, output) being certified.

    ``shared``: the blackboard passed to every method (`MethodContext.shared`): best_lower, best_upper,
    witness (input shape), target_gap, and the cache of pre-activation bounds (`MethodContext.cached`)."""

    def __init__(self, net, norm, region, output, *, seed: int, target_gap: float, t0: float, label: str = "",
                 log=None):
        self.net, self.norm, self.region, self.output, self.seed = net, norm, region, output, seed
        self.label = label
        self.shared: dict = {"target_gap": target_gap, "best_lower": None, "best_upper": None, "witness": None}
        self.ctx = MethodContext(norm=norm, region=region, output=output, seed=seed, shared=self.shared)
        self.interval = Interval(t0)
        self.results: list = []
        self.problem: Problem | None = None
        self.plan: Plan | None = None
        self.cut = False  # a method stopped at its limit, or a planned one was skipped for lack of time
        self._log = log
        self.on_result = None  # called as on_result(self, method) after each result

    # -- planning ---------------------------------------------------------------------------------

    def prepare(self, registry: dict, budget: float, methods=None, exclude=()) -> Plan:
        self.problem = describe_problem(self.net, self.norm, self.region, self.output, self.ctx, budget)
        self.plan = make_plan(self.net, self.problem, registry, budget, methods, exclude)
        return self.plan

    def pending(self, phase: int | None = None) -> list:
        return [s for s in self.plan.steps if s.outcome == "planned" and (phase is None or s.phase == phase)]

    # -- running ----------------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        if self._log is not None:
            self._log(f"{self.label}{msg}")

    def run(self, step: Step, time_limit: float | None, seed: int | None = None):
        """Run one step with ``time_limit`` seconds (and ``seed``, default the run's), record its `Bound`,
        update the interval and the blackboard. Returns the Bound."""
        step.share_s = time_limit
        step.outcome = "ran"
        opts = dict(step.options)
        if step.method == "lower-grad" and time_limit is not None:
            opts = _lower_grad_options(self.problem, time_limit, opts)
            step.options = dict(opts)
        limit = None if time_limit is None or not math.isfinite(time_limit) else max(time_limit, 1e-3)
        self.log(f"{step.method}: running" + ("" if limit is None else f" (up to {limit:.3g} s)"))
        b = bound(self.net, step.method, self.norm, self.region, limit, output=self.output, quiet=True,
                  seed=self.seed if seed is None else seed, shared=self.shared, **opts)
        self.results.append(b)
        step.note = b.reason if b.status not in ("ok", "time_limit") else step.note
        if b.status in _CUT:
            self.cut = True
        moved = self.interval.offer(b, time.perf_counter(), self.net.input_shape)
        iv = self.interval
        self.shared.update(best_lower=iv.lower, best_upper=iv.upper, witness=iv.witness)
        self.plan.blackboard = self.board_summary()
        if self.on_result is not None:
            self.on_result(self, step.method)
        value = "—" if b.value is None else f"{b.value:.6g}"
        self.log(f"{step.method}: {b.kind} {value} ({b.status}, {b.time_s:.2f} s)"
                 + (f" -> [{_f(iv.lower)}, {_f(iv.upper)}] gap {_f(iv.gap)}" if moved else ""))
        return b

    def board_summary(self) -> dict:
        """The blackboard in words: best bounds, whether a witness is there, the cached kinds and reuses."""
        sh = self.shared
        return {"best_lower": sh.get("best_lower"), "best_upper": sh.get("best_upper"),
                "witness": sh.get("witness") is not None, "target_gap": sh.get("target_gap"),
                "cache": sorted({k[2] for k in sh.get("cache", {})}), "cache_hits": list(sh.get("cache_hits", []))}

    def skip(self, step: Step, reason: str) -> None:
        step.outcome, step.note = "skipped", reason
        if "left" in reason or "available" in reason or "time" in reason:
            self.cut = True
        self.log(f"{step.method}: skipped ({reason})")

    def run_leftover(self, deadline: float) -> bool:
        """Time left once every planned step has run: lower-grad again, if the plan ran it, with a new seed
        and the whole time left (more restarts: `_lower_grad_options`): the one method whose repeats find
        new points (mnist-net_256x2 global linf at T=10 s ended after 2 s, lower 332, where a 10 s
        lower-grad reaches 795). Returns whether it ran."""
        left = deadline - time.perf_counter()
        ran = [s for s in self.plan.steps if s.method == "lower-grad" and s.outcome == "ran"]
        if not ran or left < LEFTOVER_MIN_S:
            return False
        step = Step("lower-grad", 3, "lower", left, True, why="time left after the plan: another ascent, new seed")
        self.plan.steps.append(step)
        self.run(step, left, seed=self.seed + len(ran))
        return True

    def skip_hopeless_global_crown(self) -> None:
        """Globally, leave crown out when ibp-jacobian's bound is above `CROWN_GLOBAL_MAX_GAIN` x the best
        upper bound already held: there every neuron is undecided and crown's bound stayed within 9x of
        ibp-jacobian's on every shared network (0.11 on resnet_2b l2 to 1.0 on Convnet_avgpool l1), and a
        crown cut at its limit keeps interval bounds from the cut on. Convnet_maxpool global l2 / l_inf:
        crown cut at 54 s gave 4,924 / 35,449 where naive gives 597 / 6,868 at once; the time is lower-grad's."""
        if self.region is not None or self.interval.upper is None:
            return
        ibp = [b.value for b in self.results if b.method == "ibp-jacobian" and b.value is not None
               and b.kind == "upper" and b.status == "ok"]
        if not ibp or min(ibp) <= CROWN_GLOBAL_MAX_GAIN * self.interval.upper:
            return
        for step in self.pending(2):
            if step.method == "crown":
                self.skip(step, f"ibp-jacobian's {min(ibp):.4g} is {min(ibp) / self.interval.upper:.3g}x the best "
                                f"upper bound (> {CROWN_GLOBAL_MAX_GAIN:g}x); globally crown stays within ~9x of "
                                "ibp-jacobian, and cut at its limit it keeps interval bounds")

    def run_phase(self, phase: int, deadline: float, done) -> None:
        """Run the pending steps of ``phase`` until ``done()`` or none is left; phase 1 always runs (its
        methods are the cheapest certified bounds, even past the budget), phase 2 within ``deadline``."""
        if phase == 2:
            self.skip_hopeless_global_crown()
        steps = self.pending(phase)
        for i, step in enumerate(steps):
            if done():
                return
            if phase == 1:
                left = deadline - time.perf_counter()
                if left <= 0 and i >= 2:  # the first upper bound and lower-sample always run
                    self.skip(step, "no time left (budget spent)")
                    continue
                self.run(step, max(left, step.min_s, 0.05) if step.anytime else None)
                continue
            left = deadline - time.perf_counter()
            later = [s for s in steps[i + 1:] if s.outcome == "planned"]
            lower = self.interval.lower
            limit, reason = share(step, later, left, lower_zero=lower is None or lower <= 0,
                                  box=self.region is not None)
            if reason is not None:
                self.skip(step, reason)
                continue
            self.run(step, limit)


#: globally, crown is skipped when ibp-jacobian's bound is above this many times the best upper bound
#: (`BoxRun.skip_hopeless_global_crown`)
CROWN_GLOBAL_MAX_GAIN = 4.0
#: `run_leftover` starts another lower-grad only with at least this much time left (s)
LEFTOVER_MIN_S = 1.0
#: lower-grad's restarts when its limit leaves room for more than its default 32
MAX_RESTARTS = 256
#: lower-grad's region-walk steps per second of its limit (a step takes about 0.1 s on ACAS Xu: the walk's
#: time share, half the limit, is what stops it there; on tiny networks this caps it)
WALK_STEPS_PER_S = 8


def _lower_grad_options(prob: Problem, limit: float, opts: dict) -> dict:
    """lower-grad's options for ``limit`` seconds: fewer screening samples first (at most 20% of the
    limit); its 150 ascent steps are kept unless the limit is below half their estimated time (a shorter
    annealing schedule lost the whole value on mnist-net_256x2 eps 0.01: 69 steps gave 0, 150 gave 1.21),
    since an anytime run cut at its limit keeps every iterate it re-evaluated."""
    out = dict(opts)
    per = costs.lower_grad_step_cost(prob, 32)
    samples = costs.sample_cost(prob, 2000)
    if samples > 0.2 * limit:
        out.setdefault("samples", int(max(64, 2000 * 0.2 * limit / samples)))
    if 150 * per > 2 * limit:
        out.setdefault("steps", int(max(40, (0.8 * limit) / max(per, 1e-6))))
    elif samples + 150 * per < 0.4 * limit:  # time for more starting points (each restart ~ linear in time)
        out.setdefault("restarts", int(min(MAX_RESTARTS, 32 * 0.6 * limit / max(samples + 150 * per, 1e-6))))
    # the region walk (piecewise-linear networks, few inputs) restarts from fresh samples while its share of
    # the limit lasts: more steps for a longer limit (ACAS Xu 1_1 global l2: 1423 after its default 40
    # steps, 1580 and more with the time of certify's leftover runs)
    out.setdefault("walk", int(max(40, WALK_STEPS_PER_S * limit)))
    return out


def _f(v) -> str:
    return "—" if v is None else f"{v:.6g}"


def stderr_log(t0: float):
    """A progress printer: one line per event on stderr, with the time since ``t0``."""
    def log(msg: str) -> None:
        print(f"certify [{time.perf_counter() - t0:7.2f} s] {msg}", file=sys.stderr, flush=True)
    return log


__all__ = ["BoxRun", "stderr_log"]
