#!/usr/bin/env python3
"""The pathguard decoupled CNN in PyTorch, loading a pathguard checkpoint directory
(config.json + model.safetensors) by tensor name: pathguard models open in PyTorch.

    python pathguard_ref.py MODEL_DIR IMAGES.npy OUT_DIR

writes OUT_DIR/logits.npy (float32 [N, classes]) and OUT_DIR/path.npy (uint8 [N, gates]) of
an eval-mode forward pass. Only torch and numpy are needed (the safetensors format is read
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
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool_after = layer["pool_after"]
        self.acm = None
        if layer["gated"]:
            hidden = layer.get("acm_hidden") or max(c_in // reduction, 1)
            self.acm = ControlModule(c_in, c_out, hidden, classes)


class DecoupledCNN(nn.Module):
    def __init__(self, architecture):
        super().__init__()
        blocks, c_in = [], architecture["in_channels"]
        for layer in architecture["layers"]:
            blocks.append(Block(c_in, layer, architecture["acm_reduction"], architecture["num_classes"]))
            c_in = layer["out_channels"]
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(c_in, architecture["num_classes"])

    def forward(self, x, hard=True):
        """Logits and the path (gates of each gated layer). Eval-mode gates are 1[logit > 0]."""
        gates, h = [], x
        for block in self.blocks:
            out = F.relu(block.bn(block.conv(h)))
            if block.acm is not None:
                logits = block.acm(h)
                z = (logits > 0).to(out.dtype) if hard else torch.sigmoid(logits)
                gates.append(z)
                out = out * z[:, :, None, None]
            h = F.max_pool2d(out, 2) if block.pool_after else out
        return self.classifier(h.mean(dim=(2, 3))), gates

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


if __name__ == "__main__":
    main()
