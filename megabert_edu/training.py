"""Training: one short fine-tuning / pre-training loop, evaluation metrics and pre-training collators.

    result = train(model, train_data, eval_data, epochs=3, batch_size=32, lr=5e-5)
    print(result.metrics)                      # e.g. {"loss": 0.41, "accuracy": 0.87, "f1": 0.85}
    config = TrainConfig(epochs=3, lr=5e-5)    # the same settings as one object
    result = train(model, train_data, eval_data, config=config, seed=1)  # keywords override its fields

The loop is the textbook recipe for BERT fine-tuning: AdamW, a learning rate that warms up linearly
and then decays linearly to zero, gradient clipping, optional gradient accumulation, mixed precision
where the hardware has it (``megabert_edu.precision``: bf16 on recent GPUs, fp16 with loss scaling on
older ones) and optional gradient checkpointing. One optimizer step is ``train_step``; ``train`` is the
bookkeeping around it (schedule, logging, evaluation, time limit). A non-finite loss or gradient
stops training before the weights change. It is seeded, and deterministic on the CPU.

The same code runs unchanged on several processes: start it with ``torchrun --nproc_per_node=N``
and ``train`` joins the process group, wraps the model in DistributedDataParallel and gives each
process its own slice of every global batch (see ``setup_distributed``).

Data is either a dict of equal-length tensors (what ``megabert_edu.data.encode_*`` return) or any
sequence of records plus a ``collate_fn`` that turns a list of records into a batch dict, e.g. the
``MLMCollator`` below for pre-training.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from .precision import PRECISIONS, Precision, choose_precision

IGNORE_INDEX = -100  # labels with this value are skipped by the losses and the metrics


# ---------------------------------------------------------------------------------------------------
# Data plumbing


class TensorDictDataset(Dataset):
    """A dict of tensors with the same first dimension, indexed example by example."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        lengths = {len(v) for v in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"all tensors need the same first dimension, got {sorted(lengths)}")
        self.tensors = dict(tensors)

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def as_dataset(data) -> Dataset:
    return TensorDictDataset(data) if isinstance(data, dict) else data


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut the trailing padding columns no row of this batch uses (datasets are padded to their longest row).

    Attention cost grows with T^2, so a batch of short texts should not pay for the longest one.
    Every tensor shaped like attention_mask (ids, types, token labels) is cut the same way.
    """
    mask = batch.get("attention_mask")
    if mask is None:
        return batch
    used = mask.reshape(-1, mask.shape[-1]).bool().any(0)  # (T,): columns some row attends to
    # Keep everything up to the last used column: right padding is cut, left padding (which sets
    # the positions of the real tokens after it) is kept, and no real token is ever dropped.
    T = int(used.nonzero().max()) + 1 if bool(used.any()) else mask.shape[-1]
    return {k: v[..., :T] if torch.is_tensor(v) and v.shape == mask.shape else v for k, v in batch.items()}


def batch_length(batch: dict) -> int:
    """The number of examples in a batch dict: the first dimension of its tensors."""
    return len(next(v for v in batch.values() if torch.is_tensor(v)))


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's random generators (dropout, shuffling, masking)."""
    random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# Distributed data parallel


def setup_distributed() -> tuple[int, int]:
    """Join the process group when launched by torchrun; return (rank, world_size), (0, 1) otherwise.

    torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process it starts. GPUs
    talk over NCCL, CPUs over gloo. Each process then trains a full copy of the model on its own
    share of each batch, and DistributedDataParallel averages the gradients during backward, so
    every copy takes the same optimizer step.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device(rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------------
# Optimizer and schedule


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm weights (1-D parameters) get no weight decay, as in BERT."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate x step/warmup for `warmup_steps`, then straight down to 0 at `total_steps`.

    Warm-up keeps the first updates small while Adam's moment estimates are still noise; the
    decay lets training settle into a minimum instead of bouncing around it.
    """
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------------
# The loop: a TrainConfig, one optimizer step (`train_step`), and `train` around them


ON_NAN = ("raise", "skip")


