"""The GPT: HF export parity, import round trip, KV-cache engine."""

from __future__ import annotations

import pytest
import torch

from raylm.model.engine import Engine, sample_next
from raylm.model.gpt import GPT, GPTConfig
from raylm.model.hf import load_pretrained, save_pretrained


@pytest.mark.parametrize("tie", [False, True])
def test_export_gives_the_same_logits_in_transformers(tmp_path, tie):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                          tie_embeddings=tie)).eval()
    with torch.no_grad():  # move off the init so that a dropped tensor would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_pretrained(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), torch_dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (3, 40))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)
    back = load_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(back(ids), ours)


def test_kv_cache_and_engine_match_full_recompute():
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=1, max_seq_len=64)).eval()
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]]
    engine = Engine(model)
    outs = engine.generate(prompts, max_new_tokens=8, temperature=0)
    for prompt, out in zip(prompts, outs):
        seq, ref = list(prompt), []
        with torch.no_grad():
            for _ in range(8):
                ref.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
                seq.append(ref[-1])
        assert out == ref
        assert list(engine.stream(prompt, 8, temperature=0)) == ref
    again = engine.generate(prompts, 6, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    assert again == engine.generate(prompts, 6, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    stop = outs[0][2]
    assert engine.generate([prompts[0]], 8, temperature=0, stop_ids=(stop,))[0][-1] == stop


def test_sampling_filters():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    assert sample_next(logits, 1.0, top_k=1, top_p=None, generator=None).item() == 1
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, 1.0, top_k=None, top_p=0.7, generator=g).item() for _ in range(50)}
    assert picks == {1}  # token 1 alone holds > 70% of the mass
    picks = {sample_next(logits, 1.0, top_k=2, top_p=None, generator=g).item() for _ in range(200)}
    assert picks == {1, 2}


def test_config_errors():
    with pytest.raises(ValueError, match="n_heads"):
        GPTConfig(dim=100, n_heads=3)
    model = GPT(GPTConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))
