"""Typed configuration: pydantic models, YAML presets and dotted overrides.

A run is configured by one `RunConfig`: a preset from raylm/configs/ (`tiny`, the
CPU default, or `cluster`) or a YAML file, then `-o key.path=value` overrides.
Unknown keys and bad values are rejected with a message that names the key:

    cfg = load_config("tiny", ["data.filters.language_threshold=0.7"])
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PRESETS_DIR = Path(__file__).parent / "configs"
SAMPLE_CRAWL = Path(__file__).parent / "sample" / "crawl"


class ConfigError(ValueError):
    """A configuration problem, with a message that names the offending key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(Strict):
    """Where every artifact of a run lives (raylm/storage.py); every node of the cluster must reach it."""

    uri: str = Field("runs", description="a local or mounted folder, s3://bucket/prefix, gs://bucket/prefix, "
                     "or any URI pyarrow.fs resolves; runs live in <uri>/<name>/")
    endpoint_override: str | None = Field(None, description="S3-compatible endpoint (host:port), e.g. MinIO")
    region: str | None = Field(None, description="S3 region")
    scheme: Literal["http", "https"] | None = Field(None, description="S3 endpoint scheme")
    cache_dir: str | None = Field(None, description="node-local cache of downloaded artifacts; "
                                  "None: $TMPDIR/raylm-cache")


class RayConfig(Strict):
    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray (or joins RAY_ADDRESS)")
    num_cpus: int | None = Field(2, ge=1, description="CPUs for a local Ray; ignored when joining a cluster")


class FilterConfig(Strict):
    """Thresholds of the FineWeb filter chain (datatrove's defaults unless noted)."""

    url_blocklist: bool = True
    language: str = "en"
    language_threshold: float = Field(0.65, ge=0, le=1)
    gopher_dup_line_frac: float = Field(0.3, ge=0, le=1)
    gopher_dup_para_frac: float = Field(0.3, ge=0, le=1)
    gopher_min_doc_words: int = Field(50, ge=0)
    gopher_max_doc_words: int = Field(100_000, ge=1)
    gopher_max_symbol_word_ratio: float = Field(0.1, ge=0)
    gopher_min_stop_words: int = Field(2, ge=0)
    c4_min_num_sentences: int = Field(5, ge=-1)
    c4_min_words_per_line: int = Field(3, ge=-1)
    c4_filter_curly_bracket: bool = True
    fineweb_line_punct_thr: float = Field(0.12, ge=0, le=1)
    fineweb_short_line_thr: float = Field(0.67, ge=0, le=1)
    fineweb_char_duplicates_ratio: float = Field(0.01, ge=0, le=1)
    fineweb_new_line_ratio: float = Field(0.3, ge=0)


class DedupConfig(Strict):
    exact: bool = True
    minhash: bool = True
    ngram_size: int = Field(5, ge=1, description="word n-grams (shingles)")
    num_buckets: int = Field(14, ge=1, description="LSH bands")
    hashes_per_bucket: int = Field(8, ge=1, description="rows per band")
    verify: Literal["exact", "signature", "none"] = Field(
        "exact", description="check candidate pairs by exact shingle Jaccard, by signature agreement, or not at all")
    verify_threshold: float = Field(0.8, ge=0, le=1, description="min Jaccard of a verified pair")
    seed: int = 1


class PiiConfig(Strict):
    emails: bool = True
    ips: bool = True


class DataConfig(Strict):
    input: list[str] = Field(default_factory=lambda: [str(SAMPLE_CRAWL)],
                             description="files or folders (local, mounted, s3://...), or a Common Crawl "
                             "warc.paths(.gz) listing")
    listing_base: str = Field("s3://commoncrawl/", description="what the paths of a warc.paths listing are "
                              "relative to")
    extractor: Literal["trafilatura", "resiliparse"] = "trafilatura"
    batch_size: int = Field(64, ge=1, description="documents per Ray Data batch")
    num_workers: int = Field(2, ge=1, description="actors in the cleaning pool")
    worker_cpus: float = Field(0.5, gt=0, description="CPUs each cleaning actor reserves; the pool must leave room "
                               "for the read tasks (0.25 each, 1 for listing JSONL/parquet) or it starves its input")
    filters: FilterConfig = Field(default_factory=FilterConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)


