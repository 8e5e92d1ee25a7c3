"""Interpretability on hook points: logit lens, direct logit attribution, activation patching.

Everything here reads or replaces activations through the model's hook points (``hooks``), never by
changing the model, and returns a small table ready to plot. Positions and targets are per example:
an int for the whole batch, or a (B,) tensor (e.g. where each sequence has its [MASK]).

    lens = logit_lens(mlm, ids, position=5, target=dog)    # lens.target_rank (P, B): P = embeddings + L layers
    dla = direct_logit_attribution(mlm, ids, position=5, target=dog, contrast=cat)   # dla.heads (B, L, nh)
    run = activation_patching(mlm, clean, corrupted, metric, point="hook_resid_pre", per="position")
    run.values                                               # (L, T): 0 = the corrupted run, 1 = the clean run

All three work for pre-LN (Megatron) and post-LN (BERT) models, absolute and relative positions, and
physically pruned models (per-head tables are indexed by the original head numbers; pruned heads are NaN).
They run the model in eval mode (no dropout) and restore its mode afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .analysis import live_heads
from .hooks import caching_hook, layer_hook
from .models import MegatronBertPreTrainedModel

Position = int | torch.Tensor


# ---------------------------------------------------------------------------------------------------
# Shared helpers


def check_model(model, caller: str, lm_head: bool = False):
    """The model, checked to be one of ours (with an LM head when asked); returns its LM head or None."""
    if not isinstance(model, MegatronBertPreTrainedModel):
        raise TypeError(f"{caller} needs a megabert_edu model; got {type(model).__name__}")
    head = model.lm_head()
    if lm_head and head is None:
        raise TypeError(f"{caller} reads logits through an LM head: pass a MegatronBertForMaskedLM, ForCausalLM or "
                        f"ForPreTraining model; {type(model).__name__} has none")
    return head


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) inside the with-block; the model's own mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def run_and_cache(module: nn.Module, base: nn.Module, names: list[str], **inputs):
    """module(**inputs) once, caching the hook points `names` (relative to the bare model `base`)."""
    cache: dict[str, torch.Tensor] = {}
    with base.hooks([(names, caching_hook(cache))]):
        out = module(**inputs)
    return out, cache


def per_example(value: Position, B: int, limit: int, name: str) -> torch.Tensor:
    """An int or a (B,) integer tensor -> (B,) long tensor of indices in [0, limit); negatives count from the end."""
    if isinstance(value, bool) or not isinstance(value, (int, torch.Tensor)):
        raise TypeError(f"{name} must be an int or a (batch,) integer tensor; got {type(value).__name__}")
    t = torch.as_tensor(value)
    if t.is_floating_point() or t.dtype == torch.bool or t.dim() > 1 or (t.dim() == 1 and len(t) != B):
        raise ValueError(f"{name} must be an int or a ({B},) integer tensor (one per example); "
                         f"got {t.dtype} of shape {tuple(t.shape)}")
    t = t.long().cpu().expand(B)
    if t.numel() and not (-limit <= int(t.min()) and int(t.max()) < limit):
        raise ValueError(f"{name} {t.tolist()} out of range: must lie in [-{limit}, {limit})")
    return t % limit


def at(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) at one position per example -> (B, ...)."""
    return x[torch.arange(x.shape[0]), pos.to(x.device)]


def batch_shape(input_ids: torch.Tensor, name: str = "input_ids") -> tuple[int, int]:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"{name} must be a (batch, seq_len) tensor of token ids; got {shape}")
    return input_ids.shape


# ---------------------------------------------------------------------------------------------------
# Logit lens (nostalgebraist 2020): what would the model predict if it stopped after layer l?


@dataclass
class LogitLens:
    """The vocabulary read from the residual stream after each layer, at one position per example."""

    labels: list[str]  # P = L + 1 rows: "embeddings", "layer 0", ..., "layer L-1"
    logits: torch.Tensor  # (P, B, V)
    top_ids: torch.Tensor  # (P, B, k)
    top_probs: torch.Tensor  # (P, B, k) softmax probabilities
    target_rank: torch.Tensor | None  # (P, B) 0 = the target is the top prediction
    target_prob: torch.Tensor | None  # (P, B)

    def top_tokens(self, tokenizer, row: int = 0) -> list[list[str]]:
        """Per read-out point, the top-k tokens of example `row` as strings."""
        return [tokenizer.convert_ids_to_tokens(ids.tolist()) for ids in self.top_ids[:, row]]


