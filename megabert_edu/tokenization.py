"""WordPiece tokenisation for BERT-style models, built on HuggingFace's `tokenizers` library.

BERT's tokeniser is a four-stage pipeline, and `tokenizers` has one component per stage:

    normalise      BertNormalizer     clean control chars, space out CJK, lowercase + strip accents
    pre-tokenise   BertPreTokenizer   split on whitespace and punctuation ("don't" -> don ' t)
    model          WordPiece          greedy longest-match-first sub-words ("playing" -> play ##ing)
    post-process   TemplateProcessing add [CLS] ... [SEP] (... [SEP]) and the token_type_ids

`WordPieceTokenizer` wires those four pieces together exactly the way transformers'
`BertTokenizerFast` does, so the ids it produces are the ids a pretrained BERT expects
(tests/test_tokenization.py checks this on thousands of real sentences). It adds the
conveniences a training loop needs: batching, padding, truncation, offsets, torch tensors.
"""

from __future__ import annotations

import json
import operator
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# The five special tokens every BERT vocabulary has. Their order here is also the order in which
# `train_wordpiece` puts them at the start of a fresh vocabulary, so [PAD] gets id 0 (the id the
# model's config calls pad_token_id).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
_TRUNCATING_BACKENDS = 8  # backends kept, one per truncation setting in use (see WordPieceTokenizer._backend)
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class TokenizerTypeError(TypeError, ValueError):
    """An argument of the wrong type (a TypeError; also a ValueError, which is what transformers raises)."""


def _check_text(value: Any, name: str) -> str:
    """``value`` if it is a str that is valid Unicode, else an error naming the argument."""
    if not isinstance(value, str):
        hint = ": decode the bytes first, e.g. value.decode('utf-8')" if isinstance(value, bytes | bytearray) else ""
        if isinstance(value, list | tuple):
            hint = " (pre-split words are not supported: join them with spaces)"
        raise TokenizerTypeError(f"{name} must be a str, got {type(value).__name__}{hint}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} holds a lone surrogate {value[e.start]!r} at character {e.start}: not valid "
                         "Unicode text (decode its source with errors='replace')") from None
    return value


def _check_texts(value: Any, name: str) -> tuple[list[str], bool]:
    """(texts, single?) for a str or a list/tuple of str; any other value is an error naming ``name``."""
    if isinstance(value, str):
        return [_check_text(value, name)], True
    if not isinstance(value, list | tuple):
        _check_text(value, name)  # raises, naming the type
    return [_check_text(v, f"{name}[{i}]") for i, v in enumerate(value)], False


