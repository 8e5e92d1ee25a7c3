"""MegatronBertModel and the eight task models.

Every task model is ``self.bert`` (a MegatronBertModel) plus a small head. They share one forward
body (``MegatronBertTaskModel.forward``); each class only says what its head computes and which loss
it uses. The losses follow the reference's rules exactly.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .config import MegatronBertConfig
from .heads import MegatronBertOnlyMLMHead, MegatronBertOnlyNSPHead, MegatronBertPreTrainingHeads
from .hooks import HookedMixin
from .modeling import MegatronBertEmbeddings, MegatronBertEncoder, MegatronBertPooler
from .outputs import BaseModelOutput, PreTrainingOutput, QuestionAnsweringOutput, TaskOutput


class MegatronBertPreTrainedModel(HookedMixin, nn.Module):
    """Shared plumbing: weight init, tying, head pruning, checkpoints, hooks."""

    base_model_prefix = "bert"

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        if not isinstance(config, MegatronBertConfig):
            raise TypeError(f"expected a MegatronBertConfig, got {type(config).__name__}")
        self.config = config

    def post_init(self) -> None:
        self.apply(self._init_weights)
        self.tie_weights()
        if self.config.pruned_heads:  # a saved pruned model: rebuild the pruned shapes before loading
            self.prune_heads(self.config.pruned_heads)

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) weights, zero biases, identity LayerNorms (as the reference)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)  # Megatron keeps the padding row random too
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif hasattr(module, "decoder") and isinstance(getattr(module, "bias", None), nn.Parameter):
            nn.init.zeros_(module.bias)  # the LM head's output bias

    def tie_weights(self) -> None:
        """Share the MLM decoder matrix with the input word embeddings (one tensor, two roles)."""
        head = getattr(getattr(self, "cls", None), "predictions", None)
        if head is not None and self.config.tie_word_embeddings:
            head.decoder.weight = self.bert.embeddings.word_embeddings.weight

    @property
    def base_model(self) -> MegatronBertModel:
        return self if isinstance(self, MegatronBertModel) else self.bert

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied parameters are counted once

    def prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        """Physically remove attention heads: {layer: [heads]}, heads numbered as in the unpruned model."""
        layers = self.base_model.encoder.layer
        n_heads = self.config.num_attention_heads
        for layer, heads in heads_to_prune.items():
            if not 0 <= int(layer) < len(layers):
                raise ValueError(f"cannot prune layer {layer}: the model has layers 0..{len(layers) - 1}")
            bad = [h for h in heads if not 0 <= int(h) < n_heads]
            if bad:
                raise ValueError(f"cannot prune heads {bad} of layer {layer}: heads are numbered 0..{n_heads - 1}")
            attention = layers[int(layer)].attention
            if len(set(map(int, heads)) | attention.pruned_heads) >= n_heads:
                raise ValueError(f"cannot prune every head of layer {layer}; keep at least one")
        for layer, heads in heads_to_prune.items():
            attention = layers[int(layer)].attention
            attention.prune_heads(set(map(int, heads)))
            self.config.pruned_heads[int(layer)] = sorted(attention.pruned_heads)

    def gradient_checkpointing_enable(self) -> None:
        self.base_model.encoder.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.encoder.gradient_checkpointing = False

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: MegatronBertConfig | None = None,
                        strict: bool = True, **config_overrides):
        """Load an HF-style directory, a TF checkpoint prefix or a Megatron-LM .zip/.pt checkpoint."""
        from .checkpoints import load_pretrained

        return load_pretrained(cls, path, config=config, strict=strict, **config_overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json + model.safetensors that transformers' from_pretrained loads."""
        from .checkpoints.hf import save_pretrained

        save_pretrained(self, directory)


