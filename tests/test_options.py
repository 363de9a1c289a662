"""Method options: declared once in the registry (`Option`), validated by the API and the CLI before any
method runs, read by the methods as typed values (`MethodContext.option`)."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import lipbound
from lipbound.cli import main
from lipbound.errors import LipboundError
from lipbound.registry import (BOOL_OR_AUTO, FLOATS, MethodContext, MethodResult, Option, REGISTRY, Region,
                               load_methods, register_method, route_options)
from _nets import random_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def all_options():
    return [(name, key, opt) for name, spec in sorted(load_methods().items()) for key, opt in spec.options.items()]


# ------------------------------------------------------------------------------------------------
# declarations
# ------------------------------------------------------------------------------------------------


def test_every_method_declares_options_with_valid_defaults():
    reg = load_methods()
    assert len(reg) >= 27
    for name, key, opt in all_options():
        assert isinstance(opt, Option), (name, key)
        assert opt.doc and "\n" not in opt.doc, (name, key)
        # the default passes its own declaration and comes back unchanged
        assert opt.validate(opt.default, method=name, name=key) == opt.default, (name, key)
        if opt.default is not None and opt.choices is not None:
            assert opt.default in opt.choices
        json.dumps(opt.to_json())  # JSON-ready


def test_no_method_advertises_a_value_it_cannot_run():
    import cvxpy as cp

    installed = {s.lower() for s in cp.installed_solvers()}
    cvxpy_solvers = {s.lower() for s in cp.settings.SOLVERS}
    for name, key, opt in all_options():
        for c in opt.choices or ():
            assert "scip" not in str(c).lower(), (name, key)
            if str(c).lower() in cvxpy_solvers:
                assert str(c).lower() in installed, (name, key, c)
    assert "solver" not in REGISTRY["mip"].options  # highs is the only MIP solver wired up


def _tiny_request(spec):
    """A small ReLU network with 2 hidden layers, the method's first norm, a box if it bounds boxes."""
    net = random_mlp([3, 5, 4, 2], seed=1)
    norm = spec.norms[0]
    region = Region.box(np.full(3, 0.2), 0.3) if "box" in spec.regions else None
    return net, norm, region


CHOICE_CASES = sorted({(name, key, c) for name, key, opt in all_options()
                       for c in (opt.choices or ((True, False, "auto") if opt.type == BOOL_OR_AUTO else ()))},
                      key=str)


@pytest.mark.parametrize("method, key, value", CHOICE_CASES, ids=[f"{m}-{k}={v}" for m, k, v in CHOICE_CASES])
def test_every_advertised_choice_runs(method, key, value):
    """Each value among an option's choices gives a bound (not unsupported / failed) on a small network."""
    spec = REGISTRY[method]
    net, norm, region = _tiny_request(spec)
    b = lipbound.bound(net, method, norm, region, time_limit=20, **{key: value})
    assert b.status in ("ok", "time_limit"), (b.status, b.reason)
    assert b.value is not None and math.isfinite(b.value)


@pytest.mark.parametrize("method", sorted(load_methods()))
def test_methods_read_only_declared_options(method):
    """Every method runs with its defaults on a small network (on a box and globally where it supports them):
    reading an undeclared option would raise KeyError here."""
    spec = REGISTRY[method]
    net, norm, region = _tiny_request(spec)
    regions = [r for r in (None, region) if ("global" if r is None else "box") in spec.regions]
    for reg in regions:
        b = lipbound.bound(net, method, norm, reg, time_limit=20)
        assert b.status in ("ok", "time_limit"), (reg, b.status, b.reason)


def test_option_declaration_errors_are_programming_errors():
    with pytest.raises(TypeError, match="Option"):
        register_method("test-opt-str-doc", kind="upper", description="t", options={"k": "a free-text doc"})(
            lambda net, ctx: None)
    with pytest.raises(ValueError, match="default"):
        register_method("test-opt-bad-default", kind="upper", description="t",
                        options={"k": Option(int, 0, "k", min=1)})(lambda net, ctx: None)
    with pytest.raises(ValueError, match="option name"):
        register_method("test-opt-reserved", kind="upper", description="t",
                        options={"norm": Option(int, 1, "clashes with bound(norm=)")})(lambda net, ctx: None)
    with pytest.raises(ValueError, match="type"):
        Option(complex, 1, "no such type")
    assert not {"test-opt-str-doc", "test-opt-bad-default", "test-opt-reserved"} & set(REGISTRY)


