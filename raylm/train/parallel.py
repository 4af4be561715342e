"""Data parallelism for the training loop, DDP or FSDP2, and the checkpoints that go with each.

    wrapped = wrap(model, "fsdp", device, world, bf16=True)    # model sharded in place; forward through `wrapped`
    save_checkpoint(folder, model, optimizer, "fsdp", rank, meta, full_model=full)   # every rank calls it
    restore_checkpoint(folder, model, optimizer, "fsdp")        # after wrap and optimizer construction
    full = full_model_state(model, "fsdp")                      # every rank calls; the whole model on rank 0

DDP keeps a whole copy of parameters, gradients and AdamW state on every rank (about
16-20 bytes per parameter: ~3B parameters fill an 80 GB card). FSDP2 (`fully_shard`,
one group per transformer block plus the root) keeps 1/world of each and gathers a
block's parameters just before it runs; on GPU the parameters are gathered in bf16 and
gradients reduced in fp32. On CPU (gloo) both run in fp32, so the two give the same
loss curve, which tests/train/test_parallel.py checks.

Checkpoints: DDP's is one `torch.save` from rank 0 (CHECKPOINT_FILE: model, optimizer,
step, history). FSDP's is sharded with torch.distributed.checkpoint: every rank writes its
own shards into SHARDED_DIR of its checkpoint folder (Ray Train merges the ranks' folders in
storage) and rank 0 writes CHECKPOINT_FILE with the step and history, plus the whole model
in the final checkpoint for the HF export. DCP reshards on load, so a run resumes on
another worker count. Nothing here imports Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

CHECKPOINT_FILE = "train_state.pt"
SHARDED_DIR = "sharded"

Parallelism = Literal["ddp", "fsdp"]


def wrap(model: torch.nn.Module, parallelism: Parallelism, device: torch.device, world: int,
         bf16: bool = False) -> torch.nn.Module:
    """The module to call forward on: DDP around `model` (world > 1), or `model` itself sharded in place."""
    if parallelism == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not torch.distributed.is_initialized():
            raise RuntimeError("train.parallelism fsdp needs a process group (Ray Train's workers have one)")
        mesh = init_device_mesh(device.type, (world,))
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
                  else MixedPrecisionPolicy())
        for block in model.model.layers:  # a block's parameters are gathered just before it runs
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)  # the rest: embeddings, final norm, lm_head
        return model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def grad_norm_tensor(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s total norm as a plain tensor (FSDP2 returns a replicated DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def full_model_state(model: torch.nn.Module, parallelism: Parallelism) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU; under FSDP every rank must call this, and only rank 0 gets it."""
    if parallelism != "fsdp":
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer, parallelism: Parallelism, rank: int,
                    meta: dict, full_model: dict | None = None) -> None:
    """Write this rank's part of a checkpoint into `folder` (every rank calls it)."""
    if parallelism != "fsdp":
        if rank == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **meta},
                       folder / CHECKPOINT_FILE)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder / SHARDED_DIR))
    if rank == 0:
        torch.save({**meta, **({"model": full_model} if full_model else {})}, folder / CHECKPOINT_FILE)


def load_meta(folder: Path) -> dict:
    return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def restore_checkpoint(folder: Path, state: dict, model: torch.nn.Module, optimizer,
                       parallelism: Parallelism) -> None:
    """Load model and optimizer from a checkpoint written by save_checkpoint with the same parallelism."""
    sharded = Path(folder) / SHARDED_DIR
    if (parallelism == "fsdp") != sharded.is_dir():
        saved = "fsdp (sharded)" if sharded.is_dir() else "ddp (one file)"
        raise ValueError(f"the checkpoint in {folder} was written with {saved}, this run uses {parallelism}: "
                         f"start a new run to change train.parallelism")
    if parallelism != "fsdp":
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    # get_state_dict allocates the optimizer's state (this rank's shards), which DCP then fills in
    # from whichever ranks wrote it: the world size may differ from the one that saved
    model_state, optimizer_state = get_state_dict(model, optimizer)
    target = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(target, checkpoint_id=str(sharded))
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"])
