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
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# The five special tokens every BERT vocabulary has. Their order here is also the order in which
# `train_wordpiece` puts them at the start of a fresh vocabulary, so [PAD] gets id 0 (the id the
# model's config calls pad_token_id).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


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
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"vocabulary is missing the special token(s) {missing}; BERT needs all of "
                             f"{list(SPECIAL_TOKENS)}")
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
        self._tok = tok
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
        vocab = models.WordPiece.read_file(str(path))
        if not vocab:
            raise ValueError(f"vocab file {path} is empty")
        return cls(vocab, lowercase=lowercase, model_max_length=model_max_length)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> WordPieceTokenizer:
        """Load from a directory with vocab.txt, reading `do_lower_case` and `model_max_length`
        from tokenizer_config.json when present (the layout HuggingFace model folders use)."""
        directory = Path(directory)
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        max_len = config.get("model_max_length", 512)
        if not isinstance(max_len, int) or max_len > 10**6:  # HF writes 1e30 for "no limit"
            max_len = 512
        return cls.from_vocab(directory / "vocab.txt", lowercase=config.get("do_lower_case", True),
                              model_max_length=max_len)

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
        """The underlying `tokenizers.Tokenizer`, for anything not wrapped here."""
        return self._tok

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            token_id = self._tok.token_to_id(tokens)
            return self.unk_token_id if token_id is None else token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int] | torch.Tensor) -> str | list[str]:
        if torch.is_tensor(ids):
            ids = ids.tolist()
        if isinstance(ids, int):
            return self._id_to_token(ids)
        return [self._id_to_token(i) for i in ids]

    def _id_to_token(self, token_id: int) -> str:
        token = self._tok.id_to_token(token_id)
        if token is None:
            raise ValueError(f"token id {token_id} is out of range for a vocabulary of {self.vocab_size}")
        return token

    # ------------------------------------------------------------------ encoding

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of `text`, without [CLS]/[SEP]."""
        self._configure(padding=False, truncation=False, max_length=None)
        return self._tok.encode(text, add_special_tokens=False).tokens

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
        single = isinstance(text, str)
        if text_pair is not None and isinstance(text_pair, str) != single:
            raise TypeError("text and text_pair must both be strings or both be lists of strings")
        texts = [text] if single else list(text)
        pairs = None if text_pair is None else ([text_pair] if single else list(text_pair))
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} text pairs")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")

        n_special = (3 if pairs else 2) if add_special_tokens else 0
        if truncation and max_length is not None and max_length < n_special:
            # The backend would silently return the sequences untruncated; say so instead.
            raise ValueError(f"max_length={max_length} leaves no room for the {n_special} special tokens")

        self._configure(padding, truncation, max_length)
        inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
        try:
            encodings = self._tok.encode_batch(inputs, add_special_tokens=add_special_tokens)
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

        if return_tensors == "pt":
            lengths = {len(ids) for ids in out["input_ids"]}
            if len(lengths) > 1:
                raise ValueError(f"sequences have different lengths {sorted(lengths)}; pass padding=True "
                                 "(or padding='max_length') to stack them into one tensor")
            return BatchEncoding({k: torch.tensor(v, dtype=torch.long) for k, v in out.items()})
        if single:
            return BatchEncoding({k: v[0] for k, v in out.items()})
        return out

    def _configure(self, padding: bool | str, truncation: bool | str, max_length: int | None) -> None:
        """Translate the call's padding/truncation options into the backend's (stateful) settings."""
        if truncation is True:
            truncation = "longest_first"
        if truncation:
            if truncation not in TRUNCATION_STRATEGIES:
                raise ValueError(f"truncation must be a bool or one of {TRUNCATION_STRATEGIES}, "
                                 f"got {truncation!r}")
            self._tok.enable_truncation(max_length or self.model_max_length, strategy=truncation)
        else:
            self._tok.no_truncation()

        if padding is True:
            padding = "longest"
        if padding in (False, "do_not_pad"):
            self._tok.no_padding()
        elif padding == "longest":
            self._tok.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token)
        elif padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            self._tok.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token, length=max_length)
        else:
            raise ValueError(f"padding must be a bool, 'longest', 'max_length' or 'do_not_pad', "
                             f"got {padding!r}")

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Ids back to text: "##" pieces are glued to the previous token and spaces before
        punctuation removed. Uncased vocabularies cannot restore the original capitalisation."""
        if torch.is_tensor(ids):
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are out of range for a vocabulary of {self.vocab_size}")
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        # The backend tidies spaces token by token; patterns that span tokens (" ' " in "king ' s")
        # need one more pass over the whole string, the one BERT's original tokeniser does.
        for spaced, joined in _CLEANUP:
            text = text.replace(spaced, joined)
        return text

    def batch_decode(self, batch: Iterable[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = False
                     ) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in batch]

    def __repr__(self) -> str:
        return (f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
                f"model_max_length={self.model_max_length})")


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
