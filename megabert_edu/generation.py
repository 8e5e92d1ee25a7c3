"""Two kinds of text generation.

Left to right, with a causal LM (``MegatronBertForCausalLM``, ``is_decoder=True``): ``generate``.
The prompt is run once ("prefill") and every layer's keys and values are kept in a KV cache; each
later step feeds only the newest token and attends to the cache, so a step costs O(T) instead of
re-running the whole O(T^2) prefix.

    ids = generate(model, prompt_ids, max_new_tokens=20)                       # greedy
    ids = generate(model, prompt_ids, do_sample=True, top_p=0.9, generator=g)  # nucleus sampling

From a bidirectional masked LM (``MegatronBertForMaskedLM`` / ``ForPreTraining``): ``fill_mask``
shows the model's guesses for each [MASK]; ``sample_mlm`` writes whole spans by repeatedly
re-masking and re-predicting (mask-predict, or Gibbs sampling one position at a time). A BERT was
never trained to generate, so this is slower and stranger than a causal LM, which is the point.
"""

from __future__ import annotations

import torch
from torch import nn

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


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int = 20, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float = 1.0, eos_token_id: int | None = None,
             pad_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend each prompt by up to `max_new_tokens` tokens; returns (B, T + new) ids, prompt included.

    Batched prompts of different lengths must be LEFT-padded (attention_mask 0 on the padding) so that
    every row's next token is written at the same column. Rows that emit `eos_token_id` are finished:
    they get `pad_token_id` (default: the config's) from then on, and decoding stops when all are done.
    Greedy unless do_sample=True; sampling draws from `generator` (or torch's global RNG).
    """
    config = model.config
    if not config.is_decoder:
        raise ValueError("generate() needs a causal LM: build MegatronBertForCausalLM with is_decoder=True "
                         "(a bidirectional model would let each token see the future)")
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    B, T = input_ids.shape
    if T == 0:
        raise ValueError("input_ids is empty: give at least one prompt token (e.g. [CLS])")
    if T + max_new_tokens > config.max_position_embeddings:
        raise ValueError(f"prompt length {T} + max_new_tokens {max_new_tokens} is longer than "
                         f"max_position_embeddings={config.max_position_embeddings}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {(B, T)}")
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("the last prompt column is padding: pad batched prompts on the LEFT so every row "
                         "ends with a real token")
    pad_token_id = config.pad_token_id if pad_token_id is None else pad_token_id
    padded = not bool(attention_mask.all())

    ids, new, past = input_ids, input_ids, None
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    with eval_mode(model):
        for _ in range(max_new_tokens):
            positions = mask = None  # no padding: default positions (0, 1, ...), no mask (fastest kernel)
            if padded:
                # A left-padded row's first real token is position 0, not position (number of pads):
                # count real tokens with a running sum. Padding gets a dummy position (it is masked out).
                mask = attention_mask
                positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, -new.shape[1]:]
            out = model(new, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True)
            past = out.past_key_values  # per layer (k, v), each (B, nh, S, hs)
            token = next_token(out.logits[:, -1].float(), ids, do_sample, temperature, top_k, top_p,
                               repetition_penalty, generator)  # (B,)
            if eos_token_id is not None:
                token = token.masked_fill(finished, pad_token_id)
                finished |= token == eos_token_id
            ids = torch.cat([ids, token[:, None]], dim=1)  # (B, T + 1)
            if padded:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
            new = token[:, None]  # (B, 1): only the newest token goes through the model next step
            if bool(finished.all()):
                break
    return ids


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
