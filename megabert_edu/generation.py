"""Two kinds of text generation.

Left to right, with a causal LM (``MegatronBertForCausalLM``, ``is_decoder=True``): ``generate``.
The prompt is run once ("prefill") and every layer's keys and values are kept in a KV cache; each
later step feeds only the newest token and attends to the cache, so a step costs O(T) instead of
re-running the whole O(T^2) prefix.

    ids = generate(model, prompt_ids, max_new_tokens=20)                       # greedy
    ids = generate(model, prompt_ids, do_sample=True, top_p=0.9, generator=g)  # nucleus sampling
    ids = generate(model, prompt_ids, cache="static")          # preallocated cache, written in place
    ids = generate(model, prompt_ids, compile=True)            # fixed-shape step, torch.compile / CUDA graph

From a bidirectional masked LM (``MegatronBertForMaskedLM`` / ``ForPreTraining``): ``fill_mask``
shows the model's guesses for each [MASK]; ``sample_mlm`` writes whole spans by repeatedly
re-masking and re-predicting (mask-predict, or Gibbs sampling one position at a time). A BERT was
never trained to generate, so this is slower and stranger than a causal LM, which is the point.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from .modeling import KVCache

# ---------------------------------------------------------------------------------------------------
# Choosing the next token from the logits. The order (penalty, temperature, top-k, top-p) is the
# order transformers' logits processors run in, so sampling with the same seed gives the same tokens.


def apply_repetition_penalty(logits: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019): make every token already in `ids` less likely.

    Positive logits are divided by the penalty and negative ones multiplied, so both move down.
    logits: (B, V); ids: (B, T) every token so far, prompt included.
    """
    if penalty == 1.0:
        return logits
    seen = logits.gather(1, ids)  # (B, T)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(1, ids, seen)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row; the rest become -inf (probability 0)."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1), the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2019): keep the fewest tokens whose probability sums to >= p."""
    sorted_logits, order = torch.sort(logits, descending=False)  # (B, V), least likely first
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= 1 - p  # the unlikely tail that together holds at most 1 - p
    drop[:, -1] = False  # always keep the most likely token
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def next_token(logits: torch.Tensor, ids: torch.Tensor, do_sample: bool, temperature: float,
               top_k: int | None, top_p: float | None, repetition_penalty: float,
               generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits of the last position -> (B,) chosen token ids."""
    logits = apply_repetition_penalty(logits, ids, repetition_penalty)
    if not do_sample:
        return logits.argmax(dim=-1)  # greedy: temperature / top-k / top-p cannot change the argmax
    logits = logits / temperature  # < 1 sharpens the distribution, > 1 flattens it
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator).squeeze(1)


def check_sampling_args(max_new_tokens: int, temperature: float, top_k, top_p, repetition_penalty: float):
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (do_sample=False decodes greedily)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")


class eval_mode:
    """Context manager: switch dropout off for the duration, then restore the model's mode."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


# ---------------------------------------------------------------------------------------------------
# Causal LM: KV-cached decoding.


CACHES = ("dynamic", "static", "fixed")


class StaticKVCache(KVCache):
    """A layer's cache entry whose key/value are views of preallocated buffers: `extend` writes in place.

    The dynamic cache (KVCache.extend) allocates a new (B, nh, S + 1, hs) tensor per layer and step and
    copies the old ones into it; this writes the new token's keys/values into its slot instead.
    Two ways to attend, both giving the same tokens:
      write_at is None: key/value are the filled part [:S]; extend writes [S:S+T] and returns [:S+T]
                        (the same shapes as the dynamic cache, so the same kernels and numbers).
      write_at a tensor: key/value are [:max_len - 1] (a fixed shape); extend writes at the index held
                        in `write_at` (a (1,) tensor) and returns all max_len slots, the unfilled ones
                        hidden by the attention mask. Every step then has the same shapes and no
                        Python-side length: what CUDA graphs and torch.compile need.
    """

    buffers: tuple[torch.Tensor, torch.Tensor]  # (B, nh, max_len, hs) each
    write_at: torch.Tensor | None

    def extend(self, key: torch.Tensor, value: torch.Tensor) -> KVCache:
        k_buffer, v_buffer = self.buffers
        if self.write_at is not None:
            k_buffer.index_copy_(2, self.write_at, key)  # key: (B, nh, 1, hs)
            v_buffer.index_copy_(2, self.write_at, value)
            return KVCache(k_buffer, v_buffer)
        S, T = self.key.shape[2], key.shape[2]
        k_buffer.narrow(2, S, T).copy_(key)  # slots S .. S+T-1
        v_buffer.narrow(2, S, T).copy_(value)
        return KVCache(k_buffer.narrow(2, 0, S + T), v_buffer.narrow(2, 0, S + T))


class StaticCache:
    """Preallocated keys and values for every layer: (B, nh, max_len, hs) twice per layer."""

    def __init__(self, model: nn.Module, batch: int, max_len: int):
        param = next(model.parameters())
        device = param.device
        # Under autocast the keys and values come out in the autocast dtype, not the weights'.
        try:
            autocast = torch.is_autocast_enabled(device.type)
        except RuntimeError:  # a device type with no autocast (e.g. "meta", for sizing a cache)
            autocast = False
        dtype = torch.get_autocast_dtype(device.type) if autocast else param.dtype
        self.max_len = max_len
        self.buffers = []
        for layer in model.bert.encoder.layer:
            attn = layer.attention.self
            shape = (batch, attn.num_attention_heads, max_len, attn.attention_head_size)  # pruned layers differ
            self.buffers.append((torch.zeros(shape, dtype=dtype, device=device),
                                 torch.zeros(shape, dtype=dtype, device=device)))

    def filled(self, length: int) -> tuple[StaticKVCache, ...]:
        """past_key_values for a forward after `length` tokens: views of the filled slots."""
        return tuple(self.entry(k.narrow(2, 0, length), v.narrow(2, 0, length), (k, v), None) for k, v in self.buffers)

    def fixed(self, write_at: torch.Tensor) -> tuple[StaticKVCache, ...]:
        """past_key_values of a fixed shape: one new token written at `write_at`, all slots attended."""
        n = self.max_len - 1
        return tuple(self.entry(k[:, :, :n], v[:, :, :n], (k, v), write_at) for k, v in self.buffers)

    @staticmethod
    def entry(key, value, buffers, write_at) -> StaticKVCache:
        entry = StaticKVCache(key, value)
        entry.buffers, entry.write_at = buffers, write_at
        return entry


def check_generate_args(config, input_ids, max_new_tokens, attention_mask, eos_token_id, pad_token_id, cache,
                        compile: bool) -> None:
    """Clear errors for the inputs generate cannot use, each naming the argument."""
    if not config.is_decoder:
        raise ValueError("generate() needs a causal LM: build MegatronBertForCausalLM with is_decoder=True "
                         "(a bidirectional model would let each token see the future)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__} {max_new_tokens!r}")
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2:
        got = tuple(input_ids.shape) if torch.is_tensor(input_ids) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a 2-D tensor (batch, tokens), got {got}; for one prompt pass "
                         f"input_ids[None] (generate returns (batch, tokens) too)")
    if input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids is empty {tuple(input_ids.shape)}: give at least one prompt token (e.g. [CLS])")
    T = input_ids.shape[1]
    if T + max_new_tokens > config.max_position_embeddings:
        raise ValueError(f"prompt length {T} + max_new_tokens {max_new_tokens} is longer than "
                         f"max_position_embeddings={config.max_position_embeddings}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                         f"{tuple(input_ids.shape)}")
    if attention_mask is not None and bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("the last prompt column is padding: pad batched prompts on the LEFT so every row "
                         "ends with a real token")
    if eos_token_id is not None and pad_token_id is None:
        raise ValueError(f"eos_token_id={eos_token_id} needs a pad_token_id for the rows that finish early, and "
                         "neither the call nor the config gives one")
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {CACHES}, got {cache!r}")
    if (cache == "fixed" or compile) and config.position_embedding_type != "absolute":
        raise ValueError(f"cache='fixed' and compile=True need absolute positions; this model uses "
                         f"position_embedding_type={config.position_embedding_type!r} (use cache='static')")


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int = 20, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float = 1.0, eos_token_id: int | None = None,
             pad_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None, cache: str = "dynamic", compile: bool = False
             ) -> torch.Tensor:
    """Extend each prompt by up to `max_new_tokens` tokens; returns (B, T + new) ids, prompt included.

    input_ids: (B, T); a single prompt is input_ids[None] (1-D input is refused, not guessed).
    Batched prompts of different lengths must be LEFT-padded (attention_mask 0 on the padding) so that
    every row's next token is written at the same column. Rows that emit `eos_token_id` are finished:
    they get `pad_token_id` (default: the config's) from then on, and decoding stops when all are done.
    Greedy unless do_sample=True; sampling draws from `generator` (or torch's global RNG).

    How keys and values are kept (all three give the same tokens):
      cache="dynamic"  the readable loop: each step appends to the cache with torch.cat;
      cache="static"   preallocated once and written in place (StaticKVCache): less allocation and copying;
      cache="fixed"    static, and every decode step has the same shapes (attends over all slots, a mask
                       hides the empty ones): the form a CUDA graph can capture.
    compile=True runs the fixed-shape decode step through torch.compile (mode="reduce-overhead" on a GPU,
    which captures it as a CUDA graph); it implies cache="fixed". The step traces as one graph (the input
    value checks stand aside while compiling); compiling it takes seconds to a minute on a CPU.
    """
    config = model.config
    pad_token_id = config.pad_token_id if pad_token_id is None else pad_token_id
    check_generate_args(config, input_ids, max_new_tokens, attention_mask, eos_token_id, pad_token_id, cache,
                        compile)
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    choose = partial(next_token, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                     repetition_penalty=repetition_penalty, generator=generator)
    with eval_mode(model):
        if compile or cache == "fixed":
            return decode_fixed(model, input_ids, attention_mask, max_new_tokens, choose, eos_token_id,
                                pad_token_id, compile)
        return decode(model, input_ids, attention_mask, max_new_tokens, choose, eos_token_id, pad_token_id,
                      static=cache == "static")


