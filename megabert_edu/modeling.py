"""The blocks of Megatron-BERT: embeddings, self-attention, attention block, MLP, layer, encoder, pooler.

Megatron-BERT is BERT with the LayerNorm moved from *after* each residual add to the *input* of each
sub-layer (plus one final LayerNorm). That single move is what let NVIDIA scale BERT past 336M
parameters: the residual stream stays an un-normalised sum, so gradients flow straight through it.

    pre-LN  (Megatron):       x = x + sublayer(LN(x))          ... and LN once more at the very end
    post-LN (original BERT):  x = LN(x + sublayer(x))

Both are implemented here (``config.layer_norm_position``) so real BERT checkpoints run in this code.
Shape vocabulary: B batch, T query tokens, S key tokens (T + cached), nh heads, hs head size,
H hidden size, I intermediate size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import MegatronBertConfig
from .hooks import HookPoint

KV = tuple[torch.Tensor, torch.Tensor]


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
        raise ValueError(f"hidden_act={name!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def is_pre_ln(config: MegatronBertConfig) -> bool:
    return config.layer_norm_position == "pre"


class MegatronBertEmbeddings(nn.Module):
    """Token + segment (+ absolute position) embeddings. Megatron has no LayerNorm here; BERT does."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        # Megatron moved this LayerNorm into every layer; post-LN BERT keeps it (and TF's name for it).
        self.LayerNorm = None if is_pre_ln(config) else nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.absolute = config.position_embedding_type == "absolute"
        self.hook_out = HookPoint()

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
        if self.position_embedding_type != "absolute":
            # One learned vector per query-key distance in [-(max_pos - 1), max_pos - 1].
            self.max_position_embeddings = config.max_position_embeddings
            self.distance_embedding = nn.Embedding(2 * config.max_position_embeddings - 1, config.head_size)
        for name in ("q", "k", "v", "scores", "probs", "z"):
            setattr(self, f"hook_{name}", HookPoint())

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_attention_heads, self.attention_head_size).transpose(1, 2)  # (B, nh, T, hs)

    def needs_explicit_path(self, output_attentions: bool, head_mask, device: torch.device) -> bool:
        # PyTorch's fused CPU kernels have no dropout; their fallback is slower than the explicit path.
        cpu_dropout = self.training and self.dropout.p > 0 and device.type == "cpu"
        return (output_attentions or head_mask is not None or self.position_embedding_type != "absolute"
                or self.hook_scores.active or self.hook_probs.active or cpu_dropout)

    def forward(self, x, mask=None, head_mask=None, encoder_hidden_states=None, past: KV | None = None,
                output_attentions: bool = False, query_offset: int = 0):
        """x: (B, T, H); mask: additive (B, 1, T|1, S) or None; query_offset: position of x's first token.

        Returns (z, probs or None, (k, v)).
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
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)

        probs = None
        if self.needs_explicit_path(output_attentions, head_mask, q.device):
            # Dividing by sqrt(hs) keeps the logits' variance ~1 whatever the head size, so softmax does
            # not saturate into one-hot maps with vanishing gradients. Scaling q (T*hs numbers) instead of
            # the scores (T*S numbers) is the same maths on fewer numbers.
            q = q * (1.0 / math.sqrt(self.attention_head_size))
            scores = q @ k.transpose(-1, -2)  # (B, nh, T, S)
            if self.position_embedding_type != "absolute":
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
        return z, probs, (k, v)

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


class MegatronBertSelfOutput(nn.Module):
    """The attention output projection (and, in post-LN BERT, the LayerNorm after the residual add)."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        if not is_pre_ln(config):
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(z))


class MegatronBertAttention(nn.Module):
    """Attention sub-layer with its residual connection. Pre-LN: x + attn(LN(x))."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if is_pre_ln(config) else None
        self.self = MegatronBertSelfAttention(config)
        self.output = MegatronBertSelfOutput(config)
        self.pruned_heads: set[int] = set()
        self.hook_pre_ln = HookPoint()

    def forward(self, x, mask=None, head_mask=None, encoder_hidden_states=None, past=None, output_attentions=False,
                query_offset=0):
        args = (mask, head_mask, encoder_hidden_states, past, output_attentions, query_offset)
        if self.ln is not None:  # Megatron: normalise a copy, keep the raw residual x
            x = self.hook_pre_ln(x)
            z, probs, kv = self.self(self.ln(x), *args)
            return x + self.output(z), probs, kv
        # original BERT: add first, then normalise the sum
        z, probs, kv = self.self(x, *args)
        return self.output.LayerNorm(self.hook_pre_ln(x + self.output(z))), probs, kv

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
        self.hook_act = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_act(self.intermediate_act_fn(self.dense(x)))  # (B, T, I)


class MegatronBertOutput(nn.Module):
    """Second MLP projection, I -> H (and, in post-LN BERT, the LayerNorm after the residual add)."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        if not is_pre_ln(config):
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(h))


