"""Model FLOPs utilisation: the card's dense bf16 peak, looked up by name, and MFU in two conventions.

    peak = peak_bf16_flops(torch.cuda.get_device_name())     # NaN for a card not in the table
    mfu(tokens_per_s, model, seq_len, world, peak)            # {"mfu": ..., "mfu_all_params": ...}

Two conventions are in use and differ by 10-25% on small models, so both are reported:
`mfu` counts 6 x non-embedding parameters (the lm_head is a matmul and counts) plus the
attention scores, 12 x layers x dim x seq_len (PaLM, appendix B): raylm's figure.
`mfu_all_params` counts 6 x all parameters plus the same attention term: how nanoGPT-style
references count (the figure the issue-15 reference quotes). Neither counts recomputation.
"""

from __future__ import annotations

# Dense bf16 tensor-core peaks from the vendors' datasheets (no sparsity). The first name that
# appears in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_DENSE = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),    # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),    # GH200 too
    ("A100", 312e12),
    ("L40S", 362e12),
]


def peak_bf16_flops(device_name: str) -> float:
    """The card's dense bf16 peak in FLOP/s; NaN where the card is unknown (an MFU of NaN, not a wrong one)."""
    return next((peak for name, peak in PEAK_BF16_DENSE if name in device_name), float("nan"))


def mfu(tokens_per_s: float, model, seq_len: int, world: int, peak: float) -> dict[str, float]:
    """Both MFU conventions for `tokens_per_s` summed over `world` cards of `peak` FLOP/s each."""
    return {"mfu": tokens_per_s * model.flops_per_token(seq_len) / (peak * world),
            "mfu_all_params": tokens_per_s * model.flops_per_token(seq_len, non_embedding=False) / (peak * world)}
