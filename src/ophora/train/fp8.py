"""FP8 linears (`fp8_linears`): torchao's float8 training for the linear layers of the transformer's blocks.

Each converted layer runs its forward and both backward matmuls in float8 with dynamic per-tensor scales;
the weights stay fp32 master weights under the same parameter names, so checkpoints and exports are
unchanged. It needs torchao (an optional package, not a dependency of ophora) and an SM89+ GPU (Ada, Hopper
or newer); anywhere else the trainer runs the exact bf16 path and says why in one log line.
`benchmarks/train_curve.py` compares the loss curve of both paths on the real Cataract-1K clips.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def fp8_unavailable() -> str | None:
    """Why torchao's float8 training cannot run here (None when it can): it needs torchao and an SM89+ GPU."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if torch.cuda.get_device_capability() < (8, 9):
        major, minor = torch.cuda.get_device_capability()
        return f"float8 matmuls need an SM89+ GPU, this one is SM{major}{minor}"
    try:
        import torchao.float8  # noqa: F401
    except Exception as exc:  # noqa: BLE001 -- ImportError, or a torchao built for another torch
        detail = str(exc).splitlines()[0] if str(exc) else ""
        return f"torchao not importable ({type(exc).__name__}: {detail}); pip install torchao"
    return None


def fp8_eligible(module: torch.nn.Module, fqn: str) -> bool:
    """Whether the layer `fqn` trains in float8: the blocks' attention and feed-forward linears whose in and out
    features are multiples of 16 (float8 matmuls need that). The adaptive norms' linears (`norm1.linear`,
    `norm2.linear`) are left in bf16: they take the time embedding, one row per sample, too few for float8 to
    pay, and compiled, torch's scaled-matmul check rejects that one-row operand's layout (seen on the H200)."""
    return (fqn.startswith("transformer_blocks") and ".norm" not in fqn and isinstance(module, torch.nn.Linear)
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def to_fp8_linears(model: torch.nn.Module) -> int:
    """Convert the layers `fp8_eligible` picks to torchao's Float8Linear, in place; returns how many.

    `pad_inner_dim` pads a matmul's inner dimension to a multiple of 16 where it is not one: the weight-gradient
    matmul's inner dimension is the token count (text + video tokens), 4066 at 17x384x512 (seen on the H200:
    "Expected self.size(1) to be divisible by 16"); where it already is one (17776 at 49x480x720) nothing is padded."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    before = sum(type(m) is torch.nn.Linear for m in model.modules())
    convert_to_float8_training(model, config=Float8LinearConfig(pad_inner_dim=True), module_filter_fn=fp8_eligible)
    return before - sum(type(m) is torch.nn.Linear for m in model.modules())


def apply_fp8_linears(transformer: torch.nn.Module, wanted: bool) -> int:
    """`to_fp8_linears` when asked and possible, else nothing; one log line says which. Returns layers converted."""
    if not wanted:
        return 0
    missing = fp8_unavailable()
    if missing is not None:
        log.info("fp8_linears: off, running the bf16 path (%s)", missing)
        return 0
    count = to_fp8_linears(transformer)
    log.info("fp8_linears: on, %d linear layers of the transformer blocks train in float8 (torchao)", count)
    return count