class MegatronBertLayer(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, MLP; each with a residual."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.attention = MegatronBertAttention(config)
        if config.add_cross_attention:
            self.crossattention = MegatronBertAttention(config)
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if is_pre_ln(config) else None
        self.intermediate = MegatronBertIntermediate(config)
        self.output = MegatronBertOutput(config)
        self.chunk_size_feed_forward = config.chunk_size_feed_forward
        self.hook_pre_ln = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, x, mask=None, head_mask=None, encoder_hidden_states=None, encoder_mask=None,
                past=None, output_attentions=False):
        """Returns (y, self-attention probs, cross-attention probs, this layer's cache entry)."""
        self_past = None if past is None else past[:2]
        offset = 0 if past is None else past[0].shape[2]  # tokens already in the cache come first
        a, probs, kv = self.attention(x, mask, head_mask, None, self_past, output_attentions, offset)
        cross_probs = None
        if encoder_hidden_states is not None:
            if not hasattr(self, "crossattention"):
                raise ValueError("encoder_hidden_states given but the model has no cross-attention "
                                 "(build it with is_decoder=True, add_cross_attention=True)")
            cross_past = None if past is None or len(past) < 4 else past[2:]
            a, cross_probs, cross_kv = self.crossattention(a, encoder_mask, head_mask, encoder_hidden_states,
                                                           cross_past, output_attentions, offset)
            kv = kv + cross_kv
        if self.ln is not None:
            a = self.hook_pre_ln(a)
        y = self.hook_out(self.chunked(self.feed_forward, a))
        return y, probs, cross_probs, kv

    def feed_forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.ln is not None:  # Megatron: a + MLP(LN(a))
            return a + self.output(self.intermediate(self.ln(a)))
        return self.output.LayerNorm(self.hook_pre_ln(a + self.output(self.intermediate(a))))  # BERT

    def chunked(self, fn, a: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to slices of the sequence: same result, less peak memory for long inputs."""
        size = self.chunk_size_feed_forward
        if size <= 0 or a.shape[1] <= size:
            return fn(a)
        if a.shape[1] % size:
            raise ValueError(f"sequence length {a.shape[1]} is not a multiple of chunk_size_feed_forward={size}")
        return torch.cat([fn(chunk) for chunk in a.split(size, dim=1)], dim=1)


class MegatronBertEncoder(nn.Module):
    """The stack of layers, then (pre-LN only) one final LayerNorm."""

    def __init__(self, config: MegatronBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(MegatronBertLayer(config) for _ in range(config.num_hidden_layers))
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if is_pre_ln(config) else None
        self.gradient_checkpointing = False
        self.hook_pre_ln = HookPoint()

    def forward(self, x, mask=None, head_mask=None, encoder_hidden_states=None, encoder_mask=None,
                past_key_values=None, use_cache=False, output_attentions=False, output_hidden_states=False):
        hidden_states, attentions, cross_attentions, cache = [], [], [], []
        for i, layer in enumerate(self.layer):
            if output_hidden_states:
                hidden_states.append(x)
            args = (x, mask, None if head_mask is None else head_mask[i], encoder_hidden_states, encoder_mask,
                    None if past_key_values is None else past_key_values[i], output_attentions)
            if self.gradient_checkpointing and self.training:
                # Recompute this layer's activations in backward instead of storing them.
                x, probs, cross_probs, kv = checkpoint(layer, *args, use_reentrant=False)
            else:
                x, probs, cross_probs, kv = layer(*args)
            attentions.append(probs)
            cross_attentions.append(cross_probs)
            cache.append(kv)
        x = self.hook_pre_ln(x)
        if self.ln is not None:
            x = self.ln(x)
        if output_hidden_states:
            hidden_states.append(x)  # the reference exposes the final-LN output, not the raw last residual
        return dict(
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
