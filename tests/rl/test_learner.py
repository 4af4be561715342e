"""The learner keeps the policy, the reference and its batches on rl.learner_device."""

from __future__ import annotations

import pytest
import torch

from raylm.config import ConfigError, RlConfig, StorageConfig
from raylm.model.gpt import GPT, GPTConfig
from raylm.model.hf import save_pretrained
from raylm.rl.learner import Learner
from raylm.storage import Storage

BATCH = [{"prompt": [5, 6, 7], "response": [8, 9, 1], "advantage": 1.0},
         {"prompt": [5, 6], "response": [10, 1], "advantage": -1.0}]


def test_the_learner_lives_on_its_configured_device(tmp_path):
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=32)),
                    tmp_path / "hf")
    storage = Storage(StorageConfig(uri=str(tmp_path)))
    gpu = torch.cuda.is_available()
    threads = torch.get_num_threads()  # the learner sets the process's thread count: put it back after
    try:
        # auto: the GPU only where one is reserved (learner_gpus) and seen; cuda without one: a clear error
        cases = [("cpu", 1, "cpu"), ("auto", 0, "cpu"), ("auto", 1, "cuda" if gpu else "cpu")]
        if gpu:
            cases.append(("cuda", 1, "cuda"))
        else:
            with pytest.raises(ConfigError, match="rl.learner_device is cuda but the learner sees no CUDA device"):
                Learner(storage, "hf", RlConfig(learner_device="cuda", learner_gpus=1), pad_id=0)
        for setting, gpus, expected in cases:
            learner = Learner(storage, "hf", RlConfig(learner_device=setting, learner_gpus=gpus, kl_coef=0.1),
                              pad_id=0)
            tensors = [*learner.model.parameters(), *learner.model.buffers(), *learner.reference.parameters(),
                       *learner.reference.buffers()]
            assert {t.device.type for t in tensors} == {expected}, setting
            stats = learner.update(BATCH)  # batches on the same device, or this would fail on a GPU
            assert stats["trained_samples"] == 2 and stats["grad_norm"] > 0
            assert {s.device.type for state in learner.optimizer.state.values() for s in state.values()
                    if s.dim() > 0} == {expected}
    finally:
        torch.set_num_threads(threads)


def test_a_stale_batch_takes_its_ratio_against_the_weights_that_sampled_it(tmp_path):
    """rl.overlap: a batch sampled before the last update is trained with the ratio to the pushed weights
    that sampled it (so clipping bounds the update), not to the current ones (where the ratio is always 1)."""
    from raylm.model.hf import load_pretrained
    from raylm.rl.grpo import policy_loss
    from raylm.rl.learner import collate, token_logprobs

    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=32)),
                    tmp_path / "hf")
    storage = Storage(StorageConfig(uri=str(tmp_path)))
    threads = torch.get_num_threads()
    try:
        cfg = RlConfig(overlap=True, lr=0.05, clip_eps=0.01)
        learner = Learner(storage, "hf", cfg, pad_id=0)
        learner.update(BATCH, sampled_at=0)  # on-policy: step 0's weights sampled it
        seqs, mask, adv = collate(BATCH, 0)
        with torch.no_grad():
            now = token_logprobs(learner.model, seqs, 1.0)
            then = token_logprobs(load_pretrained(tmp_path / "hf"), seqs, 1.0)
        assert not torch.allclose(now, then)
        expected, part = policy_loss(now, then, adv, mask, cfg.clip_eps)
        on_policy, _ = policy_loss(now, now, adv, mask, cfg.clip_eps)
        stats = learner.update(BATCH, sampled_at=0)  # sampled by the pushed step-0 weights, trained at step 1
        assert stats["loss"] == pytest.approx(float(expected), rel=1e-5)
        assert stats["clip_fraction"] == pytest.approx(part["clip_fraction"]) and stats["clip_fraction"] > 0
        assert float(expected) != pytest.approx(float(on_policy), rel=1e-3)
        assert list(learner.pushed) == [0]  # kept until a later push is asked for
    finally:
        torch.set_num_threads(threads)
