"""Readers: ONNX files, torch modules and torch.export programs into a `lipbound.network.Network`."""

from __future__ import annotations

from pathlib import Path

from ..errors import LipboundError
from .export_reader import from_exported_program, load_torch_export
from .onnx_reader import load_onnx
from .torch_reader import from_torch

__all__ = ["load", "load_onnx", "load_torch_export", "from_torch", "from_exported_program"]


def load(path, name: str | None = None):
    """Read a network file into a `Network`: ``.pt2`` (a ``torch.export.save`` archive) via
    `load_torch_export`, anything else (``.onnx`` or any ONNX protobuf, or an ``onnx.ModelProto``) via
    `load_onnx`.

    Not a bound: an exact translation (same outputs as onnxruntime / the exported program up to float32
    rounding). Torch checkpoints (``.pt``, ``.pth``, ``.ckpt``) cannot be read without their code: build
    the module and call `lipbound.from_torch`, or save it with ``torch.export``. Raises `LipboundError`
    (one line) for a file that cannot be read. Cost: linear in the number of parameters."""
    suffix = Path(path).suffix.lower() if isinstance(path, (str, Path)) or hasattr(path, "__fspath__") else ".onnx"
    if suffix == ".pt2":
        return load_torch_export(path, name=name)
    if suffix in (".pt", ".pth", ".ckpt"):
        raise LipboundError(f"{str(path)!r} is a torch file: load the module in Python and call "
                            "lipbound.from_torch(module, input_shape), or save it with "
                            "torch.export.save(torch.export.export(module, (x,)), 'model.pt2')")
    return load_onnx(path, name=name)