def _token_id(value: Any, name: str) -> int:
    """A Python int from an int, a numpy integer or a 0-d integer tensor; anything else is an error."""
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        if value.ndim:
            raise ValueError(f"{name} must be a single token id, got a {value.ndim}-D {type(value).__name__}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TokenizerTypeError(f"{name} must be an integer token id, got {type(value).__name__} {value!r}")
    return operator.index(value)


def _is_single_id(value: Any) -> bool:
    """An int, a numpy integer, or a 0-d tensor or array."""
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        return value.ndim == 0
    return isinstance(value, int | np.integer)


def _token_ids(ids: Any, name: str) -> list[int]:
    """One sequence of token ids (list, tuple, 1-D tensor or array, or a single id) as a list of ints."""
    if _is_single_id(ids):
        return [_token_id(ids, name)]
    if torch.is_tensor(ids) or isinstance(ids, np.ndarray):
        if ids.ndim > 1:
            raise ValueError(f"{name} must be one sequence of token ids (1-D), got shape {tuple(ids.shape)}: "
                             "use batch_decode for a batch")
        ids = ids.tolist()
    elif not isinstance(ids, list | tuple):
        raise TokenizerTypeError(f"{name} must be a list of token ids or a 1-D tensor, got {type(ids).__name__}")
    if any(isinstance(i, list | tuple) or (torch.is_tensor(i) and i.ndim) for i in ids):
        raise ValueError(f"{name} must be one sequence of token ids (1-D), got nested sequences: "
                         "use batch_decode for a batch")
    return [_token_id(i, f"{name}[{k}]") for k, i in enumerate(ids)]


class BatchEncoding(dict):
    """The tokeniser's output: a dict (input_ids, token_type_ids, attention_mask, ...) whose keys
    can also be read as attributes, so both `enc["input_ids"]` and `enc.input_ids` work and
    `model(**enc)` passes everything through."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: str | torch.device) -> BatchEncoding:
        """Move every tensor to `device` (a no-op for lists)."""
        return BatchEncoding({k: v.to(device) if torch.is_tensor(v) else v for k, v in self.items()})


class WordPieceTokenizer:
    """BERT's WordPiece tokeniser: text (or text pairs) in, input ids / token types / masks out."""

    def __init__(self, vocab: dict[str, int], lowercase: bool = True, model_max_length: int = 512):
        _check_vocab(vocab)
        if not isinstance(lowercase, bool):
            raise TokenizerTypeError(f"lowercase must be True or False, got {lowercase!r}")
        if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 1:
            raise ValueError(f"model_max_length must be a positive int, got {model_max_length!r}")
        self.lowercase = lowercase
        self.model_max_length = model_max_length

        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None means "follow lowercase": uncased BERT also strips accents (é -> e),
        # cased BERT keeps them. This is what BertTokenizerFast does by default.
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # Segment A (and its [CLS] and [SEP]) gets token type 0, segment B and its [SEP] type 1:
        # that is how the model tells the two sentences of a pair apart.
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        # Registering the specials as "added tokens" makes a literal "[MASK]" in the input text
        # become the mask token (instead of being lowercased and split into [ mask ]).
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        # `tok` is never given per-call settings: truncation runs on copies made for it (see _backend)
        # and padding here in Python, so one tokenizer can serve several threads at once.
        self._tok = tok
        self._truncating: OrderedDict[tuple[str, int], Tokenizer] = OrderedDict()
        self._lock = threading.Lock()
        self._vocab_size = tok.get_vocab_size(with_added_tokens=True)  # slow to ask for each time

        self.pad_token_id = vocab["[PAD]"]
        self.unk_token_id = vocab["[UNK]"]
        self.cls_token_id = vocab["[CLS]"]
        self.sep_token_id = vocab["[SEP]"]
        self.mask_token_id = vocab["[MASK]"]
        self.pad_token, self.unk_token, self.cls_token, self.sep_token, self.mask_token = SPECIAL_TOKENS

    # ------------------------------------------------------------------ construction and saving

    @classmethod
    def from_vocab(cls, vocab_txt: str | Path, lowercase: bool = True, model_max_length: int = 512
                   ) -> WordPieceTokenizer:
        """Load a BERT `vocab.txt` (one token per line; the line number is the id).

        `lowercase=True` for uncased vocabularies (bert-base-uncased, MiniLM), False for cased ones.
        """
        path = Path(vocab_txt)
        if path.is_dir():
            path = path / "vocab.txt"
        if not path.is_file():
            raise FileNotFoundError(f"vocab file not found: {path} (expected a BERT vocab.txt, one token "
                                    "per line)")
        return cls(read_vocab(path), lowercase=lowercase, model_max_length=model_max_length)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> WordPieceTokenizer:
        """Load from a directory with vocab.txt, reading `do_lower_case` and `model_max_length`
        from tokenizer_config.json when present (the layout HuggingFace model folders use)."""
        directory = Path(directory)
        lowercase, max_len = read_tokenizer_config(directory / "tokenizer_config.json")
        return cls.from_vocab(directory / "vocab.txt", lowercase=lowercase, model_max_length=max_len)

    def save(self, directory: str | Path) -> Path:
        """Write vocab.txt and tokenizer_config.json into `directory` (created if needed).

        transformers' BertTokenizerFast.from_pretrained can read the result too."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        by_id = sorted(self.get_vocab().items(), key=lambda kv: kv[1])
        (directory / "vocab.txt").write_text("".join(token + "\n" for token, _ in by_id), encoding="utf-8")
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.lowercase,
                  "model_max_length": self.model_max_length}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        return directory / "vocab.txt"

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary (the size of the model's embedding table)."""
        return self._vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        """token -> id."""
        return self._tok.get_vocab(with_added_tokens=True)

    @property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer`, for anything not wrapped here.

        This tokenizer never sets padding or truncation on it, so one WordPieceTokenizer can be used
        from several threads at once; changes made to it here do not reach calls that truncate.
        """
        return self._tok

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Token -> id (unknown tokens -> the [UNK] id); a list gives a list."""
        if isinstance(tokens, str):
            token_id = self._tok.token_to_id(tokens)
            return self.unk_token_id if token_id is None else token_id
        texts, _ = _check_texts(tokens, "tokens")
        return [self.convert_tokens_to_ids(t) for t in texts]

    def convert_ids_to_tokens(self, ids: int | Sequence[int] | torch.Tensor | np.ndarray) -> str | list[str]:
        """Id -> token (ints, numpy integers or tensors); a sequence or 1-D tensor gives a list."""
        if _is_single_id(ids):
            return self._id_to_token(_token_id(ids, "ids"))
        return [self._id_to_token(i) for i in _token_ids(ids, "ids")]

    def _id_to_token(self, token_id: int) -> str:
        token = self._tok.id_to_token(token_id) if token_id >= 0 else None
        if token is None:
            raise ValueError(f"token id {token_id} is out of range for a vocabulary of {self.vocab_size}")
        return token

    # ------------------------------------------------------------------ encoding

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of `text`, without [CLS]/[SEP]."""
        return self._tok.encode(_check_text(text, "text"), add_special_tokens=False).tokens

    def encode(self, text: str, text_pair: str | None = None, *, add_special_tokens: bool = True,
               truncation: bool | str = False, max_length: int | None = None) -> list[int]:
        """The input ids of one text (or one pair)."""
        return self(text, text_pair, add_special_tokens=add_special_tokens, truncation=truncation,
                    max_length=max_length)["input_ids"]

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_offsets_mapping: bool = False,
        add_special_tokens: bool = True,
    ) -> BatchEncoding:
        """Tokenise one text or a batch of texts, optionally paired with a second text each.

        padding:    False / "do_not_pad"; True / "longest" (to the longest in the batch);
                    "max_length" (to `max_length`).
        truncation: False; True / "longest_first" (for pairs, trim the longer text one token at a
                    time, as BERT does); "only_first"; "only_second" (e.g. keep a QA question whole).
                    Truncates to `max_length`, or `model_max_length` when that is None.
        return_tensors="pt" returns torch tensors of shape (B, T); a single text gives B = 1.

        Returns a BatchEncoding with input_ids, token_type_ids, attention_mask (1 = real token,
        0 = padding) and, if asked, offset_mapping: (start, end) character spans into the text
        each token came from ((0, 0) for special tokens and padding).

        One deliberate difference from BertTokenizerFast: a single pair whose second text is ""
        still encodes as a pair, [CLS] A [SEP] [SEP] (HF silently drops it; in batches it doesn't).
        """
        texts, single = _check_texts(text, "text")
        pairs = None
        if text_pair is not None:
            pairs, single_pair = _check_texts(text_pair, "text_pair")
            if single_pair != single:
                raise TokenizerTypeError("text and text_pair must both be strings or both be lists of strings")
            if len(pairs) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(pairs)} text pairs")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        flags = {"return_offsets_mapping": return_offsets_mapping, "add_special_tokens": add_special_tokens}
        for name, flag in flags.items():
            if not isinstance(flag, bool):
                raise TokenizerTypeError(f"{name} must be True or False, got {flag!r}")
        padding, truncation = self._check_settings(padding, truncation, max_length)

        n_special = (3 if pairs else 2) if add_special_tokens else 0
        if truncation and max_length is not None and max_length < n_special:
            # The backend would silently return the sequences untruncated; say so instead.
            raise ValueError(f"max_length={max_length} leaves no room for the {n_special} special tokens")

        backend = self._backend(truncation, max_length)
        inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
        try:
            encodings = backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        except Exception as e:
            if "Truncation error" not in str(e):
                raise
            keep = "second" if truncation == "only_first" else "first"
            raise ValueError(f"truncation={truncation!r} cannot fit max_length={max_length}: the "
                             f"{keep} text of a pair is too long on its own; use 'longest_first'") from e

        out = BatchEncoding(
            input_ids=[e.ids for e in encodings],
            token_type_ids=[e.type_ids for e in encodings],
            attention_mask=[e.attention_mask for e in encodings],
        )
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encodings]
        self._pad(out, padding, max_length)

        if return_tensors == "pt":
            lengths = {len(ids) for ids in out["input_ids"]}
            if len(lengths) > 1:
                raise ValueError(f"sequences have different lengths {sorted(lengths)}; pass padding=True "
                                 "(or padding='max_length') to stack them into one tensor")
            return BatchEncoding({k: torch.tensor(v, dtype=torch.long) for k, v in out.items()})
        if single:
            return BatchEncoding({k: v[0] for k, v in out.items()})
        return out

    def _check_settings(self, padding: Any, truncation: Any, max_length: Any) -> tuple[str, str | None]:
        """Validate the call's padding/truncation/max_length; return (padding strategy, truncation or None)."""
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int | np.integer)
                                       or max_length < 0):
            raise ValueError(f"max_length must be None or a non-negative int, got {max_length!r}")
        if truncation is True:
            truncation = "longest_first"
        if truncation is False or truncation is None:
            truncation = None
        elif truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation must be a bool or one of {TRUNCATION_STRATEGIES}, got {truncation!r}")
        if padding is True:
            padding = "longest"
        elif padding is False or padding is None:
            padding = "do_not_pad"
        if padding not in PADDING_STRATEGIES:
            raise ValueError(f"padding must be a bool, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        return padding, truncation

    def _backend(self, truncation: str | None, max_length: int | None) -> Tokenizer:
        """The backend for these truncation settings, never changed once made.

        `tokenizers` keeps truncation as state on the Tokenizer; setting it per call on a shared
        backend races with other threads' encodes ("Already borrowed"). So each setting gets its own
        configured copy (about 0.1 s to make, kept for the last few settings used).
        """
        if truncation is None:
            return self._tok
        key = (truncation, int(max_length or self.model_max_length))
        with self._lock:
            backend = self._truncating.get(key)
            if backend is not None:
                self._truncating.move_to_end(key)
                return backend
        backend = Tokenizer.from_str(self._tok.to_str())
        backend.enable_truncation(key[1], strategy=key[0])
        with self._lock:
            self._truncating[key] = backend
            while len(self._truncating) > _TRUNCATING_BACKENDS:
                self._truncating.popitem(last=False)
        return backend

    def _pad(self, out: BatchEncoding, padding: str, max_length: int | None) -> None:
        """Pad every row on the right, as BertTokenizerFast does: [PAD] ids, type 0, mask 0, offsets (0, 0)."""
        if padding == "do_not_pad" or not out["input_ids"]:
            return
        longest = max(len(ids) for ids in out["input_ids"])
        length = max(longest, int(max_length)) if padding == "max_length" else longest
        fills = {"input_ids": self.pad_token_id, "token_type_ids": 0, "attention_mask": 0, "offset_mapping": (0, 0)}
        for key, rows in out.items():
            for row in rows:
                row.extend([fills[key]] * (length - len(row)))

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: int | Sequence[int] | torch.Tensor | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Ids back to text: "##" pieces are glued to the previous token and spaces before
        punctuation removed. Uncased vocabularies cannot restore the original capitalisation.

        `ids` is one sequence (list, tuple, 1-D tensor or array; ints or numpy integers) or one id.
        A 2-D tensor is an error, as in transformers: use `batch_decode`.
        """
        return self._decode(_token_ids(ids, "ids"), skip_special_tokens)

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        if not isinstance(skip_special_tokens, bool):
            raise TokenizerTypeError(f"skip_special_tokens must be True or False, got {skip_special_tokens!r}")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are out of range for a vocabulary of {self.vocab_size}")
        text = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        # The backend tidies spaces token by token; patterns that span tokens (" ' " in "king ' s")
        # need one more pass over the whole string, the one BERT's original tokeniser does.
        for spaced, joined in _CLEANUP:
            text = text.replace(spaced, joined)
        return text

    def batch_decode(self, batch: Iterable[Sequence[int]] | torch.Tensor | np.ndarray, skip_special_tokens: bool = False
                     ) -> list[str]:
        """Decode each row of a batch: a list of id sequences or a 2-D tensor/array."""
        if (torch.is_tensor(batch) or isinstance(batch, np.ndarray)) and batch.ndim != 2:
            raise ValueError(f"batch must be 2-D (a batch of id sequences), got shape {tuple(batch.shape)}")
        if isinstance(batch, str | bytes | int | np.integer):
            raise TokenizerTypeError(f"batch must be a list of id sequences or a 2-D tensor, "
                                     f"got {type(batch).__name__}")
        return [self._decode(_token_ids(ids, f"batch[{i}]"), skip_special_tokens) for i, ids in enumerate(batch)]

    def __repr__(self) -> str:
        return (f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
                f"model_max_length={self.model_max_length})")


def _check_vocab(vocab: Any) -> None:
    """A vocabulary is {token: id} with distinct non-negative int ids and BERT's five special tokens."""
    if not isinstance(vocab, dict):
        raise TokenizerTypeError(f"vocab must be a dict {{token: id}}, got {type(vocab).__name__}")
    owner: dict[int, str] = {}
    for token, token_id in vocab.items():
        if not isinstance(token, str) or isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
            raise ValueError(f"vocab entry {token!r}: {token_id!r} is not a str token with a non-negative int id")
        if token_id in owner:
            raise ValueError(f"vocab gives id {token_id} to both {owner[token_id]!r} and {token!r}")
        owner[token_id] = token
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"vocabulary is missing the special token(s) {missing}; BERT needs all of "
                         f"{list(SPECIAL_TOKENS)}")


def read_vocab(path: str | Path) -> dict[str, int]:
    """A BERT vocab.txt as {token: line number}; a token on two lines is an error naming both lines.

    Lines are stripped of trailing whitespace, as `tokenizers` and transformers read them.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"vocab file {path} is not UTF-8 text (byte {e.start})") from None
    if not lines:
        raise ValueError(f"vocab file {path} is empty")
    vocab: dict[str, int] = {}
    for number, line in enumerate(lines):
        token = line.rstrip()
        if token in vocab:
            raise ValueError(f"vocab file {path}: line {number + 1} repeats the token {token!r} of line "
                             f"{vocab[token] + 1} (each token must have one id)")
        vocab[token] = number
    return vocab


def read_tokenizer_config(path: str | Path) -> tuple[bool, int]:
    """(lowercase, model_max_length) from a tokenizer_config.json; (True, 512) when there is none.

    Bad values are errors naming the file and the field. transformers writes a huge
    model_max_length (int(1e30)) for "no limit"; that reads as 512, BERT's position limit.
    """
    path = Path(path)
    if not path.is_file():
        return True, 512
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got a {type(config).__name__}")
    lowercase = config.get("do_lower_case", True)
    if not isinstance(lowercase, bool):
        raise ValueError(f"{path}: do_lower_case must be true or false, got {lowercase!r}")
    max_len = config.get("model_max_length", 512)
    if isinstance(max_len, float) and max_len.is_integer():
        max_len = int(max_len)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"{path}: model_max_length must be a positive integer, got {max_len!r}")
    return lowercase, 512 if max_len > 10**6 else max_len


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000, lowercase: bool = True,
                    min_frequency: int = 2) -> WordPieceTokenizer:
    """Learn a new WordPiece vocabulary from `texts` with `tokenizers`' WordPieceTrainer.

    The trainer starts from single characters and repeatedly merges the most frequent adjacent
    pair until the vocabulary has `vocab_size` entries; continuation pieces get the "##" prefix.
    The five BERT special tokens come first, so [PAD] = 0. The result is deterministic: the same
    texts give the same vocabulary.
    """
    texts = list(texts)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The trainer creates the "##x" continuation characters in hash-map order, and their ids
    # break ties between equally frequent merges, so two runs can learn different vocabularies
    # (huggingface/tokenizers#1794). Registering them up front, sorted, fixes their ids.
    continuing = set()
    for text in texts:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            continuing.update(word[1:])
    initial = list(SPECIAL_TOKENS) + ["##" + c for c in sorted(continuing)]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=initial, continuing_subword_prefix="##",
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return WordPieceTokenizer(tok.get_vocab(with_added_tokens=True), lowercase=lowercase)
