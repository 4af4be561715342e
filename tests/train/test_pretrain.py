"""Pretraining on Ray Train: loss falls, a killed worker costs only the steps since the last checkpoint."""

from __future__ import annotations

import json
import math
import signal
import threading
import time

import psutil

from raylm.config import GPTConfig, PretrainConfig, StorageConfig
from raylm.storage import Storage


def registered_checkpoint(storage) -> bool:
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
        except ValueError:  # caught mid-write
            pass
    return False


def kill_a_train_worker() -> int:
    for proc in psutil.process_iter(["cmdline"]):
        if any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
            proc.send_signal(signal.SIGKILL)
            return proc.pid
    raise AssertionError("no Ray Train worker process found")


def test_pretrain_survives_a_killed_worker_and_learns(sample_tokenizer, tmp_path):
    from raylm.model.hf import load_pretrained
    from raylm.runs import run_step
    from raylm.train.pretrain import run_pretrain

    cfg = PretrainConfig(model=GPTConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64),
                         num_workers=2, steps=300, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=10,
                         log_every=20, eval_every=150, checkpoint_every=20, max_failures=2)
    storage = Storage(StorageConfig(uri=str(tmp_path)))
    runs = tmp_path / "ray_train"
    result: dict = {}

    def pretrain():
        step = run_step("pretrain", storage, "pretrain", "p1",
                        lambda work: run_pretrain(cfg, sample_tokenizer, work, "ray_train", "p1"))
        result.update(step.metrics)

    thread = threading.Thread(target=pretrain)
    thread.start()
    deadline = time.time() + 300
    while not registered_checkpoint(runs):  # kill only once the controller has the checkpoint
        assert thread.is_alive() and time.time() < deadline, "no checkpoint was registered"
        time.sleep(0.2)
    killed = kill_a_train_worker()
    thread.join(timeout=600)
    assert not thread.is_alive()

    final = result["final"]
    assert killed and result["steps"] == 300
    assert final["restored_from"] is not None and final["restored_from"] >= 20  # resumed, not restarted
    assert final["val_loss"] < math.log(1024) - 2.0  # learned: far below a uniform guess
    assert final["val_bpb"] < result["unigram_val_bits_per_byte"]
    model = load_pretrained(tmp_path / "pretrain" / "hf")
    assert model.cfg.vocab_size == 1024 and model.cfg.dim == 64

    # the exported base model continues a prompt from the command line
    from raylm.cli import main

    assert main(["sample", "--checkpoint", str(tmp_path / "pretrain" / "hf"), "--prompt", "Debian", "--max-tokens", "8",
                 "--temperature", "0"]) == 0
    assert main(["sample", "--checkpoint", str(tmp_path), "--prompt", "x"]) == 2  # no config.json there
