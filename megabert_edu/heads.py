"""Task heads that sit on top of the encoder: the MLM head (tied to the word embeddings) and the NSP head."""

from __future__ import annotations

import torch
from torch import nn

from .config import MegatronBertConfig
from .modeling import get_activation
from .resizing import resize_bias, resize_rows


class MegatronBertPredictionHeadTransform(nn.Module):
    """dense -> activation -> LayerNorm, applied to every token before predicting its word."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = get_activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(h)))


class MegatronBertLMPredictionHead(nn.Module):
    """Scores over the vocabulary. The decoder matrix *is* the word-embedding matrix (weight tying)."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.transform = MegatronBertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias  # one parameter, two names (as in the reference's state dict)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(h))  # (B, T, V)

    def set_decoder(self, decoder: nn.Linear) -> None:
        """Use another output matrix; its bias becomes the head's bias (one parameter, two names)."""
        self.decoder = decoder
        self.bias = decoder.bias

    def resize(self, new_num_tokens: int, tied: bool, mean_resizing: bool, std: float) -> None:
        """Change the vocabulary size. Tied: the caller re-ties the matrix; the bias grows with zeros (as the
        reference). Untied: a new decoder whose added rows and bias entries start near the old ones' mean."""
        old = self.decoder
        if tied:
            self.bias = nn.Parameter(resize_bias(self.bias, new_num_tokens, mean_resizing=False))
            self.decoder.bias = self.bias
            self.decoder.out_features = new_num_tokens
            return
        new = nn.Linear(old.in_features, new_num_tokens, device=old.weight.device, dtype=old.weight.dtype)
        new.weight = nn.Parameter(resize_rows(old.weight, new_num_tokens, mean_resizing, std),
                                  requires_grad=old.weight.requires_grad)
        new.bias = nn.Parameter(resize_bias(self.bias, new_num_tokens, mean_resizing),
                                requires_grad=self.bias.requires_grad)
        self.set_decoder(new)


class MegatronBertOnlyMLMHead(nn.Module):
    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.predictions = MegatronBertLMPredictionHead(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.predictions(h)


class MegatronBertOnlyNSPHead(nn.Module):
    """Is sentence B the continuation of sentence A? Two logits from the pooled [CLS] vector."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.seq_relationship(pooled)


class MegatronBertPreTrainingHeads(nn.Module):
    """Both pre-training heads: MLM on every token, NSP on the pooled [CLS]."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.predictions = MegatronBertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, h: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictions(h), self.seq_relationship(pooled)
