"""What the training loop reads: token shards or packed SFT rows, in a step-determined order, prefetched.

    stream = open_stream(loop_config, "train")          # TokenStream (pretraining) or PackedRows (SFT)
    seqs, mask = stream.batch(first=0, size=16)         # (16, seq_len + 1) int64, mask None or (16, seq_len)
    for seqs, mask in Prefetcher(stream, firsts, size=16, pin=True):   # built on a thread, pinned
        ...

Sample k of the run is a pure function of (seed, k), so a restored run reads exactly
the batches it would have read, and ranks never overlap. The Prefetcher builds the next
batches on a background thread while the device runs the current one (numpy slicing
and, on GPU, the copy into pinned memory happen off the training thread; the GIL is
released for most of it). Nothing here imports Ray or pyarrow unless the run's storage
is remote, so benchmarks/gpu_check.py runs it where only torch is installed.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from raylm.tokenizer.shard_format import read_shard


class TokenStream:
    """Sequences of seq_len + 1 tokens drawn from the shards in a seeded, per-epoch permutation.

    Sample k of the run (counted over all ranks) is a pure function of (seed, k): a
    restored run continues exactly where the failed one was, and ranks never overlap.
    """

    def __init__(self, shards: list[np.ndarray], seq_len: int, seed: int):
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.seq_len, self.seed = seq_len, seed
        self.num_sequences = int((self.offsets[-1] - 1) // seq_len)
        if self.num_sequences < 1:
            raise ValueError(f"{self.offsets[-1]} tokens are too few for sequences of {seq_len}")
        self._perm_epoch, self._perm = -1, None

    def _tokens(self, start: int, length: int) -> np.ndarray:
        parts, pos = [], start
        while length > 0:
            shard = int(np.searchsorted(self.offsets, pos, side="right") - 1)
            local = pos - self.offsets[shard]
            piece = self.shards[shard][local:local + length]
            parts.append(piece)
            pos += len(piece)
            length -= len(piece)
        return np.concatenate(parts).astype(np.int64)

    def sample(self, k: int) -> np.ndarray:
        epoch, index = divmod(k, self.num_sequences)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences)
            self._perm_epoch = epoch
        return self._tokens(int(self._perm[index]) * self.seq_len, self.seq_len + 1)

    def batch(self, first: int, size: int) -> tuple[torch.Tensor, None]:
        return torch.from_numpy(np.stack([self.sample(first + i) for i in range(size)])), None


class PackedRows:
    """Rows of whole conversations packed to seq_len + 1 tokens, with a loss mask (raylm/train/sft.py writes them).

    Row k of the run is row perm_epoch[k % N]: the same pure-function-of-the-step
    order as TokenStream, so SFT resumes exactly too.
    """

    def __init__(self, path: Path, seed: int | None):
        packed = np.load(path)
        self.tokens, self.mask = packed["tokens"], packed["mask"]
        self.num_sequences, self.seed = len(self.tokens), seed
        if self.num_sequences < 1:
            raise ValueError(f"{path} holds no rows")
        self._perm_epoch, self._perm = -1, None

    def row(self, k: int) -> int:
        epoch, index = divmod(k, self.num_sequences)
        if self.seed is None:  # val: always the same rows in file order
            return index
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences)
            self._perm_epoch = epoch
        return int(self._perm[index])

    def batch(self, first: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.row(k) for k in range(first, first + size)]
        tokens = torch.from_numpy(self.tokens[rows].astype(np.int64))
        return tokens, torch.from_numpy(self.mask[rows, 1:].astype(np.float32))


def local_file(config, rel: str) -> Path:
    """A node-local path of `rel` in the run's storage. Local storage is read in place without
    raylm.storage (which needs pyarrow); remote storage goes through its node-local cache."""
    if "://" not in config.storage.uri:
        path = Path(config.storage.uri).expanduser() / rel
        if not path.exists():
            raise FileNotFoundError(f"not in storage: {path}")
        return path
    from raylm.storage import Storage

    return Storage(config.storage).local(rel)


def open_stream(config, split: str):
    """The batches of one split of a LoopConfig: packed conversation rows (SFT) or token shards (pretraining)."""
    files = [local_file(config, rel) for rel in (config.train_files if split == "train" else config.val_files)]
    if config.data == "rows":
        return PackedRows(files[0], config.train.seed if split == "train" else None)
    seed = config.train.seed if split == "train" else 0
    return TokenStream([read_shard(f) for f in files], config.train.seq_len, seed)


class Prefetcher:
    """Yields stream.batch(first, size) for each `first`, built `depth` batches ahead on a daemon thread.

    With `pin`, batches are copied into pinned (page-locked) memory there, so the training thread's
    `.to(device, non_blocking=True)` is an asynchronous DMA. An error in the thread is raised in
    the consumer at the batch it concerns."""

    _DONE = object()

    def __init__(self, stream, firsts: Iterable[int], size: int, pin: bool = False, depth: int = 4):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(stream, list(firsts), size, pin), daemon=True,
                                        name="raylm-prefetch")
        self._thread.start()

    def _fill(self, stream, firsts: list[int], size: int, pin: bool) -> None:
        try:
            for first in firsts:
                seqs, mask = stream.batch(first, size)
                if pin:
                    seqs, mask = seqs.pin_memory(), None if mask is None else mask.pin_memory()
                if not self._put((seqs, mask)):
                    return
            self._put(self._DONE)
        except BaseException as error:  # noqa: BLE001 (handed to the consumer, which raises it)
            self._put(error)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        try:
            while (item := self._queue.get()) is not self._DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
