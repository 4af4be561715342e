"""The token shard file format, in numpy alone (no Ray, no pyarrow): what training reads.

A shard is a 1 KiB header (256 little-endian int32: magic, version, token count,
bytes per token) followed by the tokens (uint16 when the vocabulary fits, else
uint32), so that training reads it with np.memmap and no parsing. raylm/tokenizer/shards.py
writes them with Ray Data; the training loop and benchmarks/gpu_check.py (which runs
where only torch is installed) read them through this module.

    write_shard(path, np.array([1, 2, 3], dtype=np.uint16))
    tokens = read_shard(path)            # np.memmap
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAGIC, VERSION, HEADER_INTS = 20261126, 1, 256


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def shard_bytes(tokens: np.ndarray) -> bytes:
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:4] = [MAGIC, VERSION, len(tokens), tokens.dtype.itemsize]
    return header.tobytes() + tokens.astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes()


def write_shard(path: Path, tokens: np.ndarray) -> None:
    Path(path).write_bytes(shard_bytes(tokens))


def read_shard(path: Path) -> np.ndarray:
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if len(header) < 4 or header[0] != MAGIC or header[1] != VERSION:
        raise ValueError(f"{path} is not a raylm token shard")
    dtype = np.dtype("<u2") if header[3] == 2 else np.dtype("<u4")
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_INTS * 4, shape=(int(header[2]),))
