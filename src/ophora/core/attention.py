"""CogVideoX attention with a choice of kernel: FlashAttention-3 or -4 on Hopper when present, else PyTorch SDPA.

diffusers' CogVideoX processors call `scaled_dot_product_attention` directly, so the kernel cannot be swapped
from outside. `CogVideoXAttention` is the same computation (text and video tokens attend jointly, LayerNorm
on queries and keys, RoPE on the video tokens only, one output projection) in the token-major layout
(batch, tokens, heads, head_dim) that FlashAttention takes without transposes, calling one of:

- ``sdpa``: `torch.nn.functional.scaled_dot_product_attention` (cuDNN on Hopper, the stock path's kernel);
- ``fa3``: FlashAttention-3's forward from the ``fa3-fwd`` package (`fa3_fwd_interface`), SM90 only, bf16;
- ``fp8``: the same FA3 kernel with FP8 (e4m3) operands, per-(sample, head) scales and keys centred over
  the tokens first (softmax is unchanged by that, and the centred keys quantize better). Inexact: opt-in;
- ``fa4``: FlashAttention-4 from the ``flash-attn-4`` package (CuTe DSL, SM90 and SM100), forward and
  backward, as custom ops (core/fa4.py); exact (bf16/fp16 rounding only).

`choose_kernel("auto", device)` picks, for sampling, fa3 where it imports and the GPU is SM90, else sdpa; for
training (`training=True`: kernels with a backward only) fa4 where it runs, else sdpa. It says which in one
log line; a requested kernel that cannot run falls back to sdpa (with the reason in that line).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ophora.core.fa4 import fa4_attention, fa4_interface

log = logging.getLogger(__name__)

KERNELS = ("sdpa", "fa3", "fp8", "fa4")
CHOICES = ("auto", *KERNELS)
TRAIN_CHOICES = ("auto", "sdpa", "fa4")  # the kernels with a backward
EXACT = ("sdpa", "fa3", "fa4")
FP8_MAX = 448.0  # largest finite float8_e4m3fn


_FA3: dict = {}  # a plain dict, not lru_cache: torch.compile traces through the lookup without a graph break


def _fa3_forward():
    """FlashAttention-3's forward op, or the reason it cannot be had (a string)."""
    if "op" not in _FA3:
        try:
            import fa3_fwd_interface

            _FA3["op"] = fa3_fwd_interface._flash_attn_forward
        except Exception as exc:  # ImportError, or an OSError/RuntimeError from a .so built for another torch
            first = str(exc).splitlines()[0] if str(exc) else ""
            _FA3["op"] = f"fa3-fwd not importable ({type(exc).__name__}: {first})"
    return _FA3["op"]


def fa3_unavailable(device: str | torch.device) -> str | None:
    """Why FlashAttention-3 cannot run on `device` (None when it can)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "not a CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        return f"GPU is SM{major}{minor}, FlashAttention-3 needs SM90 (Hopper)"
    op = _fa3_forward()
    return op if isinstance(op, str) else None


def fa4_unavailable(device: str | torch.device) -> str | None:
    """Why FlashAttention-4 cannot run on `device` (None when it can)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "not a CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) not in ((9, 0), (10, 0)):
        return f"GPU is SM{major}{minor}, this FlashAttention-4 build is for SM90 (Hopper) and SM100 (Blackwell)"
    interface = fa4_interface()
    return interface if isinstance(interface, str) else None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def choose_kernel(requested: str, device: str | torch.device, dtype: torch.dtype = torch.bfloat16,
                  announce: bool = True, training: bool = False) -> str:
    """The kernel to use for `requested` on `device` for attention in `dtype` (the model's, or in training the
    autocast dtype), with one log line naming it. Sampling takes 'auto', 'sdpa', 'fa3', 'fp8' or 'fa4' (auto:
    fa3, else sdpa); training (`training`) 'auto', 'sdpa' or 'fa4' (auto: fa4, else sdpa)."""
    allowed = TRAIN_CHOICES if training else CHOICES
    if requested not in allowed:
        raise ValueError(f"attention must be one of {', '.join(allowed)}, got {requested!r}")
    if requested == "sdpa":
        kernel, missing, why = "sdpa", None, "requested"
    elif requested == "fa4" or training:
        kernel, missing = "fa4", fa4_unavailable(device)
        if missing is None and dtype not in (torch.bfloat16, torch.float16):
            missing = f"FlashAttention-4 runs bf16 or fp16, the attention is {_dtype_name(dtype)}"
        why = "FlashAttention-4 (flash-attn-4, CuTe DSL) forward and backward"
    else:
        kernel, missing = ("fa3" if requested in ("auto", "fa3") else "fp8"), fa3_unavailable(device)
        if missing is None and dtype != torch.bfloat16:
            missing = f"the fa3-fwd build runs bf16 only, the model is {_dtype_name(dtype)}"
        why = "FlashAttention-3 (fa3-fwd) on SM90" + (", FP8 operands with per-head scales (inexact)"
                                                     if kernel == "fp8" else "")
    if missing is not None:
        kernel = "sdpa"
        why = missing if requested == "auto" else f"{requested} requested, {missing}; falling back to the exact default"
    if announce:
        log.info("attention kernel: %s (%s)", kernel, why)
    return kernel