def check_logits(logits: torch.Tensor, step: int) -> None:
    if bool(torch.isnan(logits).any()):
        rows = torch.isnan(logits).any(-1).nonzero().flatten().tolist()
        raise FloatingPointError(f"the model's logits are NaN at new token {step} (batch rows {rows}); check the "
                                 f"weights (e.g. an fp16 overflow) and the attention_mask")


def decode(model, input_ids, attention_mask, max_new_tokens, choose, eos_token_id, pad_token_id, static: bool):
    """The readable loop: prefill the prompt, then one token at a time, with a dynamic or static cache."""
    B, T = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    padded = not bool(attention_mask.all())
    static_cache = StaticCache(model, B, T + max_new_tokens) if static else None

    ids, new, past = input_ids, input_ids, None
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        positions = mask = None  # no padding: default positions (0, 1, ...), no mask (fastest kernel)
        if padded:
            # A left-padded row's first real token is position 0, not position (number of pads):
            # count real tokens with a running sum. Padding gets a dummy position (it is masked out).
            mask = attention_mask
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, -new.shape[1]:]
        if static_cache is not None:
            past = static_cache.filled(ids.shape[1] - new.shape[1])  # views of the slots filled so far
        out = model(new, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True)
        past = out.past_key_values  # per layer (k, v), each (B, nh, S, hs)
        logits = out.logits[:, -1].float()  # (B, V)
        check_logits(logits, step)
        token = choose(logits, ids)  # (B,)
        if eos_token_id is not None:
            token = token.masked_fill(finished, pad_token_id)
            finished |= token == eos_token_id
        ids = torch.cat([ids, token[:, None]], dim=1)  # (B, T + 1)
        if padded:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
        new = token[:, None]  # (B, 1): only the newest token goes through the model next step
        if eos_token_id is not None and bool(finished.all()):  # (a read-back: only when rows can finish)
            break
    return ids


