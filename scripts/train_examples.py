"""Train the built-in example networks on scikit-learn's bundled 8x8 digits data (seeded).

    pip install scikit-learn && python scripts/train_examples.py

Writes src/lipbound/examples/digits_mlp.npz and digits_cnn.npz and prints the test accuracies.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "src" / "lipbound" / "examples"


def data(seed=0):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32) / 16.0
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(X))
    X, y = X[perm], y[perm]
    n_test = 360
    return (torch.tensor(X[n_test:]), torch.tensor(y[n_test:])), (torch.tensor(X[:n_test]), torch.tensor(y[:n_test]))


def train(model, train_set, test_set, reshape, epochs=60, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    X, y = train_set
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(reshape(X[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (model(reshape(test_set[0])).argmax(1) == test_set[1]).float().mean().item()
    return acc


def main():
    torch.manual_seed(0)
    train_set, test_set = data()
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    acc = train(mlp, train_set, test_set, lambda x: x)
    w = {}
    for i, layer in enumerate([m for m in mlp if isinstance(m, nn.Linear)]):
        w[f"W{i}"] = layer.weight.detach().numpy().astype(np.float32)
        w[f"b{i}"] = layer.bias.detach().numpy().astype(np.float32)
    np.savez_compressed(OUT / "digits_mlp.npz", **w)
    print(f"digits_mlp: test accuracy {acc:.3f}")

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))
    acc = train(cnn, train_set, test_set, lambda x: x.reshape(-1, 1, 8, 8))
    np.savez_compressed(OUT / "digits_cnn.npz",
                        conv0_w=cnn[0].weight.detach().numpy(), conv0_b=cnn[0].bias.detach().numpy(),
                        conv1_w=cnn[2].weight.detach().numpy(), conv1_b=cnn[2].bias.detach().numpy(),
                        fc0_w=cnn[5].weight.detach().numpy(), fc0_b=cnn[5].bias.detach().numpy(),
                        fc1_w=cnn[7].weight.detach().numpy(), fc1_b=cnn[7].bias.detach().numpy())
    print(f"digits_cnn: test accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
