"""torch.export programs (``.pt2`` archives written by ``torch.export.save``) into a `Network`.

The program's graph is read as it was saved (no ``run_decompositions``: the export IR keeps
``aten.linear``, ``aten.conv2d``, ``aten.gelu``, ``aten.silu``... which map one to one; decomposed
programs (``aten.addmm``, ``aten.convolution``, ``aten._native_batch_norm_legit_no_training``) are read
too). Its aten operators go through the same tables as torch functions (`lipbound.io.tables`,
``torch_reader.FUNCTION_HANDLERS``); parameters, buffers and constants lifted as graph inputs take their
values from ``ep.state_dict`` / ``ep.constants`` by the graph signature. The input shape is the user
input's ``meta['val']`` without its batch dimension, which must be 1 or dynamic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch

from ..errors import LipboundError
from ..network import Network
from .builders import existing_file
from .torch_reader import _check_shape, _convert, _one_line


@contextlib.contextmanager
def quiet_torch():
    """Silence torch's warnings, logs and stderr prints (a failing torch.export.load / export logs a
    traceback or prints its partial graph) while loading or exporting: lipbound reports one line."""
    log = logging.getLogger("torch")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def load_torch_export(path, name: str | None = None, check: bool = True) -> Network:
    """Read a ``.pt2`` file written by ``torch.export.save`` into a `Network` (float64 parameters).

    Not a bound: an exact translation of the exported program (checked against ``ep.module()`` on random
    inputs with ``check``). Raises `LipboundError` with a one-line message for a missing file, a file that
    is not a torch.export archive (or was written by an incompatible torch version), a program with
    several inputs or outputs, and `UnsupportedOperator` for an aten operator outside the tables.
    Cost: loading the archive (a few seconds the first time torch.export is used), one pass over the graph."""
    p = existing_file(path, "a .pt2 file")
    try:
        with quiet_torch():
            ep = torch.export.load(str(p))
    except Exception as e:
        raise LipboundError(_one_line(
            f"{str(p)!r} is not a readable torch.export program ({type(e).__name__}: {e}); write one with "
            f"torch.export.save(torch.export.export(module.eval(), (x,)), path) (this is torch {torch.__version__})"
        )) from None
    return from_exported_program(ep, name=name or p.stem, source=str(p), check=check)


def from_exported_program(ep, name: str = "network", source: str | None = None, check: bool = True) -> Network:
    """Read a ``torch.export.ExportedProgram`` into a `Network` (see `load_torch_export`).

    Not a bound: an exact translation. Raises `LipboundError` / `UnsupportedOperator` (one line).
    Cost: one pass over the graph (and two forward passes of the program with ``check``)."""
    if not isinstance(ep, torch.export.ExportedProgram):
        raise LipboundError(f"expected a torch.export.ExportedProgram, got {type(ep).__name__}")
    placeholders, input_name = _lifted_inputs(ep)
    input_shape = _input_shape(ep, input_name)
    position = _user_output(ep)
    net = _convert(ep.graph_module, input_shape, name, placeholders=placeholders, input_name=input_name,
                   output_position=position)
    net.source = source
    if check:
        _check_against_program(net, ep, input_name)
    return net


def _lifted_inputs(ep) -> tuple[dict, str]:
    """Values of the placeholders that are parameters / buffers / constants, and the user input's name."""
    from torch.export.graph_signature import InputKind

    values, users = {}, []
    for spec in ep.graph_signature.input_specs:
        arg = spec.arg.name if hasattr(spec.arg, "name") else None
        if spec.kind == InputKind.USER_INPUT:
            if hasattr(spec.arg, "value") and not isinstance(getattr(spec.arg, "value"), torch.Tensor):
                values[arg] = spec.arg.value  # a constant (non-tensor) argument
            else:
                users.append(arg)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            value = ep.state_dict.get(spec.target)
            if value is None:
                value = ep.constants.get(spec.target)
            if value is None:
                raise LipboundError(f"the exported program has no value for its {spec.kind.name.lower()} "
                                    f"{spec.target!r}")
            values[arg] = value
        else:
            raise LipboundError(f"the exported program takes a {spec.kind.name.lower()} input {arg!r}: not supported")
    if len(users) != 1:
        raise LipboundError(f"the exported program has {len(users)} tensor inputs ({', '.join(map(repr, users))}); "
                            "lipbound reads networks with exactly one input")
    return values, users[0]


def _input_shape(ep, input_name: str) -> tuple:
    """The user input's shape without its batch dimension (which must be 1 or dynamic)."""
    node = next((n for n in ep.graph.nodes if n.op == "placeholder" and n.name == input_name), None)
    val = None if node is None else node.meta.get("val")
    if val is None or not hasattr(val, "shape"):
        raise LipboundError(f"the exported program's input {input_name!r} has no recorded shape")
    if not val.dtype.is_floating_point:
        raise LipboundError(f"the exported program's input {input_name!r} has a non-floating-point type {val.dtype}")
    dims = [int(d) if isinstance(d, int) else None for d in val.shape]
    if len(dims) < 2 or dims[0] not in (None, 1):
        raise LipboundError(f"the exported program's input {input_name!r} has shape "
                            f"{[d if d is not None else '?' for d in dims]}: lipbound needs a leading batch "
                            "dimension of 1 or a dynamic one (export with x[:1] or dynamic_shapes)")
    if any(d is None for d in dims[1:]):
        raise LipboundError(f"the exported program's input {input_name!r} has dynamic dimensions besides the batch "
                            f"({[d if d is not None else '?' for d in dims]})")
    return _check_shape(dims[1:])


def _user_output(ep) -> int:
    """The position of the one user output in the graph's output tuple."""
    from torch.export.graph_signature import OutputKind

    specs = ep.graph_signature.output_specs
    users = [i for i, s in enumerate(specs) if s.kind == OutputKind.USER_OUTPUT]
    if len(users) != 1:
        raise LipboundError(f"the exported program has {len(users)} outputs; lipbound reads networks with exactly "
                            "one output")
    return users[0]


def _check_against_program(net: Network, ep, input_name: str):
    """Compare the network with the program on two random inputs (one at a time: batch 1 is always valid)."""
    module = ep.module()
    g = torch.Generator().manual_seed(0)
    val = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == input_name).meta["val"]
    for _ in range(2):
        x = torch.rand((1,) + net.input_shape, generator=g, dtype=torch.float64) * 2 - 1
        try:
            with torch.no_grad():
                ref = module(x.to(val.dtype))
        except Exception as e:
            raise LipboundError(_one_line(f"the exported program fails on an input of shape {tuple(x.shape)}: "
                                          f"{type(e).__name__}: {e}")) from None
        if isinstance(ref, (tuple, list)) and len(ref) == 1:
            ref = ref[0]
        if not isinstance(ref, torch.Tensor):
            raise LipboundError("the exported program does not return a single tensor")
        ref = ref.detach().to(torch.float64).reshape(-1)
        ours = net(x).reshape(-1)
        if ref.shape != ours.shape:
            raise LipboundError(f"the network's output size {ours.numel()} differs from the program's {ref.numel()}")
        tol = (1e-4 if val.dtype != torch.float64 else 1e-9) * (1.0 + float(ref.abs().max()))
        diff = float((ref - ours).abs().max())
        if not diff <= tol:
            raise LipboundError(f"the network read from the program does not reproduce it (max difference "
                                f"{diff:.3g})")
