"""The command line: the JSON contract, exit codes, and one-line errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from lipbound.cli import main


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_methods_table(capsys):
    code, out, _ = run(["methods"], capsys)
    assert code == 0 and "lower-grad" in out and "lower-sample" in out


def test_bound_json_contract(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code, out, err = run(["bound", "example:digits_mlp", "-m", "lower-sample", "-m", "lower-grad", "--norm", "inf",
                          "--option", "samples=300", "--option", "lower-grad.steps=10", "--json", str(out_json),
                          "--quiet"], capsys)
    assert code == 0, err
    js = json.loads(out_json.read_text())
    assert set(js) >= {"network", "norm", "region", "results", "best_lower", "best_upper", "gap"}
    assert js["norm"] == "inf" and js["region"] is None
    assert [r["method"] for r in js["results"]] == ["lower-sample", "lower-grad"]
    for r in js["results"]:
        assert set(r) >= {"method", "kind", "value", "time_s", "status", "witness", "details"}
        assert r["kind"] == "lower" and r["status"] == "ok" and len(r["witness"]) == 64
    assert js["results"][0]["details"]["samples"] == 300
    assert js["results"][1]["details"]["steps"] == 10
    assert js["best_lower"] == max(r["value"] for r in js["results"])


def test_bound_on_a_box(tmp_path, capsys):
    center = tmp_path / "c.npy"
    np.save(center, np.full((64,), 0.5))
    out_json = tmp_path / "r.json"
    code, _, err = run(["bound", "example:digits_mlp", "-m", "lower-sample", "--center", str(center), "--eps", "0.05",
                        "--domain", "0", "1", "--json", str(out_json), "--quiet", "--output", "3"], capsys)
    assert code == 0, err
    js = json.loads(out_json.read_text())
    assert js["region"]["eps"] == 0.05 and js["output"] == 3
    w = np.array(js["results"][0]["witness"])
    assert np.all(np.abs(w - 0.5) <= 0.05 + 1e-12)


@pytest.mark.parametrize("args, words", [
    (["bound", "example:digits_mlp", "-m", "no-such"], "unknown method"),
    (["bound", "missing.onnx", "-m", "lower-sample"], "missing.onnx"),
    (["bound", "example:digits_mlp", "-m", "lower-sample", "--norm", "7"], "norm"),
    (["bound", "example:digits_mlp", "-m", "lower-sample", "--eps", "0.1"], "--eps needs --center"),
    (["bound", "example:digits_mlp", "-m", "lower-sample", "--option", "degree=3"], "degree"),
    (["bound", "example:digits_mlp", "-m", "lower-sample", "--output", "10"], "out of range"),
])
def test_bad_input_exit_2_one_line(args, words, capsys):
    code, _, err = run(args + ["--quiet"], capsys)
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("lipbound: error:") and words in lines[0]


def test_wrong_center_shape(tmp_path, capsys):
    center = tmp_path / "c.npy"
    np.save(center, np.zeros(5))
    code, _, err = run(["bound", "example:digits_mlp", "-m", "lower-sample", "--center", str(center), "--eps", "0.1",
                        "--quiet"], capsys)
    assert code == 2 and "shape" in err and "Traceback" not in err


def test_console_script_runs_as_a_process(tmp_path):
    """The installed entry point, as users call it (exit code through the shell)."""
    proc = subprocess.run([sys.executable, "-m", "lipbound.cli", "bound", "example:digits_cnn", "-m", "lower-sample",
                           "--option", "samples=50", "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lower-sample" in proc.stdout and "best lower" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "lipbound.cli", "bound", str(tmp_path / "nope.onnx"), "-m",
                           "lower-sample"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_a_norm_the_method_cannot_handle(capsys):
    code, out, err = run(["bound", "example:digits_mlp", "-m", "eclipse-fast", "--norm", "inf", "--quiet"], capsys)
    assert code == 2 and "eclipse-fast does not support norm inf" in err
    assert "unsupported" in out  # the table still shows the row with its status


def test_global_only_method_on_a_box_and_local_method_globally(tmp_path, capsys):
    center = tmp_path / "c.npy"
    np.save(center, np.full((64,), 0.5))
    code, out, err = run(["bound", "example:digits_mlp", "-m", "lipsdp-neuron", "--center", str(center), "--eps", "0.1",
                          "--quiet"], capsys)
    assert code == 2 and "global-only" in err
    # the closed forms bound a box too (per-neuron slopes)
    code, out, err = run(["bound", "example:digits_mlp", "-m", "eclipse-fast", "--center", str(center), "--eps", "0.1",
                          "--quiet"], capsys)
    assert code == 0, err
    code, out, err = run(["bound", "example:digits_mlp", "-m", "crown-bab", "--norm", "inf", "--quiet"], capsys)
    assert code == 2 and "local" in err


def test_unsupported_operator_names_the_methods_that_handle_it(capsys):
    import lipbound
    from conftest import shared_network_paths

    path = [p for p in shared_network_paths() if p.stem == "Convnet_maxpool"][0]
    code, out, err = run(["bound", str(path), "-m", "eclipse-fast", "--quiet"], capsys)
    assert code == 2 and "MaxPool2d" in err and "naive" in err