class TokenizerConfig(Strict):
    vocab_size: int = Field(4096, ge=512, description="including the special tokens")
    min_frequency: int = Field(2, ge=1)
    val_fraction: float = Field(0.05, gt=0, lt=1, description="share of documents held out (by id hash)")
    shard_tokens: int = Field(1_000_000, ge=1024, description="about this many tokens per shard (whole documents)")
    max_train_chars: int = Field(2_000_000_000, ge=1, description="the BPE trains on at most this much text")


class GPTConfig(Strict):
    """The model's shape: one schema for the config files, the training workers and raylm/model/gpt.py."""

    vocab_size: int = Field(0, ge=0, description="0: the tokenizer's vocabulary size")
    dim: int = Field(128, ge=1)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    n_kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(0, ge=0, description="0: the Llama rule, ~8/3 * dim rounded up to 64")
    max_seq_len: int = Field(256, ge=1)
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_intermediate_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("intermediate_size"):
            data = {**data, "intermediate_size": 64 * math.ceil(8 * data.get("dim", 128) / 3 / 64)}
        return data

    @model_validator(mode="after")
    def _check_heads(self) -> "GPTConfig":
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError("dim must divide by n_heads, and n_heads by n_kv_heads")
        return self

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class TrainConfig(Strict):
    """The training loop's settings, shared by pretraining and SFT (raylm/train/loop.py)."""

    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks)")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs each worker reserves, and its torch threads on CPU "
                                 "(one worker of N CPUs instead of N DDP workers: benchmarks/pretrain_cpu.py)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the workers: PACK fills a node first, SPREAD one per node")
    use_gpu: bool = False
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1, description="sequences per worker per micro-batch")
    seq_len: int = Field(128, ge=8)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["cosine", "wsd"] = "cosine"
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(100, ge=1)
    eval_batches: int = Field(8, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    sample_every: int = Field(0, ge=0, description="0: only at the end")
    max_failures: int = Field(2, ge=0, description="worker failures survived by restoring the last checkpoint")
    compile: bool = Field(False, description="torch.compile of the forward and the loss (GPU)")
    parallelism: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: a whole model per worker; fsdp: FSDP2, parameters, gradients and optimizer "
                           "state sharded over the workers (models past one GPU's memory), sharded checkpoints")
    activation_checkpointing: bool = Field(False, description="recompute each block in the backward: less "
                                                              "memory, ~1/3 more compute")
    loss_chunk_tokens: int = Field(0, ge=0, description="cross-entropy over chunks of this many tokens, so "
                                                        "fp32 logits of a whole micro-batch never exist; 0: off")
    prefetch: int = Field(4, ge=1, description="micro-batches built ahead on a background thread")
    nccl_env: dict[str, str] = Field(default_factory=dict, description="environment of the training workers "
                                                                       "(NCCL_* settings), via Ray's runtime env")
    seed: int = 0


class PretrainConfig(TrainConfig):
    model: GPTConfig = Field(default_factory=GPTConfig)


DEFAULT_MIX = {"arithmetic": 3000, "compare": 2000, "spelling": 2000, "identity": 1500,
               "unknown_entities": 1500, "search": 1500, "poem": 1500}


