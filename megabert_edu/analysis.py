"""Looking inside the model: residual-stream norms, LayerNorm statistics, per-head attention summaries.

Each function runs one forward pass with ``run_with_cache`` and boils the cached activations down to a
small table (points x positions, or layers x heads) that is ready to plot. Padding never counts: pass
the same ``attention_mask`` you give the model and only real tokens enter the averages.

    norms = residual_norms(model, ids, mask)          # norms.mean: (L+1,), norms.by_position: (L+1, T)
    ln = layernorm_stats(model, ids, mask)            # what each LayerNorm divides by, and its gains
    heads = attention_summary(model, ids, mask, cls_id=101, sep_id=102, punct_ids=punctuation_ids(vocab))
    heads.top("prev")                                 # [(layer, head, score), ...]: previous-token heads

Run a pre-LN (Megatron) and a post-LN (BERT) model through ``residual_norms`` and plot the two side by
side: the pre-LN residual stream is a raw running sum that grows with depth, while every post-LN layer
ends in a LayerNorm, so its stream stays at the same scale (Xiong et al. 2020).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from .hooks import layer_hook


def live_heads(model: nn.Module) -> list[list[int]]:
    """For each layer, the original numbers of the heads it still has (all of them unless pruned)."""
    base = model.base_model
    n = base.config.num_attention_heads
    return [[h for h in range(n) if h not in layer.attention.pruned_heads] for layer in base.encoder.layer]


def real_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) float: 1 for a real token, 0 for padding."""
    if attention_mask is None:
        return torch.ones(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids "
                         f"{tuple(input_ids.shape)}; analysis needs the 2-D (batch, seq_len) padding mask")
    return attention_mask.float()


def row_entropy(probs: torch.Tensor) -> torch.Tensor:
    """(..., T, S) attention maps -> (..., T): the entropy of each query's distribution over keys, in nats."""
    return torch.special.entr(probs.float()).sum(-1)  # entr(p) = -p log p, with entr(0) = 0


@dataclass
class Profile:
    """A statistic at several points of the forward pass (rows), per position and overall."""

    labels: list[str]
    by_position: torch.Tensor  # (P, T): mean over the batch's real tokens at each position (NaN: none)
    mean: torch.Tensor  # (P,): mean over all real tokens


def profile(labels: list[str], values: list[torch.Tensor], real: torch.Tensor) -> Profile:
    """Average per-token values [(B, T), ...] over the real tokens: per position and overall."""
    v = torch.stack([x.float() for x in values])  # (P, B, T)
    per_position = (v * real).sum(1) / real.sum(0)  # (P, T); 0/0 = NaN where no example has a token
    return Profile(labels, per_position.cpu(), ((v * real).sum((1, 2)) / real.sum()).cpu())  # small: to CPU


def _cache(model: nn.Module, names: list[str], input_ids, attention_mask, **kwargs):
    """Run the encoder once and return the requested activations (names relative to the bare model)."""
    with torch.no_grad():
        _, cache = model.base_model.run_with_cache(input_ids, attention_mask=attention_mask, names=names,
                                                   **kwargs)
    return cache


# ---------------------------------------------------------------------------------------------------
# The residual stream and the LayerNorms


def residual_norms(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   **kwargs) -> Profile:
    """L2 norm of the residual stream entering layer 0 (the embeddings) and leaving every layer.

    Pre-LN: the raw running sum x + attn + mlp + ..., un-normalised. Post-LN: each layer's LayerNorm output.
    """
    n = len(model.base_model.encoder.layer)
    names = ["embeddings.hook_out"] + [layer_hook(i, "hook_resid_post") for i in range(n)]
    cache = _cache(model, names, input_ids, attention_mask, **kwargs)
    labels = ["embeddings"] + [f"layer {i}" for i in range(n)]
    norms = [cache[name].norm(dim=-1) for name in names]  # (B, T) each
    return profile(labels, norms, real_tokens(input_ids, attention_mask))


