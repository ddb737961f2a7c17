"""Tokenizers: GPT-2 BPE through tiktoken and raw UTF-8 bytes, documents to one uint16 stream."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from picollm.errors import DataError

EOT_TEXT = "<|endoftext|>"
# Documents per tiktoken call: the per-call and per-int costs are paid once per chunk, not per story.
_DOCS_PER_CHUNK = 64


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
        """Every document, end-of-text after each, in chunks on threads (tiktoken releases the GIL) into numpy buffers.

        A chunk with a story containing the text "<|endoftext|>" is encoded story by story, so that text stays text.
        """
        chunks = [docs[i : i + _DOCS_PER_CHUNK] for i in range(0, len(docs), _DOCS_PER_CHUNK)]
        if not chunks:
            return np.zeros(0, dtype=np.uint16)
        threads = max(1, min(len(chunks), os.cpu_count() or 1))
        with ThreadPoolExecutor(threads) as pool:
            return np.concatenate(list(pool.map(self._encode_chunk, chunks)))

    def _encode_chunk(self, docs: Sequence[str]) -> np.ndarray:
        if any(EOT_TEXT in doc for doc in docs):  # rare: such a story must stay text
            ids = [i for doc in docs for i in [*self._enc.encode_ordinary(doc), self.eot_id]]
            return np.asarray(ids, dtype=np.uint16)
        joined = EOT_TEXT.join(docs) + EOT_TEXT
        return self._enc.encode_to_numpy(joined, allowed_special={EOT_TEXT}).astype(np.uint16)

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


def tiktoken_cache_dir() -> str:
    """The folder tiktoken reads GPT-2's files from in this process; a run records it to find them offline."""
    folder = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    return os.path.abspath(folder or os.path.join(tempfile.gettempdir(), "data-gym-cache"))
