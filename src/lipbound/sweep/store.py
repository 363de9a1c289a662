"""The JSON Lines file of a sweep: one record per (id, eps), appended by the driver alone, and resuming.

Every line is a whole record written with one ``write`` of the full line, then ``flush`` and
``os.fsync``: a sweep killed at any moment leaves complete lines, plus at most one final line without its
newline (a crash inside the write), which `scan` reports and `Writer` truncates away before appending.
Every record carries the sweep's settings (``"settings"``); resuming into a file whose records were
written with other settings is refused, naming the setting.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from ..errors import LipboundError

#: settings that only name things (a moved or renamed file may be resumed): not compared on resume
INFORMATIONAL = ("model", "inputs")


def record_key(rec: dict) -> tuple:
    """(id, eps) of a record: its identity in the file (eps None for a VNN-LIB region)."""
    eps = rec.get("eps")
    return rec.get("id"), None if eps is None else float(eps)


def settings_differ(old: dict, new: dict) -> str | None:
    """A phrase naming every compared setting that differs ('norm: "2" in the file, "inf" now'), or None."""
    diffs = [f"{k}: {json.dumps(old.get(k))} in the file, {json.dumps(new.get(k))} now"
             for k in sorted(set(old) | set(new)) if k not in INFORMATIONAL and old.get(k) != new.get(k)]
    return "; ".join(diffs) or None


def scan(path, settings: dict) -> tuple[set, int, int]:
    """(the (id, eps) keys already in ``path``, the byte length of its complete lines, its size): reads
    the file line by line (only the keys are kept). A complete line that is not a JSON record, or a
    record written with other settings, is a `LipboundError` naming the line (nothing is changed). A
    missing file is empty. Cost: one pass over the file."""
    path = Path(path)
    done: set = set()
    if not path.exists():
        return done, 0, 0
    if not path.is_file():
        raise LipboundError(f"--out {path} is not a file")
    good = 0
    try:
        with open(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    break  # a line cut by a crash: dropped (and recomputed)
                good += len(line)
                if not line.strip():
                    continue
                rec = _parse(line, path, lineno)
                why = settings_differ(rec.get("settings") or {}, settings)
                if why is not None:
                    raise LipboundError(f"{path} was written by a sweep with other settings ({why}); "
                                        "use another --out or the same settings")
                done.add(record_key(rec))
        size = path.stat().st_size
    except OSError as e:
        raise LipboundError(f"cannot read {path}: {e}") from None
    return done, good, size


def _parse(line: bytes, path, lineno: int) -> dict:
    try:
        rec = json.loads(line)
    except ValueError:
        rec = None
    if not isinstance(rec, dict) or "id" not in rec or "eps" not in rec:
        raise LipboundError(f"{path} line {lineno} is not a sweep record: not resuming into it")
    return rec


class Writer:
    """Appends records to the output file; the only writer (an exclusive ``flock`` while it is open)."""

    def __init__(self, path):
        """Open ``path`` for appending (created if missing) and lock it; a locked file is an error."""
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise LipboundError(f"cannot write {self.path}: {e}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise LipboundError(f"another sweep is writing {self.path}") from None

    def cut(self, good_bytes: int) -> None:
        """Truncate the file to ``good_bytes`` (its complete lines, from `scan`): drops a cut final line."""
        if os.fstat(self.fd).st_size > good_bytes:
            os.ftruncate(self.fd, good_bytes)
            os.fsync(self.fd)

    def write(self, rec: dict) -> None:
        """One line: the record as compact JSON and a newline, in one write, then fsync."""
        data = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:  # os.write on a regular file writes everything; the loop is for the exotic case
            n = os.write(self.fd, view)
            view = view[n:]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None
