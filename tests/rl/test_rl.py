"""The rl step end to end on the torch engine: a reward function plugs in from the config; a rerun resumes."""

from __future__ import annotations

import json

import pytest
import torch

from raylm.config import ConfigError, RlConfig, StorageConfig
from raylm.model.gpt import GPT, GPTConfig
from raylm.model.hf import save_pretrained
from raylm.runs import StepResult, run_step
from raylm.storage import Storage
from tests.tokenizer.test_bpe import CORPUS


def quarter(task, reply: str) -> float:
    """A custom reward, named in the config as tests.rl.test_rl:quarter."""
    assert isinstance(reply, str) and task.family == "compare"
    return 0.25


def slow_verified(task, reply: str) -> float:
    """The shipped reward, a quarter of a second later per reply: steps that outlast the learner-kill test's
    poll (on a fast machine the whole 5-step run once ended between two polls, with no learner left to kill)."""
    import time

    from raylm.tasks import verified_reward

    time.sleep(0.25)
    return verified_reward(task, reply)


def parity(task, reply: str) -> float:
    """Rewards that differ within a group (so every step trains), named as tests.rl.test_rl:parity."""
    return float(len(reply) % 2)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from raylm.tokenizer.bpe import save, train_bpe

    root = tmp_path_factory.mktemp("rl")
    save(train_bpe(CORPUS, vocab_size=600, min_frequency=1), root / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=600, dim=64, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=128))
    save_pretrained(model, root / "sft" / "hf", tokenizer_dir=root / "tok", chat=True)
    return root  # a run folder with a finished SFT model in sft/hf


def test_custom_reward_resume_and_export(ray_session, policy, tmp_path):
    from raylm.model.hf import load_pretrained
    from raylm.rl.driver import run_rl

    cfg = RlConfig(engine="torch", families=["compare"], reward="tests.rl.test_rl:quarter", steps=2,
                   prompts_per_step=2, group_size=2, max_new_tokens=6, eval_every=2, eval_per_family=3,
                   checkpoint_every=1, rollout_cpus=1, learner_cpus=1)
    storage = Storage(StorageConfig(uri=str(policy)))
    sft = StepResult(storage, "sft", {"config_hash": "sft", "metrics": {}}, skipped=True)

    def rl(settings, folder, state="state/state.pt"):
        return run_step("rl", storage, folder, folder, lambda work: run_rl(settings, sft, work, state)).metrics

    first = rl(cfg, "a")
    history = json.loads((policy / "a" / "history.json").read_text())
    assert [m["step"] for m in history] == [0, 1, 2]
    assert all(m["mean_reward"] == 0.25 for m in history[1:])  # the plugged-in function scored every sample
    # pack_s and reload_s: the learner packed the weights and pushed them into the rollout actors itself
    for key in ("generate_s", "score_s", "train_s", "sync_s", "pack_s", "reload_s", "rollout_tokens_per_s",
                "response_length"):
        assert history[-1][key] >= 0
    assert "pass@1/compare" in history[0] and "pass@1/compare" in history[-1]
    assert first["restored_from"] is None and (policy / "a" / "reward.png").is_file()
    load_pretrained(policy / "a" / "hf")

    resumed = rl(cfg.model_copy(update={"steps": 3}), "b")
    assert resumed["restored_from"] == 2
    assert [m["step"] for m in json.loads((policy / "b" / "history.json").read_text())] == [0, 1, 2, 3]

    for bad in ("tests.rl.test_rl", "tests.rl.nowhere:f", "tests.rl.test_rl:missing"):
        with pytest.raises(ConfigError, match="rl.reward"):
            rl(cfg.model_copy(update={"reward": bad}), "c", "other/state.pt")


