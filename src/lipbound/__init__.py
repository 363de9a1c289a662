"""lipbound: certified bounds on the Lipschitz constant of neural networks.

    import lipbound
    net = lipbound.load("model.onnx")            # or lipbound.from_torch(module, input_shape)
    b = lipbound.bound(net, "naive", norm=2)     # one method -> Bound
    report = lipbound.compare(net, norm="inf")   # every applicable method -> Report
    res = lipbound.certify(net, norm=2, time_limit=60)  # the tightest certified interval in 60 s
    for rec in lipbound.sweep(net, X, eps=0.05, out="r.jsonl"): ...  # local constants over a dataset
"""

# `lipbound.methods` is the subpackage of method modules; it is callable: lipbound.methods() lists them
from . import methods
from .api import Bound, Report, bound, compare
from .certify import CertifyResult, certify
from .errors import LipboundError, MethodFailed, Unsupported, UnsupportedOperator
from .io import from_torch, load
from .network import Network
from .registry import Region
from .sweep import sweep
from . import examples  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Bound", "Report", "bound", "compare", "certify", "CertifyResult", "sweep", "methods", "load", "from_torch", "Network", "Region",
           "LipboundError", "Unsupported", "MethodFailed", "UnsupportedOperator", "examples"]

