#!/usr/bin/env python3
"""The pathguard decoupled CNN in PyTorch, loading a pathguard checkpoint directory
(config.json + model.safetensors) by tensor name: pathguard models open in PyTorch.

    python pathguard_ref.py MODEL_DIR IMAGES.npy OUT_DIR [LABELS.npy]

writes OUT_DIR/logits.npy (float32 [N, classes]) and OUT_DIR/path.npy (uint8 [N, gates]) of
an eval-mode forward pass; with labels also OUT_DIR/losses.npy (float32 [4]: cross-entropy,
mutual information, alignment KL, sparsity) of that pass, the training losses on hard gates. Only torch and numpy are needed (the safetensors format is read
directly: an 8-byte header length, a JSON header, then the raw tensors).
"""

import json
import pathlib
import struct
import sys

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}


def load_safetensors(path):
    """name -> tensor, from a .safetensors file."""
    raw = pathlib.Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    body = raw[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        buffer = bytearray(body[start:end])
        tensors[name] = torch.frombuffer(buffer, dtype=DTYPES[info["dtype"]]).reshape(info["shape"]).clone()
    return tensors


def semantic_hashing(logits):
    """Improved semantic hashing: noisy logits; a random half of the entries take the hard 0/1
    value, the rest the saturated sigmoid; gradients flow as if soft everywhere."""
    noisy = logits + torch.randn_like(logits)
    soft = (torch.sigmoid(noisy) * 1.2 - 0.1).clamp(0.0, 1.0)
    hard = (noisy > 0).to(logits.dtype)
    value = torch.where(torch.rand_like(logits) < 0.5, hard, soft)
    return soft + (value - soft).detach()


def hard_gates(logits):
    return (logits > 0).to(logits.dtype)


def decoupling_loss(logits, gates, pooled, mi_logits, labels, mi=0.04, alignment=1.0, sparsity=2e-3, density=0.5):
    """(total, [CE, MI, KL, sparsity]) exactly as src/model/losses.rs computes them."""
    n = labels.shape[0]
    ce = F.cross_entropy(logits, labels)
    l_mi = sum(F.cross_entropy(m, labels) for m in mi_logits)
    l_kl = sum(F.kl_div(F.log_softmax(o, 1), F.softmax(z, 1), reduction="sum") / n for z, o in zip(gates, pooled))
    l_s = sum((z.sum(1).mean() - density * z.shape[1]).abs() for z in gates)
    return ce + mi * l_mi + alignment * l_kl + sparsity * l_s, [ce, l_mi, l_kl, l_s]


class ControlModule(nn.Module):
    """Gate logits = FC2(ReLU(FC1(GAP(layer input)))); the MI head is for training only."""

    def __init__(self, c_in, c_out, hidden, classes):
        super().__init__()
        self.fc1 = nn.Linear(c_in, hidden)
        self.fc2 = nn.Linear(hidden, c_out)
        self.mi_head = nn.Linear(c_out, classes, bias=False)

    def forward(self, layer_input):
        return self.fc2(F.relu(self.fc1(layer_input.mean(dim=(2, 3)))))


class Block(nn.Module):
    def __init__(self, c_in, layer, reduction, classes):
        super().__init__()
        c_out = layer["out_channels"]
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=layer.get("stride", 1), padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool_after = layer["pool_after"]
        # Closes the residual block that starts at this conv layer (None: a plain layer).
        self.residual_from = layer.get("residual_from")
        self.acm = None
        if layer["gated"]:
            hidden = layer.get("acm_hidden") or max(c_in // reduction, 1)
            self.acm = ControlModule(c_in, c_out, hidden, classes)


def shortcut(block_input, out):
    """ResNet's parameter-free shortcut (option A): the block input subsampled to the side of
    `out` and zero-padded, half on each side, to its channel count."""
    step = -(-block_input.shape[2] // out.shape[2])
    x = block_input[:, :, ::step, ::step]
    missing = out.shape[1] - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, missing // 2, missing - missing // 2))


class DecoupledCNN(nn.Module):
    def __init__(self, architecture):
        super().__init__()
        blocks, c_in = [], architecture["in_channels"]
        for layer in architecture["layers"]:
            blocks.append(Block(c_in, layer, architecture["acm_reduction"], architecture["num_classes"]))
            c_in = layer["out_channels"]
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(c_in, architecture["num_classes"])
        # Per-channel input standardisation, its statistics in the checkpoint (input_norm.*).
        self.input_norm = None
        if architecture.get("normalized_input"):
            self.input_norm = nn.Module()
            channels = architecture["in_channels"]
            self.input_norm.register_buffer("mean", torch.zeros(channels))
            self.input_norm.register_buffer("std", torch.ones(channels))

    def standardise(self, x):
        if self.input_norm is None:
            return x
        return (x - self.input_norm.mean[None, :, None, None]) / self.input_norm.std[None, :, None, None]

    def forward(self, x, hard=True):
        """Logits and the path (gates of each gated layer). Eval-mode gates are 1[logit > 0]."""
        gates, h, inputs = [], self.standardise(x), []
        for block in self.blocks:
            inputs.append(h)
            out = block.bn(block.conv(h))
            if block.residual_from is None:
                out = F.relu(out)
            if block.acm is not None:
                logits = block.acm(h)
                z = (logits > 0).to(out.dtype) if hard else torch.sigmoid(logits)
                gates.append(z)
                out = out * z[:, :, None, None]
            if block.residual_from is not None:
                out = F.relu(out + shortcut(inputs[block.residual_from], out))
            h = F.max_pool2d(out, 2) if block.pool_after else out
        return self.classifier(h.mean(dim=(2, 3))), gates

    def forward_with_heads(self, x, gate=semantic_hashing):
        """The pass the losses need: logits, gates, pooled pre-gate outputs and MI-head logits
        per gated layer. Training uses semantic-hashing gates (and, in train(), batch-statistics
        BatchNorm); `gate=hard_gates` on an eval() model is deterministic, for tests."""
        gates, pooled, mi_logits, h, inputs = [], [], [], self.standardise(x), []
        for block in self.blocks:
            inputs.append(h)
            out = block.bn(block.conv(h))
            if block.residual_from is None:
                out = F.relu(out)
            if block.acm is not None:
                z = gate(block.acm(h))
                gates.append(z)
                pooled.append(out.mean(dim=(2, 3)))
                mi_logits.append(block.acm.mi_head(z))
                out = out * z[:, :, None, None]
            if block.residual_from is not None:
                out = F.relu(out + shortcut(inputs[block.residual_from], out))
            h = F.max_pool2d(out, 2) if block.pool_after else out
        return self.classifier(h.mean(dim=(2, 3))), gates, pooled, mi_logits

    @classmethod
    def load(cls, model_dir):
        model_dir = pathlib.Path(model_dir)
        meta = json.loads((model_dir / "config.json").read_text())
        model = cls(meta["architecture"])
        state = load_safetensors(model_dir / meta["weights_file"])
        # tch names BatchNorm's buffers like PyTorch, but has no num_batches_tracked.
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match: missing {missing}, unexpected {unexpected}")
        return model.eval()


def main():
    model_dir, images_path, out_dir = sys.argv[1:4]
    torch.set_grad_enabled(False)
    model = DecoupledCNN.load(model_dir)
    images = torch.from_numpy(np.load(images_path).astype(np.float32))
    logits, gates = model(images)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "logits.npy", logits.numpy())
    np.save(out / "path.npy", torch.cat(gates, dim=1).to(torch.uint8).numpy())
    if len(sys.argv) > 4:
        labels = torch.from_numpy(np.load(sys.argv[4]).astype(np.int64))
        _, terms = decoupling_loss(*model.forward_with_heads(images, gate=hard_gates), labels)
        np.save(out / "losses.npy", np.array([t.item() for t in terms], dtype=np.float32))


if __name__ == "__main__":
    main()