class SftConfig(TrainConfig):
    """SFT: generated task conversations (raylm/tasks) plus optional JSONL conversations, from the base model."""

    mix: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_MIX),
                                description="conversations per task family")
    conversations: list[str] = Field(default_factory=list, description="JSONL files in OpenAI messages format")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="share of conversations held out for val loss")
    seq_len: int = Field(256, ge=8, description="packed row length; at most the model's max_seq_len")
    steps: int = Field(400, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    data_seed: int = Field(1, description="seed of the generated conversations (eval uses other seeds)")
    pretrain_mix: float = Field(0.0, ge=0, lt=1, description="share of SFT train rows cut from the pretraining "
                                "train shards and trained on every token, so SFT keeps modelling the web "
                                "(PPO-ptx's idea); val rows stay conversations only")
    pretrain_weight: float = Field(1.0, gt=0, le=1, description="loss weight of each pretraining token against "
                                   "an assistant token's 1: below 1 the web text regularises without taking "
                                   "the conversations' share of the gradient")
    calculator_share: float = Field(1.0, ge=0, le=1, description="share of arithmetic demonstrations that call "
                                    "the calculator; the rest write the same lines mentally, so RL with `rl.tools` "
                                    "can learn when the call pays (1: every one calls it)")


class RlConfig(Strict):
    """GRPO on verifiable task families: rollout actors, a learner actor, in-memory weight sync."""

    engine: Literal["vllm", "torch"] = Field("vllm", description="rollout engine; torch if vLLM is not installed")
    num_rollout_workers: int = Field(1, ge=1, description="rollout actors")
    rollout_cpus: float = Field(1.0, gt=0)
    rollout_gpus: float = Field(0.0, ge=0)
    learner_cpus: float = Field(1.0, gt=0)
    learner_gpus: float = Field(0.0, ge=0)
    learner_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the learner keeps the "
                                                          "policy, the reference model and every batch: auto is "
                                                          "cuda when learner_gpus > 0 and the learner sees a GPU, "
                                                          "else cpu; cuda updates under bf16 autocast with fused "
                                                          "AdamW, and fails with a clear error where no GPU is seen")
    kv_cache_gib: int = Field(1, ge=1, description="vLLM's KV cache on CPU (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="share of its GPU's memory each vLLM "
                                          "rollout engine takes (weights, activations, KV cache); raise it when a "
                                          "rollout actor has a GPU to itself, keep it low when it shares one (the "
                                          "learner's, rollout_gpus < 1). On CPU the KV cache is kv_cache_gib")
    sync_dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="dtype of the weights the learner "
                                                       "pushes to the rollout engines, which cast them to their own "
                                                       "(vLLM: bf16 on a GPU, fp32 on CPU). bf16: half the bytes, and "
                                                       "measured faster end to end (125M params, vLLM-CPU: 240 vs "
                                                       "480 MiB, pack 0.4 vs 0.6 s, reload 0.6 vs 0.9-1.4 s); on a "
                                                       "GPU vLLM rounds to bf16 anyway. float32: CPU engines sample "
                                                       "from exactly the learner's weights")
    families: list[str] = Field(default_factory=lambda: ["compare"],
                                description="task families to train on (benchmarks/RESULTS.md: why compare)")
    reward: str = Field("raylm.tasks:verified_reward",
                        description="module:callable(task, reply_text) -> float; the default also checks the steps")
    steps: int = Field(80, ge=1)
    prompts_per_step: int = Field(32, ge=1)
    group_size: int = Field(8, ge=2, description="samples per prompt (the GRPO group)")
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(64, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    clip_eps: float = Field(0.2, gt=0)
    kl_coef: float = Field(0.0, ge=0, description="KL to the SFT model (k3); 0 disables the reference model")
    updates_per_batch: int = Field(1, ge=1, description=">1 reuses a batch (the ratio clipping then matters)")
    tools: bool = Field(False, description="tool calls inside rollouts: a sample pauses at <|/tool_call|>, "
                        "the calculator or search runs, its result is appended (masked out of the loss) and the "
                        "sample goes on, as in serving and the eval")
    max_tool_rounds: int = Field(2, ge=1, description="with tools: tool calls per sample at most")
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose replies all got the same reward "
                                   "(no signal) and fill the batch from fresh tasks")
    max_sampling_rounds: int = Field(3, ge=1, description="with dynamic_sampling: rollout rounds per step at most")
    overlap: bool = Field(False, description="sample the next step's rollouts while the learner trains on this "
                          "step's (one step off-policy; the ratio is taken against the sampling weights): the "
                          "rollout and learner actors work at once instead of taking turns (raylm/rl/steps.py)")
    micro_batch: int = Field(32, ge=1)
    eval_every: int = Field(20, ge=1)
    eval_per_family: int = Field(200, ge=1)
    eval_seed: int = Field(4321, description="held-out tasks, another seed than training and SFT")
    checkpoint_every: int = Field(20, ge=1)
    max_failures: int = Field(2, ge=0, description="actor deaths survived by restarting from the saved state")
    seed: int = 0


