"""MegatronBertConfig: every field and default of HF's MegatronBertConfig, plus layer_norm_position.

The config behaves like ``transformers.PretrainedConfig`` where user code touches it: extra keyword
arguments become attributes and are saved, ``num_labels`` and ``id2label``/``label2id`` stay consistent
both ways, and it has ``to_dict``, ``to_json_string``, ``to_json_file``, ``from_dict``, ``from_json_file``,
``save_pretrained``, ``from_pretrained`` and ``use_return_dict``. It reads and writes HF-compatible
``config.json`` files, so a directory saved here loads in ``transformers`` and a BERT ``config.json``
loads here (in post-LN mode).

When values are checked (and why not all at once):

- Keyword construction is as lenient as HF's: it records what you give (HF's own config tests build
  configs with ``hidden_size=37`` and 16 heads, or ``hidden_size=0``) and rejects only unknown choice
  strings (``position_embedding_type``, ``layer_norm_position``, ``problem_type``) and a non-dict ``id2label``.
- Reading a config file (``from_dict``, ``from_json_file``, ``from_pretrained``) checks the type and range
  of every field (``validate()``), requires the fields that fix the tensors' shapes (``SHAPE_FIELDS``) -- HF
  would silently fill in defaults, which builds a different model -- and warns about keys it does not know
  (they are kept, as HF keeps them).
- Building a model runs ``validate_for_model()``: ``validate()`` plus the rules a model needs
  (hidden_size divisible by the head count, cross-attention only in a decoder).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")
LAYER_NORM_POSITIONS = ("pre", "post")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")

# The fields that fix the tensors' shapes: a config file without them cannot describe its own weights.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "type_vocab_size")

# transformers.PretrainedConfig attributes we do not use but keep answering with HF's defaults, so code
# written for HF (Trainer, generation helpers, hub tooling) can read them. Not saved unless set.
HF_COMMON_DEFAULTS: dict[str, Any] = {
    "architectures": None, "finetuning_task": None, "tokenizer_class": None, "prefix": None,
    "sep_token_id": None, "decoder_start_token_id": None, "is_encoder_decoder": False,
    "cross_attention_hidden_size": None, "tie_encoder_decoder": False, "task_specific_params": None,
    "name_or_path": "", "_name_or_path": "", "transformers_version": None,
    "use_bfloat16": False, "tf_legacy_loss": False,
    "gradient_checkpointing": False,  # old config.json files: the model turns it on once and drops it
    # generation defaults older config.json files carry
    "max_length": 20, "min_length": 0, "do_sample": False, "early_stopping": False, "num_beams": 1,
    "temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0, "repetition_penalty": 1.0,
    "length_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
    "num_return_sequences": 1, "output_scores": False, "return_dict_in_generate": False,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "remove_invalid_values": False,
    "exponential_decay_length_penalty": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "num_beam_groups": 1, "diversity_penalty": 0.0,
}
# Keys a config file may carry that are not attributes: written by us or by transformers.
FILE_ONLY_KEYS = ("model_type", "torch_dtype", "num_labels", "attn_implementation", "_attn_implementation",
                  "_commit_hash")


class ConfigError(ValueError):
    """A config field is missing, of the wrong type or out of range. The message names the field."""


class ConfigTypeError(ConfigError, TypeError):
    """A config field holds a value of the wrong type (a string for a number, "false" for a bool, ...)."""


class MegatronBertConfig:
    """Hyper-parameters of a Megatron-BERT (pre-LN) or original BERT (post-LN) model.

    ``layer_norm_position="pre"`` is Megatron: LayerNorm on the input of each sub-layer and once more
    after the last layer. ``"post"`` is original BERT: LayerNorm on the embeddings and after each
    residual add, so Google's BERT checkpoints run in the same code. Any other keyword is kept as an
    attribute and saved (as in transformers).
    """

    model_type = "megatron-bert"
    is_composition = False

    def __init__(
        self,
        vocab_size: int = 29056,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        intermediate_size: int = 4096,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int | None = 0,
        position_embedding_type: str = "absolute",
        use_cache: bool = True,
        is_decoder: bool = False,
        add_cross_attention: bool = False,
        chunk_size_feed_forward: int = 0,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
        problem_type: str | None = None,
        pruned_heads: dict[int, list[int]] | None = None,
        tie_word_embeddings: bool = True,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        torchscript: bool = False,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        layer_norm_position: str = "pre",
        **kwargs: Any,
    ):
        _check_choice("position_embedding_type", position_embedding_type, POSITION_EMBEDDING_TYPES)
        _check_choice("layer_norm_position", layer_norm_position, LAYER_NORM_POSITIONS)
        _check_choice("problem_type", problem_type, PROBLEM_TYPES)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.pad_token_id = pad_token_id
        self.position_embedding_type = position_embedding_type
        self.use_cache = use_cache
        self.is_decoder = is_decoder
        self.add_cross_attention = add_cross_attention
        self.chunk_size_feed_forward = chunk_size_feed_forward
        self.problem_type = problem_type
        self.pruned_heads = _int_keys({} if pruned_heads is None else pruned_heads)
        self.tie_word_embeddings = tie_word_embeddings
        self.output_attentions = output_attentions
        self.output_hidden_states = output_hidden_states
        self.return_dict = return_dict
        self.torchscript = torchscript
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.layer_norm_position = layer_norm_position
        self._set_labels(num_labels, id2label, label2id)
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)  # HF accepts both names
        if dtype is not None or torch_dtype is not None:
            self.dtype = dtype if dtype is not None else torch_dtype
        for key in FILE_ONLY_KEYS:  # derived or written by the library: not attributes of the config
            kwargs.pop(key, None)
        for key, value in kwargs.items():  # extra keywords are kept and saved, as in transformers
            setattr(self, key, value)

    # ---- labels: num_labels is len(id2label), and label2id is its inverse --------------------------

    def _set_labels(self, num_labels: int | None, id2label: Any, label2id: Any) -> None:
        if id2label is None and label2id is not None and isinstance(label2id, dict):
            id2label = {i: label for label, i in label2id.items()}
        if id2label is None:
            self.num_labels = 2 if num_labels is None else num_labels
        else:
            if not isinstance(id2label, dict):
                raise ConfigTypeError(f"id2label must be a dict {{id: label}}, got {type(id2label).__name__}")
            if num_labels is not None and num_labels != len(id2label):
                raise ConfigError(f"num_labels={num_labels} disagrees with id2label, which has {len(id2label)} "
                                  f"labels: {id2label}; pass one of them")
            self.id2label = id2label
        if label2id is not None:
            self.label2id = label2id

    @property
    def id2label(self) -> dict[int, str]:
        return self._id2label

    @id2label.setter
    def id2label(self, value: dict) -> None:
        """Setting id2label also sets label2id to its inverse. JSON's string keys become ints."""
        if value is None:
            value = {i: f"LABEL_{i}" for i in range(2)}
        self._id2label = _int_keys(value)
        if isinstance(value, dict):
            self.label2id = {label: i for i, label in self._id2label.items()}

    @property
    def num_labels(self) -> int:
        """The number of classes of a classification head: len(id2label)."""
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        """A different count replaces id2label/label2id with LABEL_0..LABEL_{n-1} (as transformers)."""
        if "_id2label" not in self.__dict__ or not isinstance(self.id2label, dict) or len(self.id2label) != n:
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigTypeError(f"num_labels must be a non-negative integer, got {n!r}")
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}

    # ---- HF-compatible properties -------------------------------------------------------------------

    @property
    def use_return_dict(self) -> bool:
        """Return output dataclasses (True) or tuples; torchscript forces tuples, as in transformers."""
        return self.return_dict and not self.torchscript

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value) -> None:
        self.dtype = value

    @property
    def dtype(self) -> torch.dtype | None:
        """The weights' dtype recorded by save_pretrained (read by from_pretrained(torch_dtype="auto"))."""
        return self.__dict__.get("_dtype")

    @dtype.setter
    def dtype(self, value) -> None:
        if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
            value = getattr(torch, value)
        self._dtype = value

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def __getattr__(self, name: str) -> Any:
        """Only reached for attributes never set: HF's common config attributes answer with HF's defaults."""
        if name in HF_COMMON_DEFAULTS:
            return HF_COMMON_DEFAULTS[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MegatronBertConfig) and self.__dict__ == other.__dict__  # as transformers

    def __repr__(self) -> str:
        try:
            return f"{type(self).__name__} {self.to_json_string()}"
        except ConfigError:  # a value JSON cannot hold: still show the config
            return f"{type(self).__name__}({self.__dict__!r})"

    # ---- checks -------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check the type and range of every field; raise ConfigError / ConfigTypeError naming the field."""
        for name, check in FIELD_CHECKS.items():
            check(name, getattr(self, name))
        if self.pad_token_id is not None and self.pad_token_id >= self.vocab_size:
            raise ConfigError(f"pad_token_id={self.pad_token_id} is not a token id: vocab_size={self.vocab_size}")
        _check_dtype(self.dtype)
        for layer, heads in self.pruned_heads.items():
            if not -self.num_hidden_layers <= layer < self.num_hidden_layers:  # -1 = last, as transformers
                raise ConfigError(f"pruned_heads names layer {layer}; the config has layers "
                                  f"0..{self.num_hidden_layers - 1} (or -{self.num_hidden_layers}..-1)")
            if any(not 0 <= h < self.num_attention_heads for h in heads):
                raise ConfigError(f"pruned_heads[{layer}]={heads} names heads outside "
                                  f"0..{self.num_attention_heads - 1}")
            if len(set(heads)) >= self.num_attention_heads:
                raise ConfigError(f"pruned_heads[{layer}] prunes every head of layer {layer}; keep at least one")

    def validate_for_model(self) -> None:
        """``validate()`` plus the rules a model needs; run whenever a model is built from this config."""
        self.validate()
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                              f"({self.num_attention_heads})")
        if self.add_cross_attention and not self.is_decoder:
            raise ConfigError("add_cross_attention=True needs is_decoder=True (cross-attention is a decoder part)")

    # ---- dict / JSON --------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> MegatronBertConfig:
        """Build from the contents of a config.json (MegatronBert or Bert layout), then apply ``overrides``.

        The shape fields must be present; every field is type- and range-checked; unknown keys are kept
        as attributes and reported with a warning that names them.
        """
        if not isinstance(config_dict, dict):
            kind = type(config_dict).__name__
            raise ConfigTypeError(f"a config must be a JSON object {{field: value}}, got a {kind}")
        d = dict(config_dict)
        _warn_unknown(d)  # first: a misspelt key is named even when its field is then found missing
        _check_required(d)
        if "layer_norm_position" not in d and d.get("model_type") == "bert":
            d["layer_norm_position"] = "post"  # a BERT config.json means the original post-LN model
        if d.get("id2label") is not None:
            d.pop("num_labels", None)  # id2label decides; an old file's num_labels agrees or is stale
        config = cls(**d)
        config = config.copy(**overrides) if overrides else config
        config.validate()
        return config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> MegatronBertConfig:
        """Read a config.json; errors name the file and the field."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        try:
            return cls.from_dict(d, **overrides)
        except ConfigError as e:
            raise type(e)(f"{path}: {e}") from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str = "", **overrides: Any) -> MegatronBertConfig:
        """Read ``path/config.json`` (or ``path`` itself if it is a file), then apply ``overrides``."""
        path = Path(path) / subfolder
        file = path if path.is_file() else path / "config.json"
        return cls.from_json_file(file, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready, HF-compatible dict: pre-LN saves as `megatron-bert`, post-LN as `bert`.

        numpy and torch scalars become Python numbers; a value JSON cannot hold raises ConfigError
        naming the field (so saving fails before any file is touched).
        """
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        d["pruned_heads"] = {str(k): list(v) for k, v in self.pruned_heads.items()}
        if self.dtype is not None:
            d["dtype"] = str(self.dtype).removeprefix("torch.")
        d["model_type"] = "megatron-bert" if self.layer_norm_position == "pre" else "bert"
        return {key: _json_value(key, value) for key, value in sorted(d.items())}

    def to_json_string(self, use_diff: bool = True) -> str:
        """The full config as JSON. ``use_diff`` is accepted for HF compatibility; every field is written,
        because reading requires the shape fields."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike, use_diff: bool = True) -> None:
        text = self.to_json_string()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write ``directory/config.json`` (created if needed), atomically."""
        if kwargs.get("push_to_hub"):
            raise NotImplementedError("push_to_hub is not supported: megabert_edu works offline")
        directory = Path(directory)
        if directory.is_file():
            raise NotADirectoryError(f"{directory} is a file; save_pretrained needs a directory")
        text = self.to_json_string()
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / ".config.json.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, directory / "config.json")
        finally:
            tmp.unlink(missing_ok=True)

    def update(self, changes: dict[str, Any]) -> None:
        """Set each key as an attribute (as transformers' ``update``)."""
        for key, value in changes.items():
            setattr(self, key, value)

    def copy(self, **changes: Any) -> MegatronBertConfig:
        """A deep copy with ``changes`` applied: how from_pretrained applies config overrides.

        A change must name a config field or an attribute this config already has, else TypeError.
        ``num_labels`` re-derives id2label/label2id; ``id2label`` re-derives label2id and num_labels.
        """
        unknown = [k for k in changes if not self.has_field(k)]
        if unknown:
            raise TypeError(f"unknown config field(s) {unknown}: MegatronBertConfig has no such field (from_pretrained "
                            f"hands every keyword that is not a loading option to the config; fields: "
                            f"{', '.join(CONFIG_FIELDS)})")
        new = copy.deepcopy(self)
        order = ("id2label", "num_labels", "label2id")  # labels first: num_labels=3, id2label=None is 3 labels
        for key in sorted(changes, key=lambda k: order.index(k) if k in order else len(order)):
            setattr(new, key, changes[key])
        return new

    def has_field(self, name: str) -> bool:
        """True for a config field, an HF common attribute or an extra attribute this config holds."""
        return name in CONFIG_FIELDS or name in HF_COMMON_DEFAULTS or name in self.__dict__ or name == "torch_dtype"


