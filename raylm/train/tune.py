"""`raylm sweep`: Ray Tune with ASHA over learning rate and batch size on any preset.

Each trial runs the shared training loop (raylm/train/loop.py) in one Ray Tune
worker process (one CPU, or one GPU with pretrain.use_gpu), reporting training
loss every step; ASHA stops the trials that trail at its rungs. Trials stop early
but never finish wrong: a surviving trial runs the full schedule.

    raylm sweep -o pretrain.steps=120 --lrs 1e-3,3e-3,1e-2 --batch-sizes 8,16
"""

from __future__ import annotations

import torch

from raylm.config import PretrainConfig
from raylm.runs import StepResult
from raylm.train.loop import LoopConfig, build, run
from raylm.train.pretrain import loop_config


def _trial(params: dict, base: LoopConfig) -> None:
    from ray import tune

    config = base.model_copy(update={"train": base.train.model_copy(update=params)})
    torch.set_num_threads(1)
    device = torch.device("cuda" if config.train.use_gpu and torch.cuda.is_available() else "cpu")
    model, wrapped, optimizer, start, _ = build(config, device)
    run(config, model, wrapped, optimizer, start, 0, 1, device,
        lambda metrics, step, save, full=None: tune.report(metrics))


def run_sweep(cfg: PretrainConfig, tokenizer: StepResult, tune_rel: str, lrs: list[float],
              batch_sizes: list[int]) -> dict:
    """Trials keep their results in the run's storage under `tune_rel`."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    base = loop_config(cfg.model_copy(update={"sample_every": 0, "checkpoint_every": cfg.steps,
                                              "eval_every": cfg.steps}), tokenizer)
    storage = tokenizer.storage
    grace = max(1, cfg.steps // 8)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, base=base),
                            {"gpu": 1} if cfg.use_gpu else {"cpu": 1}),
        param_space={"lr": tune.grid_search(lrs), "batch_size": tune.grid_search(batch_sizes)},
        tune_config=tune.TuneConfig(metric="loss", mode="min",
                                    scheduler=ASHAScheduler(time_attr="step", max_t=cfg.steps,
                                                            grace_period=grace, reduction_factor=2)),
        run_config=tune.RunConfig(name="sweep", storage_path=storage.path(tune_rel),
                                  storage_filesystem=storage.fs, verbose=1),
    )
    results = tuner.fit()
    rows = []
    for result in results:
        metrics = result.metrics or {}
        rows.append({**result.config, "steps": metrics.get("step"), "loss": metrics.get("loss"),
                     "val_loss": metrics.get("val_loss")})
    rows.sort(key=lambda r: (r["val_loss"] is None, r["val_loss"] or r["loss"] or float("inf")))
    print(f"[sweep] {'lr':>8} {'batch':>5} {'steps':>5} {'loss':>7} {'val_loss':>8}")
    for r in rows:
        val = f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "stopped"
        print(f"[sweep] {r['lr']:>8.0e} {r['batch_size']:>5} {r['steps']:>5} {r['loss']:>7.4f} {val:>8}")
    best = rows[0]
    print(f"[sweep] best: lr={best['lr']:g} batch_size={best['batch_size']} (val loss {best['val_loss']})")
    return {"trials": rows, "best": best}