class PreferencesConfig(Strict):
    """Preference labels (raylm/rlhf): open-ended prompts, k sampled answers each, ranked by people or the
    synthetic rater, kept in a database (raylm/rlhf/labels.py)."""

    database_url: str | None = Field(None, description="SQLAlchemy URL of the label database (PostgreSQL on a "
                                     "cluster); None: SQLite at <run>/labels/labels.db (local storage only)")
    family: str = Field("poem", description="open-ended task family the prompts come from (raylm/tasks)")
    items: int = Field(600, ge=1, description="prompts sampled for labeling per model")
    answers_per_item: int = Field(4, ge=2, le=8, description="k answers shown together and ranked")
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(64, ge=1)
    rollout_workers: int | None = Field(None, ge=1, description="rollout actors sampling the answers (each "
                                        "with rl.rollout_cpus / rl.rollout_gpus); None: rl.num_rollout_workers. "
                                        "Nothing else runs during this step, so it can take the whole machine")
    rater: Literal["synthetic", "human"] = Field("synthetic", description="synthetic: raylm/rlhf/rater.py ranks "
                                                  "every item (tiny preset, tests); human: `raylm label`")
    rater_agreement: float = Field(0.75, gt=0.5, le=1, description="the synthetic rater's noise is tuned so "
                                   "that this share of its pairs agree with its noise-free order")
    overlap: int = Field(1, ge=1, description="labelers per item (>1 measures agreement)")
    lease_s: float = Field(900, gt=0, description="an item shown to a labeler is held for them this long")
    host: str = Field("127.0.0.1", description="`raylm label`: address of the labeling page")
    port: int = Field(8001, ge=1, le=65535)
    seed: int = 7


class RewardConfig(TrainConfig):
    """Bradley-Terry reward models on the rankings (raylm/rlhf/reward.py): the proxy RL optimises, and a
    watcher trained on the disjoint other half of the items (the hacking alarm)."""

    num_workers: int = Field(2, ge=1)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1, description="rankings per worker per step (all k answers of each); "
                            "each model's batch is batch_size x num_workers, also side by side")
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    eval_every: int = Field(100, ge=1)
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share of subjects held out for accuracy")
    scorer_actors: int = Field(1, ge=1, description="Ray actors scoring RL samples with the reward model")
    scorer_cpus: float = Field(0.0, ge=0, description="0 on a laptop: scoring runs while rollouts wait")

    @model_validator(mode="after")
    def _loop_features(self) -> "RewardConfig":
        # the reward model trains in a loop of its own (raylm/train/reward_loop.py): DDP, whole forward
        unsupported = {"parallelism": self.parallelism != "ddp",
                       "activation_checkpointing": self.activation_checkpointing,
                       "loss_chunk_tokens": self.loss_chunk_tokens != 0}
        if any(unsupported.values()):
            raise ValueError(f"reward training does not support {[k for k, v in unsupported.items() if v]}: "
                             f"leave them at their defaults")
        return self


class RlhfConfig(RlConfig):
    """RL against the reward model (raylm/rlhf/driver.py), with KL to SFT and the hacking alarm."""

    families: list[str] = Field(default_factory=lambda: ["poem"])
    reward: str = Field("reward_model", description="fixed: the reward step's proxy model scores samples")
    kl_coef: float = Field(0.05, ge=0, description="KL to the SFT model (k3); KL is logged also when 0")
    normalize_reward: bool = Field(True, description="whiten reward-model scores over each batch")
    length_penalty: float = Field(0.0, ge=0, description="subtracted per response token (normalised units)")
    validation_prompts: int = Field(64, ge=1, description="unseen prompts scored by the watcher every eval")
    final_prompts: int = Field(300, ge=1, description="held-out-subject prompts of the final gold win rate")
    alarm: Literal["stop", "rollback", "off"] = Field("rollback", description="when the alarm fires: stop and "
                                                        "keep the best checkpoint, or roll back and stop")
    alarm_support: float = Field(0.3, gt=0, le=1, description="fires when this share of one step's samples "
                                 "leaves the reward model's support: longer, more repetitive or made of more unseen "
                                 "words than its training answers, or unlikely under SFT (checked every step)")
    alarm_divergence: float = Field(0.5, gt=0, description="fires when the watcher's validation score falls "
                                    "this far (in its std units) below its best while the proxy's rises")
    alarm_rater_accuracy: float | None = Field(None, gt=0.5, le=1, description="how often one rater's order of "
                                               "a pair is right, for the agreement signal's floor (raylm/rlhf/"
                                               "monitor.py); None: the synthetic rater's preferences.rater_agreement, "
                                               "and with people the signal is off unless this is set (from the "
                                               "labels' inter-labeler agreement q: (1 + sqrt(2q - 1)) / 2)")
    ptx_coef: float = Field(0.0, ge=0, description="weight of the SFT loss on demonstrations of the other task "
                            "families mixed into every update (InstructGPT's PPO-ptx, with SFT data): keeps "
                            "what SFT taught outside the rewarded prompts")
    ptx_demos: int = Field(16, ge=1, description="demonstrations per update when ptx_coef > 0, drawn fresh "
                           "each step from sft.mix's families other than rlhf.families")


