"""A small generation engine: KV cache, batched sampling (temperature, top-k, top-p).

Shared by eval, RL (as the torch fallback rollout engine) and serving.

    engine = Engine(model)
    outs = engine.generate([[1, 2, 3], [4, 5]], max_new_tokens=32, temperature=0.8, top_k=50, seed=0)
    for token in engine.stream([1, 2, 3], max_new_tokens=32): ...

Prompts of different lengths share one cache without padding: the batch prefills
the shortest prompt's length at once, then steps one position at a time; a
sequence still inside its prompt is fed its next prompt token (teacher forcing),
the others their sampled token. Every sequence keeps its true positions.
"""

from __future__ import annotations

from typing import Iterator

import torch

from raylm.model.gpt import GPT


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """(B, vocab) logits -> (B,) token ids. temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Engine:
    def __init__(self, model: GPT):
        self.model = model.eval()
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, stop_ids: tuple[int, ...] = (),
                 seed: int | None = None) -> list[list[int]]:
        """New tokens for each prompt (a stop token ends a sequence and is included)."""
        if not prompts or any(not p for p in prompts):
            raise ValueError("every prompt needs at least one token")
        max_len = min(max(len(p) for p in prompts) + max_new_tokens, self.model.cfg.max_seq_len)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        batch = len(prompts)
        cache = self.model.new_cache(batch, max_len)
        start = min(len(p) for p in prompts)
        tokens = torch.tensor([p[:start] for p in prompts], device=self.device)
        logits = self.model(tokens, cache=cache, start_pos=0)[:, -1]
        outputs: list[list[int]] = [[] for _ in prompts]
        done = [False] * batch
        for pos in range(start, max_len):
            sampled = sample_next(logits, temperature, top_k, top_p, generator).tolist()
            step = []
            for i, prompt in enumerate(prompts):
                if pos < len(prompt):
                    step.append(prompt[pos])
                    continue
                if not done[i] and len(outputs[i]) < max_new_tokens:
                    outputs[i].append(sampled[i])
                    done[i] = sampled[i] in stop_ids or len(outputs[i]) >= max_new_tokens
                step.append(sampled[i])
            if all(done) or pos + 1 >= max_len:
                break
            logits = self.model(torch.tensor(step, device=self.device)[:, None], cache=cache, start_pos=pos)[:, -1]
        return outputs

    @torch.no_grad()
    def stream(self, prompt: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, stop_ids: tuple[int, ...] = (), seed: int | None = None) -> Iterator[int]:
        """Tokens of one prompt as they are sampled."""
        max_len = min(len(prompt) + max_new_tokens, self.model.cfg.max_seq_len)
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        cache = self.model.new_cache(1, max_len)
        logits = self.model(torch.tensor([prompt], device=self.device), cache=cache, start_pos=0)[:, -1]
        for pos in range(len(prompt), max_len):
            token = int(sample_next(logits, temperature, top_k, top_p, generator)[0])
            yield token
            if token in stop_ids or pos + 1 >= max_len:
                return
            logits = self.model(torch.tensor([[token]], device=self.device), cache=cache, start_pos=pos)[:, -1]
