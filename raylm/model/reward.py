"""The reward model: the policy's trunk with a scalar head, read at the <|im_end|> that ends the answer.

    rm = RewardModel.from_policy(load_pretrained("runs/tiny/sft/hf"))
    scores = rm.score_last(ids, lengths)              # (batch,): one score per (prompt + answer) sequence
    save_reward_model(rm, "runs/tiny/reward/hf", tokenizer_dir, pad_id)
    transformers.AutoModelForSequenceClassification.from_pretrained("runs/tiny/reward/hf")   # no custom code

A GPT whose `lm_head` is replaced by `score` (dim -> 1). The parameter names are
those of transformers' LlamaForSequenceClassification (`model.*`, `score.weight`),
which pools the score at the last non-padding token: raylm's sequences end at the
answer's <|im_end|>, so both read the same position.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from raylm.model.gpt import GPT, GPTConfig
from raylm.model.hf import TOKENIZER_FILES, from_hf_config, hf_config


class RewardModel(GPT):
    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg.model_copy(update={"tie_embeddings": False}))
        del self.lm_head
        self.score = nn.Linear(cfg.dim, 1, bias=False)
        nn.init.zeros_(self.score.weight)  # starts neutral: every answer scores 0

    @classmethod
    def from_policy(cls, policy: GPT) -> "RewardModel":
        model = cls(policy.cfg)
        trunk = {k: v for k, v in policy.state_dict().items() if k.startswith("model.")}
        model.load_state_dict(trunk, strict=False)
        return model

    def forward(self, idx: torch.Tensor, cache: list | None = None, start_pos: int = 0) -> torch.Tensor:
        """(batch, T) token ids -> (batch, T) scores: the score of every prefix."""
        T = idx.shape[1]
        cos = self.rope_cos[:T].to(self.model.embed_tokens.weight.dtype)
        sin = self.rope_sin[:T].to(self.model.embed_tokens.weight.dtype)
        x = self.model.embed_tokens(idx)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.score(self.model.norm(x))[..., 0]

    def score_last(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Right-padded (batch, T) ids and their lengths -> the score at each sequence's last token."""
        return self(ids).gather(1, (lengths - 1)[:, None])[:, 0]


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq)
    return ids, torch.tensor([len(s) for s in sequences])


def save_reward_model(model: RewardModel, folder: Path, tokenizer_dir: Path, pad_id: int,
                      extra: dict | None = None) -> Path:
    """HF LlamaForSequenceClassification layout; `extra` goes to raylm_reward.json (training facts)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).exists():
            shutil.copy(Path(tokenizer_dir) / name, folder / name)
    config = hf_config(model.cfg)
    config.update(architectures=["LlamaForSequenceClassification"], num_labels=1, pad_token_id=pad_id,
                  id2label={"0": "reward"}, label2id={"reward": 0}, problem_type="regression")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if extra is not None:
        (folder / "raylm_reward.json").write_text(json.dumps(extra, indent=1))
    return folder


def load_reward_model(folder: Path, device: str | torch.device = "cpu") -> RewardModel:
    folder = Path(folder)
    model = RewardModel(from_hf_config(json.loads((folder / "config.json").read_text())))
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
    return model.to(device).eval()
