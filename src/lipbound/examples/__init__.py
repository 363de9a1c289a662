"""Built-in example networks, trained on scikit-learn's bundled 8x8 digits data.

The weights were produced by ``scripts/train_examples.py`` (seeded, reproducible) and ship with the
package as ``.npz`` files. Inputs are 8x8 images with pixel values in [0, 1]:
``digits_mlp()`` takes shape (64,), ``digits_cnn()`` takes (1, 8, 8). Both output 10 logits.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from ..network import Activation, Conv2d, Linear, Network, Reshape

INPUT_DOMAIN = (0.0, 1.0)


def _weights(name: str) -> dict:
    with resources.files(__package__).joinpath(f"{name}.npz").open("rb") as fh:
        data = np.load(fh)
        return {k: data[k].astype(np.float64) for k in data.files}


def digits_mlp() -> Network:
    """ReLU MLP 64-32-32-10 trained on the 8x8 digits (input (64,) in [0, 1])."""
    w = _weights("digits_mlp")
    ops = []
    n_layers = sum(1 for k in w if k.startswith("W"))
    for i in range(n_layers):
        ops.append(Linear(w[f"W{i}"], w[f"b{i}"]))
        if i < n_layers - 1:
            ops.append(Activation("relu"))
    return Network.sequential((64,), ops, name="digits_mlp")


def digits_cnn() -> Network:
    """ReLU CNN on the 8x8 digits: conv 1->8 (3x3, pad 1), conv 8->16 (3x3, stride 2, pad 1),
    linear 256->32, linear 32->10 (input (1, 8, 8) in [0, 1])."""
    w = _weights("digits_cnn")
    ops = [
        Conv2d(w["conv0_w"], w["conv0_b"], (1, 1), (1, 1)), Activation("relu"),
        Conv2d(w["conv1_w"], w["conv1_b"], (2, 2), (1, 1)), Activation("relu"),
        Reshape((16 * 4 * 4,)),
        Linear(w["fc0_w"], w["fc0_b"]), Activation("relu"),
        Linear(w["fc1_w"], w["fc1_b"]),
    ]
    return Network.sequential((1, 8, 8), ops, name="digits_cnn")


def load_example(name: str) -> Network:
    """An example by name: 'digits_mlp' or 'digits_cnn'."""
    from ..errors import LipboundError

    table = {"digits_mlp": digits_mlp, "digits_cnn": digits_cnn}
    if name not in table:
        raise LipboundError(f"unknown example {name!r}; examples: {', '.join(table)}")
    return table[name]()


EXAMPLES = ("digits_mlp", "digits_cnn")
