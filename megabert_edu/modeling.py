"""The blocks of Megatron-BERT: embeddings, self-attention, attention block, MLP, layer, encoder, pooler.

Megatron-BERT is BERT with the LayerNorm moved from *after* each residual add to the *input* of each
sub-layer (plus one final LayerNorm). That single move is what let NVIDIA scale BERT past 336M
parameters: the residual stream stays an un-normalised sum, so gradients flow straight through it.

    pre-LN  (Megatron):       x = x + sublayer(LN(x))          ... and LN once more at the very end
    post-LN (original BERT):  x = LN(x + sublayer(x))

Both are implemented here (``config.layer_norm_position``, decided in ``layer_norms``) so real BERT
checkpoints run in this code. A layer reads as the residual stream, with a hook point at every stage:

    resid_pre --(+ attn_out)--> resid_mid --(+ mlp_out)--> resid_post

Pre-LN: resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out, exactly. Post-LN: the same
names hold the normalised sums, resid_mid = LN(resid_pre + attn_out), resid_post = LN(resid_mid + mlp_out).
Shape vocabulary: B batch, T query tokens, S key tokens (T + cached), nh heads, hs head size,
H hidden size, I intermediate size.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ConfigError, MegatronBertConfig
from .hooks import HookPoint
from .outputs import BaseModelOutput


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU used by GPT-2 and some BERT ports."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {
    "gelu": F.gelu,  # exact, erf-based: what BERT and Megatron use
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "mish": F.mish,
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ConfigError(f"hidden_act={name!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def is_pre_ln(config: MegatronBertConfig) -> bool:
    return config.layer_norm_position == "pre"


# ---------------------------------------------------------------------------------------------------
# Small named results and the KV cache


class KVCache(NamedTuple):
    """One layer's self-attention keys and values. A plain (key, value) tuple to HF-style code."""

    key: torch.Tensor  # (B, nh, S, hs)
    value: torch.Tensor  # (B, nh, S, hs)

    @property
    def cross(self) -> None:
        return None  # no cross-attention entry

    def extend(self, key: torch.Tensor, value: torch.Tensor) -> KVCache:
        """This cache with new tokens' keys/values (B, nh, T, hs) appended: (B, nh, S + T, hs).

        A new tensor each step; generation.StaticKVCache overrides this to write into preallocated memory.
        """
        return KVCache(torch.cat([self.key, key], dim=2), torch.cat([self.value, value], dim=2))


class CrossKVCache(NamedTuple):
    """A decoder layer with cross-attention: its own keys/values, then those computed once from the encoder."""

    key: torch.Tensor  # (B, nh, S, hs)
    value: torch.Tensor
    cross_key: torch.Tensor  # (B, nh, S_enc, hs)
    cross_value: torch.Tensor

    @property
    def cross(self) -> KVCache:
        return KVCache(self.cross_key, self.cross_value)


LayerCache = KVCache | CrossKVCache


def self_cache(past: LayerCache | None) -> KVCache | None:
    """The self-attention part of a layer's cache entry (a KVCache, or subclass, passes through unchanged)."""
    return past if past is None or isinstance(past, KVCache) else KVCache(past.key, past.value)


def as_layer_cache(past, layer: int) -> LayerCache | None:
    """past_key_values[layer] as given by the caller (our entries or HF's plain tuples) -> a typed entry."""
    if past is None or isinstance(past, (KVCache, CrossKVCache)):
        return past
    if isinstance(past, (tuple, list)) and len(past) in (2, 4) and all(isinstance(t, torch.Tensor) for t in past):
        return KVCache(*past) if len(past) == 2 else CrossKVCache(*past)
    got = f"{len(past)} items" if isinstance(past, (tuple, list)) else type(past).__name__
    raise ValueError(f"past_key_values[{layer}] must be a tuple (key, value) or (key, value, cross_key, "
                     f"cross_value) of tensors, as returned by the model with use_cache=True; got {got}")


class AttentionResult(NamedTuple):
    """What an attention block returns."""

    out: torch.Tensor  # (B, T, H): what it adds to the residual stream (self-attention alone: z, (B, T, nh*hs))
    probs: torch.Tensor | None  # (B, nh, T, S), only on the explicit path
    kv: KVCache  # the keys and values it attended to (for the cache)


