"""The reward model: transformers loads it and reads the same scores; the Bradley-Terry loss by hand."""

from __future__ import annotations

import math

import pytest
import torch

from raylm.config import GPTConfig
from raylm.eval.stats import ratio_interval
from raylm.model.gpt import GPT
from raylm.model.reward import RewardModel, load_reward_model, pad_batch, save_reward_model
from raylm.train.reward_loop import pair_accuracy, ranking_loss


def test_transformers_loads_the_export_and_scores_the_same(tmp_path):
    import json

    import transformers

    from raylm.rlhf.reward import answer_sequence
    from raylm.tasks import generate_tasks
    from raylm.tokenizer.bpe import load, save, train_bpe
    from raylm.tokenizer.chat import ChatFormat

    tokenizer_dir = tmp_path / "tok"
    texts = [json.dumps(t.conversation()) for t in generate_tasks({"poem": 100}, 0)]
    save(train_bpe(texts, vocab_size=600, min_frequency=1), tokenizer_dir)
    chat = ChatFormat(load(tokenizer_dir))
    policy = GPT(GPTConfig(vocab_size=chat.tok.get_vocab_size(), dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                           max_seq_len=128))
    model = RewardModel.from_policy(policy)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, policy.model.layers[0].mlp.up_proj.weight)
    assert not model.score.weight.detach().any()           # a new head: every answer scores 0
    torch.nn.init.normal_(model.score.weight, std=0.5)
    prompt = [{"role": "user", "content": "Write a poem about a river."}]
    seqs = [answer_sequence(chat, prompt, a) for a in ("The river sings,\nall day it brings.", "No.")]
    assert all(s[-1] == chat.im_end for s in seqs)                  # read at the answer's <|im_end|>
    ids, lengths = pad_batch(seqs, chat.tok.token_to_id("<|pad|>"))
    ours = model.score_last(ids, lengths).detach()
    folder = save_reward_model(model, tmp_path / "rm", tokenizer_dir, chat.tok.token_to_id("<|pad|>"))
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=(torch.arange(ids.shape[1])[None] < lengths[:, None]).long()).logits
    assert theirs.shape == (2, 1)
    assert torch.allclose(ours, theirs[:, 0], atol=1e-4)
    assert torch.allclose(load_reward_model(folder).score_last(ids, lengths).detach(), ours)
    assert ours[0] != ours[1]


def test_ranking_loss_is_bradley_terry_over_all_pairs():
    scores = torch.tensor([0.0, 1.0, 3.0])
    expected = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 / (1 + math.exp(-3))) +
                 math.log(1 / (1 + math.exp(-1)))) / 3
    assert float(ranking_loss(scores, [2, 1, 0])) == pytest.approx(expected)
    assert float(ranking_loss(scores, [0, 1, 2])) > float(ranking_loss(scores, [2, 1, 0]))


def test_pair_accuracy_and_its_bootstrap():
    assert pair_accuracy([[3.0, 2.0, 1.0]], [[0, 1, 2]]) == 1.0
    assert pair_accuracy([[3.0, 2.0, 1.0]], [[2, 1, 0]]) == 0.0
    assert pair_accuracy([[1.0, 1.0]], [[0, 1]]) == 0.5
    low, high = ratio_interval([(1.0, 1.0)] * 70 + [(0.0, 1.0)] * 30)
    assert 0.6 < low < 0.7 < high < 0.8
