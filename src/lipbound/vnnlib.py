"""Input regions from VNN-LIB property files (the VNN-COMP benchmark format).

A VNN-LIB file is an SMT-LIB script: ``(declare-const X_i Real)`` for the inputs, ``(declare-const Y_j
Real)`` for the outputs, and ``(assert ...)`` constraints. The constraints on the inputs define the region
on which a property is checked; the constraints on the outputs are the property itself. `read_vnnlib`
returns the input region(s) as `Region` boxes and ignores the output constraints (they are parsed and
checked for syntax, but play no role in a Lipschitz bound).

Semantics (those of VNN-COMP's reference reader ``vnnlib.py``, made strict; where that reader lets the
last bound on an input win, this one intersects them):

- the asserts are a conjunction; each assert is an atom ``(<= a b)``, ``(>= a b)``, ``(< a b)``,
  ``(> a b)``, ``(= a b)`` (chained forms such as ``(<= 0 X_0 1)`` too) or an ``and`` / ``or`` of
  formulas. The formula is expanded into a disjunction of conjunctions of the input atoms, so the result
  is one box per disjunct (the VNN-COMP ``(or (and ...) (and ...))`` form) and one box for a plain
  conjunction. Output atoms are dropped from every disjunct (a disjunction over outputs only therefore
  leaves one box), and identical input boxes are merged;
- every input atom must bound one input: ``c * X_i + k  op  0`` after collecting a linear expression of
  numbers, ``+``, ``-`` (unary or n-ary), ``*`` by a constant and ``/`` by a constant. Strict
  inequalities are read as non-strict (the closure of the set, which does not change a Lipschitz
  constant); ``=`` fixes lower = upper. Several bounds on one input are intersected (the tightest wins);
- numbers: SMT-LIB numerals and decimals, plus the forms VNN-COMP files use: a leading sign (``-0.3``),
  exponents (``1e-05``) and ``(- 0.5)``.

Anything else (an input left unbounded, lower > upper, a constraint over several inputs or mixing inputs
and outputs, ``not``, a syntax error, a missing file) raises one `LipboundError` whose one-line message
names the file, the line when there is one, and the problem.
"""

from __future__ import annotations

import gzip
import math
import re
from pathlib import Path

import numpy as np

from .errors import LipboundError
from .registry import Region

__all__ = ["read_vnnlib", "MAX_BOXES"]

#: the largest number of boxes a file may expand into (products of disjunctions grow fast)
MAX_BOXES = 10_000

# one token per match; the alternatives cover every character, except an unterminated string / |symbol|
_TOKEN = re.compile(r'(\s+)|(;[^\n]*)|(\()|(\))|("(?:[^"]|"")*")|(\|[^|]*\|)|([^\s();"|]+)')
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INPUT = re.compile(r"X_(\d+)")
_COMPARISONS = ("<=", ">=", "<", ">", "=")
_IGNORED_COMMANDS = frozenset({"set-logic", "set-info", "set-option", "check-sat", "get-model", "get-value",
                               "get-info", "exit", "push", "pop", "echo"})
_INF = math.inf


class _List(list):
    """A parenthesised expression with the line (1-based) of its ``(`` (for messages)."""

    __slots__ = ("pos",)


class _Error(Exception):
    """An error inside the parser, with the line it refers to (None: no line)."""

    def __init__(self, message: str, pos: int | None = None):
        super().__init__(message)
        self.pos = pos


class _NonLinear(Exception):
    pass


# --------------------------------------------------------------------------------------------------
# tokenizer and s-expression parser
# --------------------------------------------------------------------------------------------------

def _parse_sexprs(text: str) -> list:
    """The top-level s-expressions of ``text``: nested `_List` (with their line) of str atoms.

    Cost: O(len(text)). Text without strings or ``|quoted symbols|`` (every VNN-LIB file in practice)
    is split line by line (about 4 ms for a 784-input MNIST property); otherwise a regex tokenizer
    (about 6x slower) handles strings and quoted symbols that may span lines and hold ``;`` or parens."""
    if '"' in text or "|" in text:
        return _parse_tokens(_regex_tokens(text))
    return _parse_tokens(_split_tokens(text))


