"""Tokenizers: GPT-2 BPE through tiktoken (the default) and raw UTF-8 bytes (no download).

Both turn a list of documents into one flat uint16 token stream with the end-of-text id
between documents, which is all the data pipeline needs.
"""

from __future__ import annotations

import array
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from picollm.errors import DataError

EOT_TEXT = "<|endoftext|>"
# Documents per task handed to a thread: a few tasks per thread balance uneven documents, and each task's
# per-call overhead (a future, an array) is paid per ~hundred documents, not per document.
_DOCS_PER_TASK = 128


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_id: int

    def encode_docs(self, docs: Sequence[str]) -> np.ndarray: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus an end-of-text id 256. Needs no files; good for tests."""

    name = "bytes"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_docs(self, docs: Sequence[str]) -> np.ndarray:
        parts: list[np.ndarray] = []
        eot = np.array([self.eot_id], dtype=np.uint16)
        for doc in docs:
            parts.append(np.frombuffer(doc.encode("utf-8"), dtype=np.uint8).astype(np.uint16))
            parts.append(eot)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(i for i in ids if i < 256)
        return data.decode("utf-8", errors="replace")


class TiktokenTokenizer:
    """GPT-2's BPE (vocab 50257, end-of-text 50256) via tiktoken."""

    def __init__(self, encoding: str = "gpt2") -> None:
        import tiktoken

        try:
            self._enc = tiktoken.get_encoding(encoding)
        except Exception as exc:  # tiktoken raises plain requests/IO errors when offline
            raise DataError(
                f"tiktoken could not load the '{encoding}' files ({type(exc).__name__}); offline, set "
                "TIKTOKEN_CACHE_DIR to a folder holding them, or use --set data.tokenizer=bytes"
            ) from None
        self.name = encoding
        self.vocab_size = self._enc.n_vocab
        self.eot_id = self._enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_docs(self, docs: Sequence[str]) -> np.ndarray:
        """Every document encoded as ordinary text, end-of-text after each, on all cores.

        tiktoken releases the GIL inside each call, so threads that each encode a run of documents one by
        one use every core; no document is joined to another (no copies, no special-token scan), and a
        story that happens to contain the text "<|endoftext|>" stays text instead of becoming the id.
        """
        tasks = [docs[i : i + _DOCS_PER_TASK] for i in range(0, len(docs), _DOCS_PER_TASK)]
        if not tasks:
            return np.zeros(0, dtype=np.uint16)
        threads = max(1, min(len(tasks), os.cpu_count() or 1))
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(self._encode_run, tasks))
        return np.concatenate([np.frombuffer(part, dtype=np.uint16) for part in parts])

    def _encode_run(self, docs: Sequence[str]) -> array.array:
        # array.array converts each list of ints in C; np.asarray on a list is ~3x slower per token.
        out = array.array("H")
        encode, eot = self._enc.encode_ordinary, self.eot_id
        for doc in docs:
            out.extend(encode(doc))
            out.append(eot)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids if i < self.vocab_size])


TOKENIZERS: dict[str, Callable[[], Tokenizer]] = {
    "gpt2": TiktokenTokenizer,
    "bytes": ByteTokenizer,
}


def get_tokenizer(name: str) -> Tokenizer:
    return TOKENIZERS[name]()


def tiktoken_available(encoding: str = "gpt2") -> bool:
    """Whether tiktoken can load ``encoding`` now (from its cache, or the network)."""
    try:
        TiktokenTokenizer(encoding)
    except DataError:
        return False
    return True
