"""The learner: a Ray actor that holds the policy (and a frozen reference) and applies GRPO updates.

    learner = ray.remote(Learner).options(num_cpus=1).remote(storage, "tiny/sft/hf", RlConfig(), pad_id)
    metrics = ray.get(learner.update.remote(batch))     # batch: [{"prompt", "response", "advantage"}]
    ray.get(learner.push_weights.remote(pool.workers))  # the new policy into every rollout actor

The learner runs on `rl.learner_device`: auto takes the GPU Ray reserved for it
(rl.learner_gpus) and falls back to CPU. The policy, the frozen reference and
every batch live there; on a GPU the forward passes run under bf16 autocast
(the log-softmax and the loss in fp32) and AdamW is fused. On CPU nothing of
that applies, so the numerics are the fp32 ones. Weights leave the learner as a
safetensors blob in `rl.sync_dtype`, which the learner puts in the object store
and loads into each rollout actor itself: the driver only waits for it.

One actor is the learner group here (2 CPU cores); the update is a plain
function of the batch, so a data-parallel group of these behind DDP is the next
step on a GPU cluster. State (model, optimizer, step, history) is saved to and
restored from one file in the run's storage, written atomically, so `raylm rl`
resumes after a crash, on whichever node the learner lands next time; the HF
export goes to storage too.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
import time
from pathlib import Path

import torch

from raylm.config import ConfigError, RlConfig
from raylm.rl.grpo import policy_loss
from raylm.storage import Storage


def token_logprobs(model, sequences: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(token t | tokens < t) for t = 1..L-1, as (batch, L-1)."""
    logits = model(sequences[:, :-1]).float() / max(temperature, 1e-6)
    return torch.log_softmax(logits, dim=-1).gather(-1, sequences[:, 1:, None])[..., 0]