def layernorm_inputs(model: nn.Module) -> list[tuple[str, list[str], nn.LayerNorm]]:
    """(label, hook names whose sum is its input, module) for each self-attention, MLP and final LayerNorm.

    Pre-LN: each LayerNorm reads the residual stream (resid_pre, resid_mid, resid_final). Post-LN: each
    reads a residual sum before normalising it, resid_pre + attn_out or resid_mid + mlp_out. (Post-LN's
    embedding LayerNorm is left out: its input is the plain sum of the three embeddings.)
    """
    base = model.base_model
    out = []
    for i, layer in enumerate(base.encoder.layer):
        if layer.ln is not None:
            out.append((f"layer {i} attention", [layer_hook(i, "hook_resid_pre")], layer.attention.ln))
            out.append((f"layer {i} mlp", [layer_hook(i, "hook_resid_mid")], layer.ln))
        else:
            out.append((f"layer {i} attention", [layer_hook(i, "hook_resid_pre"), layer_hook(i, "hook_attn_out")],
                        layer.attention.output.LayerNorm))
            out.append((f"layer {i} mlp", [layer_hook(i, "hook_resid_mid"), layer_hook(i, "hook_mlp_out")],
                        layer.output.LayerNorm))
    if base.encoder.ln is not None:
        out.append(("final", ["encoder.hook_resid_final"], base.encoder.ln))
    return out


@dataclass
class LayerNormStats:
    """What every LayerNorm receives and how it rescales it: LN(x) = weight * (x - mean) / std + bias."""

    input_norm: Profile  # ||x|| of the LN's input
    input_std: Profile  # the std it divides by: 1 / std is how much the LN shrinks (or grows) each token
    weight_mean: torch.Tensor  # (P,) mean of the learned gain (weight)
    weight_abs_max: torch.Tensor  # (P,) largest |gain|: a few huge gains are a known outlier pattern
    bias_norm: torch.Tensor  # (P,) ||bias||

    @property
    def labels(self) -> list[str]:
        return self.input_norm.labels


def layernorm_stats(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    **kwargs) -> LayerNormStats:
    """Input norm and std (per position) and gain/bias statistics for each LayerNorm, in forward order."""
    points = layernorm_inputs(model)
    cache = _cache(model, [name for _, names, _ in points for name in names], input_ids, attention_mask, **kwargs)
    real = real_tokens(input_ids, attention_mask)
    labels = [label for label, _, _ in points]
    xs = [sum(cache[name] for name in names) for _, names, _ in points]
    # LayerNorm uses the biased variance plus eps under the square root: report exactly that divisor.
    stds = [(x.float().var(-1, unbiased=False) + ln.eps).sqrt()
            for x, (_, _, ln) in zip(xs, points, strict=True)]
    weights = [ln.weight.detach().float().cpu() for _, _, ln in points]
    return LayerNormStats(
        input_norm=profile(labels, [x.norm(dim=-1) for x in xs], real),
        input_std=profile(labels, stds, real),
        weight_mean=torch.stack([w.mean() for w in weights]),
        weight_abs_max=torch.stack([w.abs().max() for w in weights]),
        bias_norm=torch.stack([ln.bias.detach().float().norm().cpu() for _, _, ln in points]),
    )


# ---------------------------------------------------------------------------------------------------
# Attention: what each head looks at (Clark et al. 2019, "What does BERT look at?")


def attention_maps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   **kwargs) -> list[torch.Tensor]:
    """Per layer, the self-attention map (B, nh, T, T) after softmax (rows: queries, columns: keys)."""
    n = len(model.base_model.encoder.layer)
    names = [layer_hook(i, "attention.self.hook_probs") for i in range(n)]
    cache = _cache(model, names, input_ids, attention_mask, **kwargs)
    return [cache[name] for name in names]


def punctuation_ids(vocab: Mapping[str, int] | Sequence[str] | str | Path) -> list[int]:
    """Ids of tokens made only of punctuation (".", ",", "##'", ...), from a vocab dict, list or vocab.txt."""
    if isinstance(vocab, (str, Path)):
        vocab = Path(vocab).read_text(encoding="utf-8").splitlines()
    items = vocab.items() if isinstance(vocab, Mapping) else ((tok, i) for i, tok in enumerate(vocab))
    ids = []
    for token, i in items:
        word = token.removeprefix("##")
        if word and all(unicodedata.category(ch).startswith("P") for ch in word):
            ids.append(i)
    return sorted(ids)