def decode_fixed(model, input_ids, attention_mask, max_new_tokens, choose, eos_token_id, pad_token_id,
                 compile: bool):
    """Prefill as usual, then decode steps whose inputs all live in fixed-shape tensors updated in place."""
    B, T = input_ids.shape
    if max_new_tokens == 0:
        return input_ids
    device = input_ids.device
    total = T + max_new_tokens
    cache = StaticCache(model, B, total - 1)  # the last new token is never fed back in
    mask = torch.zeros(B, total - 1, dtype=torch.long, device=device)  # (B, slots): 1 = a real token there
    mask[:, :T] = 1 if attention_mask is None else attention_mask
    prompt_mask = None if attention_mask is None or bool(attention_mask.all()) else mask[:, :T]
    positions = (mask[:, :T].cumsum(-1) - 1).clamp(min=0)  # (B, T): position 0 at each row's first real token
    out = model(input_ids, attention_mask=prompt_mask, position_ids=positions if prompt_mask is not None else None,
                past_key_values=cache.filled(0), use_cache=True)
    logits = out.logits[:, -1].float()  # (B, V)
    next_position = positions[:, -1:] + 1  # (B, 1)
    # The step's inputs: every step reads them from the same tensors, so a captured graph can replay.
    token_in = torch.zeros(B, 1, dtype=input_ids.dtype, device=device)
    position_in = next_position.clone()
    write_at = torch.full((1,), T, dtype=torch.long, device=device)
    step_fn = decode_step
    if compile:
        # Tensors that live across steps at a fixed address: a CUDA graph may read and write them in place.
        for tensor in (*[b for pair in cache.buffers for b in pair], mask, token_in, position_in, write_at):
            torch._dynamo.mark_static_address(tensor)
        step_fn = compiled_decode_step("reduce-overhead" if device.type == "cuda" else None)
    past = cache.fixed(write_at)

    ids = input_ids
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        check_logits(logits, step)
        token = choose(logits, ids)
        if eos_token_id is not None:
            token = token.masked_fill(finished, pad_token_id)
            finished |= token == eos_token_id
        ids = torch.cat([ids, token[:, None]], dim=1)
        if step == max_new_tokens - 1 or (eos_token_id is not None and bool(finished.all())):
            break
        slot = T + step  # the slot the token just chosen occupies
        token_in.copy_(token[:, None])
        mask[:, slot] = 1
        write_at.fill_(slot)
        if compile:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed: reuse their memory
        logits = step_fn(model, token_in, position_in, mask, past)
        position_in += 1
    return ids


