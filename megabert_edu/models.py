"""MegatronBertModel and the eight task models.

Every task model is ``self.bert`` (a MegatronBertModel) plus a small head. They share one forward
body (``MegatronBertTaskModel.run``); each class only says what its head computes and which loss it
uses (megabert_edu.losses). Each forward names its arguments as transformers does, labels included,
so ``transformers.Trainer`` finds the label columns. The losses follow the reference's rules exactly.

``return_dict=False`` (or ``config.return_dict=False``, or ``config.torchscript=True``) returns the
output's non-None fields as a tuple, as in transformers.
"""

from __future__ import annotations

import operator
import os

import torch
from torch import nn

from .config import MegatronBertConfig
from .generation import generate
from .heads import (
    MegatronBertLMPredictionHead,
    MegatronBertOnlyMLMHead,
    MegatronBertOnlyNSPHead,
    MegatronBertPreTrainingHeads,
)
from .hooks import HookedMixin
from .inputs import (
    cached_length,
    check_encoder_states,
    check_mask_values,
    check_positions_and_types,
    check_tokens,
    checking_values,
)
from .losses import causal_lm_loss, choice_loss, sequence_classification_loss, span_loss, token_loss
from .modeling import MegatronBertEmbeddings, MegatronBertEncoder, MegatronBertPooler
from .outputs import (
    BaseModelOutput,
    CausalLMOutput,
    ModelOutput,
    PreTrainingOutput,
    QuestionAnsweringOutput,
    TaskOutput,
    copy_encoder_fields,
)
from .resizing import resize_embedding, rounded_vocab_size


