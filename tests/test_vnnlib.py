"""lipbound.vnnlib.read_vnnlib: input boxes of VNN-LIB property files.

The expected boxes of the shared VNN-COMP files are literals read by hand off the file text (not output
of the reader); every bad-input case is a small synthetic file that must raise a one-line LipboundError
naming the problem."""

import gzip
import time
from pathlib import Path

import numpy as np
import pytest

from lipbound.errors import LipboundError
from lipbound.registry import Region
from lipbound.vnnlib import read_vnnlib

VNNLIB = Path(__file__).resolve().parents[1].parent / "shared" / "networks" / "vnnlib"

needs_shared = pytest.mark.skipif(not VNNLIB.is_dir(), reason=f"shared VNN-LIB files not found at {VNNLIB}")

HEADER = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"


def write(tmp_path, text, name="prop.vnnlib"):
    p = tmp_path / name
    p.write_text(text)
    return p


def check_box(region, lower, upper):
    assert isinstance(region, Region)
    assert region.lower.dtype == np.float64 and region.upper.dtype == np.float64
    assert region.lower.shape == (len(lower),) and region.upper.shape == (len(upper),)
    np.testing.assert_array_equal(region.lower, np.array(lower))
    np.testing.assert_array_equal(region.upper, np.array(upper))


