"""CLIPScore: 100 * max(cos(frame, prompt), 0) per frame, averaged over a video's frames, then over videos.

The model is a CLIP in the transformers layout (`CLIPModel` + its processor), from a local folder or a hub
id already in the local cache: nothing is downloaded and no remote code runs. Frames go through the
model's own image processor (resize, centre crop, normalisation) exactly as torchmetrics' `CLIPScore`
passes them; prompts are tokenised with padding and cut to the model's context length.

torchmetrics clamps once, after averaging all pairs (max(mean(100 cos), 0)); the paper's definition, used
here, clamps every frame before averaging. The two agree whenever no frame scores below zero.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ophora.core.errors import ModelError

CLIP_HINT = ("CLIPScore needs a CLIP model in the transformers layout, e.g. openai/clip-vit-large-patch14 "
             "(https://huggingface.co/openai/clip-vit-large-patch14, torchmetrics' default); pass --clip-model "
             "PATH_OR_ID")


class ClipScorer:
    """A CLIP model and its processor on one device."""

    def __init__(self, name: str, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.name = name
        folder = Path(name).expanduser()
        source = str(folder) if folder.exists() else name
        if folder.exists() and not (folder / "config.json").is_file():
            raise ModelError(f"--clip-model {name}: the folder has no config.json (not a transformers model)")
        try:
            self.model = CLIPModel.from_pretrained(source, local_files_only=True).eval().requires_grad_(False)
            self.processor = CLIPProcessor.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            where = "the folder" if folder.exists() else "the local hub cache (nothing is downloaded)"
            raise ModelError(f"--clip-model {name}: no CLIP model and processor in {where} "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
        self.model.to(device)
        self.device = device
        self.max_tokens = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        self.files = self._weight_files(source)

    @staticmethod
    def _weight_files(source: str) -> dict[str, str]:
        """sha256 of the model's weight files (a hub id resolves to its cached snapshot)."""
        folder = Path(source)
        if not folder.is_dir():
            try:
                from huggingface_hub import snapshot_download

                folder = Path(snapshot_download(source, local_files_only=True))
            except Exception:  # noqa: BLE001 - the record then names the model only
                return {}
        out = {}
        for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            out[path.name] = digest.hexdigest()
        return out

    @staticmethod
    def _tensor(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        tokens = self.processor(text=[prompt], return_tensors="pt", padding=True, truncation=True,
                                max_length=self.max_tokens)
        out = self._tensor(self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                        attention_mask=tokens["attention_mask"].to(self.device)))
        return out / out.norm(p=2, dim=-1, keepdim=True)

    @torch.no_grad()
    def frame_scores(self, frames: np.ndarray, prompt: str, batch_size: int = 32) -> np.ndarray:
        """100 * cos(frame, prompt) for uint8 RGB frames (N, H, W, 3), before clamping."""
        text = self.text_embedding(prompt)
        scores = []
        for start in range(0, len(frames), batch_size):
            images = [torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1) for f in frames[start:start + batch_size]]
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
            image = self._tensor(self.model.get_image_features(pixel_values=pixels))
            image = image / image.norm(p=2, dim=-1, keepdim=True)
            scores.append((100 * (image * text).sum(dim=-1)).double().cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0)


def video_clipscore(frame_scores: np.ndarray) -> float:
    """The paper's per-video CLIPScore: the mean over frames of max(score, 0)."""
    return float(np.maximum(np.asarray(frame_scores, np.float64), 0.0).mean())
