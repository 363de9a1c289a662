"""What a sweep runs over: the points of an .npy / .npz array (memory-mapped) or VNN-LIB files.

`load_points` opens the array (``np.load(mmap_mode='r')`` for .npy: only the points in use are read),
checks it against the network input, `parse_ids` turns ``--ids A:B`` into a range, `vnnlib_items` reads
the property files; `content_hash` / `network_hash` identify the data and the network in the settings.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from ..errors import LipboundError

#: rows hashed at a time (bounded memory on a memory-mapped array)
_HASH_ROWS = 1024


def load_points(inputs, net, key: str | None = None) -> tuple[np.ndarray, str]:
    """(array of N points, a name for the settings) from an array or a path to .npy / .npz. A .npy file is
    memory-mapped (read lazily); an .npz member is read whole (the format cannot be mapped). Every point
    must have the network's input shape, or that shape with a leading 1. Bad input: `LipboundError`.
    Cost: O(1) for .npy, one read of the member for .npz."""
    if isinstance(inputs, (str, Path)):
        arr, name = _read_file(Path(inputs), key), str(inputs)
    else:
        if key is not None:
            raise LipboundError("key names an array of an .npz file: give a path, not an array")
        try:
            arr = np.asarray(inputs)
        except Exception as e:  # noqa: BLE001 - anything not an array is bad input
            raise LipboundError(f"inputs must be an array of points: {e}".splitlines()[0]) from None
        name = f"<array {arr.shape}>"
    check_shape(arr, net, name)
    return arr, name


def _read_file(path: Path, key: str | None) -> np.ndarray:
    if not path.is_file():
        raise LipboundError(f"inputs file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                names = list(data.files)
                if key is None and len(names) != 1:
                    raise LipboundError(f"{path} holds {len(names)} arrays ({', '.join(names[:8])}): name one "
                                        "with --key")
                key = names[0] if key is None else key
                if key not in names:
                    raise LipboundError(f"{path} has no array {key!r} (it holds {', '.join(names[:8])})")
                return data[key]
        if key is not None:
            raise LipboundError(f"--key is for .npz files; {path} is read as .npy")
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except LipboundError:
        raise
    except Exception as e:  # noqa: BLE001 - an unreadable file is bad input
        raise LipboundError(f"cannot read the inputs file {path} as .npy/.npz: {e}".splitlines()[0]) from None


def check_shape(arr: np.ndarray, net, name: str) -> None:
    """An error saying which shape is expected unless ``arr`` is (N, *input_shape) or (N, 1, *input_shape)
    of real numbers."""
    shape = tuple(net.input_shape)
    if arr.dtype.kind not in "fiub":
        raise LipboundError(f"the inputs in {name} are of type {arr.dtype}, not numbers")
    if arr.ndim == 0 or tuple(arr.shape[1:]) not in (shape, (1,) + shape):
        raise LipboundError(f"the inputs in {name} have shape {tuple(arr.shape)}: expected (N, "
                            f"{', '.join(map(str, shape))}) -- N points of the network input shape {shape} "
                            f"(or with a leading 1 per point)")
    if arr.shape[0] == 0:
        raise LipboundError(f"{name} holds no points")


def parse_ids(ids, n: int) -> range:
    """The ids (row indices) to sweep: None (all n), a range / slice, 'A:B' / 'A:' / ':B' / 'A' (text), with
    0 <= A < B <= n; anything outside the array is an error naming its size."""
    if ids is None:
        return range(n)
    if isinstance(ids, str):
        parts = ids.split(":")
        try:
            if len(parts) == 1:
                a = int(parts[0])
                start, stop = a, a + 1
            elif len(parts) == 2:
                start = int(parts[0]) if parts[0].strip() else 0
                stop = int(parts[1]) if parts[1].strip() else n
            else:
                raise ValueError
        except ValueError:
            raise LipboundError(f"ids {ids!r} is not A:B (rows A to B-1), A: or :B") from None
    elif isinstance(ids, (range, slice)):
        if ids.step not in (None, 1):
            raise LipboundError("ids must be a contiguous range (step 1)")
        start, stop = (0 if ids.start is None else ids.start), (n if ids.stop is None else ids.stop)
    else:
        raise LipboundError(f"ids must be 'A:B', a range or a slice, not {type(ids).__name__}")
    if not 0 <= start < stop <= n:
        raise LipboundError(f"ids {start}:{stop} are outside the inputs: they hold {n} points (ids 0:{n})")
    return range(start, stop)


def parse_eps(eps) -> list:
    """The list of radii (each finite and >= 0, duplicates dropped, order kept)."""
    values = list(eps) if isinstance(eps, (list, tuple, np.ndarray)) else [eps]
    if not values:
        raise LipboundError("give at least one eps")
    out = []
    for e in values:
        try:
            e = float(e)
        except (TypeError, ValueError):
            raise LipboundError(f"eps must be a number, got {e!r}") from None
        if not (math.isfinite(e) and e >= 0):
            raise LipboundError(f"eps must be a finite number >= 0, got {e!r}")
        if e not in out:
            out.append(e)
    return out


def vnnlib_items(paths, net, domain) -> list:
    """[(id, regions)] for VNN-LIB files: the id is the file name (names must differ), the regions its
    boxes clipped to ``domain`` and fitted to the network (a union when there are several). Cost: parsing
    the files (they are small)."""
    from ..certify import _clip
    from ..vnnlib import read_vnnlib

    if isinstance(paths, (str, Path)):
        paths = [paths]
    out, seen = [], {}
    for p in paths:
        name = Path(p).name
        if name in seen:
            raise LipboundError(f"two VNN-LIB files are named {name} ({seen[name]}, {p}): the name is the record id")
        seen[name] = p
        boxes = read_vnnlib(p, net.n_inputs)
        try:
            out.append((name, [_clip(r, domain).fit(net) for r in boxes]))
        except LipboundError as e:
            raise LipboundError(f"{p}: {e}") from None
    if not out:
        raise LipboundError("no VNN-LIB file given")
    return out


def is_vnnlib(inputs) -> bool:
    """True for a VNN-LIB path or a list of them (``.vnnlib`` / ``.vnnlib.gz``)."""
    items = [inputs] if isinstance(inputs, (str, Path)) else inputs
    if not isinstance(items, (list, tuple)) or not items:
        return False
    return all(isinstance(p, (str, Path)) and (str(p).endswith(".vnnlib") or str(p).endswith(".vnnlib.gz"))
               for p in items)


def content_hash(arr: np.ndarray) -> str:
    """sha256 of the array's dtype, shape and values, row block by row block (a memory-mapped array is
    not loaded whole). Cost: one pass over the data."""
    h = hashlib.sha256(f"{arr.dtype.str}{tuple(arr.shape)}".encode())
    for i in range(0, arr.shape[0], _HASH_ROWS):
        h.update(np.ascontiguousarray(arr[i:i + _HASH_ROWS]).tobytes())
    return h.hexdigest()


def network_hash(net) -> str:
    """sha256 of the network: every node's operation, inputs and parameter values (the same network read
    from ONNX, torch or .pt2 has the same hash). Cost: one pass over the parameters."""
    h = hashlib.sha256(repr(tuple(net.input_shape)).encode())
    for node in net.nodes:
        h.update(f"{node.op.kind}|{node.op.describe()}|{tuple(node.inputs)}".encode())
        for p in node.op.parameters():
            a = p.detach().cpu().numpy()
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
