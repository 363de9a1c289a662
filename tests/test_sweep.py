"""`lipbound sweep` / `lipbound.sweep`: records checked against `lipbound.bound` run directly on each point,
resume (after a normal stop, a cut final line, kill -9), refusal of other settings, bad input, and Ray
(a real local runtime: the same records as in-process; a killed worker's task is retried)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lipbound
from lipbound.cli import main
from lipbound.examples import digits_mlp

from _nets import random_mlp

METHODS = ["lower-sample", "crown"]


def lines(path) -> list[dict]:
    text = Path(path).read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(l) for l in text.splitlines()]


def values(rec) -> dict:
    """A record without its timings (time_s, *_s, timeline): what must not depend on the run."""
    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if not (k == "time_s" or k.endswith("_s") or k == "timeline")}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o
    return strip(rec)


def by_key(recs) -> dict:
    recs = list(recs)
    keys = [(r["id"], r["eps"]) for r in recs]
    assert len(keys) == len(set(keys)), "duplicate (id, eps)"
    return {(r["id"], r["eps"]): values(r) for r in recs}


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def points(tmp_path):
    x = np.random.default_rng(1).uniform(0, 1, (8, 64))
    path = tmp_path / "X.npy"
    np.save(path, x)
    return x, path


def test_records_equal_bound_run_directly_on_each_point(tmp_path):
    net = random_mlp([6, 10, 10, 3], seed=2)
    x = np.random.default_rng(0).standard_normal((3, 6))
    out = tmp_path / "r.jsonl"
    yielded = list(lipbound.sweep(net, x, [0.1, 0.3], norm="inf", methods=METHODS, out=out, seed=5))
    recs = lines(out)
    assert len(recs) == 6 and len(yielded) == 6 and sorted(by_key(recs)) == sorted(by_key(yielded))
    for rec in recs:
        assert set(rec) >= {"id", "eps", "norm", "best_lower", "best_upper", "gap", "exact", "time_s", "results",
                            "settings"}
        direct = {m: lipbound.bound(net, m, "inf", center=x[rec["id"]], eps=rec["eps"], seed=5) for m in METHODS}
        assert [r["method"] for r in rec["results"]] == METHODS
        for r in rec["results"]:
            assert r["value"] == direct[r["method"]].value and r["status"] == direct[r["method"]].status
            assert r["witness"] == direct[r["method"]].witness.ravel().tolist() if r["witness"] else True
        assert rec["best_lower"] == direct["lower-sample"].value
        assert rec["best_upper"] == direct["crown"].value
        assert rec["gap"] == pytest.approx(rec["best_upper"] / rec["best_lower"])
        assert rec["best_lower"] <= rec["best_upper"] and rec["norm"] == "inf"
        assert rec["settings"]["methods"] == METHODS and rec["settings"]["seed"] == 5


def test_resume_keeps_lines_and_computes_only_the_missing_pairs(points, tmp_path, capsys):
    _, X = points
    out = tmp_path / "r.jsonl"
    base = ["sweep", "example:digits_mlp", "--inputs", str(X), "--eps", "0.05", "-m", "lower-sample", "-m", "crown",
            "--domain", "0", "1", "--out", str(out), "--quiet"]
    code, stdout, err = run_cli(base + ["--ids", "0:5"], capsys)
    assert code == 0, err
    first = out.read_text().splitlines()
    assert len(first) == 5 and "points" in stdout and "this run: 5 records" in stdout
    code, stdout, err = run_cli(base + ["--plot", str(tmp_path / "p.png")], capsys)
    assert code == 0, err
    now = out.read_text().splitlines()
    assert now[:5] == first and len(now) == 8 and "this run: 3 records" in stdout
    assert sorted(r["id"] for r in lines(out)) == list(range(8))
    assert (tmp_path / "p.png").stat().st_size > 1000
    # a final line cut by a crash: dropped and recomputed, nothing else touched
    full = out.read_bytes()
    last = now[-1].encode()
    out.write_bytes(full[:-len(last) - 1] + last[: len(last) // 2])
    code, stdout, err = run_cli(base, capsys)
    assert code == 0, err
    again = lines(out)
    assert len(again) == 8 and out.read_text().splitlines()[:7] == now[:7]
    assert values(again[-1]) == values(json.loads(now[-1]))
    # other settings: refused, naming the setting, the file unchanged
    before = out.read_bytes()
    code, _, err = run_cli(base[:-1] + ["--norm", "inf", "--quiet"], capsys)
    assert code == 2 and err.startswith("lipbound: error:") and "norm" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == before
    code, _, err = run_cli(base + ["--seed", "3"], capsys)
    assert code == 2 and "seed" in err and out.read_bytes() == before


def test_kill_9_mid_sweep_then_resume_gives_the_uninterrupted_records(tmp_path):
    x = np.random.default_rng(2).uniform(0, 1, (12, 64))
    X = tmp_path / "X.npy"
    np.save(X, x)
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "lipbound.cli", "sweep", "example:digits_mlp", "--inputs", str(X), "--eps", "0.05",
           "-m", "lower-sample", "-m", "crown", "--out", str(out), "--quiet", "--seed", "7"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_killed = out.read_bytes().count(b"\n")
    assert 3 <= n_killed < 12
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = by_key(lines(out))
    assert len(got) == 12
    net = digits_mlp()
    reference = by_key(lipbound.sweep(net, x, 0.05, methods=["lower-sample", "crown"], seed=7, model="example:digits_mlp"))
    for k, rec in got.items():
        ref = dict(reference[k])
        ref["settings"] = {**ref["settings"], "inputs": rec["settings"]["inputs"]}
        assert rec == ref, k


def test_certify_records_have_the_certified_ends_and_their_methods(tmp_path):
    net = random_mlp([5, 8, 8, 2], seed=6)
    x = np.random.default_rng(4).standard_normal((2, 5))
    recs = list(lipbound.sweep(net, x, 0.2, norm=2, time_limit=1.0, seed=2))
    assert len(recs) == 2
    for rec in recs:
        assert {"lower_method", "upper_method", "status"} <= set(rec) and rec["status"] in (
            "target_gap", "exhausted", "time_limit")
        uppers = {r["method"]: r["value"] for r in rec["results"]
                  if r["kind"] in ("upper", "exact") and r["status"] in ("ok", "time_limit")}
        assert rec["best_upper"] == min(uppers.values()) and rec["upper_method"] in uppers
        # independent checks: a sampled lower bound never exceeds the certified upper bound, and the
        # certified lower bound never exceeds the global naive upper bound
        sample = lipbound.bound(net, "lower-sample", 2, center=x[rec["id"]], eps=0.2, seed=11, samples=500)
        assert sample.value <= rec["best_upper"] * (1 + 1e-9)
        assert rec["best_lower"] <= lipbound.bound(net, "naive", 2).value * (1 + 1e-9)


def test_a_file_being_written_by_another_sweep_is_refused(tmp_path):
    from lipbound.sweep.store import Writer

    net = random_mlp([3, 4, 1], seed=0)
    out = tmp_path / "r.jsonl"
    holder = Writer(out)
    try:
        gen = lipbound.sweep(net, np.zeros((2, 3)), 0.1, methods=["crown"], out=out)
        with pytest.raises(lipbound.LipboundError, match="another sweep"):
            next(gen)
    finally:
        holder.close()
    assert len(list(lipbound.sweep(net, np.zeros((2, 3)), 0.1, methods=["crown"], out=out))) == 2


def test_nan_points_are_skipped_with_the_reason(tmp_path):
    net = random_mlp([4, 6, 2], seed=0)
    x = np.random.default_rng(0).standard_normal((3, 4))
    x[1, 2] = np.nan
    out = tmp_path / "r.jsonl"
    recs = list(lipbound.sweep(net, x, 0.1, methods=["lower-sample"], out=out))
    assert len(recs) == 3 and len(lines(out)) == 3
    skipped = [r for r in recs if "skipped" in r]
    assert [(r["id"], r["skipped"]) for r in skipped] == [(1, "NaN in the input")]
    assert "best_upper" not in skipped[0] and skipped[0]["eps"] == 0.1
    # a skipped pair counts as done: a rerun computes nothing
    assert list(lipbound.sweep(net, x, 0.1, methods=["lower-sample"], out=out)) == []


def test_vnnlib_sweep_ids_are_file_names(tmp_path):
    net = random_mlp([2, 5, 1], seed=3)
    files = []
    for i, (lo, hi) in enumerate([(-1.0, 0.0), (0.5, 1.5)]):
        p = tmp_path / f"prop{i}.vnnlib"
        p.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                     f"(assert (<= X_0 {hi}))\n(assert (>= X_0 {lo}))\n(assert (<= X_1 {hi}))\n(assert (>= X_1 {lo}))\n")
        files.append(p)
    recs = list(lipbound.sweep(net, [str(f) for f in files], methods=["crown"], norm="inf"))
    assert sorted(r["id"] for r in recs) == ["prop0.vnnlib", "prop1.vnnlib"] and all(r["eps"] is None for r in recs)
    for r in recs:
        lo, hi = (-1.0, 0.0) if r["id"] == "prop0.vnnlib" else (0.5, 1.5)
        region = lipbound.Region.from_bounds(np.full(2, lo), np.full(2, hi))
        assert r["best_upper"] == lipbound.bound(net, "crown", "inf", region).value
    with pytest.raises(lipbound.LipboundError, match="eps"):
        lipbound.sweep(net, [str(files[0])], 0.1, methods=["crown"])


@pytest.mark.parametrize("make, extra, words", [
    (lambda d: np.save(d / "X.npy", np.zeros((4, 63))), [], "expected (N, 64)"),
    (lambda d: None, [], "not found"),
    (lambda d: (d / "X.npy").write_bytes(b"not an array"), [], "cannot read"),
    (lambda d: np.save(d / "X.npy", np.zeros((4, 64))), ["--ids", "2:9"], "hold 4 points"),
    (lambda d: np.save(d / "X.npy", np.zeros((4, 64))), ["--address", "127.0.0.1:9"], "cannot reach"),
    (lambda d: np.save(d / "X.npy", np.zeros((4, 64))), ["-m", "no-such-method"], "unknown method"),
], ids=["shape", "missing", "unreadable", "ids", "address", "method"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, make, extra, words):
    make(tmp_path)
    out = tmp_path / "r.jsonl"
    code, stdout, err = run_cli(["sweep", "example:digits_mlp", "--inputs", str(tmp_path / "X.npy"), "--eps", "0.1",
                                 "-m", "crown", "--out", str(out), "--quiet"] + extra, capsys)
    assert code == 2 and err.startswith("lipbound: error:") and len(err.splitlines()) == 1, err
    assert words in err, err
    assert not out.exists()


def test_npz_key_and_cli_argument_errors(tmp_path, capsys):
    np.savez(tmp_path / "X.npz", a=np.zeros((2, 64)), b=np.full((2, 1, 64), 0.5))
    out = tmp_path / "r.jsonl"
    base = ["sweep", "example:digits_mlp", "--inputs", str(tmp_path / "X.npz"), "-m", "crown", "--out", str(out),
            "--quiet"]
    code, _, err = run_cli(base + ["--eps", "0.1"], capsys)
    assert code == 2 and "--key" in err and not out.exists()
    code, _, err = run_cli(base, capsys)
    assert code == 2 and "--eps" in err
    code, _, err = run_cli(base + ["--eps", "0.1", "--key", "b"], capsys)  # (N, 1, 64): a leading 1 per point
    assert code == 0, err
    assert [r["best_upper"] for r in lines(out)] == [lipbound.bound(digits_mlp(), "crown", 2, center=np.full(64, 0.5),
                                                                     eps=0.1).value] * 2


def test_workers_1_never_imports_ray(tmp_path):
    code = ("import sys, numpy as np, lipbound\n"
            "net = lipbound.examples.digits_mlp()\n"
            "recs = list(lipbound.sweep(net, np.zeros((2, 64)), 0.1, methods=['crown'], out=sys.argv[1]))\n"
            "assert len(recs) == 2\n"
            "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'ray was imported'\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.jsonl")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


ray = pytest.importorskip("ray")


def _ray_points():
    return random_mlp([6, 12, 12, 3], seed=4), np.random.default_rng(3).standard_normal((10, 6))


def _chunk_worker_pids() -> list[int]:
    """Processes running a sweep task right now (Ray titles a busy worker 'ray::sweep_chunk')."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().startswith(b"ray::sweep_chunk"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_ray_worker_killed_mid_sweep_is_retried(tmp_path):
    net, x = _ray_points()
    x = np.repeat(x, 3, axis=0)
    out = tmp_path / "r.jsonl"
    gen = lipbound.sweep(net, x, 0.1, methods=["lower-sample", "crown", "lower-grad"], seed=1, out=out, workers=2)
    recs = [next(gen)]
    killed = None
    deadline = time.time() + 60
    while killed is None and time.time() < deadline:
        pids = _chunk_worker_pids()
        if pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        else:
            recs.append(next(gen))
    assert killed is not None, "no busy Ray worker found"
    recs += list(gen)
    got = by_key(lines(out))
    assert len(got) == 30 and by_key(recs) == got
    ref = by_key(lipbound.sweep(net, x, 0.1, methods=["lower-sample", "crown", "lower-grad"], seed=1))
    assert got == ref