# ---- field checks ----------------------------------------------------------------------------------


def _integer(lo: int):
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigTypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
        if value < lo:
            raise ConfigError(f"{name} must be >= {lo}, got {value}")
    return check


def _number(lo: float, hi: float = float("inf"), open_low: bool = False):
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
        if not (lo < value if open_low else lo <= value) or not value <= hi:
            low = f"({lo}" if open_low else f"[{lo}"
            raise ConfigError(f"{name} must be in {low}, {hi}], got {value}")
    return check


def _boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigTypeError(f"{name} must be true or false, got {value!r} ({type(value).__name__})")


def _optional(check):
    def optional(name: str, value: Any) -> None:
        if value is not None:
            check(name, value)
    return optional


def _choice(choices: tuple):
    def check(name: str, value: Any) -> None:
        _check_choice(name, value, choices)
    return check


def _text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigTypeError(f"{name} must be a string, got {value!r} ({type(value).__name__})")


def _token_ids(name: str, value: Any) -> None:
    """eos_token_id may be one id or a list of ids (as in transformers' generation config)."""
    for item in value if isinstance(value, list) else [value]:
        _integer(0)(name, item)


def _id2label(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ConfigTypeError(f"{name} must be a dict {{id: label}}, got {type(value).__name__}")
    for key, label in value.items():
        if not isinstance(key, int) or not isinstance(label, str):
            raise ConfigTypeError(f"{name} must map integer ids to string labels, got {key!r}: {label!r}")
    if not value:
        raise ConfigError(f"{name} is empty: a config needs at least one label (num_labels >= 1)")


def _label2id(name: str, value: Any) -> None:
    if not isinstance(value, dict) or any(isinstance(i, bool) or not isinstance(i, int) for i in value.values()):
        raise ConfigTypeError(f"{name} must map string labels to integer ids, got {value!r}")


def _pruned_heads(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ConfigTypeError(f"{name} must be a dict {{layer: [heads]}}, got {type(value).__name__}")
    for layer, heads in value.items():
        if not isinstance(layer, int) or not isinstance(heads, list):
            raise ConfigTypeError(f"{name} must map layer numbers to lists of heads, got {layer!r}: {heads!r}")
        for head in heads:
            _integer(0)(f"{name}[{layer}]", head)


FIELD_CHECKS = {
    "vocab_size": _integer(1),
    "hidden_size": _integer(1),
    "num_hidden_layers": _integer(1),
    "num_attention_heads": _integer(1),
    "intermediate_size": _integer(1),
    "hidden_act": _text,  # the activation name is checked against the table when the model is built
    "hidden_dropout_prob": _number(0.0, 1.0),
    "attention_probs_dropout_prob": _number(0.0, 1.0),
    "max_position_embeddings": _integer(1),
    "type_vocab_size": _integer(1),
    "initializer_range": _number(0.0),
    "layer_norm_eps": _number(0.0, open_low=True),
    "pad_token_id": _optional(_integer(0)),
    "position_embedding_type": _choice(POSITION_EMBEDDING_TYPES),
    "use_cache": _boolean,
    "is_decoder": _boolean,
    "add_cross_attention": _boolean,
    "chunk_size_feed_forward": _integer(0),
    "id2label": _id2label,
    "label2id": _label2id,
    "problem_type": _choice(PROBLEM_TYPES),
    "pruned_heads": _pruned_heads,
    "tie_word_embeddings": _boolean,
    "output_attentions": _boolean,
    "output_hidden_states": _boolean,
    "return_dict": _boolean,
    "torchscript": _boolean,
    "bos_token_id": _optional(_token_ids),
    "eos_token_id": _optional(_token_ids),
    "layer_norm_position": _choice(LAYER_NORM_POSITIONS),
}
CONFIG_FIELDS = (*FIELD_CHECKS, "num_labels", "dtype")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {choices}")


def _check_dtype(value: Any) -> None:
    if value is not None and not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise ConfigError(f"dtype={value!r} is not a floating-point torch dtype name (e.g. 'float32', 'float16')")


def _check_required(d: dict[str, Any]) -> None:
    missing = [name for name in SHAPE_FIELDS if name not in d]
    if missing:
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, list(d), n=1)
            hints.append(f"{name} (found {close[0]!r}: a misspelling?)" if close else name)
        raise ConfigError(f"config lacks {', '.join(hints)}: these fields fix the tensors' shapes and have "
                          "no safe default when reading a config file")


def _warn_unknown(d: dict[str, Any]) -> None:
    known = set(CONFIG_FIELDS) | set(HF_COMMON_DEFAULTS) | set(FILE_ONLY_KEYS)
    unknown = sorted(k for k, v in d.items() if k not in known and v is not None)  # a null says nothing
    if unknown:
        warnings.warn(f"config keys not used by MegatronBertConfig (kept as attributes): {', '.join(unknown)}",
                      UserWarning, stacklevel=3)


def _int_keys(d: Any) -> Any:
    """{"0": x} -> {0: x} (JSON object keys are strings); other keys, and non-dicts, are left as given."""
    if not isinstance(d, dict):
        return d
    return {int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: v for k, v in d.items()}


def _json_value(key: str, value: Any) -> Any:
    """A value config.json can hold: numpy/torch scalars become numbers, tuples lists; else ConfigError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(key, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(key, v) for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if getattr(value, "ndim", None) == 0:  # a numpy or torch scalar
        return _json_value(key, value.item())
    raise ConfigTypeError(f"config field {key} holds a {type(value).__name__} ({value!r}), which config.json "
                          "cannot store")
