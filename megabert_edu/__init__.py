"""megabert_edu: a readable PyTorch Megatron-BERT for learning, inspecting and experimenting."""

from . import analysis, interp, pruning
from .checkpoints import CheckpointError, LoadReport
from .checkpoints.megatron_lm import convert_megatron_lm_checkpoint
from .checkpoints.tf import list_tf_variables, load_tf_weights, read_tf_checkpoint, write_tf_checkpoint
from .config import ConfigError, MegatronBertConfig
from .generation import fill_mask, generate, sample_mlm
from .hooks import HookError, HookPoint, UnknownHookName
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
from .precision import Precision, choose_precision
from .tokenization import WordPieceTokenizer, train_wordpiece
from .training import CausalLMCollator, MLMCollator, TrainConfig, TrainResult, evaluate, nsp_pairs, train

__version__ = "0.1.0"

__all__ = [
    "analysis", "CausalLMCollator", "CheckpointError", "choose_precision", "Precision", "TrainConfig",
    "ConfigError", "convert_megatron_lm_checkpoint", "evaluate",
    "fill_mask", "generate", "HookError", "HookPoint", "interp",
    "list_tf_variables", "load_tf_weights", "LoadReport", "MegatronBertConfig",
    "MegatronBertForCausalLM", "MegatronBertForMaskedLM", "MegatronBertForMultipleChoice",
    "MegatronBertForNextSentencePrediction", "MegatronBertForPreTraining", "MegatronBertForQuestionAnswering",
    "MegatronBertForSequenceClassification", "MegatronBertForTokenClassification", "MegatronBertModel",
    "MegatronBertPreTrainedModel", "MLMCollator", "nsp_pairs", "pruning", "read_tf_checkpoint", "sample_mlm",
    "train", "train_wordpiece", "TrainResult", "UnknownHookName", "WordPieceTokenizer", "write_tf_checkpoint",
]
