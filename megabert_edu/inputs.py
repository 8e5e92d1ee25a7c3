"""Checks of what a forward pass receives: token ids or embeddings, positions, token types, the KV cache,
encoder states and mask values.

Each bad input fails here with a message that names the argument and says what it must hold, instead of
a raw torch error deep inside an Embedding or a matmul, or, worse, a silent broadcast. The checks cost a
few microseconds (a min/max over the ids, one pass over a mask); nothing runs for an argument not given.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import MegatronBertConfig

_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch >= 2.3


def checking_values() -> bool:
    """Whether to run the checks that read tensor values back to Python (a min/max, a pass over a mask).

    Not while torch.compile traces: each read would split the graph (and a CUDA graph cannot hold it).
    The compiled code in this library is generate's decode step, whose inputs generate checked itself; a
    model you compile yourself skips them too (shapes and types are still checked), as transformers' do.
    """
    return not _is_compiling()


def check_tokens(cfg: MegatronBertConfig, input_ids, inputs_embeds, dtype: torch.dtype) -> tuple[int, int]:
    """Validate input_ids / inputs_embeds; return (B, T). Bad ids fail here, not deep inside an Embedding."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if inputs_embeds is not None:
        name, shape = "inputs_embeds", check_embeds(cfg, inputs_embeds, dtype)
    else:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int32):
            kind = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise TypeError(f"input_ids must be an integer tensor (torch.long or torch.int32), got {kind}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len); got {tuple(input_ids.shape)}")
        name, shape = "input_ids", tuple(input_ids.shape)
    if 0 in shape:
        raise ValueError(f"{name} is empty (shape {shape}): pass at least one sequence of at least one token")
    if input_ids is not None and checking_values():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is out of range [0, {cfg.vocab_size}) (vocab_size={cfg.vocab_size})")
    return shape


def check_embeds(cfg: MegatronBertConfig, inputs_embeds, dtype: torch.dtype) -> tuple[int, int]:
    """inputs_embeds: a (B, T, H) tensor in the model's dtype; return (B, T)."""
    if not isinstance(inputs_embeds, torch.Tensor):
        raise TypeError(f"inputs_embeds must be a tensor (batch, seq_len, hidden); got {type(inputs_embeds).__name__}")
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != cfg.hidden_size:
        raise ValueError(f"inputs_embeds must have shape (batch, seq_len, {cfg.hidden_size}); "
                         f"got {tuple(inputs_embeds.shape)}")
    if inputs_embeds.dtype != dtype:
        raise TypeError(f"inputs_embeds has dtype {inputs_embeds.dtype} but the model computes in {dtype}; "
                        f"pass inputs_embeds.to({dtype})")
    return tuple(inputs_embeds.shape[:2])


