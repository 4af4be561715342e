"""vLLM loads an exported raylm checkpoint with no custom code and decodes greedily as raylm does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

from raylm.model.engine import Engine
from raylm.model.gpt import GPT, GPTConfig
from raylm.model.hf import save_pretrained
from tests.tokenizer.test_bpe import CORPUS

VLLM_SCRIPT = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    if __name__ == "__main__":  # vLLM spawns processes
        path, prompts = sys.argv[1], json.loads(sys.argv[2])
        llm = LLM(model=path, dtype="float32", gpu_memory_utilization=0.5, enforce_eager=True, seed=0)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                            SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
        print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
""")


def test_vllm_generates_what_raylm_generates(tmp_path):
    from raylm.tokenizer.bpe import save, train_bpe

    tok_dir = tmp_path / "tok"
    save(train_bpe(CORPUS, vocab_size=600, min_frequency=1), tok_dir)
    torch.manual_seed(0)
    # head_dim 32: the smallest that vLLM's CPU attention supports (32, 64, 80, ... 512)
    model = GPT(GPTConfig(vocab_size=600, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128))
    with torch.no_grad():  # sharpen the logits so that greedy choices are not near-ties
        model.lm_head.weight.mul_(20)
    save_pretrained(model, tmp_path / "hf", tokenizer_dir=tok_dir)
    prompts = [[0, 17, 42, 99], [0, 5, 300, 301, 302, 7]]
    ours = Engine(model.eval()).generate(prompts, max_new_tokens=12, temperature=0)

    (tmp_path / "run_vllm.py").write_text(VLLM_SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, str(tmp_path / "run_vllm.py"), str(tmp_path / "hf"), json.dumps(prompts)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.stdout + done.stderr)[-4000:]
    assert json.loads(lines[-1][len("RESULT "):]) == ours
