"""Token shards: the cleaned corpus tokenized on Ray Data into fixed-size binary shards.

Tokenization runs as Ray Data tasks fused with the parquet read; the driver packs
the token stream into shards (bounded memory: one shard at a time).
A shard is a 1 KiB header (256 little-endian int32: magic, version, token count,
bytes per token) followed by the tokens (uint16 when the vocabulary fits, else
uint32), so that training reads it with np.memmap and no parsing. Every document
starts with <|endoftext|>, which marks document boundaries. Documents go to the
train or val split by a hash of their id, so a split never holds half a document.

    write_token_shards("runs/tiny/data/kept", "runs/tiny/tokenizer", "runs/tiny/tokenizer/shards")
    tokens = read_shard("runs/tiny/tokenizer/shards/train_00000.bin")   # np.memmap
"""

from __future__ import annotations

import functools
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray.data

from raylm.tokenizer.bpe import EOS, fast_encoder, load

MAGIC, VERSION, HEADER_INTS = 20261126, 1, 256


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_shard(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:4] = [MAGIC, VERSION, len(tokens), tokens.dtype.itemsize]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes())


def read_shard(path: Path) -> np.ndarray:
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC or header[1] != VERSION:
        raise ValueError(f"{path} is not a raylm token shard (magic {header[0]}, version {header[1]})")
    dtype = np.dtype("<u2") if header[3] == 2 else np.dtype("<u4")
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_INTS * 4, shape=(int(header[2]),))


def is_val(doc_id: str, val_fraction: float) -> bool:
    return zlib.crc32(doc_id.encode()) % 10_000 < val_fraction * 10_000


@functools.lru_cache(maxsize=4)
def _cached_encoder(tokenizer_dir: str):
    # Building it takes milliseconds, so plain tasks (fused with the parquet read) beat an
    # actor pool; the cache makes it once per Ray worker process.
    tok = load(Path(tokenizer_dir))
    return fast_encoder(tok), tok.token_to_id(EOS)


def tokenize_batch(batch: pa.Table, tokenizer_dir: str, val_fraction: float) -> pa.Table:
    """(id, text) batch -> (split, tokens, num_bytes) with <|endoftext|> before each document."""
    encoder, eos = _cached_encoder(tokenizer_dir)
    texts = batch.column("text").to_pylist()
    ids = encoder.encode_ordinary_batch(texts, num_threads=1)  # Ray tasks are the parallelism
    return pa.table({
        "split": ["val" if is_val(i, val_fraction) else "train" for i in batch.column("id").to_pylist()],
        "tokens": pa.array([[eos, *x] for x in ids], pa.list_(pa.int32())),
        "num_bytes": [len(t.encode("utf-8")) for t in texts],
    })


class ShardWriter:
    """Packs a token stream into shards of exactly `shard_tokens` tokens (the last one may be shorter)."""

    def __init__(self, folder: Path, split: str, shard_tokens: int, dtype: np.dtype):
        self.folder, self.split, self.shard_tokens, self.dtype = Path(folder), split, shard_tokens, dtype
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.paths: list[Path] = []
        self.num_tokens = 0
        self.num_bytes = 0

    def add(self, tokens: np.ndarray, num_bytes: int) -> None:
        self.buffer.append(tokens.astype(self.dtype))
        self.buffered += len(tokens)
        self.num_tokens += len(tokens)
        self.num_bytes += num_bytes
        while self.buffered >= self.shard_tokens:
            stream = np.concatenate(self.buffer)
            self._flush(stream[: self.shard_tokens])
            rest = stream[self.shard_tokens:]
            self.buffer, self.buffered = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        if self.buffered:
            self._flush(np.concatenate(self.buffer))
        self.buffer, self.buffered = [], 0

    def _flush(self, tokens: np.ndarray) -> None:
        path = self.folder / f"{self.split}_{len(self.paths):05d}.bin"
        write_shard(path, tokens)
        self.paths.append(path)


def write_token_shards(kept_dir: Path, tokenizer_dir: Path, out_dir: Path, shard_tokens: int = 1_000_000,
                       val_fraction: float = 0.05, batch_size: int = 64) -> dict:
    """Tokenize DIR/kept with Ray Data tasks; the driver packs the token stream into shards."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(load(Path(tokenizer_dir)).get_vocab_size())
    writers = {split: ShardWriter(out_dir, split, shard_tokens, dtype) for split in ("train", "val")}
    tokenized = ray.data.read_parquet(str(kept_dir), columns=["id", "text"]).map_batches(
        tokenize_batch, fn_args=(str(tokenizer_dir), val_fraction), batch_format="pyarrow", batch_size=batch_size)
    num_docs = {"train": 0, "val": 0}
    for batch in tokenized.iter_batches(batch_format="pyarrow", batch_size=256):
        for split, tokens, num_bytes in zip(*(batch.column(c).to_pylist() for c in ("split", "tokens", "num_bytes"))):
            writers[split].add(np.asarray(tokens), num_bytes)
            num_docs[split] += 1
    for writer in writers.values():
        writer.close()
    return {split: {"documents": num_docs[split], "tokens": w.num_tokens, "bytes": w.num_bytes,
                    "shards": [p.name for p in w.paths]} for split, w in writers.items()}