@dataclass
class TrainConfig:
    """Every setting of `train`. Pass one, or give fields as keywords: train(model, data, lr=1e-4)."""

    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 32  # per process and per micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float | int = 0.1  # a fraction of the steps (< 1) or a number of steps
    max_grad_norm: float = 1.0  # 0 or None: no clipping
    collate_fn: Callable | None = None  # list of records -> batch dict
    eval_every: int | None = None  # evaluate every N steps (and always at the end)
    eval_batch_size: int | None = None  # default: batch_size
    seed: int = 0
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16", see megabert_edu.precision
    cpu_bf16: bool = False  # with precision="auto": bf16 autocast on CPUs with AMX/AVX512-BF16
    gradient_checkpointing: bool = False
    device: str | torch.device | None = None  # default: this process's GPU, else the CPU
    progress: bool = True
    log_every: int = 50
    max_seconds: float | None = None  # stop early; the schedule is still planned for the full run
    on_nan: str = "raise"  # a non-finite loss or gradient norm: "raise" an error, or "skip" the step

    def __post_init__(self):
        for name in ("epochs", "batch_size", "grad_accum_steps", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("max_steps", "eval_every", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1 or None, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if self.warmup < 0:
            raise ValueError(f"TrainConfig.warmup must be >= 0 (a fraction < 1 or a step count), got {self.warmup!r}")
        if self.on_nan not in ON_NAN:
            raise ValueError(f"TrainConfig.on_nan must be one of {ON_NAN}, got {self.on_nan!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")


def make_train_config(config: TrainConfig | None, overrides: dict) -> TrainConfig:
    """`config` (or the defaults) with keyword overrides applied; an unknown keyword is a TypeError."""
    overrides = dict(overrides)
    if "bf16" in overrides:  # the keyword train() had before TrainConfig: True -> bf16, False -> fp32
        bf16 = overrides.pop("bf16")
        overrides.setdefault("precision", "auto" if bf16 is None else "bf16" if bf16 else "fp32")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"train() got unknown keyword argument(s) {unknown}; TrainConfig fields are {sorted(known)}")
    return replace(config if config is not None else TrainConfig(), **overrides)


@dataclass
class TrainResult:
    """What `train` returns: the model (unwrapped), the log and the last evaluation."""

    model: nn.Module
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # {"step", "loss", "lr"}, {"step", "eval"}, {"step", "skipped"}
    metrics: dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0  # steps dropped for a non-finite loss or gradient (on_nan="skip")
    precision: str = "fp32"  # what choose_precision picked, and why
    examples: int = 0  # training examples processed, all processes together
    eval_seconds: float = 0.0  # the part of `seconds` spent in evaluations during training (eval_every)

    @property
    def examples_per_second(self) -> float:
        """Training throughput: examples over the seconds spent training, evaluations excluded."""
        return self.examples / max(self.seconds - self.eval_seconds, 1e-9)


@dataclass
class TrainState:
    """What one optimizer step needs besides the data; built once by `train`."""

    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # scales the loss for fp16; a pass-through otherwise
    precision: Precision
    config: TrainConfig


@dataclass
class StepResult:
    """What train_step reports about one optimizer step."""

    loss: float  # mean over the micro-batches
    grad_norm: float  # before clipping
    skipped: bool


def train_step(t: TrainState, micro_batches: list[dict], step: int) -> StepResult:
    """One optimizer step: forward and backward on each micro-batch, check, clip, update.

    The gradients of the micro-batches add up, so dividing each loss by their number gives the
    gradient of the mean: the same step as one big batch.
    """
    losses = []
    for i, batch in enumerate(micro_batches):
        batch = to_device(trim_padding(batch), t.precision.device)
        last = i == len(micro_batches) - 1
        # Between optimizer steps DDP need not average gradients: no_sync skips the all-reduce.
        sync = nullcontext() if last or t.net is t.model else t.net.no_sync()
        with sync:
            loss = forward_loss(t, batch, step)
            t.scaler.scale(loss / len(micro_batches)).backward()
        losses.append(loss.detach().float())
    loss = torch.stack(losses).mean()
    t.scaler.unscale_(t.optimizer)  # fp16: back to true gradients before measuring / clipping them
    # Clip the global gradient norm: one bad batch cannot throw the weights far away.
    grad_norm = torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.config.max_grad_norm or float("inf"))
    if not all_finite(t, loss, grad_norm):
        # Checked before optimizer.step: the weights still hold the last good values.
        t.optimizer.zero_grad(set_to_none=True)
        if t.config.on_nan == "raise":
            raise FloatingPointError(f"step {step}: the loss is {loss.item()} and the gradient norm "
                                     f"{grad_norm.item()}; stopped before updating the weights (they hold the "
                                     f"values after step {step - 1}). Lower lr, check the data, or on_nan='skip'")
        t.scheduler.step()
        t.scaler.update()
        return StepResult(loss.item(), grad_norm.item(), skipped=True)
    t.scaler.step(t.optimizer)  # = optimizer.step() unless fp16 overflowed (then the scaler skips it)
    t.scaler.update()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss.item(), grad_norm.item(), skipped=False)