def collate(batch: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences prompt + response, right-padded; a mask over response targets; per-token advantages.

    An item's optional "mask" (one 0/1 per response token) leaves out the tokens the policy did not
    sample (tool results spliced into a rollout: raylm/rl/tool_calls.py)."""
    length = max(len(item["prompt"]) + len(item["response"]) for item in batch)
    sequences = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), length - 1)
    advantages = torch.zeros(len(batch), length - 1)
    for row, item in enumerate(batch):
        ids = item["prompt"] + item["response"]
        sequences[row, :len(ids)] = torch.tensor(ids)
        start, end = len(item["prompt"]) - 1, len(ids) - 1  # target positions of the response tokens
        sampled = item.get("mask")
        mask[row, start:end] = 1 if sampled is None else torch.tensor(sampled, dtype=torch.float)
        advantages[row, start:end] = item["advantage"]
    return sequences, mask, advantages


def collate_demos(demos: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole demonstrations ((ids, loss mask) pairs, as ChatFormat.render gives them), right-padded; a mask
    over the targets that are the assistant's own tokens."""
    length = max(len(ids) for ids, _ in demos)
    sequences = torch.full((len(demos), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(demos), length - 1)
    for row, (ids, trained) in enumerate(demos):
        sequences[row, :len(ids)] = torch.tensor(ids)
        mask[row, :len(ids) - 1] = torch.tensor(trained[1:], dtype=torch.float)
    return sequences, mask


def demo_loss(model, sequences: torch.Tensor, mask: torch.Tensor, num_tokens: float | None = None) -> torch.Tensor:
    """The SFT loss (raylm/train/loop.py's token_loss) summed over the masked targets and divided by
    `num_tokens` (default: mask.sum()), so that micro-batch parts add up to the whole batch's mean."""
    from raylm.train.loop import token_loss

    nats = token_loss(model(sequences[:, :-1]), sequences[:, 1:], mask, reduction="none")
    return nats.sum() / (num_tokens if num_tokens is not None else mask.sum().clamp(min=1))


def learner_device(cfg: RlConfig) -> torch.device:
    """rl.learner_device, resolved in the learner's process (Ray shows an actor only the GPUs it reserved)."""
    if cfg.learner_device == "auto":
        return torch.device("cuda" if cfg.learner_gpus > 0 and torch.cuda.is_available() else "cpu")
    if cfg.learner_device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"rl.learner_device is cuda but the learner sees no CUDA device (rl.learner_gpus is "
                          f"{cfg.learner_gpus:g}; Ray hides GPUs from an actor that reserves none): give the "
                          f"learner a GPU, or set rl.learner_device to auto or cpu")
    return torch.device(cfg.learner_device)


class Learner:
    def __init__(self, storage: Storage, checkpoint: str, cfg: RlConfig, pad_id: int, track_kl: bool = False,
                 demo_coef: float = 0.0):
        from raylm.model.hf import load_pretrained

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        torch.manual_seed(cfg.seed)
        self.storage, self.cfg, self.pad_id, self.demo_coef = storage, cfg, pad_id, demo_coef
        self.device = learner_device(cfg)
        self.model = load_pretrained(storage.local(checkpoint), device=self.device).train()
        self.reference = None
        if cfg.kl_coef > 0 or track_kl:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.best: dict | None = None  # the kept checkpoint (RLHF: the best by a validation signal)
        # fused: one kernel for the whole step on a GPU; CPU keeps the plain loop (the numerics the tests know)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                                           weight_decay=cfg.weight_decay, fused=self.device.type == "cuda")
        self.step, self.history = 0, []
        # rl.overlap: the weights each push gave the rollout engines, by learner step, until no batch sampled
        # with them is left to train on (a stale batch's ratio is taken against the policy that sampled it)
        self.pushed: dict[int, dict] = {0: self._snapshot()} if cfg.overlap else {}
        self.behaviour = None  # a second model holding such pushed weights, made when first needed

    def autocast(self):
        """bf16 matmuls on a GPU (token_logprobs and the losses upcast the logits to fp32); off on CPU."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def restore(self, rel: str) -> tuple[int, list[dict]]:
        """Load a saved state if there is one; returns (the step to continue from, the metrics so far)."""
        if not self.storage.is_file(rel):
            return 0, []
        state = torch.load(io.BytesIO(self.storage.read_bytes(rel)), map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.history, self.best = state["step"], state["history"], state.get("best")
        return self.step, self.history

    def save(self, rel: str, history: list[dict]) -> None:
        """Atomic (one file write in storage): a crash mid-save leaves the previous state."""
        self.history = history
        buffer = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                    "history": history, "best": self.best}, buffer)
        self.storage.write_bytes(rel, buffer.getvalue())

    def keep_best(self, step: int) -> None:
        """Remember the current weights as the checkpoint to keep (in memory, and in the next save); on CPU, so
        the copy takes no accelerator memory."""
        self.best = {"step": step, "model": {k: v.detach().to("cpu", copy=True)
                                             for k, v in self.model.state_dict().items()}}

    def restore_best(self) -> int:
        """Roll the policy back to the kept weights; returns their step."""
        self.model.load_state_dict(self.best["model"])
        return self.best["step"]

    def _snapshot(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _policy_at(self, step: int):
        """The policy as it was pushed at `step`; older pushes are forgotten (batches come in order)."""
        if self.behaviour is None:
            self.behaviour = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.behaviour.load_state_dict(self.pushed[step])
        for old in [s for s in self.pushed if s < step]:
            del self.pushed[old]
        return self.behaviour

    def weights(self) -> bytes:
        from raylm.rl.weight_sync import pack

        return pack(self.model, self.cfg.sync_dtype)

    def push_weights(self, workers: list) -> dict:
        """Load the policy into every rollout actor (RolloutWorker handles) straight from here: the blob goes
        into the object store from this process, so it never travels through the driver. Returns the seconds
        spent packing (pack_s) and pushing until the slowest actor has reloaded (reload_s)."""
        from raylm.rl.rollout import push

        start = time.perf_counter()
        if self.cfg.overlap:
            self.pushed[self.step] = self._snapshot()
        blob = self.weights()
        return {"pack_s": time.perf_counter() - start, "reload_s": push(workers, blob)}

    def update(self, batch: list[dict], demos: list[tuple[list[int], list[int]]] | None = None,
               sampled_at: int | None = None) -> dict:
        """GRPO on one batch of samples: `updates_per_batch` passes, micro-batched, one optimizer step each.

        `demos`: demonstrations whose SFT loss, times `demo_coef`, joins every pass, so what SFT taught
        outside the rewarded prompts stays (RLHF's `ptx_coef`: InstructGPT's PPO-ptx, with SFT data).
        `sampled_at`: the learner step whose pushed weights sampled the batch (rl.overlap); when that is not
        the current step, the ratio is taken against those weights, so the clipping bounds how far a stale
        batch moves the policy (off-policy PPO)."""
        s = self.cfg
        batch = [item for item in batch if item["advantage"] != 0 and item["response"]]  # nothing to learn otherwise
        stale = sampled_at is not None and sampled_at != self.step
        self.step += 1
        if not batch:
            return {"loss": 0.0, "trained_samples": 0}
        micro = s.micro_batch
        to = lambda tensors: tuple(t.to(self.device) for t in tensors)  # noqa: E731
        chunks = [to(collate(batch[i:i + micro], self.pad_id)) for i in range(0, len(batch), micro)]
        num_tokens = float(sum(mask.sum() for _, mask, _ in chunks))
        demo_chunks = [to(collate_demos(demos[i:i + micro], self.pad_id))
                       for i in range(0, len(demos), micro)] if demos and self.demo_coef > 0 else []
        demo_tokens = float(sum(mask.sum() for _, mask in demo_chunks))
        reuse = s.updates_per_batch > 1
        # the sampling policy's log-probs (recomputed here: exactly the learner's numerics)
        with torch.no_grad(), self.autocast():
            # used once, a batch's sampling policy is the live one: its log-probs are the forward pass's own
            sampler = self._policy_at(sampled_at) if stale else self.model
            old = [token_logprobs(sampler, seqs, s.temperature) for seqs, _, _ in chunks] \
                if reuse or stale else [None] * len(chunks)
            ref = [token_logprobs(self.reference, seqs, s.temperature) for seqs, _, _ in chunks] \
                if self.reference is not None else [None] * len(chunks)
        stats = {"loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "kl_seq": 0.0}
        for _ in range(s.updates_per_batch):
            for (seqs, mask, adv), old_lp, ref_lp in zip(chunks, old, ref):
                with self.autocast():  # the forward only: backward outside autocast, as torch advises
                    logprobs = token_logprobs(self.model, seqs, s.temperature)
                    old_lp = logprobs.detach() if old_lp is None else old_lp
                    loss, part = policy_loss(logprobs, old_lp, adv, mask, s.clip_eps, ref_lp, s.kl_coef,
                                             num_tokens=num_tokens)
                loss.backward()
                share = float(mask.sum()) / num_tokens / s.updates_per_batch
                stats["loss"] += float(loss.detach()) / s.updates_per_batch
                stats["clip_fraction"] += part["clip_fraction"] * share
                stats["kl"] += part.get("kl", 0.0) * share
                stats["kl_seq"] += part.get("kl_sum", 0.0) / len(batch) / s.updates_per_batch
            for seqs, mask in demo_chunks:
                with self.autocast():
                    nll = demo_loss(self.model, seqs, mask, num_tokens=demo_tokens)
                (self.demo_coef * nll).backward()
                stats["ptx_nll"] = stats.get("ptx_nll", 0.0) + float(nll.detach()) / s.updates_per_batch
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                                      s.grad_clip or float("inf")))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        stats["trained_samples"] = len(batch)
        if self.reference is not None:  # how unlikely each answer is under the reference (RLHF's support check)
            stats["ref_nll"] = [nll for lp, (_, mask, _) in zip(ref, chunks)
                                for nll in (-(lp * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()]
        return stats

    def export(self, rel: str, tokenizer: str) -> str:
        """The policy as an HF chat checkpoint at `rel` in storage, tokenizer files from the folder `tokenizer`."""
        from raylm.model.hf import TOKENIZER_FILES, save_pretrained

        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(self.model, Path(tmp), tokenizer_dir=self.storage.local(tokenizer, only=TOKENIZER_FILES),
                            chat=True)
            self.storage.upload(Path(tmp), rel)
        return self.storage.uri(rel)
