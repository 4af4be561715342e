"""Weights from the learner to the rollout engines, in memory: safetensors bytes in, in-place reload out.

    blob = pack(model)                                   # the learner: HF names, fp32, as bytes
    llm = vllm.LLM(path, worker_extension_cls="raylm.rl.weight_sync.WeightSync")
    llm.collective_rpc("raylm_load_weights", args=(blob,))   # every vLLM worker reloads in place

Bytes, because raw tensors sent to vLLM's worker processes arrive mangled; and
`model_runner.reload_weights` rather than `model.load_weights`, because on CPU
vLLM repacks weights after loading and only the reload path repeats that.
No checkpoint is written to disk.
"""

from __future__ import annotations

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes


def pack(model: torch.nn.Module) -> bytes:
    """The model's weights as an HF-named safetensors blob (what raylm/model/hf.py would write to disk)."""
    from raylm.model.hf import state_dict_for_export

    return save_bytes(state_dict_for_export(model))


def unpack(blob: bytes) -> dict[str, torch.Tensor]:
    return load_bytes(blob)


class WeightSync:
    """Mixed into vLLM's worker class by `worker_extension_cls`; called through `LLM.collective_rpc`."""

    def raylm_load_weights(self, blob: bytes) -> int:
        weights = load_bytes(blob)
        self.model_runner.reload_weights(weights_iterator=iter(weights.items()))
        return len(weights)
