#!/usr/bin/env python3
"""The peers' side of bench/compare.sh: PyTorch eager on the twin of our model
(pathguard_ref.py, same weights), torchattacks on it, and the Adversarial Robustness
Toolbox's BinaryActivationDetector on it. Prints one JSON object.

    python peer_bench.py MODEL_DIR forward|fgsm|pgd|train --batch B --images N [--repeats R]
    python peer_bench.py MODEL_DIR detect --dir DIR
"""

import argparse
import gzip
import json
import math
import os
import pathlib
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pathguard_ref import DecoupledCNN, decoupling_loss  # noqa: E402

# The same variable and default as src/data/fashion_mnist.rs.
DATA = pathlib.Path(os.environ.get("PATHGUARD_DATA", "/usr/share/datasets/fashion-mnist"))


def synchronize(device):
    """Waits for queued CUDA kernels, so a timer stopped after it counts them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images(split, n):
    """The first n images ([n, 1, 28, 28] in [0, 1]) and labels of a Fashion-MNIST split."""
    with gzip.open(DATA / f"{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read()[16:16 + n * 784], dtype=np.uint8)
    with gzip.open(DATA / f"{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read()[8:8 + n], dtype=np.uint8)
    x = torch.from_numpy(images.reshape(n, 1, 28, 28).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def one_cycle_lr(peak, step, total):
    """src/train.rs's schedule: linear warm-up over 25% of the steps, then cosine to peak/1000."""
    warmup = max(total * 0.25, 1.0)
    if step < warmup:
        start = peak / 25.0
        return start + (peak - start) * step / warmup
    progress = min((step - warmup) / max(total - warmup, 1.0), 1.0)
    end = peak / 1000.0
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_epoch(model, x, y, batch, peak_lr=3e-3, weight_decay=5e-4):
    """One epoch as `pathguard bench train` runs it: shuffled batches, random horizontal flips,
    AdamW on the four decoupling losses with the one-cycle learning rate, per-batch loss terms
    and accuracy read back. Returns images/s."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=weight_decay)
    n = len(x)
    total = (n + batch - 1) // batch
    synchronize(x.device)
    start = time.perf_counter()
    order = torch.randperm(n, device=x.device)
    for step in range(total):
        idx = order[step * batch:(step + 1) * batch]
        xb, yb = x[idx], y[idx]
        flip = torch.rand(len(idx), 1, 1, 1, device=x.device) < 0.5
        xb = torch.where(flip, xb.flip(3), xb)
        for group in optimizer.param_groups:
            group["lr"] = one_cycle_lr(peak_lr, step, total)
        logits, gates, pooled, mi_logits = model.forward_with_heads(xb)
        loss, terms = decoupling_loss(logits, gates, pooled, mi_logits, yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _ = [t.item() for t in terms], (logits.argmax(1) == yb).sum().item()
    synchronize(x.device)
    return n / (time.perf_counter() - start)


class Stage(torch.nn.Module):
    """One conv block of the twin as a tensor -> tensor module (eval-mode hard gates), so the
    twin can be an nn.Sequential: ART reads hidden activations only from nn.Sequential models."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, h):
        b = self.block
        out = torch.relu(b.bn(b.conv(h)))
        if b.acm is not None:
            out = out * (b.acm(h) > 0).to(out.dtype)[:, :, None, None]
        return torch.nn.functional.max_pool2d(out, 2) if b.pool_after else out


class GlobalAveragePool(torch.nn.Module):
    def forward(self, h):
        return h.mean(dim=(2, 3))


def art_detector(classifier, layer, x, y, epochs=20):
    """ART's BinaryActivationDetector on `layer`'s activations: a 256-unit MLP trained with
    Adam (ART's fit), labels one-hot [clean, adversarial]. Returns the fitted detector."""
    from art.defences.detector.evasion import BinaryActivationDetector
    from art.estimators.classification import PyTorchClassifier

    shape = classifier.get_activations(x[:1], layer, 1).shape[1:]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(shape)), 256), torch.nn.ReLU(), torch.nn.Linear(256, 2))
    detector = PyTorchClassifier(model=net, loss=torch.nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), lr=1e-3), input_shape=shape, nb_classes=2)
    bad = BinaryActivationDetector(classifier=classifier, detector=detector, layer=layer)
    bad.fit(x, y, nb_epochs=epochs, batch_size=128)
    return bad


def art_scores(bad, x):
    """Adversarial score: the detector's adversarial logit minus its clean logit."""
    predictions = bad.detect(x, batch_size=256)[0]["predictions"]
    return predictions[:, 1] - predictions[:, 0]