class MegatronBertPreTrainedModel(HookedMixin, nn.Module):
    """Shared plumbing: weight init, tying, embeddings, head pruning, checkpointing, checkpoints, hooks."""

    base_model_prefix = "bert"
    main_input_name = "input_ids"  # what transformers' Trainer and pipelines look for
    supports_gradient_checkpointing = True

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        if not isinstance(config, MegatronBertConfig):
            raise TypeError(f"expected a MegatronBertConfig, got {type(config).__name__}")
        config.validate_for_model()  # types, ranges, hidden_size divisible by the heads: named errors
        self.config = config

    def post_init(self) -> None:
        self.apply(self._init_weights)
        self.tie_weights()
        if self.config.pruned_heads:  # a saved pruned model: rebuild the pruned shapes before loading
            plan, self.config.pruned_heads = self.config.pruned_heads, {}
            self.prune_heads(plan)  # records the plan again, normalised (layer -1 -> L-1)
        if getattr(self.config, "gradient_checkpointing", False):  # a flag old config.json files carry
            self.gradient_checkpointing_enable()
            delattr(self.config, "gradient_checkpointing")  # as transformers: applied once, not saved

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
        elif isinstance(module, MegatronBertLMPredictionHead):
            nn.init.zeros_(module.bias)  # the LM head's output bias

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

    # ---- embeddings ------------------------------------------------------------------------------

    def lm_head(self) -> MegatronBertLMPredictionHead | None:
        """The MLM head whose decoder shares the word-embedding matrix; None for models without one."""
        return None

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.base_model.embeddings.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear | None:
        """The LM head's decoder (vocabulary scores); None for models without an LM head."""
        head = self.lm_head()
        return None if head is None else head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        head = self.lm_head()
        if head is None:
            raise AttributeError(f"{type(self).__name__} has no LM head, so no output embeddings to set")
        head.set_decoder(new_embeddings)

    def tie_weights(self) -> None:
        """Share the LM decoder matrix with the input word embeddings (one tensor, two roles).

        Also under config.torchscript, where transformers copies the matrix instead: torch.jit.trace
        handles a shared parameter today, and a copy would not follow the weights from_pretrained loads.
        """
        head = self.lm_head()
        if head is not None and self.config.tie_word_embeddings:
            head.decoder.weight = self.get_input_embeddings().weight

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Grow or shrink the vocabulary to new_num_tokens (rounded up to a multiple of pad_to_multiple_of).

        Kept rows are unchanged; added rows start near the mean of the old ones (see megabert_edu.resizing).
        The LM head follows (its bias grows with zeros when tied, as in transformers), config.vocab_size is
        updated and the weights are re-tied. Returns the word-embedding module.
        """
        embeddings = self.get_input_embeddings()
        if not isinstance(embeddings, nn.Embedding):
            raise TypeError(f"resize_token_embeddings needs nn.Embedding input embeddings; got "
                            f"{type(embeddings).__name__}")
        n = rounded_vocab_size(new_num_tokens, embeddings.num_embeddings, pad_to_multiple_of)
        if n is None:
            return embeddings
        if n != embeddings.num_embeddings:
            std = self.config.initializer_range
            resize_embedding(embeddings, n, mean_resizing=mean_resizing, std=std)
            head = self.lm_head()
            if head is not None:
                head.resize(n, tied=self.config.tie_word_embeddings, mean_resizing=mean_resizing, std=std)
        self.config.vocab_size = n
        self.vocab_size = n  # transformers sets it too
        self.tie_weights()
        return embeddings

    # ---- head pruning ----------------------------------------------------------------------------

    def prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        """Physically remove attention heads: {layer: [heads]}, heads numbered as in the unpruned model.

        Layers may count from the end (-1 is the last, as in transformers) and be ints or strings (as in
        config.json). Keys naming the same layer are merged before anything is checked or removed.
        """
        plan = self.normalise_prune_plan(heads_to_prune)
        layers = self.base_model.encoder.layer
        for layer, heads in plan.items():
            if len(heads | layers[layer].attention.pruned_heads) >= self.config.num_attention_heads:
                raise ValueError(f"cannot prune every head of layer {layer}; keep at least one")
        for layer, heads in plan.items():
            attention = layers[layer].attention
            attention.prune_heads(heads)
            self.config.pruned_heads[layer] = sorted(attention.pruned_heads)

    def normalise_prune_plan(self, heads_to_prune) -> dict[int, set[int]]:
        """{layer: heads} with every layer a non-negative int and every head checked; same-layer keys merged."""
        if not isinstance(heads_to_prune, dict):
            raise TypeError(f"heads_to_prune must be a dict {{layer: [heads]}}; got {type(heads_to_prune).__name__}")
        L, n_heads = len(self.base_model.encoder.layer), self.config.num_attention_heads
        plan: dict[int, set[int]] = {}
        for key, heads in heads_to_prune.items():
            layer = as_index(key, f"layer {key!r}")
            if not -L <= layer < L:
                raise ValueError(f"cannot prune layer {key}: the model has layers 0..{L - 1} (or -{L}..-1)")
            if isinstance(heads, (str, bytes)) or not isinstance(heads, (list, tuple, set, frozenset, range)):
                raise TypeError(f"heads to prune in layer {key!r} must be a list of head numbers; got {heads!r}")
            heads = {as_index(h, f"head {h!r} of layer {key!r}") for h in heads}
            bad = sorted(h for h in heads if not 0 <= h < n_heads)
            if bad:
                raise ValueError(f"cannot prune heads {bad} of layer {key}: heads are numbered 0..{n_heads - 1}")
            plan.setdefault(layer % L, set()).update(heads)
        return plan

    # ---- gradient checkpointing ------------------------------------------------------------------

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each layer's activations during backward instead of storing them (less memory, slower).

        gradient_checkpointing_kwargs go to torch.utils.checkpoint.checkpoint; without them use_reentrant=True,
        the default of transformers 4.57.
        """
        if gradient_checkpointing_kwargs is None:
            gradient_checkpointing_kwargs = {"use_reentrant": True}
        if not isinstance(gradient_checkpointing_kwargs, dict):
            raise TypeError("gradient_checkpointing_kwargs must be a dict of torch.utils.checkpoint.checkpoint "
                            f"arguments, e.g. {{'use_reentrant': False}}; got {type(gradient_checkpointing_kwargs)}")
        encoder = self.base_model.encoder
        encoder.gradient_checkpointing_kwargs = dict(gradient_checkpointing_kwargs)
        encoder.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.encoder.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.base_model.encoder.gradient_checkpointing

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None, **kwargs):
        """Load an HF-style directory, a TF checkpoint prefix or a Megatron-LM .zip/.pt checkpoint.

        As in transformers: returns an eval-mode model; keyword config fields (``num_labels=5``,
        ``hidden_dropout_prob=0.0``, ...) override the checkpoint's config before the model is built;
        ``config=``, ``state_dict=``, ``torch_dtype=``, ``output_loading_info=``,
        ``ignore_mismatched_sizes=``, ``device=`` and ``strict=`` (default True) are honoured; any
        other keyword raises TypeError naming it. See ``megabert_edu.checkpoints.load_pretrained``.
        """
        from .checkpoints import load_pretrained  # checkpoints import models, so models imports them late

        return load_pretrained(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write config.json + model.safetensors that transformers' from_pretrained loads, atomically.

        ``safe_serialization=False`` writes pytorch_model.bin; ``state_dict=``, ``is_main_process=`` and
        ``max_shard_size=`` are honoured as in transformers. Any failure leaves the previous checkpoint whole;
        other files in the directory (a README, vocab.txt) are kept. See ``megabert_edu.checkpoints.hf``.
        """
        from .checkpoints.hf import save_pretrained  # checkpoints import models, so models imports them late

        save_pretrained(self, save_directory, **kwargs)


class MegatronBertModel(MegatronBertPreTrainedModel):
    """Embeddings -> encoder (-> pooler). The bare model every task model wraps."""

    def __init__(self, config: MegatronBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = MegatronBertEmbeddings(config)
        self.encoder = MegatronBertEncoder(config)
        self.pooler = MegatronBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                head_mask=None, inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                past_key_values=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None) -> BaseModelOutput | tuple:
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = cfg.is_decoder and (cfg.use_cache if use_cache is None else use_cache)
        B, T = check_tokens(cfg, input_ids, inputs_embeds, self.dtype)
        past = cached_length(past_key_values, self.encoder.layer, B)  # tokens already cached
        device = (input_ids if input_ids is not None else inputs_embeds).device
        check_positions_and_types(cfg, position_ids, token_type_ids, B, T, past)
        check_encoder_states(cfg, encoder_hidden_states, encoder_attention_mask, B, self.dtype)

        mask = additive_attention_mask(attention_mask, B, T, past + T, cfg.is_decoder, self.dtype, device)
        encoder_mask = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            encoder_mask = additive_attention_mask(encoder_attention_mask, B, T, encoder_hidden_states.shape[1],
                                                   False, self.dtype, device, name="encoder_attention_mask")
        head_mask = self.expand_head_mask(head_mask)

        x = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                            inputs_embeds=inputs_embeds, past_length=past)  # (B, T, H)
        out = self.encoder(x, mask=mask, head_mask=head_mask, encoder_hidden_states=encoder_hidden_states,
                           encoder_mask=encoder_mask, past_key_values=past_key_values, use_cache=use_cache,
                           output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        out.pooler_output = self.pooler(out.last_hidden_state) if self.pooler is not None else None
        return out if wants_dict(cfg, return_dict) else out.to_tuple()

    def expand_head_mask(self, head_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(nh,) for every layer or (L, nh) per layer -> (L, 1, nh, 1, 1), broadcastable against probs."""
        if head_mask is None:
            return None
        if not isinstance(head_mask, torch.Tensor) or head_mask.is_complex():
            raise TypeError(f"head_mask must be a tensor of 1 (keep) / 0 (silence) per head, shape (num_heads,) or "
                            f"(num_layers, num_heads); got {type(head_mask).__name__}")
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


def wants_dict(cfg: MegatronBertConfig, return_dict: bool | None) -> bool:
    """return_dict argument, else config.use_return_dict (False under config.torchscript, as transformers)."""
    return cfg.use_return_dict if return_dict is None else return_dict


def as_index(value, what: str) -> int:
    """An int from an int, a numpy integer or a string of digits (JSON keys); anything else is an error."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, not a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer; got {type(value).__name__}") from None


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
    check_mask_values(attention_mask, name)
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
        elif checking_values() and bool(attention_mask.all()):  # (compiled: keep the mask, no read-back)
            return None
        else:
            allowed = attention_mask[:, None, None, :]  # (B, 1, 1, S)
    else:
        raise ValueError(f"{name} must be 2-D (batch, seq_len) or 3-D (batch, query, key); "
                         f"got shape {tuple(attention_mask.shape)}")
    return (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min


# ---------------------------------------------------------------------------------------------------
# Task models: one shared body, a head and a loss each. Each forward lists its arguments (labels included)
# in the reference's order, so positional calls, Trainer's label detection and column pruning all work.


class MegatronBertTaskModel(MegatronBertPreTrainedModel):
    """`self.bert` plus a head. Subclasses set `add_pooling_layer` and `head()`."""

    add_pooling_layer = True

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.bert = MegatronBertModel(config, add_pooling_layer=self.add_pooling_layer)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None) -> ModelOutput | tuple:
        """input_ids (B, T); labels as the head expects (its docstring)."""
        return self.run(dict(labels=labels), return_dict, input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids, position_ids=position_ids, head_mask=head_mask,
                        inputs_embeds=inputs_embeds, output_attentions=output_attentions,
                        output_hidden_states=output_hidden_states)

    def run(self, labels: dict, return_dict: bool | None, **inputs) -> ModelOutput | tuple:
        """The shared body: the encoder, the head (and its loss), the encoder's optional outputs copied over."""
        out = self.bert(**inputs, return_dict=True)
        result = copy_encoder_fields(self.head(out, **labels), out)
        return result if wants_dict(self.config, return_dict) else result.to_tuple()

    def head(self, out: BaseModelOutput, **labels) -> ModelOutput:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__


class MegatronBertForPreTraining(MegatronBertTaskModel):
    """MLM + NSP, as BERT was pre-trained. The loss needs both label sets (their sum)."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.cls = MegatronBertPreTrainingHeads(config)
        self.post_init()

    def lm_head(self) -> MegatronBertLMPredictionHead:
        return self.cls.predictions

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, next_sentence_label=None, output_attentions=None,
                output_hidden_states=None, return_dict=None) -> PreTrainingOutput | tuple:
        return self.run(dict(labels=labels, next_sentence_label=next_sentence_label), return_dict,
                        input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states)

    def head(self, out, labels=None, next_sentence_label=None):
        """labels (B, T): token ids or -100; next_sentence_label (B,): 0 = B follows A, 1 = random."""
        logits, nsp_logits = self.cls(out.last_hidden_state, out.pooler_output)  # (B, T, V), (B, 2)
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = token_loss(self.name, logits, labels) + choice_loss(
                self.name, nsp_logits, next_sentence_label, name="next_sentence_label",
                meaning="batch: 0 = sentence B follows A, 1 = B is random")
        return PreTrainingOutput(loss=loss, prediction_logits=logits, seq_relationship_logits=nsp_logits)


class LanguageModelHeadModel(MegatronBertTaskModel):
    """The encoder plus the MLM head tied to the word embeddings: shared by MaskedLM and CausalLM."""

    add_pooling_layer = False

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.cls = MegatronBertOnlyMLMHead(config)
        self.post_init()

    def lm_head(self) -> MegatronBertLMPredictionHead:
        return self.cls.predictions


class MegatronBertForMaskedLM(LanguageModelHeadModel):
    """Predict the masked tokens (labels -100 are ignored)."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None) -> TaskOutput | tuple:
        return self.run(dict(labels=labels), return_dict, input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids, position_ids=position_ids, head_mask=head_mask,
                        inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
                        encoder_attention_mask=encoder_attention_mask, output_attentions=output_attentions,
                        output_hidden_states=output_hidden_states)

    def head(self, out, labels=None):
        """labels (B, T): the original token id at masked positions, -100 elsewhere."""
        logits = self.cls(out.last_hidden_state)  # (B, T, V)
        return TaskOutput(loss=None if labels is None else token_loss(self.name, logits, labels), logits=logits)


class MegatronBertForCausalLM(LanguageModelHeadModel):
    """Left-to-right LM (needs is_decoder=True): predict token t+1 from tokens <= t."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                past_key_values=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None) -> CausalLMOutput | tuple:
        if labels is not None:
            use_cache = False  # training: no cache to return (as the reference)
        return self.run(dict(labels=labels), return_dict, input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids, position_ids=position_ids, head_mask=head_mask,
                        inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
                        encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values,
                        use_cache=use_cache, output_attentions=output_attentions,
                        output_hidden_states=output_hidden_states)

    def head(self, out, labels=None):
        """labels (B, T): usually the input ids themselves (the shift happens here), -100 where not scored."""
        logits = self.cls(out.last_hidden_state)  # (B, T, V)
        return CausalLMOutput(loss=None if labels is None else causal_lm_loss(self.name, logits, labels),
                              logits=logits)

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """KV-cached decoding; see megabert_edu.generation.generate for the options."""
        return generate(self, input_ids, **kwargs)


class MegatronBertForNextSentencePrediction(MegatronBertTaskModel):
    """Two logits from the pooled [CLS]: 0 = B follows A, 1 = B is random."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.cls = MegatronBertOnlyNSPHead(config)
        self.post_init()

    def head(self, out, labels=None):
        """labels (B,): 0 = sentence B follows A, 1 = B is random."""
        logits = self.cls(out.pooler_output)  # (B, 2)
        loss = None if labels is None else choice_loss(self.name, logits, labels,
                                                       meaning="batch: 0 = sentence B follows A, 1 = B is random")
        return TaskOutput(loss=loss, logits=logits)


class MegatronBertForSequenceClassification(MegatronBertTaskModel):
    """A linear classifier (or regressor, num_labels=1) on the pooled [CLS] vector."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def head(self, out, labels=None):
        """labels (B,) class ids; (B,) floats for regression; (B, num_labels) 0/1 for multi-label."""
        logits = self.classifier(self.dropout(out.pooler_output))  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(self.name, self.config.problem_type, logits, labels)
        return TaskOutput(loss=loss, logits=logits)


class MegatronBertForMultipleChoice(MegatronBertTaskModel):
    """Score each (context, choice) pair with one logit; softmax over the choices."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None) -> TaskOutput | tuple:
        """Inputs are (B, C, T): every choice is run as its own sequence, (B*C, T)."""
        C = number_of_choices(input_ids, inputs_embeds)
        return self.run(dict(labels=labels, num_choices=C), return_dict, input_ids=flatten_choices(input_ids),
                        attention_mask=flatten_choices(attention_mask), token_type_ids=flatten_choices(token_type_ids),
                        position_ids=flatten_choices(position_ids), head_mask=head_mask,
                        inputs_embeds=flatten_choices(inputs_embeds), output_attentions=output_attentions,
                        output_hidden_states=output_hidden_states)

    def head(self, out, labels=None, num_choices: int = 1):
        """labels (B,): the index of the right choice."""
        logits = self.classifier(self.dropout(out.pooler_output)).view(-1, num_choices)  # (B*C, 1) -> (B, C)
        return TaskOutput(loss=None if labels is None else choice_loss(self.name, logits, labels), logits=logits)


def number_of_choices(input_ids, inputs_embeds) -> int:
    if input_ids is not None:
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 3:
            return input_ids.shape[1]
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"MegatronBertForMultipleChoice: input_ids must have shape (batch, num_choices, seq_len); "
                         f"got {got}")
    if isinstance(inputs_embeds, torch.Tensor) and inputs_embeds.dim() == 4:
        return inputs_embeds.shape[1]
    got = tuple(inputs_embeds.shape) if isinstance(inputs_embeds, torch.Tensor) else type(inputs_embeds).__name__
    raise ValueError("MegatronBertForMultipleChoice: inputs_embeds must have shape (batch, num_choices, seq_len, "
                     f"hidden); got {got}")


