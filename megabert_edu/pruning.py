"""Head importance, iterative head pruning and head ablation (Michel, Levy & Neubig 2019).

"Are Sixteen Heads Really Better than One?" puts a gate xi_h on every head's output (xi = 1 is the
trained model) and asks how much the loss would move if the gate started to close:

    I_h = mean over examples x of |dL(x) / dxi_h|

Heads with small I_h are masked, 10% of the remaining heads at a time, re-scoring under the current
mask after each step, until the metric falls below a chosen fraction of the original. The final mask
is then made permanent with ``model.prune_heads``, which removes the weights for real.

    imp = head_importance(model, batches)         # imp.importance (L, nh), imp.entropy alongside
    run = iterative_pruning(model, batches, metric_fn, threshold=0.9)
    pruned, report = prune_and_report(model, batches, metric_fn, threshold=0.9); print(report)
    with ablate_heads(model, {3: [0, 5]}, method="mean", means=head_means(model, batches)):
        ...

Heads are always numbered as in the unpruned model, so masks and scores line up before and after
pruning. ``batches`` is a list of dicts of model keyword arguments (input_ids, attention_mask,
labels, ...); ``metric_fn(model) -> float`` evaluates the model, higher is better.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .analysis import live_heads, real_tokens, row_entropy
from .hooks import layer_hook

Batch = Mapping[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
MetricFn = Callable[[nn.Module], float]
Heads = Mapping[int, Sequence[int]] | torch.Tensor


def z_name(layer: int) -> str:
    return layer_hook(layer, "attention.self.hook_z")


def model_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The task model's own loss, a mean over the batch (so each batch must carry its labels)."""
    loss = model(**batch).loss
    if loss is None:
        raise ValueError("the model returned no loss: put the labels in every batch, or pass loss_fn")
    return loss


def require_batches(batches: Sequence[Batch], caller: str) -> list[Batch]:
    """`batches` as a list, checked to be non-empty (averages over no examples would be NaN)."""
    batches = list(batches)
    if not batches:
        raise ValueError(f"{caller} needs at least one batch; got an empty `batches`")
    if not all(isinstance(b, Mapping) and "input_ids" in b for b in batches):
        raise ValueError(f"{caller}: every item of `batches` must be a dict of model inputs with 'input_ids'")
    return batches


def batch_rows(batch: Batch) -> int:
    """How many sequences the encoder sees: B, or B * choices for multiple choice."""
    ids = batch["input_ids"]
    return ids.numel() // ids.shape[-1]


def keep_mask(model: nn.Module, heads: Heads | None = None) -> torch.Tensor:
    """(L, nh) float mask, 1 = keep, 0 = ablate; pruned heads are 0 too.

    heads: {layer: [head, ...]} to ablate, or an (L, nh) keep-mask (returned as a float copy).
    """
    base = model.base_model
    L, H = len(base.encoder.layer), base.config.num_attention_heads
    if isinstance(heads, torch.Tensor):
        if tuple(heads.shape) != (L, H):
            raise ValueError(f"a head mask must have shape (layers, heads) = {(L, H)}; "
                             f"got {tuple(heads.shape)}")
        return heads.detach().float().cpu().clone()
    mask = torch.zeros(L, H)
    for layer, live in enumerate(live_heads(model)):
        mask[layer, live] = 1.0
    for layer, hs in (heads or {}).items():
        if not 0 <= int(layer) < L or any(not 0 <= int(h) < H for h in hs):
            raise ValueError(f"no head {list(hs)} in layer {layer}: layers are 0..{L - 1}, heads 0..{H - 1}")
        mask[int(layer), [int(h) for h in hs]] = 0.0
    return mask


# ---------------------------------------------------------------------------------------------------
# Gating and ablating heads through hook_z / hook_scores


@contextmanager
def gated_heads(model: nn.Module, gates: torch.Tensor) -> Iterator[None]:
    """Multiply each head's output by its gate in the with-block: gates (L, nh), or (B, L, nh) per example.

    Scaling z = probs @ v by xi is the same as scaling probs (what head_mask does), because z is linear
    in probs; doing it at hook_z keeps the fast attention kernel.
    """
    live = live_heads(model)

    def gate(layer: int):
        def fn(z: torch.Tensor, name: str) -> torch.Tensor:  # z: (B, nh, T, hs)
            g = gates[..., layer, live[layer]].to(z.device, z.dtype)  # (nh,) or (B, nh)
            return z * g[..., :, None, None]
        return fn

    with model.base_model.hooks([(z_name(i), gate(i)) for i in range(len(live))]):
        yield


