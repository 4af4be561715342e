"""Reward models served to RL: a pool of Ray actors that score (prompt, answer) pairs in batches.

    pool = ScorerPool(storage, {"proxy": "tiny/reward/hf", "watch": "tiny/reward/watch/hf"}, actors=1, cpus=0)
    scores = pool.score("proxy", [(messages, answer_text), ...])      # one float per answer

Each actor holds every named reward model (they are small beside the policy) and
the tokenizer; a call's pairs are dealt to the actors in contiguous slices and
scored in padded batches. Sequences are rendered exactly as the reward step
trained on them (raylm/rlhf/reward.py: answer_sequence), so the score is read at
the answer's <|im_end|>.
"""

from __future__ import annotations

import os

import torch

from raylm.storage import Storage


class RewardScorer:
    def __init__(self, storage: Storage, folders: dict[str, str], batch_size: int = 64):
        from raylm.model.reward import load_reward_model
        from raylm.tokenizer.bpe import load
        from raylm.tokenizer.chat import ChatFormat

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.models = {name: load_reward_model(storage.local(rel)) for name, rel in folders.items()}
        first = next(iter(folders.values()))
        self.chat = ChatFormat(load(storage.local(first, only=("tokenizer.json",))))
        self.pad_id = self.chat.tok.token_to_id("<|pad|>")
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, name: str, pairs: list[tuple[list[dict], str]]) -> list[float]:
        from raylm.model.reward import pad_batch
        from raylm.rlhf.reward import answer_sequence

        model = self.models[name]
        sequences = [answer_sequence(self.chat, messages, answer) for messages, answer in pairs]
        scores: list[float] = []
        for i in range(0, len(sequences), self.batch_size):
            ids, lengths = pad_batch(sequences[i:i + self.batch_size], self.pad_id)
            scores += model.score_last(ids, lengths).tolist()
        return scores


class ScorerPool:
    def __init__(self, storage: Storage, folders: dict[str, str], actors: int = 1, cpus: float = 0.0):
        import ray

        actor = ray.remote(RewardScorer).options(num_cpus=cpus, runtime_env={
            "env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}})
        self.actors = [actor.remote(storage, folders) for _ in range(actors)]

    def score(self, name: str, pairs: list[tuple[list[dict], str]]) -> list[float]:
        import ray

        size = max(1, -(-len(pairs) // len(self.actors)))
        refs = [a.score.remote(name, pairs[i:i + size]) for a, i in zip(self.actors, range(0, len(pairs), size))]
        return [s for part in ray.get(refs) for s in part]

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
