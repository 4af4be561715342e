"""SFT on Ray Train: a base model learns the protocol; the eval table and the chat CLI read the result."""

from __future__ import annotations

import json

import pytest
import torch

from raylm.config import SftConfig, StorageConfig


@pytest.fixture(scope="module")
def base_and_sft(sample_tokenizer, tmp_path_factory):
    """A freshly initialised base model (pretraining is tested elsewhere) and its SFT on two short families,
    a quarter of its train rows cut from the sample tokenizer's pretraining shards."""
    from raylm.model.gpt import GPT, GPTConfig
    from raylm.model.hf import save_pretrained
    from raylm.runs import StepResult, run_step
    from raylm.storage import Storage
    from raylm.train.sft import run_sft

    root = tmp_path_factory.mktemp("sft")
    storage = Storage(StorageConfig(uri=str(root)))
    torch.manual_seed(0)
    base = save_pretrained(GPT(GPTConfig(vocab_size=1024, dim=64, n_layers=2, n_heads=2, n_kv_heads=1,
                                         max_seq_len=128)), root / "base" / "hf",
                           tokenizer_dir=sample_tokenizer.storage.local(sample_tokenizer.rel))
    cfg = SftConfig(mix={"identity": 300, "unknown_entities": 300}, seq_len=128, steps=120, batch_size=8,
                    lr=3e-3, warmup_steps=10, log_every=20, eval_every=60, checkpoint_every=60,
                    pretrain_mix=0.25)
    pretrain = StepResult(storage, "base", {"config_hash": "base", "metrics": {}}, skipped=True)
    step = run_step("sft", storage, "sft", "sft-test",
                    lambda work: run_sft(cfg, pretrain, sample_tokenizer, work, "ray_train", "sft-test"))
    return base, root / "sft" / "hf", step.metrics


def test_sft_learns_on_assistant_tokens_and_exports_a_chat_model(base_and_sft):
    from transformers import AutoTokenizer

    _, sft, result = base_and_sft
    history = json.loads((sft.parent / "history.json").read_text())
    evals = [m["val_loss"] for m in history if "val_loss" in m]
    assert result["steps"] == 120 and evals[-1] < 0.5 * history[0]["loss"]
    data = result["data"]
    assert data["too_long"] == 0 and data["train"]["rows"] < data["train"]["conversations"]  # packed
    assert 0 < data["train"]["trained_tokens"] < 0.6 * data["train"]["rows"] * 129  # only assistant tokens
    assert data["train"]["pretrain_rows"] == round(data["train"]["rows"] / 3)  # 25% of all train rows
    assert "pretrain_rows" not in data["val"]
    assert AutoTokenizer.from_pretrained(sft).chat_template


def test_eval_table_moves_from_base_to_sft(base_and_sft, tmp_path):
    from raylm.cli import main

    base, sft, _ = base_and_sft
    assert main(["eval", "--checkpoint", str(base), str(sft), "--output", str(tmp_path),
                 "-o", "eval.num_per_family=12", "--json", str(tmp_path / "eval.json")]) == 0
    base_row, sft_row = (r["metrics"] for r in json.loads((tmp_path / "eval.json").read_text()))
    # an untrained model ends a turn only when <|im_end|> comes up by chance (about 1 in 1024 per token)
    assert base_row["protocol_adherence"] < 0.2 and sft_row["protocol_adherence"] >= 0.8
    assert sft_row["refusal_rate"] > base_row["refusal_rate"]
    report = (tmp_path / "report.md").read_text()
    assert "| metric | base | sft |" in report and "protocol_adherence" in report
    assert (tmp_path / "chart.png").stat().st_size > 1000
    assert main(["eval", "--checkpoint", str(tmp_path)]) == 2  # not a checkpoint: one-line error