def logit_lens(model: nn.Module, input_ids: torch.Tensor, *, position: Position, target: Position | None = None,
               k: int = 5, **forward_kwargs) -> LogitLens:
    """Apply the final LayerNorm (pre-LN only; post-LN layers already end in one) and the LM head to the
    residual stream entering layer 0 and leaving every layer. The last row is the model's own prediction.

    forward_kwargs (attention_mask, token_type_ids, ...) go to the model.
    """
    head = check_model(model, "logit_lens", lm_head=True)
    B, T = batch_shape(input_ids)
    base = model.base_model
    L, V = len(base.encoder.layer), base.config.vocab_size
    if not isinstance(k, int) or not 1 <= k <= V:
        raise ValueError(f"k must be an int in [1, {V}]; got {k!r}")
    pos = per_example(position, B, T, "position")
    names = ["embeddings.hook_out"] + [layer_hook(i, "hook_resid_post") for i in range(L)]
    with torch.no_grad(), evaluating(model):
        _, cache = run_and_cache(base, base, names, input_ids=input_ids, **forward_kwargs)
        stream = torch.stack([at(cache[name], pos) for name in names])  # (P, B, H)
        final_ln = base.encoder.ln
        logits = head(stream if final_ln is None else final_ln(stream)).float()  # (P, B, V)
    probs = logits.softmax(-1)
    top_probs, top_ids = probs.topk(k, dim=-1)
    rank = prob = None
    if target is not None:
        t = per_example(target, B, V, "target").to(logits.device)
        target_logit = logits.gather(-1, t.expand(L + 1, B)[..., None])  # (P, B, 1)
        rank = (logits > target_logit).sum(-1)  # how many tokens score higher
        prob = probs.gather(-1, t.expand(L + 1, B)[..., None])[..., 0]
    labels = ["embeddings"] + [f"layer {i}" for i in range(L)]
    return LogitLens(labels, logits.cpu(), top_ids.cpu(), top_probs.cpu(),
                     None if rank is None else rank.cpu(), None if prob is None else prob.cpu())


# ---------------------------------------------------------------------------------------------------
# Direct logit attribution: which layer, head or MLP writes the answer into the residual stream?


class StreamParts:
    """The residual stream at one position, kept as a sum of parts: one (B, H) vector per writer.

    A LayerNorm with its scale frozen at the value it had in the run is affine,
    LN(sum x_c) = sum w * (x_c - mean x_c) / scale + b, so it can be applied part by part (its bias b
    becomes one more part). So can a linear layer, and the LM head's activation read as a per-unit gain
    act(u) / u. Then every part travels linearly to the logit and the parts add up to it exactly.
    """

    def __init__(self, B: int, H: int, device: torch.device):
        self.labels: list[tuple] = []
        self.vectors = torch.zeros(0, B, H, device=device)  # (N, B, H)

    def add(self, label: tuple, vectors: torch.Tensor) -> None:
        """vectors: (B, H) for one part, or (n, B, H) for n parts with labels label[0..n-1]."""
        vectors = vectors.float()
        if vectors.dim() == 2:
            self.labels.append(label)
            vectors = vectors[None]
        else:
            self.labels += list(label)
        self.vectors = torch.cat([self.vectors, vectors])

    def total(self) -> torch.Tensor:
        return self.vectors.sum(0)  # (B, H)

    def layer_norm(self, ln: nn.LayerNorm, scale: torch.Tensor, label: tuple) -> None:
        """Apply a LayerNorm whose divisor `scale` (B, 1) was read from the run (its hook_scale)."""
        v = self.vectors
        self.vectors = ln.weight.float() * (v - v.mean(-1, keepdim=True)) / scale.float()
        self.add(label, ln.bias.float().expand(v.shape[1], -1))

    def linear(self, layer: nn.Linear, label: tuple) -> None:
        self.vectors = self.vectors @ layer.weight.float().T
        self.add(label, layer.bias.float().expand(self.vectors.shape[1], -1))

    def gain(self, g: torch.Tensor) -> None:
        self.vectors = self.vectors * g


