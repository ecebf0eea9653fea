"""Weight-free frame statistics: SSIM, PSNR and flicker between consecutive frames, and SSIM between videos.

SSIM is Wang et al.'s (2004) on the luma (BT.601) in grey levels: an 11x11 Gaussian window of sigma 1.5,
K1 = 0.01, K2 = 0.03, L = 255, averaged over the window positions that fit inside the frame. PSNR is over
RGB, 10 log10(255^2 / MSE), at most 100 dB (identical frames). Flicker is the mean absolute change of a
frame's mean luma from one frame to the next, in grey levels: global brightness pumping that SSIM of
neighbouring frames barely registers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MAX_PSNR = 100.0
_WINDOW = 11
_SIGMA = 1.5


def luma(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, H, W) float32 luma in grey levels."""
    f = frames.astype(np.float32)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def _kernel(device) -> torch.Tensor:
    x = torch.arange(_WINDOW, dtype=torch.float64) - (_WINDOW - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * _SIGMA ** 2))
    return (g / g.sum()).to(device)


def ssim_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of each pair of grey images (N, H, W) in grey levels; frames smaller than the window score by
    their whole area."""
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))[:, None]
    y = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float64))[:, None]
    if min(x.shape[-2:]) < _WINDOW:
        x = F.interpolate(x, size=(_WINDOW, _WINDOW), mode="bilinear", align_corners=False)
        y = F.interpolate(y, size=(_WINDOW, _WINDOW), mode="bilinear", align_corners=False)
    g = _kernel(x.device)

    def blur(t):
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return ssim.mean(dim=(1, 2, 3)).numpy()


def psnr_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        psnr = 10 * np.log10(255.0 ** 2 / mse)
    return np.minimum(psnr, MAX_PSNR)


def temporal_stats(frames: np.ndarray, chunk: int = 16) -> dict[str, float]:
    """Mean SSIM and PSNR between consecutive frames, and flicker, of uint8 RGB frames (N, H, W, 3)."""
    if len(frames) < 2:
        return {"ssim": float("nan"), "psnr": float("nan"), "flicker": float("nan"), "pairs": 0}
    grey = luma(frames)
    ssim, psnr = [], []
    for start in range(0, len(frames) - 1, chunk):
        stop = min(start + chunk, len(frames) - 1)
        ssim.append(ssim_pairs(grey[start:stop], grey[start + 1:stop + 1]))
        psnr.append(psnr_pairs(frames[start:stop], frames[start + 1:stop + 1]))
    means = grey.reshape(len(grey), -1).mean(axis=1)
    return {"ssim": float(np.concatenate(ssim).mean()), "psnr": float(np.concatenate(psnr).mean()),
            "flicker": float(np.abs(np.diff(means)).mean()), "pairs": len(frames) - 1}
