"""FlashAttention-4 (the ``flash-attn-4`` package: CuTe DSL kernels, SM90/SM100) as two PyTorch custom ops.

FA4's `flash_attn_func` is a `torch.autograd.Function` that JIT-compiles and launches CuTe DSL kernels, which
dynamo cannot trace: a compiled block would break its graph there, and selective checkpointing could not name
its output. Here FA4's forward and backward are custom ops with fake (shape-only) implementations, joined by
`register_autograd`, so a compiled block sees one opaque op and train/blocks.py can keep its outputs:

- ``ophora::fa4_fwd(q, k, v, scale) -> (out, lse)``: q, k, v (batch, tokens, heads, head_dim) in bf16 or fp16,
  out in their layout and dtype, lse (batch, heads, tokens) fp32;
- ``ophora::fa4_bwd(dout, q, k, v, out, lse, scale) -> (dq, dk, dv)``.

Both call the package's `_flash_attn_fwd` / `_flash_attn_bwd` as its `FlashAttnFunc` does for full
(non-causal) attention without softcap, window, sink or score modifiers. The package is imported on the first
call, not with this module, so the ops (and their fake implementations) exist without it.
"""

import torch  # no `from __future__ import annotations`: custom_op reads the annotations as its schema

_FA4: dict = {}  # a plain dict, not lru_cache: torch.compile traces through the lookup without a graph break


def fa4_interface():
    """flash_attn.cute's interface module, or the reason it cannot be had (a string)."""
    if "interface" not in _FA4:
        try:
            from flash_attn.cute import interface

            _FA4["interface"] = interface
        except Exception as exc:  # noqa: BLE001 (ImportError, or an OSError/RuntimeError from the CuTe DSL libraries)
            first = str(exc).splitlines()[0] if str(exc) else ""
            _FA4["interface"] = f"flash-attn-4 not importable ({type(exc).__name__}: {first})"
    return _FA4["interface"]


def _interface():
    interface = fa4_interface()
    if hasattr(interface, "_flash_attn_fwd"):
        return interface
    raise RuntimeError(f"FlashAttention-4 cannot run: {interface}")


@torch.library.custom_op("ophora::fa4_fwd", mutates_args=())
def fa4_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FA4's forward: (out, lse); lse is always computed (the backward needs it)."""
    out, lse, *_ = _interface()._flash_attn_fwd(q.contiguous(), k.contiguous(), v.contiguous(),
                                                   softmax_scale=scale, causal=False, return_lse=True)
    return out, lse


@fa4_forward.register_fake
def _(q, k, v, scale):
    batch, tokens, heads, _ = q.shape
    return q.new_empty((batch, tokens, heads, v.shape[-1])), q.new_empty((batch, heads, tokens), dtype=torch.float32)


@torch.library.custom_op("ophora::fa4_bwd", mutates_args=())
def fa4_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FA4's backward: (dq, dk, dv) in the layouts of q, k, v."""
    dq, dk, dv = _interface()._flash_attn_bwd(q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous(),
                                                 dout.contiguous(), lse.contiguous(), scale, False)
    return dq, dk, dv


@fa4_backward.register_fake
def _(dout, q, k, v, out, lse, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _save(ctx, inputs, output) -> None:
    q, k, v, ctx.scale = inputs
    ctx.save_for_backward(q, k, v, *output)


def _backward(ctx, dout, dlse):  # lse is not used downstream: its gradient is ignored
    q, k, v, out, lse = ctx.saved_tensors
    return (*fa4_backward(dout, q, k, v, out, lse, ctx.scale), None)


fa4_forward.register_autograd(_backward, setup_context=_save)
FA4_FORWARD = torch.ops.ophora.fa4_fwd.default  # the op selective checkpointing keeps (train/blocks.py)


def fa4_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Full attention of (batch, tokens, heads, head_dim) tensors with FA4, forward and backward."""
    return fa4_forward(q, k, v, scale)[0]
