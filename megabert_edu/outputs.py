"""Output dataclasses, with the reference's field names. Fields not computed stay None."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import torch

Tensor = Optional[torch.Tensor]  # noqa: UP045 (a runtime alias: `X | None` needs Python 3.10 here)
Tensors = Optional[tuple]  # noqa: UP045


@dataclass
class ModelOutput:
    """Attribute access (out.logits), key access (out["logits"]) and to_tuple() of the non-None fields."""

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())


@dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: Tensor = None
    pooler_output: Tensor = None
    hidden_states: Tensors = None  # L + 1 tensors: embeddings, layers 0..L-2, final LN output
    attentions: Tensors = None  # L tensors (B, nh, T, S)
    cross_attentions: Tensors = None
    past_key_values: Tensors = None  # per layer (k, v[, cross_k, cross_v]), each (B, nh, S, hs)


@dataclass
class TaskOutput(ModelOutput):
    """MaskedLM, CausalLM, NSP, sequence / token classification and multiple choice."""

    loss: Tensor = None
    logits: Tensor = None
    hidden_states: Tensors = None
    attentions: Tensors = None
    cross_attentions: Tensors = None
    past_key_values: Tensors = None


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