@dataclass
class HeadSummary:
    """One number per (layer, head), each averaged over the real query tokens of the batch.

    Pruned heads (in a physically pruned model) are NaN at their original position.
    """

    entropy: torch.Tensor  # (L, nh) nats: 0 = all attention on one key, log(T) = spread evenly
    cls: torch.Tensor  # attention mass on [CLS]
    sep: torch.Tensor  # on [SEP]
    punct: torch.Tensor  # on punctuation
    prev: torch.Tensor  # on the token just before the query
    next: torch.Tensor  # on the token just after
    distance: torch.Tensor  # mean |query position - key position|, weighted by attention

    def top(self, field: str, k: int = 5, largest: bool = True) -> list[tuple[int, int, float]]:
        """The k heads with the highest (or lowest) value of `field`: [(layer, head, value), ...]."""
        values = getattr(self, field).flatten()
        values = values.nan_to_num(-float("inf") if largest else float("inf"))
        order = values.argsort(descending=largest, stable=True)[:k]
        nh = self.entropy.shape[1]
        return [(int(i) // nh, int(i) % nh, float(values[i])) for i in order]

    def by_layer(self, field: str) -> torch.Tensor:
        """(L,) mean over the heads of each layer, e.g. by_layer("sep") for Clark et al.'s Figure 2."""
        return getattr(self, field).nanmean(dim=1)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def summarize_attention(maps: Sequence[torch.Tensor], input_ids: torch.Tensor,
                        attention_mask: torch.Tensor | None = None, *, cls_id: int = 101, sep_id: int = 102,
                        punct_ids: Iterable[int] = (), heads: list[list[int]] | None = None,
                        num_heads: int | None = None) -> HeadSummary:
    """Reduce attention maps [(B, nh, T, T) per layer] to per-head statistics.

    For a pruned model pass heads=live_heads(model) (original head numbers per layer) and num_heads.
    """
    real = real_tokens(input_ids, attention_mask)  # (B, T)
    ids = input_ids.to(real.device)
    on = {"cls": (ids == cls_id).float(), "sep": (ids == sep_id).float(),
          "punct": torch.isin(ids, torch.tensor(list(punct_ids), dtype=ids.dtype, device=ids.device)).float()}
    T = ids.shape[1]
    pos = torch.arange(T, device=ids.device)
    dist = (pos[:, None] - pos[None, :]).abs().float()  # (T, T): |query - key|
    # prev/next are only defined where the neighbour exists and is a real token.
    has_prev = real[:, 1:] * real[:, :-1]  # (B, T-1): query t >= 1 and key t-1
    has_next = real[:, :-1] * real[:, 1:]  # (B, T-1): query t <= T-2 and key t+1

    def mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # x (B, nh, Q), w (B, Q) -> (nh,)
        return (x * w[:, None]).sum((0, 2)) / w.sum()

    rows = []
    for p in maps:
        p = p.float()  # (B, nh, T, T)
        row = {
            "entropy": mean(row_entropy(p), real),
            **{name: mean((p * is_[:, None, None, :]).sum(-1), real) for name, is_ in on.items()},
            "prev": mean(p.diagonal(offset=-1, dim1=-2, dim2=-1), has_prev),  # p[t, t-1]
            "next": mean(p.diagonal(offset=1, dim1=-2, dim2=-1), has_next),  # p[t, t+1]
            "distance": mean((p * dist).sum(-1), real),
        }
        rows.append(row)
    heads = heads or [list(range(p.shape[1])) for p in maps]
    n_heads = num_heads or max(max(h) for h in heads) + 1

    def table(name: str) -> torch.Tensor:  # (L, nh), NaN where a head was pruned
        out = torch.full((len(rows), n_heads), float("nan"))
        for i, row in enumerate(rows):
            out[i, heads[i]] = row[name].cpu()
        return out

    return HeadSummary(**{f.name: table(f.name) for f in fields(HeadSummary)})


def attention_summary(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      *, cls_id: int = 101, sep_id: int = 102, punct_ids: Iterable[int] = (),
                      **kwargs) -> HeadSummary:
    """Run the model once and summarise every self-attention head (see ``HeadSummary``)."""
    maps = attention_maps(model, input_ids, attention_mask, **kwargs)
    return summarize_attention(maps, input_ids, attention_mask, cls_id=cls_id, sep_id=sep_id,
                               punct_ids=punct_ids, heads=live_heads(model),
                               num_heads=model.base_model.config.num_attention_heads)
