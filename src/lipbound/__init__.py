"""lipbound: certified bounds on the Lipschitz constant of neural networks.

    import lipbound
    net = lipbound.load("model.onnx")            # or lipbound.from_torch(module, input_shape)
    b = lipbound.bound(net, "naive", norm=2)     # one method -> Bound
    report = lipbound.compare(net, norm="inf")   # every applicable method -> Report
"""

# The subpackage `lipbound.methods` is imported first so that the name `lipbound.methods` is then
# bound to the listing function `methods()` (importing the subpackage later would rebind it).
from . import methods as _methods_package  # noqa: F401  (isort: skip)
from .api import Bound, Report, bound, compare, methods
from .errors import LipboundError, MethodFailed, Unsupported, UnsupportedOperator
from .io import from_torch, load
from .network import Network
from .registry import Region
from . import examples  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Bound", "Report", "bound", "compare", "methods", "load", "from_torch", "Network", "Region",
           "LipboundError", "Unsupported", "MethodFailed", "UnsupportedOperator", "examples"]