@contextmanager
def ablate_heads(model: nn.Module, heads: Heads, method: str = "zero",
                 means: torch.Tensor | None = None) -> Iterator[None]:
    """Knock heads out during the with-block, without touching the weights.

    heads: {layer: [head, ...]} or an (L, nh) keep-mask whose zeros mark the heads to ablate.
    method: "zero"    the head's output becomes 0 (exactly head_mask = 0);
            "mean"    it becomes its average output, ``means`` from head_means() (default: this
                      batch's mean) -- removes what the head says about *this* input but keeps the
                      constant offset that later layers may rely on;
            "uniform" the head attends equally to every key it may see, as if it had learned nothing.
    """
    keep = keep_mask(model, heads)
    if method == "zero":
        with gated_heads(model, keep):
            yield
        return
    if method not in ("mean", "uniform"):
        raise ValueError(f"unknown ablation method {method!r}; choose 'zero', 'mean' or 'uniform'")
    hooks = []
    for layer, live in enumerate(live_heads(model)):
        index = [j for j, h in enumerate(live) if keep[layer, h] == 0]  # positions in the (pruned) layer
        if not index:
            continue
        if method == "mean":
            mean = None if means is None else means[layer, [live[j] for j in index]]  # (n, hs)
            hooks.append((z_name(layer), _replace_with_mean(index, mean)))
        else:
            hooks.append((layer_hook(layer, "attention.self.hook_scores"), _flatten_scores(index)))
    with model.base_model.hooks(hooks):
        yield


def _replace_with_mean(index: list[int], mean: torch.Tensor | None):
    def fn(z: torch.Tensor, name: str) -> torch.Tensor:  # z: (B, nh, T, hs)
        z = z.clone()
        if mean is None:
            z[:, index] = z[:, index].mean(dim=(0, 2), keepdim=True)  # this batch's mean, padding included
        else:
            z[:, index] = mean.to(z.device, z.dtype)[None, :, None, :]  # (1, n, 1, hs)
        return z
    return fn


def _flatten_scores(index: list[int]):
    def fn(scores: torch.Tensor, name: str) -> torch.Tensor:  # scores: (B, nh, T, S), masked keys ~ dtype min
        s = scores[:, index]
        blocked = s <= torch.finfo(s.dtype).min / 2
        scores = scores.clone()
        scores[:, index] = torch.where(blocked, s, torch.zeros_like(s))  # equal logits -> uniform softmax
        return scores
    return fn


def head_means(model: nn.Module, batches: Sequence[Batch]) -> torch.Tensor:
    """(L, nh, hs) average output of every head over the real tokens of `batches` (NaN for pruned heads)."""
    batches = require_batches(batches, "head_means")
    base = model.base_model
    live = live_heads(model)
    L, H, hs = len(live), base.config.num_attention_heads, base.config.head_size
    sums, count = torch.zeros(L, H, hs, dtype=torch.float64), 0.0
    real = None

    def accumulate(layer: int):
        def fn(z: torch.Tensor, name: str) -> None:  # z: (B, nh, T, hs)
            sums[layer, live[layer]] += (z.double() * real[:, None, :, None].double()).sum((0, 2)).cpu()
        return fn

    with torch.no_grad(), base.hooks([(z_name(i), accumulate(i)) for i in range(L)]):
        for batch in batches:
            real = real_tokens(batch["input_ids"], batch.get("attention_mask")).reshape(batch_rows(batch), -1)
            count += float(real.sum())
            model(**batch)
    means = (sums / count).float()
    for layer, heads in enumerate(live):
        means[layer, [h for h in range(H) if h not in heads]] = float("nan")
    return means


# ---------------------------------------------------------------------------------------------------
# Head importance


@dataclass
class HeadImportance:
    """Scores per (layer, head); NaN for heads that are masked or pruned."""

    importance: torch.Tensor  # (L, nh) normalised scores, used for ranking
    raw: torch.Tensor  # (L, nh) mean |dL/dxi| before normalisation
    entropy: torch.Tensor | None  # (L, nh) mean attention entropy in nats, over real query tokens


def normalize_importance(raw: torch.Tensor, layers: bool = True, global_minmax: bool = False) -> torch.Tensor:
    """Michel et al.'s per-layer L2 normalisation, then (optionally) min-max over all heads to [0, 1].

    Gradients are larger in some layers than others; dividing by each layer's norm lets every layer
    compete on the same scale. NaN (absent) heads are ignored.
    """
    imp = raw.clone()
    if layers:
        norm = imp.nan_to_num(0.0).pow(2).sum(-1, keepdim=True).sqrt()
        imp = imp / norm.clamp_min(1e-20)
    if global_minmax:
        lo, hi = imp.nan_to_num(float("inf")).min(), imp.nan_to_num(-float("inf")).max()
        imp = (imp - lo) / (hi - lo).clamp_min(1e-20)
    return imp


