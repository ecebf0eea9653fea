"""Randomly initialised evaluation networks saved in the published file layouts, for tests and benchmarks.

Batch-norm statistics are calibrated on one random batch, so features stay in a sensible range through the
deep stacks (an untrained network with unit running statistics shrinks its signal layer by layer). The files
load through exactly the code paths real weights take; their metric values mean nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ophora.core.files import atomic_path
from ophora.evaluate.i3d import InceptionI3d
from ophora.evaluate.inception import FIDInception


@torch.no_grad()
def _calibrate(model: nn.Module, batch: torch.Tensor) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    model(batch)
    model.eval()
    for m in norms:
        m.momentum = 0.1


def write_random_inception(path: str | Path, seed: int = 0) -> Path:
    """A random FID Inception saved like `pt_inception-2015-12-05-6726825d.pth` (a plain state dict)."""
    torch.manual_seed(seed)
    model = FIDInception()
    _calibrate(model, torch.rand(2, 3, 299, 299))
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return Path(path)


def write_random_i3d(path: str | Path, seed: int = 0, torchscript: bool = False) -> Path:
    """A random I3D saved like `i3d_pretrained_400.pt` (state dict), or as a TorchScript archive that is
    called like StyleGAN-V's `i3d_torchscript.pt` (`rescale`, `resize`, `return_features` arguments)."""
    torch.manual_seed(seed)
    model = InceptionI3d()
    _calibrate(model, torch.rand(1, 3, 16, 224, 224) * 2 - 1)
    with atomic_path(path) as tmp:
        if torchscript:
            torch.jit.save(torch.jit.script(_ScriptedI3D(model)), str(tmp))
        else:
            torch.save(model.state_dict(), tmp)
    return Path(path)


class _ScriptedI3D(nn.Module):
    def __init__(self, model: InceptionI3d):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False):
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = torch.nn.functional.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        logits = self.model(x)
        return logits if return_features else torch.softmax(logits, dim=1)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2 / CLIP)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_random_clip(folder: str | Path, seed: int = 0) -> Path:
    """A tiny random CLIP in the transformers layout (model, tokenizer and image processor), via save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("e", "r"), ("o", "n"), ("e", "n")]
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    torch.manual_seed(seed)
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=16)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder
