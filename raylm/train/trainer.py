"""Run the shared training loop on Ray Train (TorchTrainer, V2 API) and collect what it left behind.

    state = fit(loop_config, num_workers=2, use_gpu=False, max_failures=2,
                storage=storage, rel="tiny/ray_train", name="sft-<step digest>")
    state["model"], state["history"], state["metrics"]
    states = fit_states(..., loop=reward_loop, files=["proxy.pt", "watch.pt"])   # several files, one run

Ray Train keeps checkpoints in the run's storage (storage_path + storage_filesystem,
so every node writes and reads them there) under rel/name. The name carries the
step's digest (its config and every upstream step's), so the same step resumes from
its latest checkpoint (Ray Train V2 restores a run from its storage path and name)
and a changed one, or one whose data changed, starts from step 0.
FailureConfig(max_failures) restarts the worker group from the last checkpoint when
a worker dies. Pretraining and SFT call `fit`; the reward step (two models in one run)
calls `fit_states`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from raylm.config import GPTConfig
from raylm.model.gpt import GPT
from raylm.storage import Storage
from raylm.train.loop import CHECKPOINT_FILE, LoopConfig, train_loop


def fit(config: LoopConfig, num_workers: int, use_gpu: bool, max_failures: int, storage: Storage, rel: str,
        name: str, loop: Callable = train_loop) -> dict:
    """Train on `num_workers` Ray Train workers; return the final checkpoint's state (model, history, metrics).

    `loop` is the per-worker function (the shared LM loop by default); it must save CHECKPOINT_FILE in its
    checkpoints and take a config with a `train` section."""
    return fit_states(config, num_workers, use_gpu, max_failures, storage, rel, name, loop)[CHECKPOINT_FILE]


def fit_states(config, num_workers: int, use_gpu: bool, max_failures: int, storage: Storage, rel: str, name: str,
               loop: Callable = train_loop, files: tuple[str, ...] | list[str] = (CHECKPOINT_FILE,)) -> dict[str, dict]:
    """As `fit`, for a loop whose checkpoints hold several state files (the reward loop: one per model,
    written by different workers and merged by Ray Train): {file: state} of the final checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": config.train.cpus_per_worker,
                                                           **({"GPU": 1} if use_gpu else {})},
                                     placement_strategy=config.train.placement_strategy),
        run_config=RunConfig(name=name, storage_path=storage.path(rel), storage_filesystem=storage.fs,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             # NCCL_* settings reach the workers before their process group starts. Ray Train
                             # sends a worker's print() to its logger and, where Ray has wrapped stdout, to stdout
                             # too: every progress line reached the console twice. Plain print: once.
                             worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                                                              **config.train.nccl_env}}),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        missing = [f for f in files if not (Path(folder) / f).exists()]
        if missing:
            raise RuntimeError(f"the final checkpoint of Ray Train run {name!r} lacks {missing}")
        return {f: torch.load(Path(folder) / f, map_location="cpu", weights_only=True) for f in files}


def workers_line(cfg) -> str:
    """"2 Ray Train workers" or "1 Ray Train worker of 2 CPUs", for the log."""
    line = f"{cfg.num_workers} Ray Train worker{'s' if cfg.num_workers > 1 else ''}"
    return line + (f" of {cfg.cpus_per_worker} CPUs" if cfg.cpus_per_worker > 1 else "")


def model_from_state(state: dict) -> GPT:
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model


def plot_losses(history: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([m["step"] for m in history], [m["loss"] for m in history], label="train loss", lw=1)
    evals = [m for m in history if "val_loss" in m]
    ax.plot([m["step"] for m in evals], [m["val_loss"] for m in evals], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