def rope(x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary embedding of `x` (batch, tokens, heads, head_dim) with (cos, sin) of shape (tokens, head_dim).

    The same arithmetic as diffusers' `apply_rotary_emb(use_real=True, use_real_unbind_dim=-1)`: pairs
    (x0, x1) rotate to (x0 cos - x1 sin, x1 cos + x0 sin), computed in fp32.
    """
    cos, sin = (f.to(x.device)[None, :, None, :] for f in freqs)
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(-2)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def _sdpa(q, k, v, scale, mask=None):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale)
    return out.transpose(1, 2)


def _fa3(q, k, v, scale):
    return _fa3_forward()(q, k, v, softmax_scale=scale, causal=False)[0]


def _fa4(q, k, v, scale):
    # under autocast the LayerNorms leave q and k in fp32 and v comes from a linear in the autocast dtype;
    # autocast does not reach custom ops, so cast here as SDPA's autocast rule does
    return fa4_attention(q.to(v.dtype), k.to(v.dtype), v, scale)


def _fp8_cast(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` (batch, tokens, heads, dim) as e4m3 with one scale per (batch, head); returns (x8, descale)."""
    amax = x.abs().amax(dim=(1, 3)).float().clamp(min=1e-6)  # (batch, heads)
    scale = FP8_MAX / amax
    x8 = (x.float() * scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return x8, (1.0 / scale).contiguous()


def _fp8(q, k, v, scale):
    k = k - k.mean(dim=1, keepdim=True)  # q.(k - m) = q.k - q.m: a per-query constant, which softmax ignores
    (q8, qd), (k8, kd), (v8, vd) = _fp8_cast(q), _fp8_cast(k), _fp8_cast(v)
    out = _fa3_forward()(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd, softmax_scale=scale, causal=False)[0]
    return out.to(q.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str = "sdpa",
              scale: float | None = None) -> torch.Tensor:
    """Full (non-causal) attention of (batch, tokens, heads, head_dim) tensors, output in the same layout."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if kernel == "fa3":
        return _fa3(q, k, v, scale)
    if kernel == "fp8":
        return _fp8(q, k, v, scale)
    if kernel == "fa4":
        return _fa4(q, k, v, scale)
    return _sdpa(q, k, v, scale)


class CogVideoXAttention:
    """Attention processor for diffusers' CogVideoX blocks (fused or separate q/k/v projections, LoRA-wrapped
    projections too), computing what `CogVideoXAttnProcessor2_0` computes with `kernel`'s attention."""

    def __init__(self, kernel: str = "sdpa"):
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.kernel = kernel

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        text_len = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch, tokens, _ = x.shape
        if getattr(attn, "fused_projections", False) and getattr(attn, "to_qkv", None) is not None:
            q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        heads = attn.heads
        head_dim = k.shape[-1] // heads
        q, k, v = (t.view(batch, tokens, heads, head_dim) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            q = torch.cat([q[:, :text_len], rope(q[:, text_len:], image_rotary_emb)], dim=1)
            if not attn.is_cross_attention:
                k = torch.cat([k[:, :text_len], rope(k[:, text_len:], image_rotary_emb)], dim=1)
        if attention_mask is not None:  # CogVideoX passes none; kept for completeness, on the SDPA path
            mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
            out = _sdpa(q, k, v, attn.scale, mask.view(batch, heads, -1, mask.shape[-1]))
        else:
            out = attention(q, k, v, self.kernel, attn.scale)
        out = attn.to_out[1](attn.to_out[0](out.reshape(batch, tokens, heads * head_dim)))
        encoder_out, video_out = out.split([text_len, tokens - text_len], dim=1)
        return video_out, encoder_out


def use_attention(transformer, requested: str = "auto", device: str | torch.device | None = None) -> str:
    """Install `CogVideoXAttention` with the kernel chosen for `requested` on every attention layer of a
    CogVideoX transformer (after any `fuse_qkv_projections`); returns the kernel's name."""
    weight = next(transformer.parameters())
    kernel = choose_kernel(requested, device if device is not None else weight.device, weight.dtype)
    transformer.set_attn_processor(CogVideoXAttention(kernel))
    return kernel
