"""The machinery of `lipbound.certify` (a portfolio of methods run in a time budget).

* `problem.py` -- what the planner knows: the problem class and the network's sizes, unstable neurons;
* `costs.py` -- the cost model (seconds per method from sizes, measured constants);
* `planner.py` -- the rules: candidates, dominated methods, phase 1 / phase 2, order, time shares;
* `runner.py` -- running a plan on one box with its blackboard (`MethodContext.shared`);
* `result.py` -- the certified interval, its timeline, `CertifyResult`; `plot.py` -- its plot.
"""