def forward_loss(t: TrainState, batch: dict, step: int) -> torch.Tensor:
    """The model's loss on one micro-batch, under the chosen autocast."""
    try:
        with t.precision.autocast():
            loss = t.net(**batch).loss
    except IndexError as error:
        if "Target" not in str(error):  # cross_entropy's "Target 7 is out of bounds."; anything else is not ours
            raise
        raise ValueError(f"step {step}: a label in train_data is out of range for the model ({error}); labels "
                         f"must be class / token ids in [0, number of classes) or -100") from error
    if loss is None:
        raise ValueError(f"the model returned no loss: train_data has no labels (batch keys {sorted(batch)}; "
                         f"a task model needs e.g. 'labels')")
    return loss


def all_finite(t: TrainState, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
    """Loss and gradient norm finite? With fp16 an infinite gradient is the scaler's business (it skips
    the step and lowers its scale), not an error. Under DDP every process takes the same decision."""
    finite = torch.isfinite(loss) & (torch.isfinite(grad_norm) | t.scaler.is_enabled())
    if t.net is not t.model:
        finite = finite.to(t.precision.device, torch.int32)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


def optimizer_steps(loader: DataLoader, sampler: DistributedSampler, epochs: int, grad_accum_steps: int):
    """Yield the micro-batches of each optimizer step, epoch after epoch (the last group may be short)."""
    for epoch in range(epochs):
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every process
        group = []
        for batch in loader:
            group.append(batch)
            if len(group) == grad_accum_steps:
                yield group
                group = []
        if group:
            yield group


def train(model: nn.Module, train_data, eval_data=None, config: TrainConfig | None = None,
          **overrides) -> TrainResult:
    """Train `model` on `train_data`; evaluate on `eval_data` every `eval_every` steps and at the end.

    Settings come from `config` (a TrainConfig) and/or keywords naming its fields. One optimizer
    step sees batch_size x grad_accum_steps x world_size examples. The precision is chosen per
    device by `megabert_edu.precision.choose_precision` (bf16 on modern GPUs, fp16 with loss
    scaling on older ones, fp32 on a CPU). A non-finite loss or gradient stops training with an
    error naming the step (or skips that step with on_nan="skip"); the weights are never updated
    with it. Dropout is the only randomness besides shuffling and masking.
    """
    if isinstance(eval_data, TrainConfig):
        raise TypeError("train(model, train_data, eval_data=None, config=None): pass the TrainConfig as config=...")
    cfg = make_train_config(config, overrides)
    rank, world = setup_distributed()
    device = torch.device(cfg.device) if cfg.device is not None else default_device(rank)
    precision = choose_precision(device, cfg.precision, cfg.cpu_bf16)
    seed_everything(cfg.seed + rank)  # each process its own dropout / masking noise, reproducibly
    dataset = as_dataset(train_data)
    if len(dataset) == 0:
        raise ValueError("train_data is empty: nothing to train on")
    model.to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    # One sampler for 1 or N processes: a seeded permutation per epoch, process r takes every
    # world-th index starting at r, so the N micro-batches of step k together are exactly the
    # single-process batch of batch_size x N examples.
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=cfg.collate_fn)
    steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum_steps)
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    warmup_steps = int(cfg.warmup * total_steps) if cfg.warmup < 1 else int(cfg.warmup)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    t = TrainState(net=DistributedDataParallel(model) if world > 1 else model, model=model, optimizer=optimizer,
                scheduler=linear_schedule(optimizer, warmup_steps, total_steps), scaler=precision.grad_scaler(),
                precision=precision, config=cfg)
    result = TrainResult(model=model, steps=0, seconds=0.0, precision=precision.reason)
    evaluate_now = partial(evaluate, model, eval_data, cfg.eval_batch_size or cfg.batch_size, cfg.collate_fn,
                           device, precision)
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc="train", disable=not cfg.progress or rank != 0)
    logged_losses = []

    model.train()
    for micro_batches in optimizer_steps(loader, sampler, math.ceil(total_steps / steps_per_epoch),
                                         cfg.grad_accum_steps):
        step = result.steps + 1
        outcome = train_step(t, micro_batches, step)
        result.steps = step
        result.examples += world * sum(batch_length(b) for b in micro_batches)
        bar.update(1)
        if outcome.skipped:
            result.skipped_steps += 1
            result.history.append({"step": step, "skipped": f"loss {outcome.loss}, grad norm {outcome.grad_norm}"})
        else:
            logged_losses.append(outcome.loss)
        if logged_losses and (step % cfg.log_every == 0 or step == total_steps):
            entry = {"step": step, "loss": sum(logged_losses) / len(logged_losses), "lr": t.scheduler.get_last_lr()[0]}
            result.history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
            logged_losses = []
        if eval_data is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
            eval_start = time.perf_counter()
            result.history.append({"step": step, "eval": evaluate_now()})
            result.eval_seconds += time.perf_counter() - eval_start
            model.train()
        out_of_time = cfg.max_seconds is not None and time.perf_counter() - start > cfg.max_seconds
        if step >= total_steps or out_of_time:
            break
    bar.close()
    model.eval()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    result.seconds = time.perf_counter() - start
    if eval_data is not None:
        result.metrics = evaluate_now()
        result.history.append({"step": result.steps, "eval": result.metrics})
    return result


