"""ONNX reader (placeholder until the reader lands)."""
from ..errors import LipboundError


def load_onnx(path, name=None):
    raise LipboundError("the ONNX reader is not written yet")


load = load_onnx
