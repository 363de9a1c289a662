"""Products of per-operation Lipschitz constants along the graph.

Methods: ``naive`` (product of operator norms, l1 / l2 / l_inf), ``autolip`` (AutoLip graph recursion with
certified spectral norms), ``seqlip`` (exact SeqLip by {0,1}^n enumeration per hidden layer), and the
estimates ``seqlip-greedy`` and ``seqlip-topk``.

* `naive` -- the rule per operation of the one graph traversal (`lipbound.traversal`), reused by AutoLip;
* `autolip` -- AutoLip and SeqLip (maths: shared/reference/autolip-seqlip.md).
"""

from . import autolip, naive  # noqa: F401  (registers the methods)
