"""DDP and FSDP2 on Ray Train workers (gloo on CPU): the same loss curve, and a sharded checkpoint that
resumes on another worker count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raylm.config import GPTConfig, StorageConfig, TrainConfig
from raylm.storage import Storage
from raylm.tokenizer.shard_format import write_shard
from raylm.train.loop import LoopConfig, run_without_ray

VOCAB = 256


def synthetic_config(root, **train) -> LoopConfig:
    """Shards of a repeating pattern with noise: learnable in a few steps; no tokenizer, so no samples."""
    rng = np.random.default_rng(0)
    pattern = rng.integers(1, VOCAB, 97)
    for split, n in (("train", 40_000), ("val", 4_000)):
        tokens = np.resize(pattern, n)
        noise = rng.random(n) < 0.1
        tokens[noise] = rng.integers(1, VOCAB, noise.sum())
        write_shard(root / f"{split}.bin", tokens.astype(np.uint16))
    settings = dict(num_workers=2, steps=20, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, log_every=1,
                    eval_every=10, eval_batches=2, checkpoint_every=10, seed=0)
    return LoopConfig(step_name="parallel", train=TrainConfig(**{**settings, **train}),
                      model=GPTConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64),
                      storage=StorageConfig(uri=str(root)), data="shards", train_files=["train.bin"],
                      val_files=["val.bin"], tokenizer="", token_bytes=[1] * VOCAB)


def losses(state: dict) -> list[float]:
    return [m["loss"] for m in state["history"] if "tokens_per_s" in m]


def test_one_process_loop_learns_with_chunked_loss_and_recomputed_blocks(tmp_path):
    plain = run_without_ray(synthetic_config(tmp_path, steps=12))
    lean = run_without_ray(synthetic_config(tmp_path, steps=12, loss_chunk_tokens=40, activation_checkpointing=True))
    assert len(plain) == 12 and plain[-1]["loss"] < plain[0]["loss"] - 1
    # same arithmetic in another order: the curves agree to float32 rounding
    assert [m["loss"] for m in lean] == pytest.approx([m["loss"] for m in plain], rel=1e-4)


@pytest.mark.slow
def test_fsdp_matches_ddp_and_resumes_its_sharded_checkpoint_on_one_worker(ray_session, tmp_path):
    from raylm.train.trainer import fit

    storage = Storage(StorageConfig(uri=str(tmp_path)))
    ddp = fit(synthetic_config(tmp_path), 2, False, 0, storage, "ray_train", "ddp")
    fsdp = fit(synthetic_config(tmp_path, parallelism="fsdp"), 2, False, 0, storage, "ray_train", "fsdp")
    assert len(losses(ddp)) == len(losses(fsdp)) == 20
    assert losses(fsdp) == pytest.approx(losses(ddp), rel=1e-3)  # gloo fp32: reduce-scatter vs all-reduce order
    assert losses(ddp)[-1] < losses(ddp)[0] - 1
    assert fsdp["metrics"]["val_loss"] == pytest.approx(ddp["metrics"]["val_loss"], rel=1e-3)
    shards = sorted(p.name for p in (tmp_path / "ray_train" / "fsdp").glob("checkpoint_*/sharded/*.distcp"))
    assert {"__0_0.distcp", "__1_0.distcp"} <= set(shards)  # each rank wrote its own part
    assert set(fsdp["model"]) == set(ddp["model"])  # the final checkpoint holds the whole model for the export

    # the same run, continued on one worker: DCP reshards the two ranks' optimizer and model state
    resumed = fit(synthetic_config(tmp_path, parallelism="fsdp", steps=30, num_workers=1), 1, False, 0, storage,
                  "ray_train", "fsdp")
    after = [m for m in resumed["history"] if m["step"] > 20]
    assert resumed["step"] == 30 and after[0]["restored_from"] == 20
    assert after[0]["loss"] < losses(fsdp)[0] - 1  # it continued from the trained model, not from scratch
    assert after[0]["loss"] == pytest.approx(losses(fsdp)[-1], abs=0.5)
    assert not math.isnan(resumed["metrics"]["val_loss"])


@pytest.mark.slow
def test_one_worker_of_two_cpus_computes_what_two_ddp_workers_compute(ray_session, tmp_path):
    """The tiny preset's layout: one worker holding both cores (two torch threads), twice the batch."""
    from raylm.train.trainer import fit

    storage = Storage(StorageConfig(uri=str(tmp_path)))
    ddp = fit(synthetic_config(tmp_path, steps=10), 2, False, 0, storage, "ray_train", "ddp")
    one = fit(synthetic_config(tmp_path, steps=10, num_workers=1, cpus_per_worker=2, batch_size=8), 1, False, 0,
              storage, "ray_train", "one")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the worker's two threads, in this process
    try:
        plain = run_without_ray(synthetic_config(tmp_path, steps=10, num_workers=1, batch_size=8))
    finally:
        torch.set_num_threads(threads)
    # the same rows and the same mean: float32 rounding apart from DDP's all-reduce (which 10 steps at
    # lr 3e-3 grow to ~0.2% of the val loss)
    for key, value in ddp["model"].items():
        torch.testing.assert_close(one["model"][key], value, rtol=1e-3, atol=1e-5)
    assert one["metrics"]["val_loss"] == pytest.approx(ddp["metrics"]["val_loss"], rel=1e-2)
    # and what one plain process computes from the same rows (two threads, as the worker)
    assert losses(one) == pytest.approx([m["loss"] for m in plain if "tokens_per_s" in m], rel=1e-5)