# ------------------------------------------------------------------------------------------------
# values: parsing and typing
# ------------------------------------------------------------------------------------------------


def test_values_are_typed_from_api_values_and_command_line_text():
    i = Option(int, 5, "n", min=1)
    assert i.validate("4") == 4 and i.validate(4.0) == 4 and i.validate(np.int64(3)) == 3 and i.validate("1e3") == 1000
    f = Option(float, 0.5, "x", min=0, max=1, min_exclusive=True)
    assert f.validate("0.25") == 0.25 and f.validate(1) == 1.0 and isinstance(f.validate(1), float)
    b = Option(bool, True, "flag")
    for text, val in (("true", True), ("False", False), ("yes", True), ("off", False), ("1", True), (0, False)):
        assert b.validate(text) is val
    s = Option(str, "auto", "solver", choices=("auto", "scs", "clarabel"))
    assert s.validate("SCS") == "scs" and s.validate(" Clarabel ") == "clarabel"
    fl = Option(FLOATS, (0.5, 0.6), "c", min=0, max=1, min_exclusive=True, max_exclusive=True)
    assert fl.validate("0.5,0.7") == (0.5, 0.7) and fl.validate([0.3]) == (0.3,) and fl.validate("0.4") == 0.4
    assert fl.validate(np.array([0.1, 0.2])) == (0.1, 0.2)
    ba = Option(BOOL_OR_AUTO, "auto", "tri-state")
    assert ba.validate("auto") == "auto" and ba.validate("AUTO") == "auto" and ba.validate("false") is False
    auto = Option(int, None, "computed when not given", min=1)
    assert auto.validate("auto") is None and auto.validate(None) is None and auto.validate("none") is None
    assert auto.validate("7") == 7


BAD_VALUES = [
    # (type, declaration, bad value, words of the allowed values)
    ("int below min", Option(int, 5, "n", min=1), 0, "an int >= 1"),
    ("int not integral", Option(int, 5, "n", min=1), 2.5, "an int >= 1"),
    ("int text", Option(int, 5, "n", min=1), "many", "an int >= 1"),
    ("int bool", Option(int, 5, "n", min=1), True, "an int >= 1"),
    ("float open range", Option(float, 0.5, "x", min=0, max=1, min_exclusive=True, max_exclusive=True), 1.0,
     "a float in (0, 1)"),
    ("float nan", Option(float, 0.5, "x", min=0), float("nan"), "a float >= 0"),
    ("bool", Option(bool, True, "flag"), "maybe", "true or false"),
    ("bool int", Option(bool, True, "flag"), 2, "true or false"),
    ("choices", Option(str, "ipm", "algo", choices=("ipm", "simplex")), "gurobi", "one of ipm, simplex"),
    ("choices type", Option(str, "ipm", "algo", choices=("ipm", "simplex")), 3, "one of ipm, simplex"),
    ("floats", Option(FLOATS, (0.5,), "c", min=0, max=1, min_exclusive=True, max_exclusive=True), [0.5, 1.5],
     "a float in (0, 1) or a list of such floats"),
    ("floats empty", Option(FLOATS, (0.5,), "c", min=0, max=1), [], "a float in [0, 1] or a list"),
    ("bool or auto", Option(BOOL_OR_AUTO, "auto", "t"), "sometimes", "true, false or auto"),
    ("no auto", Option(int, 5, "n"), None, "an int"),
]


