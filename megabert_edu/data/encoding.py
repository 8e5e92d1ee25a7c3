"""Turn dataset records into the tensors each task model takes.

Every function returns a BatchEncoding whose keys are the model's own keyword arguments
(input_ids, token_type_ids, attention_mask, and labels / start_positions / end_positions), so

    enc = encode_classification(load_wordnet("supersense"), tokenizer)
    loss = model(**enc).loss                     # or slice it into batches

The whole set is padded to its longest sequence (at most max_length); a training loop can trim
each batch to its own longest with `attention_mask.sum(1).max()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..tokenization import BatchEncoding, WordPieceTokenizer

# Token-classification tags for word_span: the defined word's first token is B, its other tokens
# (including "##" pieces) are I, every other token of the example sentence is O.
BIO_LABELS = ("O", "B", "I")
IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips: special tokens, padding, the question


def _check(records: Sequence[dict], *keys: str) -> None:
    """Fail early, naming the problem, on an empty list or records of another task."""
    if not records:
        raise ValueError("no records to encode")
    if not any(k in records[0] for k in keys):
        wanted = " or ".join(repr(k) for k in keys)
        raise ValueError(f"records need a {wanted} field; got {sorted(records[0])}")


def encode_classification(records: Sequence[dict], tokenizer: WordPieceTokenizer, max_length: int = 64
                          ) -> BatchEncoding:
    """Single texts (records with "text") or pairs ("text_a", "text_b") with a "label" each.

    Works for supersense (sequence classification) and next_sentence (NSP: pass the result to
    MegatronBertForNextSentencePrediction, whose `labels` are 0 = is next, 1 = random).
    """
    _check(records, "text", "text_a")
    if "text" in records[0]:
        enc = tokenizer([r["text"] for r in records], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
    else:
        enc = tokenizer([r["text_a"] for r in records], [r["text_b"] for r in records], padding=True,
                        truncation="longest_first", max_length=max_length, return_tensors="pt")
    if "label" in records[0]:
        enc["labels"] = torch.tensor([r["label"] for r in records])
    return enc


def encode_multiple_choice(records: Sequence[dict], tokenizer: WordPieceTokenizer, max_length: int = 64
                           ) -> BatchEncoding:
    """definition_choice records -> tensors of shape (N, num_choices, T) plus labels (N,).

    Each choice is encoded as the pair (word, definition); the model scores the pairs one by one
    and a softmax over the choices picks the answer.
    """
    _check(records, "choices")
    n_choices = len(records[0]["choices"])
    words = [r["word"] for r in records for _ in r["choices"]]
    choices = [c for r in records for c in r["choices"]]
    enc = tokenizer(words, choices, padding=True, truncation="only_second", max_length=max_length,
                    return_tensors="pt")
    enc = BatchEncoding({k: v.view(len(records), n_choices, -1) for k, v in enc.items()})  # (N, C, T)
    enc["labels"] = torch.tensor([r["label"] for r in records])
    return enc


def _answer_tokens(offsets: list[tuple[int, int]], type_ids: list[int], start: int, end: int
                   ) -> tuple[int, int] | None:
    """First and last token of the context (token type 1) that overlap the characters [start, end).

    (Overlap rather than containment, so an answer that ends inside a word, as some SQuAD answers
    do, still gets the whole word.)"""
    inside = [i for i, ((a, b), t) in enumerate(zip(offsets, type_ids, strict=True))
              if t == 1 and b > a and a < end and b > start]
    return (inside[0], inside[-1]) if inside else None


def encode_qa(records: Sequence[dict], tokenizer: WordPieceTokenizer, max_length: int = 96,
              return_offsets_mapping: bool = False) -> BatchEncoding:
    """word_span records (question, context, answer_text, answer_start) -> pairs plus the answer's
    first and last token as start_positions / end_positions.

    The tokeniser's offsets say which characters each token came from, which is how a character
    span becomes a token span. Only the context is truncated; an answer cut off by truncation
    points at [CLS] (position 0), as in SQuAD 2.0-style training. Ask for the offsets to map
    predicted token spans back to text (pop them before calling the model).
    """
    _check(records, "question")
    enc = tokenizer([r["question"] for r in records], [r["context"] for r in records], padding=True,
                    truncation="only_second", max_length=max_length, return_offsets_mapping=True)
    starts, ends = [], []
    for r, offsets, type_ids in zip(records, enc["offset_mapping"], enc["token_type_ids"], strict=True):
        span = _answer_tokens(offsets, type_ids, r["answer_start"], r["answer_start"] + len(r["answer_text"]))
        starts.append(span[0] if span else 0)
        ends.append(span[1] if span else 0)
    if not return_offsets_mapping:
        del enc["offset_mapping"]
    out = BatchEncoding({k: torch.tensor(v) for k, v in enc.items()})
    out["start_positions"], out["end_positions"] = torch.tensor(starts), torch.tensor(ends)
    return out


def encode_token_classification(records: Sequence[dict], tokenizer: WordPieceTokenizer, max_length: int = 96
                                ) -> BatchEncoding:
    """word_span records -> (question, context) pairs with one BIO label per token.

    Labels (indices into BIO_LABELS) are given to the example sentence's tokens only; [CLS],
    [SEP], padding and the question get IGNORE_INDEX, so the loss and accuracy count only the
    tokens where the word could be.
    """
    enc = encode_qa(records, tokenizer, max_length, return_offsets_mapping=True)
    offsets = enc.pop("offset_mapping")  # (N, T, 2)
    start, end = enc.pop("start_positions"), enc.pop("end_positions")
    is_context = (enc["token_type_ids"] == 1) & (offsets[..., 1] > offsets[..., 0])  # drops [SEP], pad
    position = torch.arange(enc["input_ids"].shape[1])  # (T,)
    labels = torch.full_like(enc["input_ids"], BIO_LABELS.index("O"))
    labels[(position > start[:, None]) & (position <= end[:, None])] = BIO_LABELS.index("I")
    labels[position == start[:, None]] = BIO_LABELS.index("B")
    labels[~is_context] = IGNORE_INDEX  # also undoes B at position 0 for truncated-away answers
    enc["labels"] = labels
    return enc
