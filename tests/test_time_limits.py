"""Every method keeps its own time limit (issue 12): anytime methods return their best certified value at the
limit (status time_limit), the others refuse up front (status unsupported, with the estimate) when they
cannot give a certified value within it. Every registered method runs with a 2 s limit on networks large
enough to exceed it; the wall time must stay below 1.5 T + 4 s (a generous margin for a loaded CI machine:
`benchmarks/time_limits.py` checks the target 1.1 T + 2 s), and every upper / exact value returned must be
at least the certified lower bound of lower-sample (soundness of what a stopped method returns).

Fast (unmarked): every method on mnist-net_256x2 (box eps 0.05, linf and l2) and the three propagation
methods of the issue (crown, crown-bab, recurjac) on the residual CIFAR network resnet_2b (box eps 2/255,
linf). Slow: every method on resnet_2b (linf, l2) and cifar_base_kw (linf, l2).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import lipbound
from lipbound.registry import Region, load_methods

from conftest import SHARED

LIMIT = 2.0
ALL = sorted(load_methods())
ISSUE = ["crown", "crown-bab", "recurjac"]


def _allowed(limit: float) -> float:
    return 1.5 * limit + 4.0


_cache: dict = {}


def _problem(name: str, eps: float, norm: str):
    """(network, box around rng(1) in [0, 1], lower-sample's certified value with 200 samples)."""
    key = (name, eps, norm)
    if key not in _cache:
        path = SHARED / f"{name}.onnx"
        if not path.exists():
            pytest.skip(f"shared network {path} not found")
        net = lipbound.load(str(path))
        center = np.random.default_rng(1).random(net.n_inputs).reshape(net.input_shape)
        region = Region.box(center, eps, (0.0, 1.0))
        ref = lipbound.bound(net, "lower-sample", norm, region, 30, samples=200)
        assert ref.status == "ok" and ref.value is not None
        _cache[key] = (net, region, ref.value)
    return _cache[key]


def _check(method: str, name: str, eps: float, norm: str, limit: float = LIMIT):
    net, region, lower = _problem(name, eps, norm)
    spec = load_methods()[method]
    if spec.unsupported_reason(net, norm, region) is not None:
        pytest.skip(f"{method} does not apply to {name} in norm {norm} on a box")
    t0 = time.perf_counter()
    b = lipbound.bound(net, method, norm, region, limit)
    wall = time.perf_counter() - t0
    assert wall <= _allowed(limit), (f"{method} on {name} (norm {norm}) ran {wall:.1f} s with time_limit={limit} s "
                                     f"(status {b.status}, {b.reason})")
    assert b.status in ("ok", "time_limit", "unsupported"), (b.status, b.reason)
    if b.status == "unsupported":
        assert b.reason and b.value is None
        return b
    if b.value is not None and b.kind in ("upper", "exact"):
        assert b.value >= lower * (1 - 1e-9), f"{method}: upper {b.value} below the certified lower {lower}"
    if b.value is not None and b.kind == "lower":
        assert b.value >= 0
    return b


@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("method", ALL)
def test_every_method_keeps_its_limit_on_mnist(method, norm):
    _check(method, "mnist-net_256x2", 0.05, norm)


@pytest.mark.parametrize("method", ISSUE)
def test_propagation_methods_keep_their_limit_on_a_residual_cifar_net(method):
    b = _check(method, "resnet_2b", 2 / 255, "inf")
    assert b.status in ("ok", "time_limit") and b.value is not None  # anytime: a certified value, not a refusal


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("name", ["resnet_2b", "cifar_base_kw"])
@pytest.mark.parametrize("method", ALL)
def test_every_method_keeps_its_limit_on_cifar(method, name, norm):
    if method.startswith(("eclipse", "lipsdp")):
        # lipsdp-opt keeps its limit (tests/test_sdp_time.py); the closed forms check the clock only between
        # members, so one G3 member (~5 s on CIFAR) can overrun a 2 s limit: open in issue 15
        pytest.skip("the SDP closed forms check the clock only between family members (issue 15)")
    _check(method, name, 2 / 255, norm)


def test_a_cut_crown_pass_keeps_interval_bounds():
    """CROWN cut at once (deadline in the past) gives exactly the interval bounds; a finished pass is inside
    them; both contain the pre-activations of sampled inputs."""
    import torch

    from lipbound.crown import forward_bounds

    net, region, _ = _problem("mnist-net_256x2", 0.05, "inf")
    info: dict = {}
    cut = forward_bounds(net, region, alpha=True, deadline=time.perf_counter() - 1, info=info)
    assert info["cut"]
    ibp = forward_bounds(net, region, method="ibp")
    full = forward_bounds(net, region, alpha=False)
    X = torch.as_tensor(region.sample(64, np.random.default_rng(0))).reshape((64,) + net.input_shape)
    pre = net.preactivations(X)
    for (k, (lo, hi)), z in zip(sorted(cut.items()), pre):
        assert torch.equal(lo, ibp[k][0]) and torch.equal(hi, ibp[k][1])
        flo, fhi = full[k]
        tol = 1e-12 * (1 + hi.abs().max())  # midpoint-radius rounding is not monotone in its inputs
        assert bool((flo >= lo - tol).all()) and bool((fhi <= hi + tol).all())
        z = z.reshape(z.shape[0], -1)
        assert bool((z >= flo - 1e-9).all() and (z <= fhi + 1e-9).all())


def _gelu_conv_resnet():
    """A small GELU convolutional ResNet (3x16x16 input, two residual blocks of 8 channels, seeded)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c1, self.c2, self.act = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1), nn.GELU()

        def forward(self, x):
            return self.act(x + self.c2(self.act(self.c1(x))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.act = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GELU()
            self.b1, self.b2, self.fc = Block(8), Block(8), nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            return self.fc(self.b2(self.b1(self.act(self.stem(x)))).flatten(1))

    torch.manual_seed(0)
    return lipbound.from_torch(Net().double().eval(), (3, 16, 16))


@pytest.mark.parametrize("method", ISSUE)
def test_propagation_methods_keep_their_limit_on_a_gelu_conv_resnet(method):
    """recurjac ran 31 s with time_limit=20 on such a network (alpha-CROWN with bisected GELU offsets)."""
    net = _gelu_conv_resnet()
    center = np.random.default_rng(1).random(net.n_inputs).reshape(net.input_shape)
    region = Region.box(center, 2 / 255, (0.0, 1.0))
    lower = lipbound.bound(net, "lower-sample", "inf", region, 30, samples=100).value
    t0 = time.perf_counter()
    b = lipbound.bound(net, method, "inf", region, LIMIT)
    wall = time.perf_counter() - t0
    assert wall <= _allowed(LIMIT), f"{method} ran {wall:.1f} s with time_limit={LIMIT} s ({b.status})"
    assert b.status in ("ok", "time_limit") and b.value is not None
    assert b.value >= lower * (1 - 1e-9)
