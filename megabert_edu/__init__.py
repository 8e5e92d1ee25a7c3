"""megabert_edu: a readable PyTorch Megatron-BERT for learning, inspecting and experimenting."""

from .checkpoints import CheckpointError, LoadReport
from .config import MegatronBertConfig
from .hooks import HookPoint
from .models import (
    MegatronBertForCausalLM,
    MegatronBertForMaskedLM,
    MegatronBertForMultipleChoice,
    MegatronBertForNextSentencePrediction,
    MegatronBertForPreTraining,
    MegatronBertForQuestionAnswering,
    MegatronBertForSequenceClassification,
    MegatronBertForTokenClassification,
    MegatronBertModel,
    MegatronBertPreTrainedModel,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "HookPoint", "LoadReport", "MegatronBertConfig", "MegatronBertForCausalLM",
    "MegatronBertForMaskedLM", "MegatronBertForMultipleChoice", "MegatronBertForNextSentencePrediction",
    "MegatronBertForPreTraining", "MegatronBertForQuestionAnswering", "MegatronBertForSequenceClassification",
    "MegatronBertForTokenClassification", "MegatronBertModel", "MegatronBertPreTrainedModel",
]
