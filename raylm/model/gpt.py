"""The GPT: a decoder-only transformer with the Llama architecture, in plain torch.

RMSNorm, rotary position embeddings (RoPE), SwiGLU MLP, grouped-query attention,
no biases. Parameter names are those of Hugging Face's LlamaForCausalLM, so a
state dict exports as-is (raylm/model/hf.py) and transformers and vLLM load it
with no custom code. No parallelism here: DDP, compile and precision belong to
the training loop.

    model = GPT(GPTConfig(vocab_size=4096, dim=128, n_layers=4, n_heads=4, n_kv_heads=2))
    logits = model(token_ids)                              # (B, T, vocab)
    cache = model.new_cache(batch_size=2, max_len=256)     # for generation (raylm/model/engine.py)
    logits = model(token_ids, cache=cache, start_pos=0)
    loss = model(inputs, targets=targets, mask=mask)      # training: the loss is part of the forward

Training returns the loss from the forward itself, so a compiled forward covers it;
with `loss_chunk` set, the cross-entropy runs over chunks of tokens, each recomputed
in the backward, so fp32 logits of the whole micro-batch are never held at once
(B x T x vocab x 4 bytes: 2 GB at B=16, T=1024, vocab 32k). `checkpoint_blocks`
recomputes each block's activations in the backward instead of storing them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from raylm.config import GPTConfig  # the model's shape; pydantic, so it travels to Ray workers typed


def token_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None,
               reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy per target token; with a mask, only masked-in tokens count (mean over them)."""
    nats = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="none")
    if mask is None:
        return nats.mean() if reduction == "mean" else nats
    mask = mask.flatten().to(nats.device)
    return (nats * mask).sum() / mask.sum().clamp(min=1) if reduction == "mean" else nats * mask


def _chunk_nats(head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # computed in fp32 like transformers' LlamaRMSNorm, so exports give the same logits
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(cfg: GPTConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32, device=device)
                                         / cfg.head_dim))
    freqs = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float32, device=device), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)  # the "rotate half" layout that HF Llama uses
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache=None, start_pos: int = 0):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            cache_k, cache_v = cache
            cache_k[:B, :, start_pos:start_pos + T] = k
            cache_v[:B, :, start_pos:start_pos + T] = v
            k, v = cache_k[:B, :, :start_pos + T], cache_v[:B, :, :start_pos + T]
            # query i sees keys 0 .. start_pos + i
            mask = torch.ones(T, start_pos + T, dtype=torch.bool, device=x.device).tril(diagonal=start_pos)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, start_pos: int = 0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, start_pos)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The `model.` prefix of HF's parameter names."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("GPTConfig.vocab_size is 0: set it (the pretrain step takes the tokenizer's)")
        self.cfg = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.checkpoint_blocks = False  # training settings (raylm/train/loop.py sets them), not the shape
        self.loss_chunk = 0
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # residual projections scaled down, GPT-2 style
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor, cache: list | None = None, start_pos: int = 0,
                targets: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab); with `targets`, the mean cross-entropy over the (masked-in) targets instead."""
        T = idx.shape[1]
        if start_pos + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start_pos + T} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        cos = self.rope_cos[start_pos:start_pos + T].to(self.model.embed_tokens.weight.dtype)
        sin = self.rope_sin[start_pos:start_pos + T].to(self.model.embed_tokens.weight.dtype)
        x = self.model.embed_tokens(idx)
        recompute = self.checkpoint_blocks and cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.model.layers):
            if recompute:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, None if cache is None else cache[i], start_pos)
        x = self.model.norm(x)
        if targets is None:
            return self.lm_head(x)
        if not self.loss_chunk or x.shape[0] * T <= self.loss_chunk:
            return token_loss(self.lm_head(x), targets, mask)
        return self._chunked_loss(x.flatten(0, 1), targets.flatten(), mask)

    def _chunked_loss(self, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is not None:  # masked-out targets become ignore_index (-100): same mean as token_loss
            mask = mask.flatten().to(targets.device)
            targets = targets.masked_fill(mask == 0, -100)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], self.loss_chunk):
            end = start + self.loss_chunk
            total = total + checkpoint(_chunk_nats, self.lm_head, hidden[start:end], targets[start:end],
                                       use_reentrant=False)
        return total / (targets != -100).sum().clamp(min=1)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        max_len = max_len or self.cfg.max_seq_len
        weight = self.model.embed_tokens.weight
        shape = (batch_size, self.cfg.n_kv_heads, max_len, self.cfg.head_dim)
        return [(torch.zeros(shape, dtype=weight.dtype, device=weight.device),
                 torch.zeros(shape, dtype=weight.dtype, device=weight.device)) for _ in range(self.cfg.n_layers)]

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.model.embed_tokens.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int, non_embedding: bool = True) -> float:
        """Training FLOPs per token: 6N for the matmuls plus the attention scores (PaLM appendix B).

        N without the input embedding (raylm's MFU; the lm_head is a matmul and counts) or with
        every parameter (`non_embedding=False`: how nanoGPT-style references count)."""
        c = self.cfg
        return 6 * self.num_params(non_embedding) + 12 * c.n_layers * c.dim * seq_len
