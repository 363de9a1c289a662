"""lipsdp-opt under a budget or a time limit (issue 15 item 4, issue 12): never above the closed-form
family it starts from, and its time limit kept (every phase checks the clock; no evaluation of the
optimiser is started that would end after it)."""

import time
from pathlib import Path

import pytest

import lipbound
from lipbound.methods.sdp import methods as sdp_methods
from lipbound.synthetic import eclipse_network

NETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "networks"


@pytest.mark.parametrize("kw", [dict(budget=1e-4), dict(budget=1e-4, phases="direct"), dict(max_iter=1)])
def test_cut_early_never_above_family(kw):
    """The optimiser cut at once (tiny budget, one iteration) still returns at most eclipse-family's value
    (computed independently here), with the member that produced it in the details."""
    net = eclipse_network(8, 40, "randn", seed=3)
    fam = lipbound.bound(net, "eclipse-family")
    opt = lipbound.bound(net, "lipsdp-opt", **kw)
    assert fam.status == "ok" and opt.status in ("ok", "time_limit")
    assert opt.value <= fam.value * (1 + 1e-12), (opt.value, fam.value)
    d = opt.details
    assert d["family_value"] == pytest.approx(fam.value, rel=1e-12)
    assert d["value_from"] in d["start_members"] or d["value_from"] in ("direct", "barrier", "newton_centred")
    if d["value_from"] in d["start_members"]:
        assert opt.value == pytest.approx(d["start_members"][d["value_from"]], rel=1e-12)


def test_start_fast_is_reported():
    net = eclipse_network(5, 20, "randn", seed=1)
    fast = lipbound.bound(net, "eclipse-fast")
    opt = lipbound.bound(net, "lipsdp-opt", start="fast", budget=1e-4)
    assert "start=fast" in opt.details["start_note"] and opt.value <= fast.value * (1 + 1e-12)


def _timed(net, limit, **kw):
    t0 = time.perf_counter()
    b = lipbound.bound(net, "lipsdp-opt", time_limit=limit, **kw)
    return b, time.perf_counter() - t0


def test_time_limit_kept_on_a_deep_wide_chain():
    net = eclipse_network(layers=30, width=300, kind="randn", seed=0)
    limit = 3.0
    b, wall = _timed(net, limit)
    assert b.status in ("ok", "time_limit") and b.value is not None
    assert wall <= 1.5 * limit + 3.0, (wall, b.details.get("optimisation"))


@pytest.mark.skipif(not (NETS / "mnist-net_256x2.onnx").exists(), reason="shared networks not available")
def test_time_limit_kept_on_mnist():
    net = lipbound.load(NETS / "mnist-net_256x2.onnx")
    limit = 2.0
    b, wall = _timed(net, limit)
    assert b.status in ("ok", "time_limit") and b.value is not None
    assert wall <= 1.5 * limit + 3.0, (wall, b.details.get("optimisation"))
    fam = lipbound.bound(net, "eclipse-family")
    assert b.value <= fam.value * (1 + 1e-12) or b.details.get("start_members_skipped")


def test_refused_when_the_start_cannot_fit(monkeypatch):
    """When even one closed-form pass is estimated beyond the limit, lipsdp-opt and the closed forms refuse
    up front with the estimate (status unsupported, no number) instead of overrunning."""
    monkeypatch.setattr(sdp_methods, "OPT_FLOP_RATE", 1.0)  # pretend the machine does 1 flop/s
    net = eclipse_network(3, 10, "randn", seed=0)
    for method in ("lipsdp-opt", "eclipse-family", "eclipse-fast", "eclipse-g3"):  # the closed forms too
        b = lipbound.bound(net, method, time_limit=1.0)
        assert b.status == "unsupported" and b.value is None and "estimated" in b.reason, method
    assert lipbound.bound(net, "eclipse-family").status == "ok"  # no limit: no refusal
    assert lipbound.bound(net, "lipsdp-opt", budget=0.5).status in ("ok", "time_limit")  # no limit: no refusal


def test_limit_spent_before_the_start_still_gives_a_bound():
    """A limit already spent when the start runs: the start's decomposition is cut (Frobenius tail, a valid
    bound) and returned with status time_limit, never 'failed' and never after running every member."""
    net = eclipse_network(30, 20, "randn", seed=2)
    fast = lipbound.bound(net, "eclipse-fast")
    b, wall = _timed(net, 1e-9)
    assert b.status == "time_limit" and b.value is not None and b.value >= fast.value * (1 - 1e-12)
    assert len(b.details["start_members"]) == 1 and wall < 3.0