def detect(model, directory):
    """ART's side of the detection comparison on the images `pathguard bench detect` wrote:
    the layer is chosen on held-out training rows (20%), then the detector is refitted on all
    training rows and scored on the test sets. Returns {layer, test: [{attack, auroc}]}."""
    from art.estimators.classification import PyTorchClassifier
    from sklearn.metrics import roc_auc_score

    directory = pathlib.Path(directory)
    sequential = torch.nn.Sequential(*[Stage(b) for b in model.blocks], GlobalAveragePool(), model.classifier).eval()
    classifier = PyTorchClassifier(model=sequential, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0))
    load = lambda name: np.load(directory / name).reshape(-1, 1, 28, 28).astype(np.float32)  # noqa: E731
    clean, adversarial = load("train_clean.npy"), load("train_adversarial.npy")
    x = np.concatenate([clean, adversarial])
    is_adversarial = np.r_[np.zeros(len(clean)), np.ones(len(adversarial))]
    y = np.eye(2, dtype=np.float32)[is_adversarial.astype(int)]
    held_out = np.random.default_rng(0).random(len(x)) < 0.2
    validation = {}
    for layer in range(1, len(model.blocks) + 1):  # every conv block's output and the pooled features
        bad = art_detector(classifier, layer, x[~held_out], y[~held_out])
        validation[layer] = roc_auc_score(is_adversarial[held_out], art_scores(bad, x[held_out]))
    layer = max(validation, key=validation.get)
    bad = art_detector(classifier, layer, x, y)
    test_clean = art_scores(bad, load("test_clean.npy"))
    results = []
    for attack in json.loads((directory / "attacks.json").read_text())["test"]:
        scores = art_scores(bad, load(attack["file"]))
        labels = np.r_[np.zeros(len(test_clean)), np.ones(len(scores))]
        results.append({"attack": attack["attack"], "auroc": roc_auc_score(labels, np.r_[test_clean, scores])})
    return {"layer": classifier.layer_names[layer], "layer_shape": list(classifier.get_activations(x[:1], layer, 1).shape[1:]),
            "validation_auroc": {classifier.layer_names[k]: v for k, v in validation.items()}, "test": results}


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
    parser.add_argument("what", choices=["forward", "fgsm", "pgd", "train", "detect"])
    parser.add_argument("--dir", help="detect: the directory `pathguard bench detect --out` wrote")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", type=int, default=0, help="test images to skip before the N")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (not for detect)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.what == "train":
        x, y = images("train", args.images)
        x, y = x.to(device), y.to(device)
        rates = [train_epoch(DecoupledCNN.load(args.model_dir).to(device), x, y, args.batch) for _ in range(args.repeats)]
        print(json.dumps({"images_per_second": statistics.median(rates)}))
        return
    model = DecoupledCNN.load(args.model_dir)
    if args.what == "detect":
        print(json.dumps(detect(model, args.dir)))
        return
    x, y = images("t10k", args.skip + args.images)
    x, y = x[args.skip:], y[args.skip:]
    if args.what == "forward":
        model, x = model.to(device), x.to(device)
        rates = []
        with torch.no_grad():
            model(x[:args.batch])  # the first CUDA call pays for kernel loading
            for _ in range(args.repeats):
                synchronize(device)
                start = time.perf_counter()
                for i in range(0, len(x), args.batch):
                    model(x[i:i + args.batch])
                synchronize(device)
                rates.append(len(x) / (time.perf_counter() - start))
        print(json.dumps({"images_per_second": statistics.median(rates)}))
        return
    import torchattacks

    wrapped = LogitsOnly(model.to(device)).eval()
    x, y = x.to(device), y.to(device)
    if args.what == "fgsm":
        attack = torchattacks.FGSM(wrapped, eps=args.eps)
    else:
        attack = torchattacks.PGD(wrapped, eps=args.eps, alpha=2.5 * args.eps / 40, steps=40, random_start=True)
    synchronize(device)
    start = time.perf_counter()
    adversarial = torch.cat([attack(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, len(x), args.batch)])
    synchronize(device)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        clean = wrapped(x).argmax(1)
        adv = wrapped(adversarial).argmax(1)
    correct = clean == y
    success = ((adv != y) & correct).sum().item() / max(correct.sum().item(), 1)
    print(json.dumps({"images_per_second": len(x) / seconds, "success_rate_on_correct": success,
                      "correct": correct.sum().item(), "fooled": ((adv != y) & correct).sum().item()}))


if __name__ == "__main__":
    main()
