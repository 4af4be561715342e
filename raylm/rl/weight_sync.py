"""Weights from the learner to the rollout engines, in memory: safetensors bytes in, in-place reload out.

    blob = pack(model, "bfloat16")                       # the learner: HF names, rl.sync_dtype, as bytes
    llm = vllm.LLM(path, worker_extension_cls="raylm.rl.weight_sync.WeightSync")
    llm.collective_rpc("raylm_load_weights", args=(blob,))   # every vLLM worker reloads in place

The learner pushes the blob itself (Learner.push_weights: one ray.put, then
every rollout actor's `load_weights`), so it never passes through the driver.
Bytes, because raw tensors sent to vLLM's worker processes arrive mangled; and
`model_runner.reload_weights` rather than `model.load_weights`, because on CPU
vLLM repacks weights after loading and only the reload path repeats that.
A blob in bf16 is half the bytes of fp32; the engines copy it into their own
parameters, which casts it to their dtype (fp32 on CPU, bf16 for vLLM on a GPU).
No checkpoint is written to disk.
"""

from __future__ import annotations

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def pack(model: torch.nn.Module, dtype: str = "float32") -> bytes:
    """The model's weights as an HF-named safetensors blob (what raylm/model/hf.py would write to disk), in
    `dtype` ("float32" or "bfloat16")."""
    from raylm.model.hf import state_dict_for_export

    return save_bytes(state_dict_for_export(model, DTYPES[dtype]))


def unpack(blob: bytes) -> dict[str, torch.Tensor]:
    return load_bytes(blob)


class WeightSync:
    """Mixed into vLLM's worker class by `worker_extension_cls`; called through `LLM.collective_rpc`."""

    def raylm_load_weights(self, blob: bytes) -> int:
        # vLLM's weight loaders copy_ each tensor into its parameter: a bf16 blob is upcast there on CPU
        weights = load_bytes(blob)
        self.model_runner.reload_weights(weights_iterator=iter(weights.items()))
        return len(weights)
