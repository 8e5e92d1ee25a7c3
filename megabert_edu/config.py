"""MegatronBertConfig: every field and default of HF's MegatronBertConfig, plus layer_norm_position.

The config reads and writes HF-compatible ``config.json`` files, so a directory saved here loads in
``transformers.MegatronBertFor*.from_pretrained`` and a BERT ``config.json`` loads here (in post-LN mode).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")
LAYER_NORM_POSITIONS = ("pre", "post")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


@dataclass
class MegatronBertConfig:
    """Hyper-parameters of a Megatron-BERT (pre-LN) or original BERT (post-LN) model.

    ``layer_norm_position="pre"`` is Megatron: LayerNorm on the input of each sub-layer and once more
    after the last layer. ``"post"`` is original BERT: LayerNorm on the embeddings and after each
    residual add, so Google's BERT checkpoints run in the same code.
    """

    vocab_size: int = 29056
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    position_embedding_type: str = "absolute"
    use_cache: bool = True
    is_decoder: bool = False
    add_cross_attention: bool = False
    chunk_size_feed_forward: int = 0
    num_labels: int = 2
    problem_type: str | None = None
    pruned_heads: dict[int, list[int]] = field(default_factory=dict)
    tie_word_embeddings: bool = True
    output_attentions: bool = False
    output_hidden_states: bool = False
    id2label: dict[int, str] | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    layer_norm_position: str = "pre"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        _check_choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDING_TYPES)
        _check_choice("layer_norm_position", self.layer_norm_position, LAYER_NORM_POSITIONS)
        _check_choice("problem_type", self.problem_type, PROBLEM_TYPES)
        if self.add_cross_attention and not self.is_decoder:
            raise ValueError("add_cross_attention=True needs is_decoder=True (cross-attention is a decoder part)")
        # JSON keys are strings; layers are ints. Sort so that saving is deterministic.
        self.pruned_heads = {int(k): sorted(set(map(int, v))) for k, v in (self.pruned_heads or {}).items()}
        if self.id2label is not None:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ---- dict / JSON ----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> MegatronBertConfig:
        """Build from a config.json dict (MegatronBert or Bert layout); unknown keys are ignored."""
        d = {**d, **overrides}
        if "layer_norm_position" not in d and d.get("model_type") == "bert":
            d["layer_norm_position"] = "post"  # a BERT config.json means the original post-LN model
        if "num_labels" not in d and d.get("id2label"):
            d["num_labels"] = len(d["id2label"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> MegatronBertConfig:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(d, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """An HF-compatible dict: pre-LN saves as `megatron-bert`, post-LN as `bert`."""
        d = asdict(self)
        d["pruned_heads"] = {str(k): v for k, v in self.pruned_heads.items()}
        id2label = self.id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
        d["id2label"] = {str(k): v for k, v in id2label.items()}
        d["label2id"] = {v: k for k, v in id2label.items()}
        d["model_type"] = "megatron-bert" if self.layer_norm_position == "pre" else "bert"
        return d

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def copy(self, **changes: Any) -> MegatronBertConfig:
        return type(self).from_dict({**asdict(self), **changes})


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")