def flatten_choices(t):
    """(B, C, T, ...) -> (B*C, T, ...): each choice becomes its own sequence."""
    if not isinstance(t, torch.Tensor) or t.dim() < 3:
        return t  # None, or left for the model's own shape checks to name
    return t.reshape(-1, *t.shape[2:])


class MegatronBertForTokenClassification(MegatronBertTaskModel):
    """A label per token (e.g. B/I/O tags); labels -100 are ignored."""

    add_pooling_layer = False

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def head(self, out, labels=None):
        """labels (B, T): a class id per token, -100 where not scored."""
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        return TaskOutput(loss=None if labels is None else token_loss(self.name, logits, labels), logits=logits)


class MegatronBertForQuestionAnswering(MegatronBertTaskModel):
    """Extractive QA: a start and an end logit per token."""

    add_pooling_layer = False

    def __init__(self, config: MegatronBertConfig):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                output_hidden_states=None, return_dict=None) -> QuestionAnsweringOutput | tuple:
        return self.run(dict(start_positions=start_positions, end_positions=end_positions), return_dict,
                        input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states)

    def head(self, out, start_positions=None, end_positions=None):
        """start_positions, end_positions (B,): token indices of the answer span (past the input: ignored)."""
        start, end = self.qa_outputs(out.last_hidden_state).split(1, dim=-1)  # (B, T, 1) each
        start, end = start.squeeze(-1).contiguous(), end.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(self.name, start, end, start_positions, end_positions)
        return QuestionAnsweringOutput(loss=loss, start_logits=start, end_logits=end)


TASK_MODELS = (MegatronBertForPreTraining, MegatronBertForMaskedLM, MegatronBertForCausalLM,
               MegatronBertForNextSentencePrediction, MegatronBertForSequenceClassification,
               MegatronBertForMultipleChoice, MegatronBertForTokenClassification, MegatronBertForQuestionAnswering)