class MegatronBertModel(MegatronBertPreTrainedModel):
    """Embeddings -> encoder (-> pooler). The bare model every task model wraps."""

    def __init__(self, config: MegatronBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = MegatronBertEmbeddings(config)
        self.encoder = MegatronBertEncoder(config)
        self.pooler = MegatronBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                head_mask=None, inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                past_key_values=None, use_cache=None, output_attentions=None,
                output_hidden_states=None) -> BaseModelOutput:
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = cfg.is_decoder and (cfg.use_cache if use_cache is None else use_cache)
        B, T = check_tokens(cfg, input_ids, inputs_embeds)
        past = 0 if past_key_values is None else past_key_values[0][0].shape[2]  # tokens already cached
        device = (input_ids if input_ids is not None else inputs_embeds).device
        check_positions_and_types(cfg, position_ids, token_type_ids, B, T, past)

        mask = additive_attention_mask(attention_mask, B, T, past + T, cfg.is_decoder, self.dtype, device)
        encoder_mask = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            encoder_mask = additive_attention_mask(encoder_attention_mask, B, T, encoder_hidden_states.shape[1],
                                                   False, self.dtype, device, name="encoder_attention_mask")
        head_mask = self.expand_head_mask(head_mask)

        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, past)  # (B, T, H)
        out = self.encoder(x, mask, head_mask, encoder_hidden_states, encoder_mask, past_key_values,
                           use_cache, output_attentions, output_hidden_states)
        pooled = self.pooler(out["last_hidden_state"]) if self.pooler is not None else None
        return BaseModelOutput(pooler_output=pooled, **out)

    def expand_head_mask(self, head_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(nh,) for every layer or (L, nh) per layer -> (L, 1, nh, 1, 1), broadcastable against probs."""
        if head_mask is None:
            return None
        L = self.config.num_hidden_layers
        if head_mask.dim() == 1:
            head_mask = head_mask.unsqueeze(0).expand(L, -1)
        if head_mask.dim() != 2 or head_mask.shape[0] != L:
            raise ValueError(f"head_mask must have shape (num_heads,) or ({L}, num_heads); "
                             f"got {tuple(head_mask.shape)}")
        for i, layer in enumerate(self.encoder.layer):
            n = layer.attention.self.num_attention_heads
            if head_mask.shape[1] != n:
                raise ValueError(f"head_mask has {head_mask.shape[1]} heads per layer but layer {i} has {n}")
        return head_mask[:, None, :, None, None].to(self.dtype)


def check_tokens(cfg: MegatronBertConfig, input_ids, inputs_embeds) -> tuple[int, int]:
    """Validate input_ids / inputs_embeds; return (B, T). Bad ids fail here, not deep inside an Embedding."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if inputs_embeds is not None:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != cfg.hidden_size:
            raise ValueError(f"inputs_embeds must have shape (batch, seq_len, {cfg.hidden_size}); "
                             f"got {tuple(inputs_embeds.shape)}")
        return inputs_embeds.shape[0], inputs_embeds.shape[1]
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        kind = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise TypeError(f"input_ids must be an integer tensor (torch.long), got {kind}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, seq_len); got {tuple(input_ids.shape)}")
    if input_ids.numel():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is out of range [0, {cfg.vocab_size}) (vocab_size={cfg.vocab_size})")
    return input_ids.shape


def check_positions_and_types(cfg: MegatronBertConfig, position_ids, token_type_ids, B: int, T: int, past: int):
    if past + T > cfg.max_position_embeddings:
        raise ValueError(f"sequence length {past + T} (cached {past} + new {T}) is longer than "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    max_pos = cfg.max_position_embeddings
    if position_ids is not None and (position_ids.shape[-1] != T or position_ids.numel() and not
                                     0 <= int(position_ids.min()) <= int(position_ids.max()) < max_pos):
        raise ValueError(f"position_ids must have {T} positions in [0, {cfg.max_position_embeddings}); "
                         f"got shape {tuple(position_ids.shape)}")
    if token_type_ids is None:
        return
    if tuple(token_type_ids.shape) != (B, T):
        raise ValueError(f"token_type_ids shape {tuple(token_type_ids.shape)} does not match input shape {(B, T)}")
    if token_type_ids.numel() and not 0 <= int(token_type_ids.min()) <= int(token_type_ids.max()) < cfg.type_vocab_size:
        raise ValueError(f"token_type_ids must be in [0, {cfg.type_vocab_size}) (type_vocab_size)")


def additive_attention_mask(attention_mask, B: int, T: int, S: int, causal: bool, dtype: torch.dtype,
                            device: torch.device, name: str = "attention_mask") -> torch.Tensor | None:
    """1/0 "may attend" mask -> additive (B, 1, T|1, S) mask: 0 to keep, the dtype's minimum to block.

    Returns None when nothing is blocked, so the fused attention kernel runs without a mask.
    A decoder (causal=True) also blocks keys to the right of each query; cached keys are all visible.
    """
    if attention_mask is None:
        if not causal or T == 1:
            return None
        attention_mask = torch.ones(B, S, dtype=torch.long, device=device)
    if attention_mask.dim() == 3:  # an explicit (B, T, S) mask is used as given, as in the reference
        if tuple(attention_mask.shape) != (B, T, S):
            raise ValueError(f"{name} shape {tuple(attention_mask.shape)} does not match (batch, query, key) "
                             f"= {(B, T, S)}")
        allowed = attention_mask[:, None, :, :]
    elif attention_mask.dim() == 2:
        if tuple(attention_mask.shape) != (B, S):
            raise ValueError(f"{name} shape {tuple(attention_mask.shape)} does not match (batch, seq_len) = {(B, S)}")
        if causal:
            q = torch.arange(S - T, S, device=attention_mask.device)  # query positions follow the cache
            k = torch.arange(S, device=attention_mask.device)
            allowed = (k[None, :] <= q[:, None])[None, None] * attention_mask[:, None, None, :]  # (B, 1, T, S)
        elif bool(attention_mask.all()):
            return None
        else:
            allowed = attention_mask[:, None, None, :]  # (B, 1, 1, S)
    else:
        raise ValueError(f"{name} must be 2-D (batch, seq_len) or 3-D (batch, query, key); "
                         f"got shape {tuple(attention_mask.shape)}")
    return (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min


# ---------------------------------------------------------------------------------------------------
# Task models: one shared forward, a head and a loss each.


class MegatronBertTaskModel(MegatronBertPreTrainedModel):
    """`self.bert` plus a head. Subclasses set `add_pooling_layer`, `label_names` and `head()`."""

    add_pooling_layer = True
    label_names: tuple[str, ...] = ("labels",)

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.bert = MegatronBertModel(config, add_pooling_layer=self.add_pooling_layer)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                head_mask=None, inputs_embeds=None, output_attentions=None, output_hidden_states=None, **kwargs):
        labels = {name: kwargs.pop(name, None) for name in self.label_names}
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states, **kwargs)
        result = self.head(out, **labels)
        for name in ("hidden_states", "attentions", "cross_attentions", "past_key_values"):
            if hasattr(result, name):
                setattr(result, name, getattr(out, name))
        return result

    def head(self, out: BaseModelOutput, **labels):
        raise NotImplementedError


class MegatronBertForPreTraining(MegatronBertTaskModel):
    """MLM + NSP, as BERT was pre-trained. The loss needs both label sets (their sum)."""

    label_names = ("labels", "next_sentence_label")

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.cls = MegatronBertPreTrainingHeads(config)
        self.post_init()

    def head(self, out, labels=None, next_sentence_label=None):
        logits, nsp_logits = self.cls(out.last_hidden_state, out.pooler_output)
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = token_loss(logits, labels) + F.cross_entropy(nsp_logits.view(-1, 2), next_sentence_label.view(-1))
        return PreTrainingOutput(loss=loss, prediction_logits=logits, seq_relationship_logits=nsp_logits)


class LanguageModelHeadModel(MegatronBertTaskModel):
    """The encoder plus the MLM head tied to the word embeddings: shared by MaskedLM and CausalLM."""

    add_pooling_layer = False

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.cls = MegatronBertOnlyMLMHead(config)
        self.post_init()


class MegatronBertForMaskedLM(LanguageModelHeadModel):
    """Predict the masked tokens (labels -100 are ignored)."""

    def head(self, out, labels=None):
        logits = self.cls(out.last_hidden_state)
        return TaskOutput(loss=None if labels is None else token_loss(logits, labels), logits=logits)


class MegatronBertForCausalLM(LanguageModelHeadModel):
    """Left-to-right LM (needs is_decoder=True): predict token t+1 from tokens <= t."""

    def forward(self, *args, labels=None, use_cache=None, **kwargs):
        if labels is not None:
            use_cache = False  # training: no cache to return (as the reference)
        return super().forward(*args, labels=labels, use_cache=use_cache, **kwargs)

    def head(self, out, labels=None):
        logits = self.cls(out.last_hidden_state)
        loss = None
        if labels is not None:  # shift: the logits at t are scored against the label at t + 1
            loss = token_loss(logits[:, :-1].float(), labels[:, 1:])
        return TaskOutput(loss=loss, logits=logits)

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """KV-cached decoding; see megabert_edu.generation.generate for the options."""
        from .generation import generate

        return generate(self, input_ids, **kwargs)


class MegatronBertForNextSentencePrediction(MegatronBertTaskModel):
    """Two logits from the pooled [CLS]: 0 = B follows A, 1 = B is random."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.cls = MegatronBertOnlyNSPHead(config)
        self.post_init()

    def head(self, out, labels=None):
        logits = self.cls(out.pooler_output)
        loss = None if labels is None else F.cross_entropy(logits.view(-1, 2), labels.view(-1))
        return TaskOutput(loss=loss, logits=logits)


class MegatronBertForSequenceClassification(MegatronBertTaskModel):
    """A linear classifier (or regressor, num_labels=1) on the pooled [CLS] vector."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def head(self, out, labels=None):
        logits = self.classifier(self.dropout(out.pooler_output))  # (B, num_labels)
        loss = None if labels is None else sequence_classification_loss(self.config, logits, labels)
        return TaskOutput(loss=loss, logits=logits)


class MegatronBertForMultipleChoice(MegatronBertTaskModel):
    """Score each (context, choice) pair with one logit; softmax over the choices."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                head_mask=None, inputs_embeds=None, labels=None, **kwargs):
        """Inputs are (B, C, T): every choice is run as its own sequence, (B*C, T)."""
        C = (input_ids if input_ids is not None else inputs_embeds).shape[1]

        def flat(t):
            return None if t is None else t.reshape(-1, *t.shape[2:])  # (B, C, T, ...) -> (B*C, T, ...)

        out = super().forward(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                              head_mask, flat(inputs_embeds), **kwargs)
        out.logits = out.logits.view(-1, C)  # (B, C)
        if labels is not None:
            out.loss = F.cross_entropy(out.logits, labels)
        return out

    def head(self, out, labels=None):
        return TaskOutput(logits=self.classifier(self.dropout(out.pooler_output)))  # (B*C, 1)


class MegatronBertForTokenClassification(MegatronBertTaskModel):
    """A label per token (e.g. B/I/O tags); labels -100 are ignored."""

    add_pooling_layer = False

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def head(self, out, labels=None):
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        return TaskOutput(loss=None if labels is None else token_loss(logits, labels), logits=logits)


class MegatronBertForQuestionAnswering(MegatronBertTaskModel):
    """Extractive QA: a start and an end logit per token."""

    add_pooling_layer = False
    label_names = ("start_positions", "end_positions")

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def head(self, out, start_positions=None, end_positions=None):
        start, end = self.qa_outputs(out.last_hidden_state).split(1, dim=-1)  # (B, T, 1) each
        start, end = start.squeeze(-1).contiguous(), end.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            # Answers outside the (possibly truncated) input are clamped to T and then ignored.
            T = start.shape[1]
            s = start_positions.view(-1).clamp(0, T)
            e = end_positions.view(-1).clamp(0, T)
            loss = (F.cross_entropy(start, s, ignore_index=T) + F.cross_entropy(end, e, ignore_index=T)) / 2
        return QuestionAnsweringOutput(loss=loss, start_logits=start, end_logits=end)


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over tokens whose label is not -100."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def sequence_classification_loss(cfg: MegatronBertConfig, logits: torch.Tensor, labels: torch.Tensor):
    """The reference's problem_type rules: 1 label -> MSE; integer labels -> CE; otherwise BCE."""
    problem = cfg.problem_type
    if problem is None:
        if cfg.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze()) if cfg.num_labels == 1 else F.mse_loss(logits, labels)
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, cfg.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels)


TASK_MODELS = (MegatronBertForPreTraining, MegatronBertForMaskedLM, MegatronBertForCausalLM,
               MegatronBertForNextSentencePrediction, MegatronBertForSequenceClassification,
               MegatronBertForMultipleChoice, MegatronBertForTokenClassification, MegatronBertForQuestionAnswering)