def decode_step(model, token: torch.Tensor, position: torch.Tensor, mask: torch.Tensor, past) -> torch.Tensor:
    """One fixed-shape decode step: (B, 1) token at (B, 1) position, (B, max_len) mask -> (B, V) logits."""
    out = model(token, attention_mask=mask, position_ids=position, past_key_values=past, use_cache=True)
    return out.logits[:, -1].float()


@functools.cache
def compiled_decode_step(mode: str | None) -> Callable:
    """decode_step through torch.compile, built once per mode (on CUDA, "reduce-overhead" replays it as a CUDA
    graph: one launch per step instead of hundreds of small kernels)."""
    return torch.compile(decode_step, mode=mode)


# ---------------------------------------------------------------------------------------------------
# Masked LM: fill-mask and sampling by iterative re-masking.


def mlm_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask=None,
               token_type_ids=None) -> torch.Tensor:
    """(B, T, V) token logits from a ForMaskedLM or ForPreTraining model."""
    out = model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    logits = getattr(out, "prediction_logits", None)
    return out.logits if logits is None else logits


@torch.no_grad()
def fill_mask(model: nn.Module, tokenizer, text: str, top_k: int = 5) -> list[list[dict]]:
    """The model's top_k guesses for every [MASK] in `text`.

    Returns one list per [MASK], left to right, of {"token", "token_id", "score"} dicts
    (score = softmax probability), most likely first.
    """
    enc = tokenizer(text, return_tensors="pt")
    ids = enc["input_ids"].to(model.device)
    where = (ids[0] == tokenizer.mask_token_id).nonzero().squeeze(1)
    if where.numel() == 0:
        raise ValueError(f"no {tokenizer.mask_token} token in {text!r}")
    with eval_mode(model):
        logits = mlm_logits(model, ids, token_type_ids=enc["token_type_ids"].to(model.device))
    probs = logits[0, where].float().softmax(dim=-1)  # (masks, V)
    scores, token_ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [[{"token": tokenizer.convert_ids_to_tokens(int(t)), "token_id": int(t), "score": float(s)}
             for s, t in zip(row_scores, row_ids, strict=True)]
            for row_scores, row_ids in zip(scores, token_ids, strict=True)]


