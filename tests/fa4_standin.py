"""A CPU stand-in for flash-attn-4's `_flash_attn_fwd` / `_flash_attn_bwd` (plain attention math, any dtype), so
the custom ops of ophora.core.fa4 (autograd, compile, selective checkpointing, the trainer) run without a GPU;
conftest.py's `with_fake_fa4` fixture puts it in place."""

from __future__ import annotations

import types

import torch


def _probs(q, k, scale, lse=None):
    """Softmax probabilities (batch, heads, q tokens, k tokens) in fp32, and the log-sum-exp (batch, heads, q)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    lse = torch.logsumexp(scores, -1) if lse is None else lse
    return torch.exp(scores - lse[..., None]), lse


def flash_attn_fwd(q, k, v, softmax_scale=None, causal=False, return_lse=False, **kwargs):
    p, lse = _probs(q, k, softmax_scale)
    return torch.einsum("bhqk,bkhd->bqhd", p, v.float()).to(q.dtype), lse, None, None, None


def flash_attn_bwd(q, k, v, out, dout, lse, softmax_scale=None, causal=False, *args, **kwargs):
    p, _ = _probs(q, k, softmax_scale, lse)
    dout32 = dout.float()
    dv = torch.einsum("bhqk,bqhd->bkhd", p, dout32)
    dp = torch.einsum("bqhd,bkhd->bhqk", dout32, v.float())
    delta = (dout32 * out.float()).sum(-1).transpose(1, 2)  # (batch, heads, q)
    ds = p * (dp - delta[..., None]) * softmax_scale
    dq = torch.einsum("bhqk,bkhd->bqhd", ds, k.float())
    dk = torch.einsum("bhqk,bqhd->bkhd", ds, q.float())
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


STANDIN = types.SimpleNamespace(_flash_attn_fwd=flash_attn_fwd, _flash_attn_bwd=flash_attn_bwd)

