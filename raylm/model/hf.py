"""Hugging Face layout: export a GPT as a LlamaForCausalLM checkpoint, and import it back.

    save_pretrained(model, "runs/tiny/pretrain/hf", tokenizer_dir="runs/tiny/tokenizer")
    model = load_pretrained("runs/tiny/pretrain/hf")
    transformers.AutoModelForCausalLM.from_pretrained("runs/tiny/pretrain/hf")   # no custom code
    vllm.LLM("runs/tiny/pretrain/hf")                                           # likewise

The folder holds config.json, model.safetensors and the tokenizer files; raylm's
parameter names already are Llama's, so the state dict is saved as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from raylm.model.gpt import GPT, GPTConfig
from raylm.tokenizer.bpe import EOS
from raylm.tokenizer.chat import CHAT_TEMPLATE, IM_END

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def hf_config(cfg: GPTConfig, eos_id: int | None = None) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "bos_token_id": eos_id, "eos_token_id": eos_id, "torch_dtype": "float32",
    }


def from_hf_config(config: dict) -> GPTConfig:
    return GPTConfig(
        vocab_size=config["vocab_size"], dim=config["hidden_size"], n_layers=config["num_hidden_layers"],
        n_heads=config["num_attention_heads"], n_kv_heads=config["num_key_value_heads"],
        intermediate_size=config["intermediate_size"], max_seq_len=config["max_position_embeddings"],
        rope_theta=config.get("rope_theta", 10_000.0), norm_eps=config["rms_norm_eps"],
        tie_embeddings=config.get("tie_word_embeddings", False))


def state_dict_for_export(model: GPT, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """`dtype` (fp32 unless asked), contiguous, on CPU; a tied lm_head is left to transformers to re-tie."""
    # cast before the copy to CPU: from a GPU, bf16 moves half the bytes
    state = {k: v.detach().to(dtype).cpu().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight")
    return state


def make_chat_checkpoint(folder: Path) -> None:
    """Turn an exported checkpoint into a chat model's: the chat template, and <|im_end|> ends generation.

    split_special_tokens goes off so that apply_chat_template (and vLLM, which
    tokenizes the rendered template) reads the control tokens the template writes;
    the template escapes "<|" in every message text (raylm/tokenizer/chat.py), so
    user text still never becomes a control token there.
    """
    folder = Path(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(chat_template=CHAT_TEMPLATE, eos_token=IM_END, split_special_tokens=False)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = json.loads((folder / "special_tokens_map.json").read_text())
    (folder / "special_tokens_map.json").write_text(json.dumps({**special, "eos_token": IM_END}, indent=2))
    ids = {t["content"]: t["id"] for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]}
    generation = json.loads((folder / "generation_config.json").read_text())
    generation["eos_token_id"] = [ids[IM_END], ids[EOS]]
    (folder / "generation_config.json").write_text(json.dumps(generation))


def save_pretrained(model: GPT, folder: Path, tokenizer_dir: Path | None = None, chat: bool = False) -> Path:
    """`chat=True` for SFT/RL checkpoints: adds the chat template (make_chat_checkpoint)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    eos_id = None
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).exists():
                shutil.copy(Path(tokenizer_dir) / name, folder / name)
        vocab = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())["added_tokens"]
        eos_id = next((t["id"] for t in vocab if t["content"] == EOS), None)
    (folder / "config.json").write_text(json.dumps(hf_config(model.cfg, eos_id), indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": eos_id, "eos_token_id": eos_id}))
    save_file(state_dict_for_export(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    if chat:
        make_chat_checkpoint(folder)
    return folder


def load_pretrained(folder: Path, device: str | torch.device = "cpu") -> GPT:
    folder = Path(folder)
    cfg = from_hf_config(json.loads((folder / "config.json").read_text()))
    model = GPT(cfg)
    state = load_file(str(folder / "model.safetensors"), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]:
        raise ValueError(f"checkpoint {folder} does not match: missing {missing}, unexpected {unexpected}")
    return model.to(device)