def sample_tokens(logits: torch.Tensor, temperature: float, top_k: int | None,
                  generator: torch.Generator | None) -> torch.Tensor:
    """(N, V) -> (N,) samples; temperature 0 means argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def sample_mlm(model: nn.Module, input_ids: torch.Tensor, mask_token_id: int, method: str = "mask_predict",
               steps: int = 10, temperature: float = 1.0, top_k: int | None = None,
               attention_mask: torch.Tensor | None = None, special_ids: tuple[int, ...] = (),
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill every `mask_token_id` position of `input_ids` (B, T) by sampling from a bidirectional MLM.

    method="mask_predict" (Ghazvininejad et al. 2019): predict all blanks at once, then re-mask the
        least confident ones and predict again; the number re-masked shrinks linearly over `steps`.
    method="gibbs" (Wang & Cho 2019, "BERT has a mouth"): start from all-[MASK], then `steps` sweeps
        over the blanks; each visit masks one position and resamples it given all the others.
    temperature=0 is greedy. `special_ids` (e.g. [CLS], [SEP], [PAD], [MASK]) are never sampled.
    Seed `generator` for reproducible samples.
    """
    if method not in ("mask_predict", "gibbs"):
        raise ValueError(f"method must be 'mask_predict' or 'gibbs', got {method!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    blanks = input_ids == mask_token_id  # (B, T): the positions we are allowed to write
    ids = input_ids.clone()
    banned = torch.tensor(sorted({mask_token_id, *special_ids}), device=ids.device)

    def predict(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        logits = mlm_logits(model, x, mask).float()  # (B, T, V)
        logits[..., banned] = float("-inf")
        return logits

    with eval_mode(model):
        if method == "mask_predict":
            n_blanks = blanks.sum(dim=1)  # (B,)
            for step in range(steps):
                logits = predict(ids, attention_mask)
                sampled = sample_tokens(logits[blanks], temperature, top_k, generator)  # (N,)
                ids[blanks] = torch.where(ids[blanks] == mask_token_id, sampled, ids[blanks])
                if step == steps - 1:
                    break
                # Confidence of each current token; fixed tokens get +inf so they are never re-masked.
                conf = logits.log_softmax(-1).gather(2, ids[..., None]).squeeze(2)  # (B, T)
                conf = conf.masked_fill(~blanks, float("inf"))
                n_remask = (n_blanks * (steps - 1 - step) // steps).tolist()  # linear decay to 0
                for b, n in enumerate(n_remask):
                    if n:
                        ids[b, conf[b].topk(n, largest=False).indices] = mask_token_id
        else:
            positions = blanks.nonzero().tolist()  # [(b, t), ...] in reading order
            for _ in range(steps):
                for b, t in positions:
                    ids[b, t] = mask_token_id
                    row_mask = None if attention_mask is None else attention_mask[b:b + 1]
                    logits = predict(ids[b:b + 1], row_mask)[0, t:t + 1]  # (1, V)
                    ids[b, t] = sample_tokens(logits, temperature, top_k, generator)[0]
    return ids