def check_positions_and_types(cfg: MegatronBertConfig, position_ids, token_type_ids, B: int, T: int, past: int):
    """The sequence fits max_position_embeddings; position_ids (B|1, T) or (T,) and token_type_ids (B, T) in range."""
    if past + T > cfg.max_position_embeddings:
        raise ValueError(f"sequence length {past + T} (cached {past} + new {T}) is longer than "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    if position_ids is not None:
        check_index_tensor("position_ids", position_ids)
        if tuple(position_ids.shape) not in ((T,), (1, T), (B, T)):
            raise ValueError(f"position_ids must have shape ({B}, {T}), (1, {T}) or ({T},): {T} positions per "
                             f"sequence; got shape {tuple(position_ids.shape)}")
        check_index_range("position_ids", position_ids, cfg.max_position_embeddings, "max_position_embeddings")
    if token_type_ids is not None:
        check_index_tensor("token_type_ids", token_type_ids)
        if tuple(token_type_ids.shape) != (B, T):
            raise ValueError(f"token_type_ids shape {tuple(token_type_ids.shape)} does not match input shape {(B, T)}")
        check_index_range("token_type_ids", token_type_ids, cfg.type_vocab_size, "type_vocab_size")


def check_index_tensor(name: str, ids) -> None:
    """ids: an integer tensor (an Embedding looks it up)."""
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        kind = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{name} must be an integer tensor (torch.long), got {kind}")


def check_index_range(name: str, ids: torch.Tensor, limit: int, limit_name: str) -> None:
    """Every id in [0, limit)."""
    if checking_values() and not 0 <= int(ids.min()) <= int(ids.max()) < limit:
        raise ValueError(f"{name} must be in [0, {limit}) ({limit_name}={limit}); "
                         f"got values in [{int(ids.min())}, {int(ids.max())}]")


def cached_length(past_key_values, layers: nn.ModuleList, B: int) -> int:
    """Validate a cache (per layer (k, v) or (k, v, cross_k, cross_v), each (B, nh, S, hs)); return S."""
    if past_key_values is None:
        return 0
    expected = f"a tuple of {len(layers)} per-layer tuples (key, value), as returned with use_cache=True"
    if not isinstance(past_key_values, (tuple, list)):
        hint = " (call .to_legacy_cache() on a transformers Cache)" if "Cache" in type(past_key_values).__name__ else ""
        raise TypeError(f"past_key_values must be {expected}; got {type(past_key_values).__name__}{hint}")
    if len(past_key_values) != len(layers):
        raise ValueError(f"past_key_values must be {expected}; got {len(past_key_values)} entries")
    lengths = set()
    for i, (entry, layer) in enumerate(zip(past_key_values, layers, strict=True)):
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 4) or not all(
                isinstance(t, torch.Tensor) for t in entry):
            got = f"{len(entry)} items" if isinstance(entry, (tuple, list)) else type(entry).__name__
            raise ValueError(f"past_key_values[{i}] must be (key, value) or (key, value, cross_key, cross_value) "
                             f"tensors; got {got}")
        attn = layer.attention.self
        want = (B, attn.num_attention_heads, attn.attention_head_size)
        for j, t in enumerate(entry[:2]):
            if t.dim() != 4 or (t.shape[0], t.shape[1], t.shape[3]) != want:
                raise ValueError(f"past_key_values[{i}][{j}] must have shape (batch={B}, heads={want[1]}, cached, "
                                 f"head_size={want[2]}); got {tuple(t.shape)}")
        lengths.add(entry[0].shape[2])
        lengths.add(entry[1].shape[2])
    if len(lengths) != 1:
        raise ValueError(f"past_key_values entries cache different numbers of tokens: {sorted(lengths)}")
    return lengths.pop()


def check_encoder_states(cfg: MegatronBertConfig, encoder_hidden_states, encoder_attention_mask, B: int,
                         dtype: torch.dtype) -> None:
    """encoder_hidden_states: (B, S, H) in the model's dtype, for a model built with cross-attention."""
    if encoder_hidden_states is None:
        if encoder_attention_mask is not None:
            raise ValueError("encoder_attention_mask given without encoder_hidden_states: it masks the encoder's "
                             "tokens, so pass the encoder_hidden_states it belongs to")
        return
    if not cfg.add_cross_attention:
        raise ValueError("encoder_hidden_states given but the model has no cross-attention "
                         "(build it with is_decoder=True, add_cross_attention=True)")
    if not isinstance(encoder_hidden_states, torch.Tensor):
        raise TypeError(f"encoder_hidden_states must be a tensor (batch, source_len, {cfg.hidden_size}); "
                        f"got {type(encoder_hidden_states).__name__}")
    shape = tuple(encoder_hidden_states.shape)
    if len(shape) != 3 or shape[0] != B or shape[2] != cfg.hidden_size or shape[1] == 0:
        raise ValueError(f"encoder_hidden_states must have shape ({B}, source_len > 0, {cfg.hidden_size}); "
                         f"got {shape}")
    if encoder_hidden_states.dtype != dtype:
        raise TypeError(f"encoder_hidden_states has dtype {encoder_hidden_states.dtype} but the model computes in "
                        f"{dtype}")


def check_mask_values(mask, name: str) -> None:
    """A mask holds 1 (attend) and 0 (masked out): bool, int or float. One pass over (B, S) numbers."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of 1 (attend) / 0 (masked); got {type(mask).__name__}")
    if mask.dtype == torch.bool or not checking_values():
        return
    invalid = (mask != 0) & (mask != 1)
    if bool(invalid.any()):
        bad = mask[invalid][0].item()
        raise ValueError(f"{name} must hold only 1 (attend) and 0 (masked), as bool, int or float; got {bad}. "
                         "An additive mask (0 / -10000 or -inf) is not accepted: pass the 0/1 mask instead")
