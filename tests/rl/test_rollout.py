"""Rollout actors: after a weight push, in fp32 or bf16, vLLM (and the torch engine) generate what raylm's engine
generates."""

from __future__ import annotations

import pytest
import torch

from raylm.config import StorageConfig
from raylm.model.engine import Engine
from raylm.model.gpt import GPT, GPTConfig
from raylm.model.hf import save_pretrained
from raylm.rl.rollout import RolloutPool
from raylm.rl.weight_sync import pack
from raylm.storage import Storage
from tests.tokenizer.test_bpe import CORPUS

# longer than a KV-cache block (128 tokens on CPU), so vLLM's prefix cache holds them between generations
PROMPTS = [[1, 17, 42, 99] * 35, [2, 5, 300, 301, 302, 7] * 24, [1, 250] * 70]
EOS = 0


def sharp_model(seed: int) -> GPT:
    torch.manual_seed(seed)
    # head_dim 32: the smallest that vLLM's CPU attention supports
    model = GPT(GPTConfig(vocab_size=600, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256))
    with torch.no_grad():  # sharpen the logits so that greedy choices are not near-ties
        model.lm_head.weight.mul_(20)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from raylm.tokenizer.bpe import save, train_bpe

    root = tmp_path_factory.mktemp("rollout")
    save(train_bpe(CORPUS, vocab_size=600, min_frequency=1), root / "tok")
    return save_pretrained(sharp_model(0), root / "hf", tokenizer_dir=root / "tok")


@pytest.mark.parametrize("engine", ["vllm", "torch"])
def test_weight_push_then_greedy_matches_the_torch_engine(ray_session, checkpoint, engine):
    storage = Storage(StorageConfig(uri=str(checkpoint)))
    pool = RolloutPool(engine, storage, "", num_workers=1, stop_ids=[EOS], cpus_per_worker=1)
    try:
        assert pool.engine == engine
        before = [g[0].ids for g in pool.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=12)]
        assert before == Engine(sharp_model(0)).generate(PROMPTS, 12, temperature=0, stop_ids=(EOS,))

        changed = sharp_model(1)  # other weights, same shapes: what an RL update delivers
        seconds = pool.load_weights(pack(changed))
        groups = pool.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=12)
        after = [g[0].ids for g in groups]
        assert after == Engine(changed).generate(PROMPTS, 12, temperature=0, stop_ids=(EOS,))
        assert after != before and seconds < 30

        # bf16 (rl.sync_dtype): half the bytes; the engine upcasts to its fp32. Compared with the learner's own
        # fp32 model, not a bf16-rounded copy: with the x20 sharpening, the rounding changes no greedy choice
        learner_side = sharp_model(2)
        blob = pack(learner_side, "bfloat16")
        assert len(blob) < 0.55 * len(pack(learner_side))
        pool.load_weights(blob)
        assert [g[0].ids for g in pool.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=12)] == \
            Engine(learner_side).generate(PROMPTS, 12, temperature=0, stop_ids=(EOS,))
        pool.load_weights(pack(changed))  # back to the fp32 weights for the sampling checks below
        for group in groups:  # log-probabilities come with the samples
            assert len(group[0].logprobs) == len(group[0].ids) and all(lp <= 1e-4 for lp in group[0].logprobs)

        # temperature 2 softens the x20 sharpening (vLLM rejects 20): samples must differ unless the engine copies one
        samples = pool.generate(PROMPTS[:1], n=8, temperature=2.0, max_new_tokens=6, seed=3)[0]
        assert len(samples) == 8 and len({tuple(s.ids) for s in samples}) > 1  # n samples per prompt, not copies
    finally:
        pool.shutdown()