@dataclass
class LogitAttribution:
    """How much each part of the model writes a target logit (or logit difference) at one position.

    embed + attn.sum(-1) + cross_attn.sum(-1) + mlp.sum(-1) + bias == total, within float rounding.
    """

    total: torch.Tensor  # (B,) the model's logit (difference)
    embed: torch.Tensor  # (B,) the embeddings (post-LN: after their LayerNorm)
    attn: torch.Tensor  # (B, L) each self-attention sub-layer: its heads plus the output projection's bias
    heads: torch.Tensor  # (B, L, nh) each head, through hook_z and its slice of W_O; NaN for pruned heads
    mlp: torch.Tensor  # (B, L)
    cross_attn: torch.Tensor  # (B, L) cross-attention sub-layers (zero when the model has none)
    bias: torch.Tensor  # (B,) constants: LayerNorm biases and the LM head's biases

    def parts_sum(self) -> torch.Tensor:
        return self.embed + self.attn.sum(-1) + self.cross_attn.sum(-1) + self.mlp.sum(-1) + self.bias

    def by_layer(self, row: int = 0) -> torch.Tensor:
        """(L, 2) attention and MLP contributions of example `row`, for a bar chart or heat map."""
        return torch.stack([self.attn[row], self.mlp[row]], dim=-1)


def dla_hook_names(base: nn.Module) -> list[str]:
    """The activations direct logit attribution reads: what each sub-layer writes, and the LayerNorm scales."""
    names = ["embeddings.hook_out"]
    post = base.encoder.ln is None
    for i, layer in enumerate(base.encoder.layer):
        names += [layer_hook(i, "attention.self.hook_z"), layer_hook(i, "hook_mlp_out")]
        if layer.crossattention is not None:
            names.append(layer_hook(i, "crossattention.self.hook_z"))
        if post:
            names += [layer_hook(i, "attention.output.LayerNorm.hook_scale"),
                      layer_hook(i, "output.LayerNorm.hook_scale")]
            if layer.crossattention is not None:
                names.append(layer_hook(i, "crossattention.output.LayerNorm.hook_scale"))
    if not post:
        names.append("encoder.ln.hook_scale")
    return names + [encoder_output(base)]


def encoder_output(base: nn.Module) -> str:
    """The hook point holding what the encoder returns (after the final LayerNorm in pre-LN)."""
    return "encoder.hook_resid_final" if base.encoder.hook_ln_final is None else "encoder.hook_ln_final"


def add_attention(parts: StreamParts, attention: nn.Module, z: torch.Tensor, layer: int, kind: str) -> None:
    """Split an attention sub-layer's output into its heads: z_h @ W_O[:, h] per head, plus W_O's bias."""
    dense = attention.output.dense
    nh, hs = z.shape[1], z.shape[2]  # z: (B, nh, hs) at the position
    w_o = dense.weight.float().view(-1, nh, hs)  # (H, nh, hs)
    per_head = torch.einsum("bnd,hnd->nbh", z.float(), w_o)  # (nh, B, H)
    parts.add([(kind, layer, j) for j in range(nh)], per_head)
    parts.add((kind + "_bias", layer), dense.bias.float().expand(z.shape[0], -1))


def direct_logit_attribution(model: nn.Module, input_ids: torch.Tensor, *, position: Position, target: Position,
                             contrast: Position | None = None, **forward_kwargs) -> LogitAttribution:
    """Decompose the logit of `target` (minus that of `contrast`) at `position` into what each part writes.

    Every LayerNorm on the path to the logit uses the scale it had in this run (read from its
    ``hook_scale``; the final LayerNorm in pre-LN, each layer's LayerNorms in post-LN), and the LM head's
    activation is read as the gain act(u) / u it had: with those frozen the path is linear. Heads are
    read from ``hook_z`` through their slice of the output projection.
    """
    head = check_model(model, "direct_logit_attribution", lm_head=True)
    B, T = batch_shape(input_ids)
    base = model.base_model
    V = base.config.vocab_size
    pos = per_example(position, B, T, "position")
    t = per_example(target, B, V, "target")
    c = None if contrast is None else per_example(contrast, B, V, "contrast")
    with torch.no_grad(), evaluating(model):
        _, cache = run_and_cache(base, base, dla_hook_names(base), input_ids=input_ids, **forward_kwargs)
        parts = StreamParts(B, base.config.hidden_size, input_ids.device)
        parts.add(("embed",), at(cache["embeddings.hook_out"], pos))
        for i, layer in enumerate(base.encoder.layer):
            add_attention(parts, layer.attention, cache_at_position(cache, layer_hook(i, "attention.self.hook_z"), pos),
                          i, "head")
            post_ln_step(parts, cache, pos, layer.attention.output.LayerNorm, i, "attention.output.LayerNorm")
            if layer.crossattention is not None and layer_hook(i, "crossattention.self.hook_z") in cache:
                z = cache_at_position(cache, layer_hook(i, "crossattention.self.hook_z"), pos)
                add_attention(parts, layer.crossattention, z, i, "cross_head")
                post_ln_step(parts, cache, pos, layer.crossattention.output.LayerNorm, i,
                             "crossattention.output.LayerNorm")
            parts.add(("mlp", i), at(cache[layer_hook(i, "hook_mlp_out")], pos))
            post_ln_step(parts, cache, pos, layer.output.LayerNorm, i, "output.LayerNorm")
        if base.encoder.ln is not None:
            parts.layer_norm(base.encoder.ln, at(cache["encoder.ln.hook_scale"], pos), ("bias", "final LayerNorm"))
        final = at(cache[encoder_output(base)], pos)  # (B, H): the encoder's output (= parts.total())
        logits = head(final)  # (B, V): the model's own logits there
        through_lm_head(parts, head, final)
        direction = head.decoder.weight.float()[t]  # (B, H)
        offset = head.bias.float()[t]
        total = logits.float().gather(-1, t[:, None])[:, 0]
        if c is not None:
            direction, offset = direction - head.decoder.weight.float()[c], offset - head.bias.float()[c]
            total = total - logits.float().gather(-1, c[:, None])[:, 0]
        scores = torch.einsum("nbh,bh->nb", parts.vectors, direction)  # (N, B)
    return attribution_table(parts.labels, scores.cpu(), offset.cpu(), total.cpu(), live_heads(model),
                             base.config.num_attention_heads)


