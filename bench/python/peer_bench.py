#!/usr/bin/env python3
"""The peers' side of bench/compare.sh: PyTorch eager on the twin of our model
(pathguard_ref.py, same weights) and torchattacks on it. Prints one JSON object.

    python peer_bench.py MODEL_DIR forward|fgsm|pgd --batch B --images N [--repeats R]
"""

import argparse
import gzip
import json
import pathlib
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pathguard_ref import DecoupledCNN  # noqa: E402

DATA = pathlib.Path("/usr/share/datasets/fashion-mnist")


def test_images(n):
    with gzip.open(DATA / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read()[16:16 + n * 784], dtype=np.uint8)
    with gzip.open(DATA / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read()[8:8 + n], dtype=np.uint8)
    x = torch.from_numpy(images.reshape(n, 1, 28, 28).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


class LogitsOnly(torch.nn.Module):
    """What torchattacks expects: a module returning logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("what", choices=["forward", "fgsm", "pgd"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eps", type=float, default=0.1)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = DecoupledCNN.load(args.model_dir)
    x, y = test_images(args.images)
    if args.what == "forward":
        rates = []
        with torch.no_grad():
            for _ in range(args.repeats):
                start = time.perf_counter()
                for i in range(0, len(x), args.batch):
                    model(x[i:i + args.batch])
                rates.append(len(x) / (time.perf_counter() - start))
        print(json.dumps({"images_per_second": statistics.median(rates)}))
        return
    import torchattacks

    wrapped = LogitsOnly(model).eval()
    if args.what == "fgsm":
        attack = torchattacks.FGSM(wrapped, eps=args.eps)
    else:
        attack = torchattacks.PGD(wrapped, eps=args.eps, alpha=2.5 * args.eps / 40, steps=40, random_start=True)
    start = time.perf_counter()
    adversarial = torch.cat([attack(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, len(x), args.batch)])
    seconds = time.perf_counter() - start
    with torch.no_grad():
        clean = wrapped(x).argmax(1)
        adv = wrapped(adversarial).argmax(1)
    correct = clean == y
    success = ((adv != y) & correct).sum().item() / max(correct.sum().item(), 1)
    print(json.dumps({"images_per_second": len(x) / seconds, "success_rate_on_correct": success}))


if __name__ == "__main__":
    main()