class LayerResult(NamedTuple):
    """What a layer returns."""

    hidden: torch.Tensor  # (B, T, H): resid_post
    probs: torch.Tensor | None  # (B, nh, T, S) self-attention map
    cross_probs: torch.Tensor | None  # (B, nh, T, S_enc) cross-attention map
    cache: LayerCache  # this layer's entry of past_key_values


# ---------------------------------------------------------------------------------------------------
# LayerNorm: where pre-LN and post-LN differ


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm with a hook on what it divides by: LN(x) = weight * (x - mean) / scale + bias."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__(hidden_size, eps=eps)
        self.hook_scale = HookPoint()  # (B, T, 1)  sqrt(var(x) + eps) per token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.hook_scale.active:  # the fused kernel
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x32 = x.float()
        centred = x32 - x32.mean(-1, keepdim=True)
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())  # (B, T, 1)
        return (centred / scale * self.weight.float() + self.bias.float()).to(x.dtype)


def layer_norms(config: MegatronBertConfig) -> tuple[LayerNorm | None, LayerNorm | None]:
    """(LN of the sub-layer's input, LN of the residual sum): the one place pre-LN and post-LN differ.

        pre-LN  (Megatron):  x = x + f(LN(x))   -> (LayerNorm, None)
        post-LN (BERT):      x = LN(x + f(x))   -> (None, LayerNorm)
    """
    ln = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
    return (ln, None) if is_pre_ln(config) else (None, ln)


