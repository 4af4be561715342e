"""RLHF's SFT-loss mix (PPO-ptx): which demonstrations each update gets."""

from __future__ import annotations

import json

from raylm.config import load_config
from raylm.rlhf.driver import demonstrations
from raylm.tasks import generate_tasks
from raylm.tokenizer.bpe import load, save, train_bpe
from raylm.tokenizer.chat import ChatFormat


def test_demonstrations_come_from_the_other_families_fresh_each_step(tmp_path):
    texts = [json.dumps(t.conversation()) for t in generate_tasks({"poem": 50, "compare": 50, "identity": 50}, 0)]
    save(train_bpe(texts, vocab_size=600, min_frequency=1), tmp_path)
    chat = ChatFormat(load(tmp_path))
    cfg = load_config("tiny", ["rlhf.ptx_coef=3", "rlhf.ptx_demos=12", "sft.mix={poem: 500, compare: 10, identity: 10}"])

    demos = demonstrations(cfg, chat, step=0)
    assert len(demos) == 12
    texts = [chat.decode(ids) for ids, _ in demos]
    assert not [t for t in texts if "poem" in t.lower()]  # RLHF's own family is rewarded, not imitated
    for ids, mask in demos:
        assert len(ids) == len(mask) and 0 < sum(mask) < len(ids)  # the assistant's tokens only
    assert demonstrations(cfg, chat, step=0) == demos                # reproducible (a resumed run)
    assert demonstrations(cfg, chat, step=1) != demos                # and fresh every step
    assert demonstrations(load_config("tiny", ["rlhf.ptx_coef=0"]), chat, step=0) is None
