"""GPT-2 encoding of many documents at once: the same ids as one document at a time, in order."""

from __future__ import annotations

import numpy as np
import pytest

from picollm.tokenizers import ByteTokenizer, TiktokenTokenizer, tiktoken_available

needs_gpt2 = pytest.mark.skipif(not tiktoken_available(), reason="needs GPT-2's tiktoken files (TIKTOKEN_CACHE_DIR)")


@needs_gpt2
def test_threaded_encoding_equals_one_document_at_a_time() -> None:
    tok = TiktokenTokenizer()
    rng = np.random.default_rng(0)
    words = ["Once", " upon", " a", " time", ",", " Lily", " saw", " a", " big", " dog", ".", "\n", " é", " 🙂"]
    docs = ["".join(rng.choice(words, size=rng.integers(0, 40))) for _ in range(700)]  # several tasks, some empty
    expected = [i for doc in docs for i in [*tok.encode(doc), tok.eot_id]]
    got = tok.encode_docs(docs)
    assert got.dtype == np.uint16 and got.tolist() == expected


@needs_gpt2
def test_end_of_text_written_in_a_story_stays_text() -> None:
    tok = TiktokenTokenizer()
    got = tok.encode_docs(["a <|endoftext|> b"]).tolist()
    assert got.count(tok.eot_id) == 1 and got[-1] == tok.eot_id  # only the separator is the special id
    assert tok.decode(got[:-1]) == "a <|endoftext|> b"


@needs_gpt2
def test_no_documents_give_no_tokens() -> None:
    assert TiktokenTokenizer().encode_docs([]).size == 0


def test_bytes_tokenizer_separates_documents() -> None:
    assert ByteTokenizer().encode_docs(["ab", ""]).tolist() == [97, 98, 256, 256]