class ResidualOutput(nn.Module):
    """A sub-layer's output projection (what it adds) and its residual add, normalised in post-LN BERT."""

    def __init__(self, config: MegatronBertConfig, in_features: int, post_ln: LayerNorm | None):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.LayerNorm = post_ln  # TF's and HF's name for it; None in pre-LN

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(h))  # (B, T, H)

    def residual(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The residual stream after this sub-layer: x + delta, or LN(x + delta) in post-LN."""
        return x + delta if self.LayerNorm is None else self.LayerNorm(x + delta)


# ---------------------------------------------------------------------------------------------------
# The blocks


class MegatronBertEmbeddings(nn.Module):
    """Token + segment (+ absolute position) embeddings. Megatron has no LayerNorm here; BERT does."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        # Megatron moved this LayerNorm into every layer; post-LN BERT keeps it (and TF's name for it).
        self.LayerNorm = layer_norms(config)[1]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.absolute = config.position_embedding_type == "absolute"
        self.hook_out = HookPoint()  # (B, T, H)  the embedding sum (post-LN: after its LayerNorm)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                past_length: int = 0) -> torch.Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        # The defaults need no per-token lookup: segment 0 everywhere, positions past..past+T-1 in order.
        # Adding one row (or a slice) broadcast over the batch gives the same numbers as the gather.
        types = self.token_type_embeddings
        x = x + (types.weight[0] if token_type_ids is None else types(token_type_ids))
        if self.absolute:  # relative models encode position inside attention instead
            T = x.shape[1]
            positions = self.position_embeddings
            x = x + (positions.weight[past_length:past_length + T] if position_ids is None else positions(position_ids))
        if self.LayerNorm is not None:
            x = self.LayerNorm(x)
        return self.hook_out(self.dropout(x))


class MegatronBertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention, with optional relative positions, KV cache and cross-attention.

    Two paths, same numbers: the fused ``scaled_dot_product_attention`` kernel when nothing needs the
    attention map, and the explicit softmax(QK^T / sqrt(hs)) V when something does (output_attentions,
    head_mask, relative positions, or a hook on ``hook_scores`` / ``hook_probs``) and for attention
    dropout in CPU training, which the fused CPU kernels lack.
    """

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_size
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.position_embedding_type = config.position_embedding_type
        self.max_position_embeddings = config.max_position_embeddings
        self.distance_embedding = None
        if self.position_embedding_type != "absolute":
            # One learned vector per query-key distance in [-(max_pos - 1), max_pos - 1].
            self.distance_embedding = nn.Embedding(2 * config.max_position_embeddings - 1, config.head_size)
        self.hook_q = HookPoint()  # (B, nh, T, hs)
        self.hook_k = HookPoint()  # (B, nh, S, hs)
        self.hook_v = HookPoint()  # (B, nh, S, hs)
        self.hook_scores = HookPoint()  # (B, nh, T, S)  scaled, masked, before softmax (explicit path only)
        self.hook_probs = HookPoint()  # (B, nh, T, S)  the attention map (explicit path only)
        self.hook_z = HookPoint()  # (B, nh, T, hs)  each head's output; zeroing head j ablates it

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_attention_heads, self.attention_head_size).transpose(1, 2)  # (B, nh, T, hs)

    def needs_explicit_path(self, output_attentions: bool, head_mask, device: torch.device) -> bool:
        # PyTorch's fused CPU kernels have no dropout; their fallback is slower than the explicit path.
        cpu_dropout = self.training and self.dropout.p > 0 and device.type == "cpu"
        return (output_attentions or head_mask is not None or self.distance_embedding is not None
                or self.hook_scores.active or self.hook_probs.active or cpu_dropout)

    def forward(self, x: torch.Tensor, *, mask=None, head_mask=None, encoder_hidden_states=None,
                past: KVCache | None = None, output_attentions: bool = False, query_offset: int = 0
                ) -> AttentionResult:
        """x: (B, T, H); mask: additive (B, 1, T|1, S) or None; query_offset: position of x's first token.

        Returns the heads' outputs side by side (B, T, nh*hs), the map (or None) and the keys/values.
        """
        B, T, _ = x.shape
        q = self.hook_q(self.split_heads(self.query(x)))  # (B, nh, T, hs)
        if encoder_hidden_states is not None and past is not None:
            k, v = past  # cross-attention keys/values depend only on the encoder: computed once, reused
        else:
            source = x if encoder_hidden_states is None else encoder_hidden_states
            k = self.hook_k(self.split_heads(self.key(source)))  # (B, nh, S, hs)
            v = self.hook_v(self.split_heads(self.value(source)))  # (B, nh, S, hs)
            if past is not None:  # self-attention cache: prepend the keys/values of earlier tokens
                k, v = past.extend(k, v)

        probs = None
        if self.needs_explicit_path(output_attentions, head_mask, q.device):
            # Dividing by sqrt(hs) keeps the logits' variance ~1 whatever the head size, so softmax does
            # not saturate into one-hot maps with vanishing gradients. Scaling q (T*hs numbers) instead of
            # the scores (T*S numbers) is the same maths on fewer numbers.
            q = q * (1.0 / math.sqrt(self.attention_head_size))
            scores = q @ k.transpose(-1, -2)  # (B, nh, T, S)
            if self.distance_embedding is not None:
                scores = scores + self.relative_scores(q, k, query_offset)
            if mask is not None:
                scores = scores + mask
            probs = self.hook_probs(self.hook_scores(scores).softmax(dim=-1))  # (B, nh, T, S)
            probs = self.dropout(probs)
            if head_mask is not None:
                probs = probs * head_mask  # (1, nh, 1, 1): 0 silences a head, 1 keeps it
            z = probs @ v  # (B, nh, T, hs)
        else:
            p = self.dropout.p if self.training else 0.0
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=match_dtype(mask, q.dtype), dropout_p=p)
        z = self.hook_z(z)
        z = z.transpose(1, 2).reshape(B, T, self.all_head_size)  # (B, T, nh*hs)
        return AttentionResult(out=z, probs=probs, kv=KVCache(k, v))

    def relative_scores(self, q: torch.Tensor, k: torch.Tensor, query_offset: int) -> torch.Tensor:
        """Shaw et al. (2018) / Huang et al. (2020) relative-position terms; q arrives already scaled.

        The reference adds these terms before the 1/sqrt(hs) scale, so they are scaled too.
        """
        T, S = q.shape[2], k.shape[2]
        query_pos = torch.arange(query_offset, query_offset + T, device=q.device).view(-1, 1)
        key_pos = torch.arange(S, device=q.device).view(1, -1)
        distance = query_pos - key_pos + self.max_position_embeddings - 1  # (T, S), shifted to >= 0
        r = self.distance_embedding(distance).to(q.dtype)  # (T, S, hs)
        scores = torch.einsum("bhtd,tsd->bhts", q, r)
        if self.position_embedding_type == "relative_key_query":
            scores = scores + torch.einsum("bhsd,tsd->bhts", k, r) / math.sqrt(self.attention_head_size)
        return scores


def match_dtype(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The fused kernel wants the mask in q's dtype (e.g. under bf16 autocast); clamp so -max stays finite."""
    if mask is None or mask.dtype == dtype:
        return mask
    return mask.clamp(min=torch.finfo(dtype).min).to(dtype)


class MegatronBertSelfOutput(ResidualOutput):
    """The attention output projection W_O (and, in post-LN BERT, the LayerNorm after the residual add)."""

    def __init__(self, config: MegatronBertConfig, post_ln: LayerNorm | None):
        super().__init__(config, config.hidden_size, post_ln)


class MegatronBertAttention(nn.Module):
    """Attention sub-layer: (pre-LN: normalise the input,) attend, project. The layer adds the residual."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.ln, post_ln = layer_norms(config)
        self.self = MegatronBertSelfAttention(config)
        self.output = MegatronBertSelfOutput(config, post_ln)
        self.pruned_heads: set[int] = set()

    def forward(self, x: torch.Tensor, **kwargs) -> AttentionResult:
        """x: the residual stream (B, T, H); kwargs as MegatronBertSelfAttention. out: what to add to x."""
        z, probs, kv = self.self(x if self.ln is None else self.ln(x), **kwargs)  # Megatron: a normalised copy
        return AttentionResult(out=self.output(z), probs=probs, kv=kv)  # out: (B, T, H)

    def prune_heads(self, heads: set[int]) -> None:
        """Physically remove heads (numbered as in the original, unpruned layer)."""
        attn = self.self
        heads = set(heads) - self.pruned_heads
        if not heads:
            return
        # Map original head numbers to current positions: earlier pruned heads shift the rest left.
        current = [h - sum(p < h for p in self.pruned_heads) for h in sorted(heads)]
        keep = torch.ones(attn.num_attention_heads, attn.attention_head_size, dtype=torch.bool)
        keep[current] = False
        index = keep.view(-1).nonzero().squeeze(1)
        attn.query = prune_linear(attn.query, index, dim=0)
        attn.key = prune_linear(attn.key, index, dim=0)
        attn.value = prune_linear(attn.value, index, dim=0)
        self.output.dense = prune_linear(self.output.dense, index, dim=1)
        attn.num_attention_heads -= len(heads)
        attn.all_head_size = attn.num_attention_heads * attn.attention_head_size
        self.pruned_heads |= heads


def prune_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping only `index` rows (dim=0, outputs) or columns (dim=1, inputs)."""
    index = index.to(layer.weight.device)
    weight = layer.weight.index_select(dim, index).detach().clone()
    bias = layer.bias
    if bias is not None and dim == 0:
        bias = bias[index]
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


class MegatronBertIntermediate(nn.Module):
    """First MLP projection, H -> I, and the non-linearity."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = get_activation(config.hidden_act)
        self.hook_act = HookPoint()  # (B, T, I)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_act(self.intermediate_act_fn(self.dense(x)))  # (B, T, I)


class MegatronBertOutput(ResidualOutput):
    """Second MLP projection, I -> H (and, in post-LN BERT, the LayerNorm after the residual add)."""

    def __init__(self, config: MegatronBertConfig, post_ln: LayerNorm | None):
        super().__init__(config, config.intermediate_size, post_ln)


class MegatronBertLayer(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, MLP; each adds to the residual stream."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.attention = MegatronBertAttention(config)
        self.crossattention = MegatronBertAttention(config) if config.add_cross_attention else None
        self.ln, post_ln = layer_norms(config)  # around the MLP
        self.intermediate = MegatronBertIntermediate(config)
        self.output = MegatronBertOutput(config, post_ln)
        self.chunk_size_feed_forward = config.chunk_size_feed_forward
        self.hook_resid_pre = HookPoint()  # (B, T, H)  the residual stream entering the layer
        self.hook_attn_out = HookPoint()  # (B, T, H)  what self-attention adds
        # (B, T, H)  what cross-attention adds (decoders with add_cross_attention)
        self.hook_cross_attn_out = HookPoint() if config.add_cross_attention else None
        self.hook_resid_mid = HookPoint()  # (B, T, H)  the stream entering the MLP
        self.hook_mlp_out = HookPoint()  # (B, T, H)  what the MLP adds
        self.hook_resid_post = HookPoint()  # (B, T, H)  the stream leaving the layer

    def forward(self, x: torch.Tensor, *, mask=None, head_mask=None, encoder_hidden_states=None,
                encoder_mask=None, past: LayerCache | None = None, output_attentions: bool = False
                ) -> LayerResult:
        """x: the residual stream (B, T, H). Each `residual` is x + delta (post-LN: LN(x + delta))."""
        offset = 0 if past is None else past.key.shape[2]  # tokens already in the cache come first
        x = self.hook_resid_pre(x)
        attn = self.attention(x, mask=mask, head_mask=head_mask, output_attentions=output_attentions,
                              past=self_cache(past), query_offset=offset)
        x = self.attention.output.residual(x, self.hook_attn_out(attn.out))
        cache, cross_probs = attn.kv, None
        if encoder_hidden_states is not None:
            cross = self.cross_attend(x, encoder_hidden_states, mask=encoder_mask, head_mask=head_mask,
                                      past=None if past is None else past.cross,
                                      output_attentions=output_attentions, query_offset=offset)
            x = self.crossattention.output.residual(x, self.hook_cross_attn_out(cross.out))
            cache, cross_probs = CrossKVCache(*attn.kv, *cross.kv), cross.probs
        x = self.hook_resid_mid(x)
        x = self.hook_resid_post(self.output.residual(x, self.hook_mlp_out(self.chunked(self.mlp, x))))
        return LayerResult(hidden=x, probs=attn.probs, cross_probs=cross_probs, cache=cache)

    def cross_attend(self, x: torch.Tensor, encoder_hidden_states: torch.Tensor, **kwargs) -> AttentionResult:
        if self.crossattention is None:
            raise ValueError("encoder_hidden_states given but the model has no cross-attention "
                             "(build it with is_decoder=True, add_cross_attention=True)")
        return self.crossattention(x, encoder_hidden_states=encoder_hidden_states, **kwargs)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """What the MLP adds to the residual stream x (B, T, H); pre-LN reads a normalised copy."""
        return self.output(self.intermediate(x if self.ln is None else self.ln(x)))

    def chunked(self, fn, x: torch.Tensor) -> torch.Tensor:
        """Apply a per-token fn to slices of the sequence: same result, less peak memory for long inputs."""
        size = self.chunk_size_feed_forward
        if size <= 0 or x.shape[1] <= size:
            return fn(x)
        if x.shape[1] % size:
            raise ValueError(f"sequence length {x.shape[1]} is not a multiple of chunk_size_feed_forward={size}")
        return torch.cat([fn(chunk) for chunk in x.split(size, dim=1)], dim=1)


class MegatronBertEncoder(nn.Module):
    """The stack of layers, then (pre-LN only) one final LayerNorm."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(MegatronBertLayer(config) for _ in range(config.num_hidden_layers))
        self.ln = layer_norms(config)[0]
        self.gradient_checkpointing = False
        self.gradient_checkpointing_kwargs: dict = {"use_reentrant": False}
        self.hook_resid_final = HookPoint()  # (B, T, H)  the residual stream leaving the last layer
        self.hook_ln_final = HookPoint() if self.ln is not None else None  # (B, T, H)  after the final LN

    def forward(self, x: torch.Tensor, *, mask=None, head_mask=None, encoder_hidden_states=None, encoder_mask=None,
                past_key_values=None, use_cache: bool = False, output_attentions: bool = False,
                output_hidden_states: bool = False) -> BaseModelOutput:
        hidden_states, attentions, cross_attentions, cache = [], [], [], []
        for i, layer in enumerate(self.layer):
            if output_hidden_states:
                hidden_states.append(x)
            kwargs = dict(mask=mask, head_mask=None if head_mask is None else head_mask[i],
                          encoder_hidden_states=encoder_hidden_states, encoder_mask=encoder_mask,
                          past=None if past_key_values is None else as_layer_cache(past_key_values[i], i),
                          output_attentions=output_attentions)
            if self.gradient_checkpointing and self.training:
                # Recompute this layer's activations in backward instead of storing them.
                # (use_reentrant=True, transformers' default, hands back a plain tuple: re-wrap it)
                result = LayerResult(*checkpoint(partial(layer, **kwargs), x, **self.gradient_checkpointing_kwargs))
            else:
                result = layer(x, **kwargs)
            x = result.hidden
            attentions.append(result.probs)
            cross_attentions.append(result.cross_probs)
            cache.append(result.cache)
        x = self.hook_resid_final(x)
        if self.ln is not None:
            x = self.hook_ln_final(self.ln(x))
        if output_hidden_states:
            hidden_states.append(x)  # the reference exposes the final-LN output, not the raw last residual
        return BaseModelOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            cross_attentions=tuple(cross_attentions) if output_attentions and encoder_hidden_states is not None
            else None,
            past_key_values=tuple(cache) if use_cache else None,
        )


class MegatronBertPooler(nn.Module):
    """tanh(dense(h[CLS])): a sentence vector for NSP and sequence classification."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))  # (B, H)