def cache_at_position(cache: dict[str, torch.Tensor], name: str, pos: torch.Tensor) -> torch.Tensor:
    """A per-head activation (B, nh, T, hs) at one query position per example -> (B, nh, hs)."""
    z = cache[name]
    return z[torch.arange(z.shape[0]), :, pos.to(z.device)]


def post_ln_step(parts: StreamParts, cache, pos, ln: nn.LayerNorm | None, layer: int, module: str) -> None:
    """Post-LN: the residual sum is normalised after each sub-layer (with the scale read from the run).

    module: the LayerNorm's path in its layer, e.g. "output.LayerNorm"; its scale is its hook_scale.
    """
    if ln is not None:
        scale = at(cache[layer_hook(layer, module + ".hook_scale")], pos)
        parts.layer_norm(ln, scale, ("bias", f"layer {layer} {module}"))


def through_lm_head(parts: StreamParts, head: nn.Module, final: torch.Tensor) -> None:
    """The LM head's transform, dense -> activation -> LayerNorm, with its non-linear parts frozen."""
    transform = head.transform
    u = transform.dense(final).float()  # (B, H): the activation's input in this run
    a = transform.transform_act_fn(u)
    parts.linear(transform.dense, ("bias", "LM head dense"))
    parts.gain(torch.where(u == 0, torch.zeros_like(u), a / u))  # act(u) = (act(u) / u) * u, per unit
    ln = transform.LayerNorm
    parts.layer_norm(ln, (a.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt(), ("bias", "LM head LayerNorm"))


def attribution_table(labels: list[tuple], scores: torch.Tensor, offset: torch.Tensor, total: torch.Tensor,
                      live: list[list[int]], num_heads: int) -> LogitAttribution:
    """Sort the per-part scores (N, B) into the embedding / per-layer / per-head / constant fields."""
    B, L = scores.shape[1], len(live)
    heads = torch.full((B, L, num_heads), float("nan"))
    attn, cross, mlp = torch.zeros(B, L), torch.zeros(B, L), torch.zeros(B, L)
    embed, bias = torch.zeros(B), offset.clone()
    for label, score in zip(labels, scores, strict=True):
        kind = label[0]
        if kind == "embed":
            embed += score
        elif kind == "bias":
            bias += score
        elif kind == "mlp":
            mlp[:, label[1]] += score
        elif kind in ("head", "head_bias"):
            attn[:, label[1]] += score
            if kind == "head":
                heads[:, label[1], live[label[1]][label[2]]] = score
        else:  # cross_head, cross_head_bias
            cross[:, label[1]] += score
    return LogitAttribution(total=total, embed=embed, attn=attn, heads=heads, mlp=mlp, cross_attn=cross, bias=bias)


# ---------------------------------------------------------------------------------------------------
# Activation patching (causal tracing, Meng et al. 2022; Wang et al. 2022)


@dataclass
class Patching:
    """The metric with one piece of one activation taken from the clean run, everything else corrupted."""

    point: str  # the per-layer hook point patched, e.g. "hook_resid_pre" or "attention.self.hook_z"
    per: str  # "layer" (the whole activation), "position" or "head"
    raw: torch.Tensor  # (L,), (L, T) or (L, nh): the metric after each patch (NaN: a pruned head)
    clean: float  # the metric on the clean input
    corrupted: float  # ... and on the corrupted one

    @property
    def values(self) -> torch.Tensor:
        """The metric normalised as in TransformerLens: 0 = the corrupted run, 1 = the clean run."""
        return (self.raw - self.corrupted) / (self.clean - self.corrupted)


PER_AXIS = {"layer": None, "position": "position", "head": 1}


def activation_patching(model: nn.Module, clean_input_ids: torch.Tensor, corrupted_input_ids: torch.Tensor,
                        metric: Callable[[object], float | torch.Tensor], *, point: str = "hook_resid_pre",
                        per: str = "position", layers: list[int] | None = None, **forward_kwargs) -> Patching:
    """Run clean and corrupted inputs; then, for each layer (and position or head), rerun the corrupted
    input with that piece of `point` copied from the clean run, and record metric(output).

    point: a per-layer hook point, named relative to its layer ("hook_resid_pre", "hook_attn_out",
    "hook_mlp_out", "attention.self.hook_z", ...). per="head" needs a per-head point (hook_q/k/v/z/...).
    metric(model output) returns one number, e.g. a logit difference at the masked position.
    forward_kwargs (attention_mask, ...) go to both runs.
    """
    check_model(model, "activation_patching")
    if per not in PER_AXIS:
        raise ValueError(f"per must be 'layer', 'position' or 'head'; got {per!r}")
    B, T = batch_shape(clean_input_ids, "clean_input_ids")
    if batch_shape(corrupted_input_ids, "corrupted_input_ids") != (B, T):
        raise ValueError(f"clean_input_ids {tuple(clean_input_ids.shape)} and corrupted_input_ids "
                         f"{tuple(corrupted_input_ids.shape)} must have the same shape (a minimal pair, "
                         f"token for token)")
    base = model.base_model
    n_layers = len(base.encoder.layer)
    layers = list(range(n_layers)) if layers is None else [int(i) for i in layers]
    if any(not 0 <= i < n_layers for i in layers):
        raise ValueError(f"layers {layers} out of range: the model has layers 0..{n_layers - 1}")
    names = base.resolve_hook_names([layer_hook(i, point) for i in layers])  # unknown points: named error

    def score(output) -> float:
        value = metric(output)
        if isinstance(value, torch.Tensor) and value.numel() != 1 or not isinstance(value, (torch.Tensor, float, int)):
            raise ValueError(f"metric must return one number (a float or a 1-element tensor); got "
                             f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
        return float(value)

    with torch.no_grad(), evaluating(model):
        clean_out, cache = run_and_cache(model, base, names, input_ids=clean_input_ids, **forward_kwargs)
        clean = score(clean_out)
        corrupted = score(model(input_ids=corrupted_input_ids, **forward_kwargs))
        if clean == corrupted:
            raise ValueError(f"the metric is {clean} on both the clean and the corrupted input: there is no "
                             f"difference for patching to explain")
        rows = []
        for layer, name in zip(layers, names, strict=True):
            cells = patch_cells(cache[name], per, point, live_heads(model)[layer], base.config.num_attention_heads)
            row = torch.full((len(cells),), float("nan"))
            for j, index in enumerate(cells):
                if index is None:
                    continue  # a pruned head
                with base.hooks([(name, patch_from(cache[name], index))]):
                    row[j] = score(model(input_ids=corrupted_input_ids, **forward_kwargs))
            rows.append(row)
    raw = torch.stack(rows)
    return Patching(point=point, per=per, raw=raw[:, 0] if per == "layer" else raw, clean=clean,
                    corrupted=corrupted)


def patch_cells(activation: torch.Tensor, per: str, point: str, live: list[int], num_heads: int) -> list:
    """The pieces of one activation to patch in turn, as index tuples (None for a pruned head's column)."""
    everything = (slice(None),) * activation.dim()
    if per == "layer":
        return [everything]
    if per == "position":  # (B, T, H) or per head (B, nh, T, d): the position axis is the one after B / nh
        axis = 1 if activation.dim() == 3 else 2
        return [everything[:axis] + (p,) for p in range(activation.shape[axis])]
    if activation.dim() != 4:
        raise ValueError(f"per='head' needs a per-head hook point (attention.self.hook_q/k/v/z/scores/probs); "
                         f"{point!r} has shape {tuple(activation.shape)}")
    return [(slice(None), live.index(h)) if h in live else None for h in range(num_heads)]


def patch_from(clean: torch.Tensor, index: tuple):
    """A forward hook that copies clean[index] into the activation."""

    def patch(x: torch.Tensor, name: str) -> torch.Tensor:
        x = x.clone()
        x[index] = clean[index].to(x.dtype)
        return x

    return patch