def head_importance(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn = model_loss,
                    mask: torch.Tensor | None = None, *, normalize_layers: bool = True,
                    global_minmax: bool = False, entropy: bool = True) -> HeadImportance:
    """I_h = mean over examples of |dL/dxi_h|, with one gate xi per example, head and layer.

    mask: (L, nh) current keep-mask (1 keep, 0 masked); gates start at its values, masked heads score NaN.
    loss_fn(model, batch) must return a mean over the batch's examples, as model_loss does for
    classification. (A mean over tokens, as in MLM, weights each example by its number of labels.)
    """
    batches = require_batches(batches, "head_importance")
    base = model.base_model
    live = live_heads(model)
    L, H = len(live), base.config.num_attention_heads
    mask = keep_mask(model, mask) * keep_mask(model)  # pruned heads count as masked
    total, entropy_sum, tokens, examples = torch.zeros(L, H, dtype=torch.float64), torch.zeros(L, H), 0.0, 0
    real = None

    def add_entropy(layer: int):
        def fn(probs: torch.Tensor, name: str) -> None:  # probs: (B, nh, T, T)
            e = row_entropy(probs.detach()) * real[:, None, :]  # (B, nh, T), padding rows zeroed
            entropy_sum[layer, live[layer]] += e.sum((0, 2)).cpu()
        return fn

    probes = [(layer_hook(i, "attention.self.hook_probs"), add_entropy(i)) for i in range(L)]
    probes = probes if entropy else []  # reading the maps forces the explicit attention path: only if asked
    was_training = model.training
    model.eval()  # no dropout: scores must not depend on a random draw
    try:
        for batch in batches:
            rows = batch_rows(batch)
            real = real_tokens(batch["input_ids"], batch.get("attention_mask")).reshape(rows, -1)
            xi = mask.to(base.device).expand(rows, L, H).clone().requires_grad_(True)  # (B, L, nh)
            with gated_heads(model, xi), base.hooks(probes):
                loss = loss_fn(model, batch)
            (grad,) = torch.autograd.grad(loss, xi)
            # loss = mean_b loss_b, so grad[b] = dloss_b/dxi / B: summing |grad[b]| over the batch gives the
            # batch's mean of |dloss_b/dxi| -- every example's own gradient, from one backward pass.
            total += grad.abs().sum(0).double().cpu() * rows
            examples += rows
            tokens += float(real.sum())
    finally:
        model.train(was_training)
    raw = (total / examples).float()
    raw[mask == 0] = float("nan")
    ent = None
    if entropy:
        ent = entropy_sum / tokens
        for layer, heads in enumerate(live):
            ent[layer, [h for h in range(H) if h not in heads]] = float("nan")
    return HeadImportance(normalize_importance(raw, normalize_layers, global_minmax), raw, ent)


# ---------------------------------------------------------------------------------------------------
# Iterative pruning


@dataclass
class PruningStep:
    mask: torch.Tensor  # (L, nh) 1 kept, 0 masked
    metric: float

    @property
    def heads_left(self) -> int:
        return int(self.mask.sum())


@dataclass
class PruningRun:
    """The accepted steps (the first is the unpruned model) and the step that crossed the threshold."""

    steps: list[PruningStep]
    rejected: PruningStep | None  # None when no head was left to mask
    threshold: float

    @property
    def mask(self) -> torch.Tensor:
        return self.steps[-1].mask

    @property
    def base_metric(self) -> float:
        return self.steps[0].metric


def least_important(importance: torch.Tensor, mask: torch.Tensor, fraction: float) -> list[tuple[int, int]]:
    """The `fraction` of remaining heads with the lowest scores, never the last head of a layer.

    Ties go to the lower layer, then the lower head, so a run is reproducible.
    """
    left = mask.sum(1).tolist()
    n = max(1, round(fraction * int(mask.sum())))
    order = sorted((float(importance[l, h]), l, h) for l, h in mask.nonzero().tolist())
    chosen = []
    for _, l, h in order:
        if len(chosen) == n:
            break
        if left[l] > 1:  # a layer with no heads cannot be pruned physically
            chosen.append((l, h))
            left[l] -= 1
    return chosen


def masked_metric(model: nn.Module, metric_fn: MetricFn, mask: torch.Tensor) -> float:
    """metric_fn(model) with the heads where mask == 0 zeroed."""
    with gated_heads(model, mask), torch.no_grad():
        return float(metric_fn(model))