# ---------------------------------------------------------------------------------------------------
# Evaluation


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of correct predictions, skipping labels equal to -100."""
    keep = labels != IGNORE_INDEX
    return (preds[keep] == labels[keep]).float().mean().item() if keep.any() else float("nan")


def f1_score(preds: torch.Tensor, labels: torch.Tensor, average: str = "macro") -> float:
    """F1 = harmonic mean of precision and recall. "macro": the mean over classes (each class counts
    the same, so rare classes matter); "binary": class 1 only. Labels -100 are skipped."""
    keep = labels != IGNORE_INDEX
    preds, labels = preds[keep], labels[keep]
    classes = [1] if average == "binary" else torch.cat([preds, labels]).unique().tolist()
    scores = []
    for c in classes:
        tp = ((preds == c) & (labels == c)).sum().item()
        fp = ((preds == c) & (labels != c)).sum().item()
        fn = ((preds != c) & (labels == c)).sum().item()
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores) if scores else float("nan")


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, max_answer_tokens: int = 30
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The (start, end) with the highest start + end logit such that start <= end < start + max_len."""
    T = start_logits.shape[1]
    scores = start_logits[:, :, None] + end_logits[:, None, :]  # (B, T start, T end)
    i = torch.arange(T, device=scores.device)
    allowed = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_answer_tokens)  # (T, T)
    best = scores.masked_fill(~allowed, float("-inf")).flatten(1).argmax(1)
    return best // T, best % T