def test_a_dead_learner_is_restarted_from_the_saved_state(ray_session, policy):
    """The learner's process dies mid-run (as it would with its node): the step goes on from the saved state."""
    import threading
    import time

    import psutil

    from raylm.rl.driver import run_rl

    cfg = RlConfig(engine="torch", families=["compare"], reward="tests.rl.test_rl:slow_verified", steps=5,
                   prompts_per_step=2, group_size=2, max_new_tokens=6, eval_every=5, eval_per_family=2,
                   checkpoint_every=1, rollout_cpus=1, learner_cpus=1)
    storage = Storage(StorageConfig(uri=str(policy)))
    sft = StepResult(storage, "sft", {"config_hash": "sft", "metrics": {}}, skipped=True)
    result: dict = {}

    def rl():
        result.update(run_step("rl", storage, "killed", "k", lambda work: run_rl(cfg, sft, work, "k/state.pt")).metrics)

    thread = threading.Thread(target=rl)
    thread.start()
    deadline = time.time() + 300
    while not (policy / "k" / "state.pt").is_file():  # killed only once a state was saved
        assert thread.is_alive() and time.time() < deadline, "no state was saved"
        time.sleep(0.2)
    learners = [p for p in psutil.process_iter(["cmdline"]) if "ray::Learner" in " ".join(p.info["cmdline"] or [])]
    assert learners, "no learner process found"
    learners[0].kill()
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert result["actor_failures"] == 1 and result["restored_from"] >= 1
    history = json.loads((policy / "killed" / "history.json").read_text())
    assert [m["step"] for m in history] == [0, 1, 2, 3, 4, 5]  # every step once: nothing lost, nothing redone


def test_dynamic_sampling_drops_uniform_groups_and_refills(ray_session, policy):
    """Every reply scores the same (quarter): no group carries signal, so each step samples its
    max_sampling_rounds rounds of fresh tasks, trains on nothing and leaves the weights as they were."""
    from safetensors.torch import load_file

    from raylm.rl.driver import run_rl, step_tasks

    cfg = RlConfig(engine="torch", families=["compare"], reward="tests.rl.test_rl:quarter", steps=1,
                   prompts_per_step=2, group_size=2, max_new_tokens=6, eval_every=1, eval_per_family=2,
                   rollout_cpus=1, learner_cpus=1, dynamic_sampling=True, max_sampling_rounds=3)
    assert [t.messages for t in step_tasks(cfg, 0, 1)] != [t.messages for t in step_tasks(cfg, 0)]
    assert [t.messages for t in step_tasks(cfg, 0, 1)] == [t.messages for t in step_tasks(cfg, 0, 1)]
    storage = Storage(StorageConfig(uri=str(policy)))
    sft = StepResult(storage, "sft", {"config_hash": "sft", "metrics": {}}, skipped=True)
    run_step("rl", storage, "dapo", "dapo", lambda work: run_rl(cfg, sft, work, "dapo/state.pt"))
    last = json.loads((policy / "dapo" / "history.json").read_text())[-1]
    assert last["sampling_rounds"] == 3 and last["trained_groups"] == 0 and last["mean_reward"] == 0.25
    before, after = load_file(policy / "sft" / "hf" / "model.safetensors"), load_file(policy / "dapo" / "hf" /
                                                                                       "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_overlap_samples_the_next_step_during_the_update(ray_session, policy):
    """rl.overlap: from the second step on, each batch was sampled one step behind the learner, and trained."""
    from raylm.rl.driver import run_rl

    cfg = RlConfig(engine="torch", families=["compare"], reward="tests.rl.test_rl:parity", steps=3,
                   prompts_per_step=2, group_size=4, max_new_tokens=6, eval_every=3, eval_per_family=2,
                   rollout_cpus=1, learner_cpus=1, overlap=True, temperature=2.0)
    storage = Storage(StorageConfig(uri=str(policy)))
    sft = StepResult(storage, "sft", {"config_hash": "sft", "metrics": {}}, skipped=True)
    run_step("rl", storage, "overlap", "overlap", lambda work: run_rl(cfg, sft, work, "overlap/state.pt"))
    history = json.loads((policy / "overlap" / "history.json").read_text())[1:]
    assert [m["policy_lag"] for m in history] == [0, 1, 1]
    assert all(m["trained_samples"] > 0 for m in history)  # the stale batches were trained on, not dropped
    assert all("rollout_wait_s" in m for m in history[:2]) and "rollout_wait_s" not in history[2]
