"""torch reader (placeholder until the reader lands)."""
from ..errors import LipboundError


def from_torch(module, input_shape, name=None):
    raise LipboundError("the torch reader is not written yet")
