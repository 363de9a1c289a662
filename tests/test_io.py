"""Readers: ONNX (checked against onnxruntime) and torch (checked against the module itself)."""

import numpy as np
import pytest
import torch

import lipbound
from lipbound.errors import LipboundError, UnsupportedOperator

from conftest import shared_network_paths

ort = pytest.importorskip("onnxruntime")


def ort_outputs(path_or_bytes, xs, batched=True):
    """onnxruntime outputs (float32) for a batch of inputs, one sample at a time."""
    sess = ort.InferenceSession(str(path_or_bytes) if not isinstance(path_or_bytes, bytes) else path_or_bytes,
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = []
    for x in xs:
        feed = (x[None] if batched else x).astype(np.float32)
        outs.append(np.asarray(sess.run(None, {name: feed})[0]).reshape(-1))
    return np.stack(outs)


def assert_matches_ort(net, model, n=8, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-scale, scale, size=(n,) + tuple(net.input_shape))
    sess_in = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                   providers=["CPUExecutionProvider"]).get_inputs()[0]
    batched = len(sess_in.shape) == len(net.input_shape) + 1
    ref = ort_outputs(model, xs, batched=batched)
    ours = net(torch.from_numpy(xs)).reshape(n, -1).numpy()
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max() / max(1.0, np.abs(ref).max())
    assert err < 1e-5, err


SHARED_PATHS = shared_network_paths()


@pytest.mark.parametrize("path", SHARED_PATHS, ids=[p.stem for p in SHARED_PATHS])
def test_shared_network_matches_onnxruntime(path):
    net = lipbound.load(path)
    assert net.name == path.stem
    # pixel-like inputs in [0, 1] and wider ones in [-1, 1]
    assert_matches_ort(net, path, scale=1.0)
    assert_matches_ort(net, path, scale=0.5, seed=1)