@pytest.mark.parametrize("label, opt, value, words", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_name_method_option_and_allowed_values(label, opt, value, words):
    with pytest.raises(LipboundError) as e:
        opt.validate(value, method="some-method", name="some_option")
    msg = str(e.value)
    assert "\n" not in msg
    assert "some-method" in msg and "some_option" in msg and words in msg, msg


# one registered option of each type with a bad value: (method, option, CLI text, words of the allowed values)
BAD_METHOD_VALUES = [
    ("lipopt", "degree", "0", "an int >= 1, or auto"),
    ("lipopt", "degree", "2.5", "an int >= 1, or auto"),
    ("lower-sample", "samples", "lots", "an int >= 1"),
    ("shor-sdp", "tol", "0", "a float > 0"),
    ("crown-bab", "budget", "-1", "a float >= 0"),
    ("lipopt", "sparse", "maybe", "true or false"),
    ("lipopt", "solver", "gurobi", "one of ipm, simplex"),
    ("shor-sdp", "sdp_solver", "mosek", "one of auto, scs, clarabel, eig"),
    ("lipsdp-neuron", "solver", "mosek", "one of scs, clarabel"),
    ("eclipse-g1", "c", "0.5,1.5", "a float in (0, 1) or a list of such floats"),
    ("eclipse-g2-balance", "c", "1", "a float in (0, 1)"),
    ("crown-bab", "lp_prune", "sometimes", "true, false or auto"),
    ("mip", "chain_lp", "2", "true, false or auto"),
    ("eclipse-fast", "slopes", "tight", "one of auto, relaxed, local, global"),
]


@pytest.mark.parametrize("method, key, text, words", BAD_METHOD_VALUES,
                         ids=[f"{m}-{k}={t}" for m, k, t, _ in BAD_METHOD_VALUES])
def test_api_refuses_bad_values_before_running(method, key, text, words):
    net = random_mlp([3, 5, 2])
    from lipbound.registry import parse_option_value

    # the text as given on a command line, and the Python value it stands for
    for value in (text, parse_option_value(text)):
        with pytest.raises(LipboundError) as e:
            lipbound.bound(net, method, **{key: value})  # any norm / region: options are checked first
        msg = str(e.value)
        assert method in msg and key in msg and words in msg and "\n" not in msg, msg
    with pytest.raises(LipboundError, match=words.replace("(", r"\(").replace(")", r"\)")):
        lipbound.compare(net, [method], options={method: {key: text}})


@pytest.mark.parametrize("method, key, text, words", BAD_METHOD_VALUES,
                         ids=[f"{m}-{k}={t}" for m, k, t, _ in BAD_METHOD_VALUES])
def test_cli_bad_value_exit_2_one_line(method, key, text, words, capsys):
    for form in (f"{key}={text}", f"{method}.{key}={text}"):
        code, out, err = run_cli(["bound", "example:digits_mlp", "-m", method, "--option", form, "--quiet"], capsys)
        lines = [l for l in err.strip().splitlines() if l.strip()]
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith("lipbound: error:") and method in lines[0] and key in lines[0]
        assert words in lines[0] and "Traceback" not in err and not out.strip()


def test_cli_bad_value_in_a_subprocess_has_no_traceback():
    r = subprocess.run([sys.executable, "-m", "lipbound.cli", "bound", "example:digits_mlp", "-m", "lipopt", "--norm",
                        "inf", "--option", "solver=gurobi", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("lipbound: error:") and "ipm, simplex" in lines[0], r.stderr


# ------------------------------------------------------------------------------------------------
# unknown options and options of other methods
# ------------------------------------------------------------------------------------------------


def test_unknown_option_is_refused():
    net = random_mlp([3, 5, 2])
    for method in ("naive", "lower-sample", "lipopt"):  # naive declares no option at all
        with pytest.raises(LipboundError, match=f"method {method} has no option 'no_such_option'"):
            lipbound.bound(net, method, no_such_option=1)
    with pytest.raises(LipboundError, match="no selected method has the option 'no_such_option'"):
        lipbound.compare(net, ["naive", "lower-sample"], options={"no_such_option": 1})
    with pytest.raises(LipboundError, match="verbose"):  # no longer let through for every method
        lipbound.bound(net, "lower-sample", verbose=True)


def test_option_of_another_method_is_refused():
    net = random_mlp([3, 5, 2])
    with pytest.raises(LipboundError) as e:
        lipbound.bound(net, "lower-sample", degree=3)
    assert "has no option 'degree'" in str(e.value) and "lipopt" in str(e.value)
    # compare: per-method dicts, flat options, options of a method that is not run
    with pytest.raises(LipboundError, match="has no option 'degree'"):
        lipbound.compare(net, ["lower-sample"], options={"lower-sample": {"degree": 3}})
    with pytest.raises(LipboundError, match="no selected method has the option 'degree'.*lipopt"):
        lipbound.compare(net, ["lower-sample", "naive"], options={"degree": 3})
    with pytest.raises(LipboundError, match="method lipopt is not among the methods run"):
        lipbound.compare(net, ["lower-sample"], options={"lipopt": {"degree": 3}})
    with pytest.raises(LipboundError, match="should be a dict"):
        lipbound.compare(net, ["lower-sample"], options={"lower-sample": 3})


@pytest.mark.parametrize("option, words", [
    ("degree=3", "no selected method has the option 'degree'"),
    ("lipopt.degree=3", "method lipopt is not among the methods run"),
    ("lower-sample.degree=3", "method lower-sample has no option 'degree'"),
    ("samples", "is not KEY=VALUE"),
])
def test_cli_refuses_options_of_other_methods(option, words, capsys):
    code, out, err = run_cli(["bound", "example:digits_mlp", "-m", "lower-sample", "-m", "naive", "--option", option,
                              "--quiet"], capsys)
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lipbound: error:") and words in lines[0], err


def test_options_are_routed_to_the_methods_that_declare_them():
    per = route_options(["lower-sample", "lower-grad", "naive"], {"samples": "300", "lower-grad": {"steps": 10}})
    assert per == {"lower-sample": {"samples": 300}, "lower-grad": {"samples": 300, "steps": 10}, "naive": {}}
    per = route_options(["lower-sample", "lower-grad"], {"lower-grad.samples": 7})
    assert per == {"lower-sample": {}, "lower-grad": {"samples": 7}}


_CALLS = []


def test_compare_validates_every_option_before_running_any_method():
    if "test-opt-recorder" not in REGISTRY:
        @register_method("test-opt-recorder", kind="upper", norms=(2,), description="test", in_compare=False,
                         options={"n": Option(int, 1, "a count", min=1)})
        def _rec(net, ctx):
            _CALLS.append(ctx.option("n"))
            return MethodResult(1.0)
    _CALLS.clear()
    net = random_mlp([3, 5, 2])
    with pytest.raises(LipboundError, match="one of ipm, simplex"):
        lipbound.compare(net, ["test-opt-recorder", "lipopt"], options={"test-opt-recorder": {"n": 2},
                                                                        "lipopt": {"solver": "gurobi"}})
    assert _CALLS == []  # the first method did not run
    b = lipbound.bound(net, "test-opt-recorder", n="3")
    assert b.ok and _CALLS == [3]


# ------------------------------------------------------------------------------------------------
# ctx.option
# ------------------------------------------------------------------------------------------------


def test_ctx_option_returns_typed_values_and_declared_defaults():
    ctx = MethodContext(method="lipopt", options={"degree": "4", "solver": "SIMPLEX"})
    assert ctx.option("degree") == 4 and ctx.option("solver") == "simplex"
    assert ctx.option("sparse") is True and ctx.option("max_columns") == REGISTRY["lipopt"].options["max_columns"].default
    assert MethodContext(method="lipopt").option("degree") is None  # auto: computed by the method


def test_ctx_option_of_an_undeclared_name_raises():
    with pytest.raises(KeyError, match="undeclared option 'degree'"):
        MethodContext(method="lower-sample").option("degree")
    with pytest.raises(TypeError, match="no default"):
        MethodContext(method="lower-sample").option("samples", 2000, int)  # the old signature
    with pytest.raises(KeyError, match="no registered method"):
        MethodContext().option("samples")
    if "test-opt-undeclared" not in REGISTRY:
        @register_method("test-opt-undeclared", kind="upper", norms=(2,), description="test", in_compare=False)
        def _bad(net, ctx):
            return MethodResult(float(ctx.option("not_declared")))
    # a programming error, not a status: the API lets it through
    with pytest.raises(KeyError, match="not_declared"):
        lipbound.bound(random_mlp([3, 5, 2]), "test-opt-undeclared")


# ------------------------------------------------------------------------------------------------
# lipbound methods
# ------------------------------------------------------------------------------------------------


def test_methods_json_keeps_options_and_adds_option_specs(capsys):
    code, out, _ = run_cli(["methods", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and len(rows) == len(load_methods())
    for name, r in rows.items():
        assert {"name", "kind", "norms", "regions", "family", "description", "options", "option_specs"} <= set(r)
        assert set(r["options"]) == set(r["option_specs"]) == set(REGISTRY[name].options)
        for key, doc in r["options"].items():
            assert isinstance(doc, str) and doc
            spec = r["option_specs"][key]
            assert {"type", "default", "choices", "min", "max", "doc", "allowed"} <= set(spec)
    lp = rows["lipopt"]["option_specs"]
    assert lp["solver"]["choices"] == ["ipm", "simplex"] and lp["solver"]["default"] == "ipm"
    assert lp["degree"]["type"] == "int" and lp["degree"]["default"] is None and lp["degree"]["min"] == 1
    assert rows["eclipse-g1"]["option_specs"]["c"]["type"] == FLOATS


def test_methods_text_shows_type_default_and_choices(capsys):
    code, out, _ = run_cli(["methods"], capsys)
    assert code == 0
    lines = out.splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith("lipopt "))
    block = "\n".join(lines[i:i + 8])
    assert "solver" in block and "one of ipm, simplex" in block and "default ipm" in block
    assert "degree" in block and "int" in block and "default auto" in block