def raises(path, *fragments, n_inputs=None):
    """read_vnnlib(path) raises one LipboundError, one line, naming the file and every fragment."""
    with pytest.raises(LipboundError) as info:
        read_vnnlib(path, n_inputs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert Path(path).name in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


# --------------------------------------------------------------------------------------------------
# the shared VNN-COMP files
# --------------------------------------------------------------------------------------------------

# (lower, upper) of X_0..X_4, copied by hand from the (<= X_i ..) / (>= X_i ..) lines of each file
ACAS_1_2 = ([0.6, -0.5, -0.5, 0.45, -0.5], [0.679857769, 0.5, 0.5, 0.5, -0.45])
ACAS_3 = ([-0.303531156, -0.009549297, 0.493380324, 0.3, 0.3], [-0.298552812, 0.009549297, 0.5, 0.5, 0.5])
ACAS_4 = ([-0.303531156, -0.009549297, 0.0, 0.318181818, 0.083333333],
          [-0.298552812, 0.009549297, 0.0, 0.5, 0.166666667])


@needs_shared
@pytest.mark.parametrize("name, box", [("acasxu_prop_1", ACAS_1_2), ("acasxu_prop_2", ACAS_1_2),
                                       ("acasxu_prop_3", ACAS_3), ("acasxu_prop_4", ACAS_4)])
def test_acasxu_single_box(name, box):
    regions = read_vnnlib(VNNLIB / f"{name}.vnnlib")
    assert len(regions) == 1
    check_box(regions[0], *box)
    assert read_vnnlib(str(VNNLIB / f"{name}.vnnlib"), n_inputs=5)[0].lower.size == 5


@needs_shared
def test_acasxu_prop_6_disjunction_gives_two_boxes():
    regions = read_vnnlib(VNNLIB / "acasxu_prop_6.vnnlib")
    assert len(regions) == 2
    check_box(regions[0], [-0.129289109, 0.11140846, -0.499999896, -0.5, -0.5],
              [0.700434925, 0.499999896, -0.499204121, 0.5, 0.5])
    check_box(regions[1], [-0.129289109, -0.499999896, -0.499999896, -0.5, -0.5],
              [0.700434925, -0.11140846, -0.499204121, 0.5, 0.5])


@needs_shared
def test_mnist_784_inputs():
    path = VNNLIB / "mnistfc_prop_0_0.03.vnnlib"
    t = time.perf_counter()
    regions = read_vnnlib(path, n_inputs=784)
    elapsed = time.perf_counter() - t
    assert len(regions) == 1
    r = regions[0]
    assert r.lower.shape == (784,) and r.upper.shape == (784,)
    assert (0 <= r.lower).all() and (r.lower <= r.upper).all() and (r.upper <= 1).all()
    # eps = 0.03 around the image, but the file's bounds are float32 values: 46 pixels (e.g. X_687:
    # 0.23784314095973969 - 0.1778431385755539) are 0.06000000238 wide, so 1e-12 would be too strict
    assert (r.upper - r.lower <= 0.06 + 1e-7).all()
    # pixels read by hand off the file
    assert (r.lower[0], r.upper[0]) == (0.0, 0.029999999329447746)
    assert (r.lower[154], r.upper[154]) == (0.26411765813827515, 0.32411766052246094)
    assert (r.lower[155], r.upper[155]) == (0.5817647576332092, 0.6417647004127502)
    assert (r.lower[687], r.upper[687]) == (0.1778431385755539, 0.23784314095973969)
    assert (r.lower[783], r.upper[783]) == (0.0, 0.029999999329447746)
    assert elapsed < 1.0, f"reading the MNIST property took {elapsed:.2f} s"


@needs_shared
def test_shared_files_gzipped(tmp_path):
    p = tmp_path / "acasxu_prop_6.vnnlib.gz"
    p.write_bytes(gzip.compress((VNNLIB / "acasxu_prop_6.vnnlib").read_bytes()))
    assert [r.lower.tolist() for r in read_vnnlib(p)] == \
        [r.lower.tolist() for r in read_vnnlib(VNNLIB / "acasxu_prop_6.vnnlib")]


# --------------------------------------------------------------------------------------------------
# synthetic files: accepted syntax
# --------------------------------------------------------------------------------------------------

def test_number_forms_comments_and_chained_bounds(tmp_path):
    p = write(tmp_path, "; a comment (with parens\n" + HEADER +
              "(assert (<= X_0 1)) ; trailing comment\n(assert (>= X_0 (- 0.5)))\n"
              "(assert (<= -1e-05 X_1 2.5E0))\n"
              "(assert (or (and (>= Y_0 Y_1)) (and (<= Y_0 (- 3)))))\n(check-sat)\n")
    regions = read_vnnlib(p)
    assert len(regions) == 1
    check_box(regions[0], [-0.5, -1e-05], [1.0, 2.5])


def test_equality_strict_and_reversed_and_scaled_bounds(tmp_path):
    p = write(tmp_path, HEADER + "(assert (= X_0 0.25))\n(assert (and (< X_1 3) (> X_1 -2)))\n"
              "(assert (<= (* 2 X_1) 4))\n(assert (<= 0 X_1))\n")
    check_box(read_vnnlib(p)[0], [0.25, 0.0], [0.25, 2.0])       # tightest bounds win
    p = write(tmp_path, HEADER + "(assert (<= (- X_0) 3))\n(assert (<= (/ X_0 4) 1))\n"
              "(assert (>= (+ X_1 1) 0))\n(assert (<= (- X_1 1) 0))\n", "scaled.vnnlib")
    check_box(read_vnnlib(p)[0], [-3.0, -1.0], [4.0, 1.0])


def test_disjunction_mixing_inputs_and_outputs(tmp_path):
    # both disjuncts have the same input part -> one box; different parts -> one box each
    same = ("(assert (or (and (<= X_0 1) (>= X_0 0) (<= Y_0 3)) (and (<= X_0 1) (>= X_0 0) (>= Y_0 4))))\n"
            "(assert (<= X_1 1))\n(assert (>= X_1 0))\n")
    regions = read_vnnlib(write(tmp_path, HEADER + same))
    assert len(regions) == 1
    check_box(regions[0], [0.0, 0.0], [1.0, 1.0])
    differ = ("(assert (<= X_1 1))\n(assert (>= X_1 0))\n"
              "(assert (or (and (<= X_0 1) (>= X_0 0) (<= Y_0 3)) (and (<= X_0 5) (>= X_0 4) (>= Y_0 4))))\n")
    regions = read_vnnlib(write(tmp_path, HEADER + differ, "differ.vnnlib"))
    assert len(regions) == 2
    check_box(regions[0], [0.0, 0.0], [1.0, 1.0])
    check_box(regions[1], [4.0, 0.0], [5.0, 1.0])


def test_two_disjunctions_multiply(tmp_path):
    p = write(tmp_path, HEADER + "(assert (or (and (<= X_0 1) (>= X_0 0)) (and (<= X_0 3) (>= X_0 2))))\n"
              "(assert (or (and (<= X_1 1) (>= X_1 0)) (and (<= X_1 3) (>= X_1 2))))\n")
    boxes = {(tuple(r.lower), tuple(r.upper)) for r in read_vnnlib(p)}
    assert boxes == {((a, b), (a + 1, b + 1)) for a in (0.0, 2.0) for b in (0.0, 2.0)}


def test_strings_and_quoted_symbols(tmp_path):
    p = write(tmp_path, '(set-info :source "a ; (weird"" one" )\n(declare-const |X_0| Real)\n'
              "(assert (<= X_0 1))\n(assert (>= |X_0| 0))\n")
    check_box(read_vnnlib(p)[0], [0.0], [1.0])


# --------------------------------------------------------------------------------------------------
# synthetic files: every error
# --------------------------------------------------------------------------------------------------

def test_unbounded_input(tmp_path):
    p = write(tmp_path, HEADER + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n")
    raises(p, "X_1 has no lower bound")
    p = write(tmp_path, HEADER + "(assert (>= X_1 0))\n(assert (<= X_1 1))\n(assert (<= Y_0 1))\n", "b.vnnlib")
    msg = raises(p, "X_0", "no lower bound", "no upper bound")
    assert "X_1" not in msg


def test_lower_above_upper(tmp_path):
    p = write(tmp_path, HEADER + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n"
              "(assert (<= X_1 0.5))\n(assert (>= X_1 0.7))\n")
    msg = raises(p, "X_1", "lower bound 0.7 > upper bound 0.5")
    assert "X_0" not in msg


@pytest.mark.parametrize("constraint", ["(<= (+ X_0 X_1) 1)", "(<= X_0 X_1)", "(>= (- X_0 (* 2 X_1)) 0)"])
def test_linear_constraint_over_two_inputs(tmp_path, constraint):
    p = write(tmp_path, HEADER + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n"
              f"(assert (<= X_1 1))\n(assert (>= X_1 0))\n(assert {constraint})\n")
    raises(p, "line 9", "X_0, X_1", "only boxes")


@pytest.mark.parametrize("constraint, fragment", [
    ("(<= X_0 Y_0)", "mixes inputs and outputs"),
    ("(<= (* X_0 X_0) 1)", "not linear"),
    ("(not (<= X_0 1))", "'not' over inputs"),
])
def test_other_non_box_constraints(tmp_path, constraint, fragment):
    p = write(tmp_path, HEADER + f"(assert (<= X_0 1))\n(assert {constraint})\n")
    raises(p, "line 6", fragment, "only boxes")


@pytest.mark.parametrize("body, fragments", [
    ("(assert (<= X_0 1)\n(assert (>= X_0 0))\n", ("line 5", "unbalanced '('")),
    ("(assert (<= X_0 1)))\n", ("line 5", "unbalanced ')'")),
    ("(assert (<= X_0 0.5.1))\n", ("line 5", "'0.5.1' is not a number")),
    ("(assert (<= X_7 1))\n", ("line 5", "'X_7' is not a number nor a declared constant")),
    ('(set-info :source "no end)\n', ("line 5", "unterminated string")),
    ("(assert (<= X_0 inf))\n", ("line 5", "'inf' is not a number")),
    ("(assert (<= X_0 1e999))\n", ("line 5", "out of the float64 range")),
    ("(assert (<= X_0))\n", ("line 5", "needs at least two arguments")),
    ("(assert (frobnicate X_0 1))\n", ("line 5", "unknown operator 'frobnicate'")),
    ("(define-fun f () Real 1)\n", ("line 5", "unsupported command 'define-fun'")),
    ("X_0\n", ("line 5", "outside parentheses")),
    ("(declare-const X_0 Real)\n", ("line 5", "X_0 is declared twice")),
])
def test_syntax_errors(tmp_path, body, fragments):
    raises(write(tmp_path, HEADER + body), *fragments)


def test_inputs_not_declared_or_not_contiguous(tmp_path):
    raises(write(tmp_path, "(declare-const Y_0 Real)\n(assert (<= Y_0 1))\n"), "declares no inputs")
    raises(write(tmp_path, "(declare-const X_0 Real)\n(declare-const X_2 Real)\n", "gap.vnnlib"),
           "X_1 is not declared")


def test_missing_unreadable_file_and_directory(tmp_path):
    raises(tmp_path / "absent.vnnlib", "no such VNN-LIB file")
    binary = tmp_path / "binary.vnnlib"
    binary.write_bytes(b"\xff\xfe\x00(assert")
    raises(binary, "not a text file")
    (tmp_path / "dir.vnnlib").mkdir()
    raises(tmp_path / "dir.vnnlib", "directory")
    bad_gz = tmp_path / "bad.vnnlib.gz"
    bad_gz.write_bytes(b"not gzip at all")
    raises(bad_gz, "cannot read")


def test_wrong_n_inputs(tmp_path):
    p = write(tmp_path, HEADER + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n"
              "(assert (<= X_1 1))\n(assert (>= X_1 0))\n")
    assert read_vnnlib(p, n_inputs=2)[0].lower.shape == (2,)
    raises(p, "declares 2 inputs", "n_inputs=3", n_inputs=3)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(LipboundError, match="n_inputs must be a positive int"):
            read_vnnlib(p, n_inputs=bad)


def test_unsatisfiable_and_too_many_boxes(tmp_path):
    raises(write(tmp_path, HEADER + "(assert (<= 1 0))\n"), "unsatisfiable")
    disj = "(assert (or " + " ".join(f"(and (>= X_0 {i}) (<= X_0 {i + 1}))" for i in range(101)) + "))\n"
    disj1 = disj.replace("X_0", "X_1")
    raises(write(tmp_path, HEADER + disj + disj1 + disj, "many.vnnlib"), "more than", "input boxes")


def test_damaged_files_never_give_a_traceback(tmp_path):
    """Every prefix and many one-character edits of a valid file: a box list or one-line LipboundError."""
    text = (HEADER + "; comment\n(assert (or\n  (and (<= X_0 0.5) (>= X_0 -0.5) (<= X_1 1e-05) (>= X_1 (- 0.5)))\n"
            "  (and (<= X_0 1) (>= X_0 0.75) (<= X_1 2) (>= X_1 1))\n))\n(assert (or (and (<= Y_1 Y_0))))\n")
    assert len(read_vnnlib(write(tmp_path, text))) == 2
    variants = [text[:i] for i in range(0, len(text), 7)]
    variants += [text[:i] + c + text[i + 1:] for i in range(0, len(text), 11) for c in '()"|;-']
    p = tmp_path / "damaged.vnnlib"
    for v in variants:
        p.write_text(v)
        try:
            regions = read_vnnlib(p)
        except LipboundError as e:
            assert "\n" not in str(e) and "damaged.vnnlib" in str(e)
        else:
            assert all(r.lower.shape == (2,) and (r.lower <= r.upper).all() for r in regions)