def _split_tokens(text: str):
    """(line, token) pairs, comments dropped: the fast path for text without strings / |symbols|."""
    for line, ln in enumerate(text.split("\n"), 1):
        if ";" in ln:
            ln = ln[:ln.index(";")]
        if "(" in ln or ")" in ln:
            ln = ln.replace("(", " ( ").replace(")", " ) ")
        for tok in ln.split():
            yield line, tok


def _regex_tokens(text: str):
    """(line, token) pairs, comments dropped, quotes of |symbols| removed (strings keep theirs)."""
    pos, end, line = 0, len(text), 1
    match = _TOKEN.match
    while pos < end:
        m = match(text, pos)
        if m is None:                       # an unterminated "string" or |symbol|
            what = "string" if text[pos] == '"' else "quoted symbol"
            raise _Error(f"unterminated {what}", line)
        kind, start, pos = m.lastindex, pos, m.end()
        if kind == 1:                       # whitespace
            line += text.count("\n", start, pos)
            continue
        if kind == 2:                       # comment
            continue
        tok = m.group(kind)
        yield line, (tok[1:-1] if kind == 6 and tok not in ("|(|", "|)|") else tok)
        if kind >= 5:
            line += tok.count("\n")


def _parse_tokens(tokens) -> list:
    stack: list[_List] = []
    top: list = []
    for line, tok in tokens:
        if tok == "(":
            lst = _List()
            lst.pos = line
            stack.append(lst)
        elif tok == ")":
            if not stack:
                raise _Error("unbalanced ')'", line)
            lst = stack.pop()
            (stack[-1] if stack else top).append(lst)
        elif stack:
            stack[-1].append(tok)
        else:
            raise _Error(f"'{_short(tok)}' outside parentheses", line)
    if stack:
        raise _Error("unbalanced '(' (its ')' is missing)", stack[-1].pos)
    return top


