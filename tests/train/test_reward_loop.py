"""The reward loop: two reward models side by side in one Ray Train run, with the arithmetic of one model
trained alone on every worker (DDP), each model's file written by its own worker into one checkpoint."""

from __future__ import annotations

import json
import random

import pytest
import torch

from raylm.config import GPTConfig, RewardConfig, StorageConfig
from raylm.model.gpt import GPT
from raylm.model.hf import save_pretrained
from raylm.storage import Storage
from raylm.train.reward_loop import RewardJob, RewardLoopConfig, pair_accuracy, reward_loop, split_workers

VOCAB, GOOD = 64, 7   # an answer's rank is its count of the GOOD token: learnable in a few steps


def rankings(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(10, VOCAB) for _ in range(4)]
        counts = rng.sample(range(4), 3)
        seqs = [prompt + rng.sample([GOOD] * c + [rng.randrange(10, VOCAB) for _ in range(6 - c)], 6)
                for c in counts]
        out.append({"seqs": seqs, "order": sorted(range(3), key=lambda i: -counts[i])})
    return out


def test_workers_split_evenly_among_jobs_or_run_them_one_after_the_other():
    assert split_workers(2, 2) == (1, 2)   # side by side: one worker each, two micro-batches per step
    assert split_workers(4, 2) == (2, 2)   # two-rank DDP groups
    assert split_workers(2, 1) == (2, 1)   # one job: DDP over every worker, as before
    assert split_workers(1, 2) == (1, 1)   # one worker: one job after the other
    assert split_workers(3, 2) == (3, 1)


@pytest.mark.slow
def test_side_by_side_equals_each_model_trained_alone_on_every_worker(ray_session, tmp_path):
    from raylm.train.trainer import fit_states

    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=32)),
                    tmp_path / "policy")
    val = rankings(99, 40)
    for name, seed in (("proxy", 1), ("watch", 2)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"train": rankings(seed, 64), "val": val}))
    jobs = [RewardJob(name="proxy", data_file="proxy.json"), RewardJob(name="watch", data_file="watch.json")]
    storage = Storage(StorageConfig(uri=str(tmp_path)))

    def config(jobs: list[RewardJob]) -> RewardLoopConfig:
        train = RewardConfig(num_workers=2, steps=12, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=6,
                             log_every=3, checkpoint_every=6, seed=0)
        return RewardLoopConfig(jobs=jobs, train=train, model=GPTConfig(vocab_size=VOCAB, dim=32, n_layers=1,
                                n_heads=2, n_kv_heads=1, max_seq_len=32),
                                storage=storage.cfg, init_checkpoint="policy", pad_id=0)

    both = fit_states(config(jobs), 2, False, 0, storage, "ray_train", "both", loop=reward_loop,
                      files=["proxy.pt", "watch.pt"])
    alone = fit_states(config(jobs[:1]), 2, False, 0, storage, "ray_train", "alone", loop=reward_loop,
                       files=["proxy.pt"])["proxy.pt"]
    proxy, watch = both["proxy.pt"], both["watch.pt"]
    # one worker with two micro-batches computes what DDP over two workers computed: float32 rounding apart
    for key, value in alone["model"].items():
        torch.testing.assert_close(proxy["model"][key], value, rtol=1e-4, atol=1e-5)
    assert proxy["metrics"]["val_accuracy"] == pytest.approx(alone["metrics"]["val_accuracy"])
    assert proxy["step"] == watch["step"] == 12
    # each learned its own data: the watcher is a different model, and both rank held-out answers by the rule
    assert not torch.allclose(proxy["model"]["score.weight"], watch["model"]["score.weight"])
    assert proxy["metrics"]["val_accuracy"] > 0.7 and watch["metrics"]["val_accuracy"] > 0.7
    # the held-out scores of the last evaluation travel with each model (the reward step reports from them)
    for state in (proxy, watch):
        orders = [r["order"] for r in val]
        assert pair_accuracy(state["val_scores"], orders) == state["metrics"]["val_accuracy"]
    # one checkpoint folder holds both files, each written by its own worker
    final = sorted(p for p in (tmp_path / "ray_train" / "both").glob("checkpoint_*") if p.is_dir())[-1]
    assert {"proxy.pt", "watch.pt"} <= {p.name for p in final.iterdir()}
