"""Readers: ONNX files and torch modules into a `lipbound.network.Network`."""

from .onnx_reader import load, load_onnx
from .torch_reader import from_torch

__all__ = ["load", "load_onnx", "from_torch"]