class EvalConfig(Strict):
    num_per_family: int = Field(200, ge=1, description="held-out tasks per family (about +-7 points at 50%)")
    seed: int = Field(1234, description="seed of the held-out tasks; differs from sft.data_seed")
    max_new_tokens: int = Field(96, ge=1)
    max_tool_rounds: int = Field(2, ge=0)
    batch_size: int = Field(64, ge=1)


class AutoscalingConfig(Strict):
    """Ray Serve autoscaling of the model replicas (each replica: HTTP ingress + engine)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(16, gt=0, description="scale up when replicas average more than this")


class ServeConfig(Strict):
    """`raylm serve`: the OpenAI-compatible endpoint on Ray Serve."""

    engine: Literal["vllm", "torch"] = Field("vllm", description="replica engine; torch if vLLM is not installed")
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 to accept other machines (the cluster "
                      "preset does)")
    port: int = Field(8000, ge=1, le=65535)
    model_name: str = Field("raylm", description="the `model` clients send, listed by /v1/models")
    system_prompt: str | None = Field(None, description="default system message; None: the raylm identity")
    api_key_env: str = Field("RAYLM_API_KEY", description="env var holding the bearer token (the replica "
                             "process's own env, e.g. a Kubernetes Secret; never put into Ray's runtime env)")
    api_key_file: str | None = Field(None, description="file holding the bearer token (a mounted Secret); "
                                     "wins over api_key_env")
    require_api_key: bool = Field(False, description="a replica without a key refuses to start (cluster preset)")
    max_body_mb: float = Field(4.0, gt=0, description="request bodies past this get a 413, read or not")
    body_timeout_s: float = Field(30.0, gt=0, description="a body not received within this gets a 408")
    tools: list[Literal["search", "calculator"]] = Field(default_factory=lambda: ["search", "calculator"],
                                                          description="tools the server runs for the model")
    search_db: str | None = Field(None, description="FTS5 index; None: runs/<name>/search.db from the data step")
    max_tool_rounds: int = Field(2, ge=0)
    default_max_tokens: int = Field(256, ge=1, description="when a request gives no max_tokens")
    max_tokens_cap: int = Field(512, ge=1, description="a request's max_tokens is cut to this")
    stream_interval_ms: float = Field(20, ge=0, description="tokens sampled within this window go out as one SSE "
                                      "chunk (the first at once); 0: one chunk per engine step")
    max_ongoing_requests: int = Field(64, ge=1, description="concurrent requests per replica (Serve's bound)")
    max_queued_requests: int = Field(256, ge=-1, description="beyond this, new requests get 503; -1: no limit")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    replica_cpus: float = Field(1.0, gt=0)
    replica_gpus: float = Field(0.0, ge=0)
    replica_resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources each "
                                                "replica needs, e.g. {accelerator_type:H100: 0.001} to pick nodes")
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", description="where Serve runs its HTTP proxies (a load balancer in front of every node, or "
        "one on the head)")
    kv_cache_gib: int = Field(1, ge=1, description="vLLM's KV cache on CPU (VLLM_CPU_KVCACHE_SPACE)")
    colocate_engine_core: bool = Field(True, description="CPU: run vLLM's engine core on its worker's cores "
                                       "(they take turns), leaving the rest to HTTP (raylm/serve/placement.py)")
    colocate_from_requests: int = Field(1, ge=1, description="CPU: the engine core moves onto its worker's "
                                        "cores while at least this many requests run; 1 (any request) measured "
                                        "best (benchmarks/RESULTS.md, 'Time to first token')")


class RunConfig(Strict):
    name: str = "tiny"
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    rl: RlConfig = Field(default_factory=RlConfig)
    preferences: PreferencesConfig = Field(default_factory=PreferencesConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    rlhf: RlhfConfig = Field(default_factory=RlhfConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`data.min_words=50` -> ("data.min_words", 50); values are parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' must look like key.path=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _read_yaml(preset_or_file: str) -> dict:
    path = Path(preset_or_file)
    if not path.suffix:
        path = PRESETS_DIR / f"{preset_or_file}.yaml"
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise ConfigError(f"config '{preset_or_file}' not found (presets: {presets}, or a path to a .yaml file)")
    return yaml.safe_load(path.read_text()) or {}


def load_config(preset_or_file: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    tree = _read_yaml(preset_or_file)
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ConfigError("invalid config: " + "; ".join(problems)) from None