def span_metrics(pred_start, pred_end, gold_start, gold_end) -> dict[str, float]:
    """SQuAD-style exact match (both ends right) and F1 of the token overlap between the spans."""
    em = ((pred_start == gold_start) & (pred_end == gold_end)).float().mean().item()
    overlap = torch.minimum(pred_end, gold_end) - torch.maximum(pred_start, gold_start) + 1
    overlap = overlap.clamp(min=0).float()  # tokens shared by the two spans
    precision = overlap / (pred_end - pred_start + 1).clamp(min=1)
    recall = overlap / (gold_end - gold_start + 1).clamp(min=1)
    f1 = torch.where(overlap > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(overlap))
    return {"exact_match": em, "f1": f1.mean().item()}


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 64, collate_fn: Callable | None = None,
             device: str | torch.device | None = None, precision: Precision | str = "fp32") -> dict[str, float]:
    """Loss and task metrics on `data`, chosen from what the model returns:

    classification / multiple choice / NSP: accuracy, f1 (macro); token classification: accuracy,
    f1 over the tagged tokens; masked LM: accuracy of the masked tokens and perplexity;
    pre-training: mlm_accuracy, perplexity, nsp_accuracy; QA: exact_match, f1.
    `precision` is a Precision from choose_precision, or a name for it ("auto", "fp32", "bf16", "fp16").
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if not isinstance(precision, Precision):
        precision = choose_precision(device, precision)
    loader = DataLoader(as_dataset(data), batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    model.eval()
    total_loss, n_examples, token_loss, n_tokens = 0.0, 0, 0.0, 0
    collected: dict[str, list[torch.Tensor]] = {}

    def keep(name, t):
        collected.setdefault(name, []).append(t.cpu())

    for batch in loader:
        batch = to_device(trim_padding(batch), device)
        with precision.autocast():
            out = model(**batch)
        n = len(batch["input_ids"])
        if out.loss is not None:
            total_loss, n_examples = total_loss + out.loss.item() * n, n_examples + n
        logits = getattr(out, "prediction_logits", None)
        if logits is None:
            logits = getattr(out, "logits", None)
        if hasattr(out, "start_logits"):  # extractive QA
            start, end = best_spans(out.start_logits.float(), out.end_logits.float())
            keep("pred_start", start), keep("pred_end", end)
            keep("start", batch["start_positions"]), keep("end", batch["end_positions"])
        elif logits is not None and logits.dim() == 3 and "labels" in batch:  # a label per token
            labels = batch["labels"]
            if getattr(model.config, "is_decoder", False):  # causal LM: logits at t predict token t + 1
                logits, labels = logits[:, :-1], labels[:, 1:]
            keep("token_preds", logits.argmax(-1).flatten()), keep("token_labels", labels.flatten())
            token_loss += F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="sum",
                                          ignore_index=IGNORE_INDEX).item()
            n_tokens += int((labels != IGNORE_INDEX).sum())
        elif logits is not None and "labels" in batch:
            keep("preds", logits.argmax(-1)), keep("labels", batch["labels"])
        if getattr(out, "seq_relationship_logits", None) is not None and "next_sentence_label" in batch:
            keep("nsp_preds", out.seq_relationship_logits.argmax(-1))
            keep("nsp_labels", batch["next_sentence_label"])

    c = {k: torch.cat(v) for k, v in collected.items()}
    metrics: dict[str, float] = {}
    if n_examples:
        metrics["loss"] = total_loss / n_examples
    if "preds" in c:
        metrics["accuracy"] = accuracy(c["preds"], c["labels"])
        metrics["f1"] = f1_score(c["preds"], c["labels"])
    if "token_preds" in c:
        lm = hasattr(model, "cls") and not hasattr(out, "start_logits")  # a language-model head
        if lm:  # masked LM: accuracy of the masked tokens; causal LM: of the next token
            name = "mlm_accuracy" if "nsp_preds" in c else "accuracy"
            metrics[name] = accuracy(c["token_preds"], c["token_labels"])
            metrics["perplexity"] = math.exp(token_loss / max(n_tokens, 1))
        else:
            metrics["accuracy"] = accuracy(c["token_preds"], c["token_labels"])
            metrics["f1"] = f1_score(c["token_preds"], c["token_labels"])
    if "nsp_preds" in c:
        metrics["nsp_accuracy"] = accuracy(c["nsp_preds"], c["nsp_labels"])
    if "pred_start" in c:
        metrics.update(span_metrics(c["pred_start"], c["pred_end"], c["start"], c["end"]))
    return metrics


# ---------------------------------------------------------------------------------------------------
# Pre-training data: masked-LM collator and next-sentence pairs


class MLMCollator:
    """Records -> a padded, masked batch for MegatronBertForMaskedLM / ForPreTraining.

    Records are {"text": str} or sentence pairs {"text_a", "text_b", "label"} (label 0 = B follows A,
    1 = B is random; it becomes next_sentence_label). BERT's recipe: pick `mlm_probability` of the
    tokens; replace 80% of those with [MASK], 10% with a random token, keep 10% unchanged. The model
    must predict all picked tokens, so it cannot learn "only [MASK] positions matter" -- at
    fine-tuning time there are no [MASK]s. Whole-word masking picks words, and masks all their
    WordPiece pieces together, so "##ing" cannot be guessed from the rest of its own word.
    Randomness comes from torch's global generator (seeded by `train`) unless `generator` is given.
    """

    def __init__(self, tokenizer, max_length: int = 128, mlm_probability: float = 0.15,
                 whole_word: bool = False, generator: torch.Generator | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.mlm_probability = mlm_probability
        self.whole_word = whole_word
        self.generator = generator
        vocab = tokenizer.get_vocab()
        specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
        self.special_ids = torch.tensor(sorted(vocab[t] for t in specials))
        # A token that starts with "##" continues the word before it.
        self.continues_word = torch.zeros(len(vocab), dtype=torch.bool)
        self.continues_word[[i for t, i in vocab.items() if t.startswith("##")]] = True

    def __call__(self, records: Sequence[dict]) -> dict[str, torch.Tensor]:
        if "text" in records[0]:
            enc = self.tokenizer([r["text"] for r in records], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        else:
            enc = self.tokenizer([r["text_a"] for r in records], [r["text_b"] for r in records], padding=True,
                                 truncation="longest_first", max_length=self.max_length, return_tensors="pt")
        batch = dict(enc)
        batch["input_ids"], batch["labels"] = self.mask(enc["input_ids"])
        if "label" in records[0]:
            batch["next_sentence_label"] = torch.tensor([r["label"] for r in records])
        return batch

    def mask(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids -> (masked ids, labels); labels are -100 except at the picked positions."""
        maskable = ~torch.isin(input_ids, self.special_ids)
        if self.whole_word:
            # Number the words: a new word starts at every maskable token that is not a "##" piece.
            starts = maskable & ~self.continues_word[input_ids]
            word = starts.cumsum(dim=1)  # (B, T), word index of every token (pieces share it)
            pick_word = self.uniform(word.shape[0], int(word.max()) + 1) < self.mlm_probability  # (B, W+1)
            picked = pick_word.gather(1, word) & maskable & (word > 0)
        else:
            word = None
            picked = (self.uniform(*input_ids.shape) < self.mlm_probability) & maskable
        picked = self.at_least_one(picked, maskable, word)
        labels = input_ids.masked_fill(~picked, IGNORE_INDEX)
        roll = self.uniform(*input_ids.shape)
        ids = input_ids.clone()
        ids[picked & (roll < 0.8)] = self.tokenizer.mask_token_id  # 80%: [MASK]
        random_tokens = picked & (roll >= 0.8) & (roll < 0.9)  # 10%: a random token; the last 10%: unchanged
        ids[random_tokens] = torch.randint(len(self.continues_word), (int(random_tokens.sum()),),
                                           generator=self.generator)
        return ids, labels

    def at_least_one(self, picked: torch.Tensor, maskable: torch.Tensor, word: torch.Tensor | None) -> torch.Tensor:
        """Pick one random maskable token (its whole word with whole-word masking) in every row that got none.

        A short text often draws no token at 15%; a row with nothing to predict adds nothing to the
        loss, and a batch of such rows has a loss of 0/0 = NaN.
        """
        empty = ~picked.any(dim=1) & maskable.any(dim=1)  # (B,)
        if not bool(empty.any()):
            return picked
        scores = self.uniform(*picked.shape).masked_fill(~maskable, -1.0)
        chosen = scores.argmax(dim=1, keepdim=True)  # (B, 1): a random maskable column per row
        extra = torch.zeros_like(picked).scatter(1, chosen, True)
        if word is not None:
            extra = (word == word.gather(1, chosen)) & maskable  # every piece of the chosen word
        return picked | (extra & empty[:, None])

    def uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)


