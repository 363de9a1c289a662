"""README.md against the registry: the methods table (names, kinds, norms, regions) and every option example
(`--option KEY=VALUE`, keyword arguments of lipbound.bound / compare, `key=value` in the text)."""

import ast
import inspect
import re
import shlex
from pathlib import Path

import pytest

import lipbound
from lipbound.cli import _parse_options, build_parser
from lipbound.norms import norm_name
from lipbound.registry import load_methods, route_options

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
API_PARAMS = set(inspect.signature(lipbound.bound).parameters) | set(inspect.signature(lipbound.compare).parameters)


def methods_table() -> list[dict]:
    """The rows of the table under '## Methods': names (first cell), kind, norms, regions, text."""
    section = TEXT.split("\n## Methods", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "method" or set(cells[0]) <= set("-: "):
            continue
        assert len(cells) == 5, line
        rows.append({"names": re.findall(r"`([^`]+)`", cells[0]), "kind": cells[1],
                     "norms": {n.strip() for n in cells[2].split(",")},
                     "regions": {r.strip() for r in cells[3].split(",")}, "text": cells[4], "line": line})
    return rows


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", TEXT, flags=re.S)


def test_every_registered_method_is_in_the_table_with_its_kind_norms_and_regions():
    reg = load_methods()
    rows = methods_table()
    seen = [n for r in rows for n in r["names"]]
    assert len(seen) == len(set(seen)), "a method appears twice in the README table"
    public = {n for n in reg if not n.startswith("test-")}  # the test files register a few test-only methods
    assert set(seen) == public, (f"missing from README: {sorted(public - set(seen))}; "
                                 f"not registered: {sorted(set(seen) - public)}")
    for r in rows:
        for name in r["names"]:
            spec = reg[name]
            assert r["kind"] == spec.kind, (name, r["kind"], spec.kind)
            assert r["norms"] == {norm_name(p) for p in spec.norms}, (name, r["norms"])
            assert r["regions"] == set(spec.regions), (name, r["regions"])


def _check(spec, key, value):
    assert key in spec.options, f"README: method {spec.name} has no option {key!r}"
    spec.options[key].validate(value, method=spec.name, name=key)  # raises LipboundError on a bad value


def test_option_examples_in_the_table_are_declared_with_valid_values():
    reg = load_methods()
    n = 0
    for r in methods_table():
        for key, value in re.findall(r"`([A-Za-z_]\w*)=([^`\s]+)`", r["text"]):
            for name in r["names"]:  # the example holds for every method of the row
                _check(reg[name], key, value)
                n += 1
    assert n >= 6  # solver=clarabel, slopes=auto, members=all, degree=4, sdp_solver=scs, alpha=false, ...


def test_command_line_examples_parse_and_their_options_validate():
    reg = load_methods()
    parser = build_parser()
    lines = [l.split(" #")[0].strip() for block in code_blocks("bash") for l in block.splitlines()]
    commands = [shlex.split(l)[1:] for l in lines if l.startswith("lipbound ")]
    assert commands
    n_options = 0
    for argv in commands:
        args = parser.parse_args(argv)  # every flag exists (argparse exits on an unknown one)
        if args.command not in ("bound", "compare"):
            continue
        names = list(dict.fromkeys(args.methods or [n for n in reg if reg[n].in_compare]))
        for n in names:
            assert n in reg, f"README: unknown method {n}"
        _parse_options(args.option, names)  # the CLI's own routing and validation
        n_options += len(args.option)
    assert n_options >= 4


def test_python_examples_use_declared_options():
    reg = load_methods()
    n_calls = 0
    for block in code_blocks("python"):
        for node in ast.walk(ast.parse(block)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "lipbound"
                    and node.func.attr in ("bound", "compare")):
                continue
            n_calls += 1
            kwargs = {k.arg: k.value for k in node.keywords}
            if node.func.attr == "bound":
                method = ast.literal_eval(node.args[1])
                for key, value in kwargs.items():
                    if key not in API_PARAMS:
                        value = ast.literal_eval(value)
                        _check(reg[method], key, value)
            elif "options" in kwargs:
                methods = ast.literal_eval(kwargs["methods"]) if "methods" in kwargs else [n for n in reg]
                route_options(methods, ast.literal_eval(kwargs["options"]))
    assert n_calls >= 2


def test_option_examples_in_the_text_are_declared_somewhere():
    """`key=value` in prose (outside the table and code blocks): an API parameter, or an option that some
    method declares with that value allowed."""
    reg = load_methods()
    prose = re.sub(r"```.*?```", "", TEXT, flags=re.S)
    prose = "\n".join(l for l in prose.splitlines() if not l.startswith("|"))
    for key, value in re.findall(r"`(?:--option )?([A-Za-z_]\w*)=(?!=)([^`\s,)]+)", prose):
        if key in API_PARAMS or key.isupper():  # an API parameter, or a placeholder (KEY=VALUE)
            continue
        owners = [s for s in reg.values() if key in s.options]
        assert owners, f"README mentions option {key}={value}, which no method declares"
        errors = []
        for spec in owners:
            try:
                _check(spec, key, value)
                break
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
        else:
            pytest.fail(f"README: {key}={value} is valid for no method declaring {key}: {errors[0]}")
