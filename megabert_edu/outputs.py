"""Output dataclasses, with the reference's field names and field order. Fields not computed stay None.

They behave like transformers' ``ModelOutput``: ``out.logits``, ``out["logits"]``, ``out[0]`` (the first
field that is not None), ``out[:2]``, ``len(out)``, ``"loss" in out``, iteration over the keys,
``keys()/values()/items()/get()`` and ``to_tuple()``. Only the fields that are not None count, so
``out[0]`` is the loss when labels were given and the logits otherwise, exactly as in transformers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, Optional

import torch

Tensor = Optional[torch.Tensor]  # noqa: UP045 (a runtime alias: `X | None` on a type object needs 3.10+)
Tensors = Optional[tuple]  # noqa: UP045


@dataclass
class ModelOutput:
    """Attribute, key, index and slice access over the fields that are not None (as transformers)."""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.keys() else default

    def to_tuple(self) -> tuple:
        return tuple(self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{key!r} is not set in this {type(self).__name__}; set fields: {self.keys()}")
            return getattr(self, key)
        return self.to_tuple()[key]  # int or slice, over the fields that are set

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        setattr(self, key, value)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())  # like a dict (and transformers' ModelOutput): the keys

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()


@dataclass
class BaseModelOutput(ModelOutput):
    """MegatronBertModel (transformers' BaseModelOutputWithPoolingAndCrossAttentions)."""

    last_hidden_state: Tensor = None  # (B, T, H)
    pooler_output: Tensor = None  # (B, H)
    hidden_states: Tensors = None  # L + 1 tensors: embeddings, layers 0..L-2, final LN output
    past_key_values: Tensors = None  # per layer (k, v[, cross_k, cross_v]), each (B, nh, S, hs)
    attentions: Tensors = None  # L tensors (B, nh, T, S)
    cross_attentions: Tensors = None


@dataclass
class TaskOutput(ModelOutput):
    """MaskedLM, NSP, sequence / token classification and multiple choice (transformers' *Output)."""

    loss: Tensor = None
    logits: Tensor = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class CausalLMOutput(ModelOutput):
    """CausalLM (transformers' CausalLMOutputWithCrossAttentions): the cache comes right after the logits."""

    loss: Tensor = None
    logits: Tensor = None
    past_key_values: Tensors = None
    hidden_states: Tensors = None
    attentions: Tensors = None
    cross_attentions: Tensors = None


@dataclass
class PreTrainingOutput(ModelOutput):
    loss: Tensor = None
    prediction_logits: Tensor = None
    seq_relationship_logits: Tensor = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class QuestionAnsweringOutput(ModelOutput):
    loss: Tensor = None
    start_logits: Tensor = None
    end_logits: Tensor = None
    hidden_states: Tensors = None
    attentions: Tensors = None


def copy_encoder_fields(result: ModelOutput, encoder_out: BaseModelOutput) -> ModelOutput:
    """Fill the result's hidden_states / attentions / cache fields (those it has) from the encoder's output."""
    for f in fields(result):
        if f.name in ("hidden_states", "attentions", "cross_attentions", "past_key_values"):
            setattr(result, f.name, getattr(encoder_out, f.name))
    return result