class CausalLMCollator:
    """Texts -> a padded batch for MegatronBertForCausalLM: [CLS] text [SEP], labels = the ids.

    The model shifts labels by one itself (the logits at t are scored against token t + 1), so the
    labels are the inputs, with padding set to -100. [SEP] is a target too: the model learns to end
    its texts, and generation can stop at it (eos_token_id=tokenizer.sep_token_id).
    """

    def __init__(self, tokenizer, max_length: int = 128):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, records: Sequence[dict]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer([r["text"] for r in records], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def nsp_pairs(documents: Sequence[Sequence[str]], seed: int = 0) -> list[dict]:
    """BERT's next-sentence pairs: one per document with at least two segments.

    Cut the document at a random point: A = the segments before it; B = the segments after it
    (label 0, "is next") or, half of the time, the tail of another random document (label 1).
    Call again with a new seed for a fresh set of pairs each epoch.
    """
    rng = random.Random(seed)
    docs = [d for d in documents if len(d) >= 2]
    if len(docs) < 2:
        raise ValueError("nsp_pairs needs at least two documents with two or more segments each")
    pairs = []
    for i, doc in enumerate(docs):
        cut = rng.randint(1, len(doc) - 1)
        a, b, label = " ".join(doc[:cut]), " ".join(doc[cut:]), 0
        if rng.random() < 0.5:
            j = rng.randrange(len(docs) - 1)
            other = docs[j + (j >= i)]  # any document but this one
            b, label = " ".join(other[rng.randint(1, len(other) - 1):]), 1
        pairs.append({"text_a": a, "text_b": b, "label": label})
    return pairs
