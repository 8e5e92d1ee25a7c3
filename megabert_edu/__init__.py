"""megabert_edu: a readable PyTorch Megatron-BERT for learning, inspecting and experimenting."""

from . import analysis, pruning
from .checkpoints import CheckpointError, LoadReport
from .checkpoints.megatron_lm import convert_megatron_lm_checkpoint
from .checkpoints.tf import list_tf_variables, load_tf_weights, read_tf_checkpoint, write_tf_checkpoint
from .config import MegatronBertConfig
from .generation import fill_mask, generate, sample_mlm
from .hooks import HookPoint, UnknownHookName
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
from .tokenization import WordPieceTokenizer, train_wordpiece

__version__ = "0.1.0"

__all__ = [
    "analysis", "CheckpointError", "convert_megatron_lm_checkpoint", "fill_mask", "generate", "HookPoint",
    "list_tf_variables", "load_tf_weights", "LoadReport", "MegatronBertConfig", "MegatronBertForCausalLM",
    "MegatronBertForMaskedLM", "MegatronBertForMultipleChoice", "MegatronBertForNextSentencePrediction",
    "MegatronBertForPreTraining", "MegatronBertForQuestionAnswering", "MegatronBertForSequenceClassification",
    "MegatronBertForTokenClassification", "MegatronBertModel", "MegatronBertPreTrainedModel", "pruning",
    "read_tf_checkpoint", "sample_mlm", "train_wordpiece", "UnknownHookName", "WordPieceTokenizer",
    "write_tf_checkpoint",
]