def test_chat_cli_streams_a_reply(base_and_sft):
    from raylm.chat import chat_loop

    _, sft, _ = base_and_sft
    lines = iter(["What is your name?", "/system You are Quorel, an assistant made by Brightwave.", "Who are you?"])
    out: list[str] = []

    def read(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    messages = chat_loop(sft, read=read, write=out.append, max_tokens=40)
    transcript = "".join(out)
    assert transcript.count("assistant> ") == 2 and "(new conversation)" in transcript
    assert messages[0]["content"].startswith("You are Quorel") and messages[-1]["role"] == "assistant"
    assert messages[-1]["content"].startswith("I ")  # the learned opening of both families' answers


def test_pretrain_mix_rows_come_from_train_shards_only(base_and_sft, sample_tokenizer):
    """The mixed-in rows are windows of the train shards, trained on every token; no val text enters."""
    import numpy as np

    from raylm.tokenizer.shards import load_shards

    _, sft, result = base_and_sft
    packed = np.load(sft.parent / "train.npz")
    web = int(result["data"]["train"]["pretrain_rows"])
    rows, mask = packed["tokens"][-web:], packed["mask"][-web:]
    assert mask.all() and packed["mask"][:-web].mean() < 0.6  # every token trained vs assistant tokens only
    shards = sample_tokenizer.metrics["shards"]
    folder = f"{sample_tokenizer.rel}/shards"
    train = np.concatenate(load_shards(sample_tokenizer.storage, folder, shards["train"]["shards"]))

    def occurs(row, stream):
        starts = np.flatnonzero(stream[: len(stream) - len(row) + 1] == row[0])
        return any(np.array_equal(stream[s:s + len(row)], row) for s in starts)

    # windows of the train shards only (val shards never read; this fixture skips dedup, so the
    # crawl's mirrored pages put some of the same text in both splits, which a search cannot tell apart)
    assert all(occurs(row, train) for row in rows)
    assert len({tuple(row) for row in rows}) == len(rows)  # fewer rows than windows: none repeated


def test_pretrain_rows_cycle_through_every_window_and_refuse_val_shards():
    import numpy as np

    from raylm.train.sft import pretrain_rows, train_shard_names

    rows = pretrain_rows([np.arange(600), np.arange(600, 1050)], 25, 100, seed=3)
    starts = rows[:, 0].tolist()
    assert sorted(starts[:10]) == list(range(0, 1000, 100))  # 10 whole windows (each shard's tail unused)
    assert sorted(starts[10:20]) == list(range(0, 1000, 100)) and starts[:10] != starts[10:20]
    assert (rows == rows[:, :1] + np.arange(100)).all()  # each row is one consecutive window
    with pytest.raises(ValueError, match="no row of 100 tokens"):
        pretrain_rows([np.arange(50)], 1, 100, seed=0)
    listing = {"train": {"shards": ["train_a.bin", "val_b.bin"]}, "val": {"shards": ["val_b.bin"]}}
    with pytest.raises(AssertionError, match="val_b.bin"):
        train_shard_names(listing)


def test_pretrain_weight_scales_the_web_rows_in_the_loss(sample_tokenizer, tmp_path):
    import numpy as np

    from raylm.model.gpt import token_loss
    from raylm.train.sft import build_sft_data

    cfg = SftConfig(mix={"identity": 40}, seq_len=64, pretrain_mix=0.5, pretrain_weight=0.25)
    folder = sample_tokenizer.storage.local(sample_tokenizer.rel)
    counts = build_sft_data(cfg, folder, tmp_path, [np.arange(5000, dtype=np.uint16) % 1000])
    packed = np.load(tmp_path / "train.npz")
    web = counts["train"]["pretrain_rows"]
    assert web == counts["train"]["rows"] and (packed["mask"][-web:] == 0.25).all()
    assert set(np.unique(packed["mask"][:-web]).tolist()) == {0.0, 1.0}
    # the loop's loss reads the mask as weights: a web token counts a quarter of an assistant token
    logits, targets = torch.randn(1, 2, 7, generator=torch.Generator().manual_seed(0)), torch.tensor([[3, 5]])
    nats = torch.nn.functional.cross_entropy(logits[0], targets[0], reduction="none")
    weights = torch.tensor([[1.0, 0.25]])
    assert float(token_loss(logits, targets, weights)) == pytest.approx(float((nats * weights[0]).sum() / 1.25))