def iterative_pruning(model: nn.Module, batches: Sequence[Batch], metric_fn: MetricFn, *,
                      threshold: float = 0.9, fraction: float = 0.1, loss_fn: LossFn = model_loss,
                      normalize_layers: bool = True, global_minmax: bool = False, seed: int = 0,
                      max_steps: int | None = None) -> PruningRun:
    """Mask the least important `fraction` of the remaining heads, re-score, repeat; stop before the
    metric falls below threshold * (metric of the unmasked model). Only masks: nothing is removed.
    """
    torch.manual_seed(seed)  # anything random in loss_fn / metric_fn repeats
    batches = list(batches)  # scored again at every step
    was_training = model.training
    model.eval()
    try:
        mask = keep_mask(model)
        steps, rejected = [PruningStep(mask, masked_metric(model, metric_fn, mask))], None
        while max_steps is None or len(steps) <= max_steps:
            scores = head_importance(model, batches, loss_fn, mask, normalize_layers=normalize_layers,
                                     global_minmax=global_minmax, entropy=False).importance
            chosen = least_important(scores, mask, fraction)
            if not chosen:
                break
            trial = mask.clone()
            trial[[l for l, _ in chosen], [h for _, h in chosen]] = 0.0
            step = PruningStep(trial, masked_metric(model, metric_fn, trial))
            if step.metric < threshold * steps[0].metric:
                rejected = step
                break
            mask = trial
            steps.append(step)
    finally:
        model.train(was_training)
    return PruningRun(steps, rejected, threshold)


# ---------------------------------------------------------------------------------------------------
# Physical pruning and the report


def prune_masked_heads(model: nn.Module, mask: torch.Tensor) -> dict[int, list[int]]:
    """Remove (with model.prune_heads) every head whose mask entry is 0; returns {layer: [heads]}."""
    live = live_heads(model)
    heads = {layer: [h for h in live[layer] if mask[layer, h] == 0] for layer in range(len(live))}
    heads = {layer: hs for layer, hs in heads.items() if hs}
    model.prune_heads(heads)
    return heads


def examples_per_second(model: nn.Module, batches: Sequence[Batch], repeats: int = 3) -> float:
    """Inference throughput over `batches`: the best of `repeats` timed passes, after one warm-up pass."""
    n = sum(batch_rows(b) for b in batches)

    def one_pass() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                model(**batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # GPU kernels run asynchronously: wait before stopping the clock
        return time.perf_counter() - start

    one_pass()
    return n / min(one_pass() for _ in range(repeats))


@dataclass
class PruningReport:
    pruned_heads: dict[int, list[int]]
    heads_before: int
    heads_after: int
    params_before: int
    params_after: int
    examples_per_s_before: float
    examples_per_s_after: float
    metric_before: float
    metric_masked: float  # the final mask applied by hook
    metric_after: float  # the physically pruned model: equals metric_masked up to float rounding
    run: PruningRun

    def __str__(self) -> str:
        rows = [("heads", self.heads_before, self.heads_after),
                ("parameters", self.params_before, self.params_after),
                ("examples/s", f"{self.examples_per_s_before:.1f}", f"{self.examples_per_s_after:.1f}"),
                ("metric", f"{self.metric_before:.4f}", f"{self.metric_after:.4f}")]
        lines = [f"{'':<12}{'before':>14}{'after':>14}"] + [f"{a:<12}{b:>14}{c:>14}" for a, b, c in rows]
        speedup = self.examples_per_s_after / self.examples_per_s_before
        lines.append(f"{len(self.run.steps) - 1} pruning steps, threshold {self.run.threshold:.0%} of the "
                     f"original metric; speed-up x{speedup:.2f}")
        return "\n".join(lines)


def prune_and_report(model: nn.Module, batches: Sequence[Batch], metric_fn: MetricFn, *,
                     speed_batches: Sequence[Batch] | None = None, inplace: bool = False,
                     **pruning_options) -> tuple[nn.Module, PruningReport]:
    """iterative_pruning, then prune the final mask physically and measure both models.

    Returns (pruned model, report). The original model is left intact unless inplace=True.
    pruning_options go to iterative_pruning (threshold, fraction, loss_fn, seed, ...).
    """
    batches = list(batches)
    speed_batches = list(speed_batches or batches)
    run = iterative_pruning(model, batches, metric_fn, **pruning_options)
    heads_before, params_before = int(keep_mask(model).sum()), model.num_parameters()
    speed_before = examples_per_second(model, speed_batches)
    pruned = model if inplace else copy.deepcopy(model)
    heads = prune_masked_heads(pruned, run.mask)
    with torch.no_grad():
        metric_after = float(metric_fn(pruned))
    return pruned, PruningReport(
        pruned_heads=heads, heads_before=heads_before, heads_after=int(keep_mask(pruned).sum()),
        params_before=params_before, params_after=pruned.num_parameters(),
        examples_per_s_before=speed_before, examples_per_s_after=examples_per_second(pruned, speed_batches),
        metric_before=run.base_metric, metric_masked=run.steps[-1].metric, metric_after=metric_after, run=run)