def _short(x, limit: int = 60) -> str:
    """An s-expression back as text, cut to ``limit`` characters (for messages)."""
    s = x if isinstance(x, str) else "(" + " ".join(_short(e, limit) for e in x) + ")"
    return s if len(s) <= limit else s[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------------
# formulas -> disjunctive normal form over input bounds
# --------------------------------------------------------------------------------------------------
# A conjunct is a dict {input index: [lower, upper]}; a DNF is a list of conjuncts (an empty list is
# "false", [{}] is "true").

def _intersect(a: dict, b: dict) -> dict:
    """A new conjunct: ``a`` intersected with ``b``. Cost: O(len(a) + len(b))."""
    if len(a) < len(b):
        a, b = b, a
    return _intersect_into({i: lu[:] for i, lu in a.items()}, b)


def _key(conj: dict):
    return frozenset((i, lu[0], lu[1]) for i, lu in conj.items())


def _dedupe(dnf: list) -> list:
    seen, out = set(), []
    for c in dnf:
        k = _key(c)
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out


def _intersect_into(a: dict, b: dict) -> dict:
    """``a`` intersected with ``b`` in place (a is owned by the caller). Cost: O(len(b))."""
    for i, (lo, hi) in b.items():
        cur = a.get(i)
        if cur is None:
            a[i] = [lo, hi]
        else:
            if lo > cur[0]:
                cur[0] = lo
            if hi < cur[1]:
                cur[1] = hi
    return a


def _and(a: list, b: list, pos) -> list:
    """The conjunction of two DNFs. Each conjunct is owned by one DNF, so the common 1 x 1 case
    updates ``a`` in place (a box of n inputs read from 2n asserts costs O(n), not O(n^2))."""
    if len(b) == 1 and len(a) == 1:
        return [_intersect_into(a[0], b[0])]
    if len(a) * len(b) > MAX_BOXES:
        raise _Error(f"the disjunctions expand into more than {MAX_BOXES} input boxes", pos)
    return _dedupe([_intersect(x, y) for x in a for y in b])


class _Reader:
    def __init__(self):
        self.inputs: dict[str, int] = {}       # declared input name -> index
        self.others: set[str] = set()           # declared outputs and other constants

    # -- terms -------------------------------------------------------------------------------------

    def symbols(self, t, out: set, pos):
        """Collect the declared constants in term ``t`` (error on an undeclared symbol)."""
        if isinstance(t, str):
            if t in self.inputs or t in self.others:
                out.add(t)
            elif _number(t) is None:
                raise _Error(f"'{_short(t)}' is not a number nor a declared constant", pos)
            return
        if not t or not isinstance(t[0], str):
            raise _Error(f"malformed term {_short(t)}", getattr(t, "pos", pos))
        for e in t[1:]:
            self.symbols(e, out, getattr(t, "pos", pos))

    def linear(self, t, pos) -> tuple[dict, float]:
        """Term ``t`` as (coefficients {name: c}, constant). Raises _NonLinear or _Error."""
        if isinstance(t, str):
            if t in self.inputs or t in self.others:
                return {t: 1.0}, 0.0
            v = _number(t)
            if v is None:
                raise _Error(f"'{_short(t)}' is not a number nor a declared constant", pos)
            if not math.isfinite(v):
                raise _Error(f"the number {_short(t)} is out of the float64 range", pos)
            return {}, v
        if not t or not isinstance(t[0], str):
            raise _Error(f"malformed term {_short(t)}", t.pos)
        pos = t.pos
        op, args = t[0], t[1:]
        if op in ("+", "-", "*", "/") and not args:
            raise _Error(f"'{op}' without arguments in {_short(t)}", pos)
        if op == "+" or (op == "-" and len(args) >= 2):
            coef, const = self.linear(args[0], pos)
            coef = dict(coef)
            sign = 1.0 if op == "+" else -1.0
            for a in args[1:]:
                c, k = self.linear(a, pos)
                const += sign * k
                for n, v in c.items():
                    coef[n] = coef.get(n, 0.0) + sign * v
            return coef, const
        if op == "-":
            c, k = self.linear(args[0], pos)
            return {n: -v for n, v in c.items()}, -k
        if op == "*":
            coef, const = {}, 1.0
            for a in args:
                c, k = self.linear(a, pos)
                if c and coef:
                    raise _NonLinear
                if c:
                    coef = {n: v * const for n, v in c.items()}
                    const *= k
                else:
                    coef = {n: v * k for n, v in coef.items()}
                    const *= k
            return coef, const
        if op == "/":
            coef, const = self.linear(args[0], pos)
            for a in args[1:]:
                c, k = self.linear(a, pos)
                if c:
                    raise _NonLinear
                if k == 0:
                    raise _Error(f"division by zero in {_short(t)}", pos)
                coef, const = {n: v / k for n, v in coef.items()}, const / k
            return coef, const
        raise _NonLinear

    # -- formulas ----------------------------------------------------------------------------------

    def dnf(self, f, pos) -> list:
        """Formula ``f`` as a DNF over input bounds (output atoms dropped)."""
        if isinstance(f, str):
            if f == "true":
                return [{}]
            if f == "false":
                return []
            raise _Error(f"expected a constraint, found '{_short(f)}'", pos)
        pos = f.pos
        if not f or not isinstance(f[0], str):
            raise _Error(f"malformed constraint {_short(f)}", pos)
        op = f[0]
        if op == "and":
            out = [{}]
            for g in f[1:]:
                out = _and(out, self.dnf(g, pos), pos)
            return out
        if op == "or":
            out = []
            for g in f[1:]:
                out.extend(self.dnf(g, pos))
            if len(out) > MAX_BOXES:
                raise _Error(f"the disjunctions expand into more than {MAX_BOXES} input boxes", pos)
            return _dedupe(out)
        if op in _COMPARISONS:
            if len(f) < 3:
                raise _Error(f"'{op}' needs at least two arguments: {_short(f)}", pos)
            out = [{}]
            for a, b in zip(f[1:-1], f[2:]):
                out = _and(out, self.atom(op, a, b, f), pos)
            return out
        if op in ("not", "=>", "xor", "ite", "distinct"):
            if any(s in self.inputs for s in _flat_atoms(f)):
                raise _Error(f"'{op}' over inputs in {_short(f)}: only boxes (and/or of bounds on single "
                             f"inputs) are supported", pos)
            return [{}]                          # an output constraint: parsed, then ignored
        raise _Error(f"unknown operator '{_short(op)}' in {_short(f)}", pos)

    def atom(self, op: str, a, b, f) -> list:
        pos = f.pos
        try:
            (ca, ka), (cb, kb) = self.linear(a, pos), self.linear(b, pos)
        except _NonLinear:
            names: set = set()
            self.symbols(a, names, pos)
            self.symbols(b, names, pos)
            if any(n in self.inputs for n in names):
                raise _Error(f"{_short(f)} is not linear: only boxes (bounds on single inputs) are "
                             f"supported", pos) from None
            if not names:
                raise _Error(f"unsupported term in {_short(f)}", pos) from None
            return [{}]                          # a non-linear output constraint: ignored
        n_in = sum(n in self.inputs for n in ca) + sum(n in self.inputs for n in cb)
        if not n_in:
            if not ca and not cb:                # a constant comparison, e.g. (<= 0 1)
                return [{}] if _holds(op, ka - kb) else []
            return [{}]                          # an output constraint: ignored
        if any(n not in self.inputs for n in ca) or any(n not in self.inputs for n in cb):
            raise _Error(f"{_short(f)} mixes inputs and outputs: only boxes (bounds on single inputs) "
                         f"are supported", pos)
        coef = dict(ca)
        for n, v in cb.items():
            coef[n] = coef.get(n, 0.0) - v
        coef = {n: v for n, v in coef.items() if v != 0.0}
        k = ka - kb                              # the atom is  sum coef * x + k  op  0
        if not coef:
            return [{}] if _holds(op, k) else []
        if len(coef) > 1:
            raise _Error(f"{_short(f)} constrains several inputs ({', '.join(sorted(coef, key=_natural))}): "
                         f"only boxes (bounds on single inputs) are supported", pos)
        (name, c), = coef.items()
        v = -k / c + 0.0                         # + 0.0: no -0.0 bounds
        if not math.isfinite(v):
            raise _Error(f"the bound of {name} in {_short(f)} is not finite", pos)
        if op == "=":
            lo, hi = v, v
        elif (op in ("<=", "<")) == (c > 0):
            lo, hi = -_INF, v
        else:
            lo, hi = v, _INF
        return [{self.inputs[name]: [lo, hi]}]

    # -- commands ----------------------------------------------------------------------------------

    def declare(self, cmd):
        op = cmd[0]
        if op == "declare-const":
            if len(cmd) != 3 or not isinstance(cmd[1], str):
                raise _Error(f"malformed declaration {_short(cmd)}", cmd.pos)
            name, sort = cmd[1], cmd[2]
        else:                                    # declare-fun name () sort
            if len(cmd) != 4 or not isinstance(cmd[1], str) or cmd[2] != []:
                raise _Error(f"only constants can be declared: {_short(cmd)}", cmd.pos)
            name, sort = cmd[1], cmd[3]
        if name in self.inputs or name in self.others:
            raise _Error(f"{name} is declared twice", cmd.pos)
        if _NUMBER.fullmatch(name) or name in ("true", "false"):
            raise _Error(f"cannot declare '{name}'", cmd.pos)
        m = _INPUT.fullmatch(name)
        if m is not None:
            if str(int(m.group(1))) != m.group(1):
                raise _Error(f"input name {name} has leading zeros", cmd.pos)
            if sort != "Real":
                raise _Error(f"input {name} is declared {_short(sort)}: only Real inputs are supported",
                             cmd.pos)
            self.inputs[name] = int(m.group(1))
        else:
            self.others.add(name)


def _flat_atoms(t):
    if isinstance(t, str):
        yield t
    else:
        for e in t:
            yield from _flat_atoms(e)


def _number(tok: str) -> float | None:
    """The value of a numeric token (SMT-LIB numeral / decimal, optionally signed, optionally with an
    exponent), or None. Symbols such as ``inf`` or ``nan`` are not numbers."""
    if tok[0] not in "0123456789+-." or not _NUMBER.fullmatch(tok):
        return None
    return float(tok)


def _natural(name: str):
    m = re.fullmatch(r"([A-Za-z_]*?)(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, -1)


def _holds(op: str, k: float) -> bool:
    """Whether ``k op 0`` (strict comparisons read as non-strict)."""
    return {"<=": k <= 0, "<": k <= 0, ">=": k >= 0, ">": k >= 0, "=": k == 0}[op]


def _names(indices, limit: int = 6) -> str:
    names = [f"X_{i}" for i in indices]
    if len(names) > limit:
        return ", ".join(names[:limit]) + f", ... ({len(names)} inputs in all)"
    return ", ".join(names)


# --------------------------------------------------------------------------------------------------
# the public reader
# --------------------------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return fh.read()
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LipboundError(f"{path}: no such VNN-LIB file") from None
    except IsADirectoryError:
        raise LipboundError(f"{path}: is a directory, not a VNN-LIB file") from None
    except UnicodeDecodeError as e:
        raise LipboundError(f"{path}: not a text file ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError) as e:
        raise LipboundError(f"{path}: cannot read the file ({e.strerror or e})") from None


def read_vnnlib(path, n_inputs: int | None = None) -> list[Region]:
    """The input region(s) of a VNN-LIB property file, as `Region` boxes.

    Returns a list of ``Region.from_bounds(lower, upper)`` with flat float64 arrays of length
    ``n_inputs`` (entry i is input ``X_i``): one box when the input constraints are a conjunction, one
    box per disjunct of an ``(or (and ...) ...)`` over the inputs (identical boxes merged, file order
    kept). The output constraints (``Y_j``) are parsed and ignored. ``n_inputs``, when given, must
    equal the number of declared inputs. ``.vnnlib.gz`` files are read through gzip.

    Raises `LipboundError` (one line: the file, the line when there is one, the problem) for a missing
    or unreadable file, a syntax error, an input without a lower or upper bound, lower > upper, a
    constraint that is not a bound on one input (only boxes are supported), or a wrong ``n_inputs``.

    Cost: linear in the file size plus O(boxes x n_inputs); about 20 ms for an MNIST property
    (784 inputs, 75 KB). Disjunctions multiply: more than `MAX_BOXES` boxes is an error.
    """
    try:
        p = Path(path)
    except TypeError:
        raise LipboundError(f"a VNN-LIB path must be a str or a path, got {type(path).__name__}") from None
    if n_inputs is not None:
        if isinstance(n_inputs, bool) or not isinstance(n_inputs, (int, np.integer)) or n_inputs < 1:
            raise LipboundError(f"n_inputs must be a positive int, got {n_inputs!r}")
        n_inputs = int(n_inputs)
    text = _read_text(p)

    def fail(message: str, line: int | None = None):
        where = f", line {line}" if line is not None else ""
        return LipboundError(f"{p}{where}: {' '.join(message.split())}")       # one line

    reader, boxes = _read_commands(text, fail)
    n = _check_inputs(reader, boxes, n_inputs, fail)
    return _regions(boxes, n, fail)


def _read_commands(text: str, fail) -> tuple["_Reader", list]:
    """The declarations (a `_Reader`) and the input boxes in disjunctive normal form of every assert."""
    reader = _Reader()
    boxes: list = [{}]
    try:
        for cmd in _parse_sexprs(text):
            if not cmd or not isinstance(cmd[0], str):
                raise _Error(f"expected a command, found {_short(cmd)}", cmd.pos)
            op = cmd[0]
            if op in ("declare-const", "declare-fun"):
                reader.declare(cmd)
            elif op == "assert":
                if len(cmd) != 2:
                    raise _Error(f"assert takes one formula: {_short(cmd)}", cmd.pos)
                boxes = _and(boxes, reader.dnf(cmd[1], cmd.pos), cmd.pos)
            elif op in _IGNORED_COMMANDS:
                continue
            else:
                raise _Error(f"unsupported command '{_short(op)}'", cmd.pos)
    except _Error as e:
        raise fail(str(e), e.pos) from None
    except RecursionError:
        raise fail("expressions nested too deeply") from None
    return reader, boxes


def _check_inputs(reader: "_Reader", boxes: list, n_inputs: int | None, fail) -> int:
    """The number of inputs, after checking they are X_0 ... X_{n-1}, match ``n_inputs`` and that some
    box is left."""
    n = len(reader.inputs)
    if n == 0:
        raise fail("declares no inputs (expected (declare-const X_0 Real) ...)")
    missing = sorted(set(range(n)) - set(reader.inputs.values()))
    if missing:
        raise fail(f"the inputs must be X_0 ... X_{n - 1}, but {_names(missing)} "
                   f"{'is' if len(missing) == 1 else 'are'} not declared")
    if n_inputs is not None and n_inputs != n:
        raise fail(f"declares {n} inputs but n_inputs={n_inputs} was asked for")
    if not boxes:
        raise fail("the input constraints are unsatisfiable (no input box)")
    return n


def _regions(boxes: list, n: int, fail) -> list[Region]:
    """One `Region` per distinct box (file order), refusing unbounded inputs and empty boxes."""
    regions, seen = [], set()
    for b, conj in enumerate(boxes):
        where = f"box {b + 1} of {len(boxes)}: " if len(boxes) > 1 else ""
        lower, upper = _box_arrays(conj, n)
        no_lo, no_hi = np.flatnonzero(lower == -_INF), np.flatnonzero(upper == _INF)
        if no_lo.size or no_hi.size:
            parts = []
            if no_lo.size:
                parts.append(f"{_names(no_lo)} {'has' if no_lo.size == 1 else 'have'} no lower bound")
            if no_hi.size:
                parts.append(f"{_names(no_hi)} {'has' if no_hi.size == 1 else 'have'} no upper bound")
            raise fail(f"{where}the input constraints do not define a bounded box: " + "; ".join(parts))
        bad = np.flatnonzero(lower > upper)
        if bad.size:
            i = int(bad[0])
            more = f" (and {_names(bad[1:])})" if bad.size > 1 else ""
            raise fail(f"{where}X_{i} has lower bound {float(lower[i])!r} > upper bound {float(upper[i])!r}{more}: "
                       f"empty input box")
        key = (lower.tobytes(), upper.tobytes())
        if key not in seen:
            seen.add(key)
            regions.append(Region.from_bounds(lower, upper))
    return regions


def _box_arrays(conj: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) arrays of one box (missing bounds infinite)."""
    lower, upper = np.full(n, -_INF), np.full(n, _INF)
    if conj:
        idx = np.fromiter(conj.keys(), dtype=np.intp, count=len(conj))
        lu = np.array(list(conj.values()), dtype=np.float64).reshape(-1, 2)
        lower[idx], upper[idx] = lu[:, 0], lu[:, 1]
    return lower, upper
