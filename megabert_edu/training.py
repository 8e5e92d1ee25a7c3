"""Training: one short fine-tuning / pre-training loop, evaluation metrics and pre-training collators.

    result = train(model, train_data, eval_data, epochs=3, batch_size=32, lr=5e-5)
    print(result.metrics)                      # e.g. {"loss": 0.41, "accuracy": 0.87, "f1": 0.85}

The loop is the textbook recipe for BERT fine-tuning: AdamW, a learning rate that warms up linearly
and then decays linearly to zero, gradient clipping, optional gradient accumulation, and on a GPU
bf16 autocast and optional gradient checkpointing. It is seeded, and deterministic on the CPU.

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
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

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
    """Cut the padding columns no row of this batch uses (datasets are padded to their longest row).

    Attention cost grows with T^2, so a batch of short texts should not pay for the longest one.
    Every tensor shaped like attention_mask (ids, types, token labels) is cut the same way.
    """
    mask = batch.get("attention_mask")
    if mask is None:
        return batch
    T = int(mask.reshape(-1, mask.shape[-1]).sum(1).max())
    return {k: v[..., :T] if torch.is_tensor(v) and v.shape == mask.shape else v for k, v in batch.items()}


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
# The loop


@dataclass
class TrainResult:
    """What `train` returns: the model (unwrapped), the log and the last evaluation."""

    model: nn.Module
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # {"step", "loss", "lr"} and {"step", "eval": {...}}
    metrics: dict[str, float] = field(default_factory=dict)


def train(model: nn.Module, train_data, eval_data=None, *, epochs: int = 1, max_steps: int | None = None,
          batch_size: int = 32, grad_accum_steps: int = 1, lr: float = 5e-5, weight_decay: float = 0.01,
          warmup: float | int = 0.1, max_grad_norm: float = 1.0, collate_fn: Callable | None = None,
          eval_every: int | None = None, eval_batch_size: int | None = None, seed: int = 0,
          bf16: bool | None = None, gradient_checkpointing: bool = False,
          device: str | torch.device | None = None, progress: bool = True, log_every: int = 50,
          max_seconds: float | None = None) -> TrainResult:
    """Train `model` on `train_data`; evaluate on `eval_data` every `eval_every` steps and at the end.

    batch_size is per process and per micro-batch: one optimizer step sees
    batch_size x grad_accum_steps x world_size examples. `warmup` is a fraction of the steps (< 1)
    or a number of steps. bf16 defaults to on for CUDA. `max_seconds` stops early (the schedule is
    still planned for the full run). Dropout is the only randomness besides shuffling and masking.
    """
    rank, world = setup_distributed()
    device = torch.device(device) if device is not None else default_device(rank)
    seed_everything(seed + rank)  # each process its own dropout / masking noise, reproducibly
    bf16 = device.type == "cuda" if bf16 is None else bf16
    model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()

    dataset = as_dataset(train_data)
    # One sampler for 1 or N processes: a seeded permutation per epoch, process r takes every
    # world-th index starting at r, so the N micro-batches of step k together are exactly the
    # single-process batch of batch_size x N examples.
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn)
    steps_per_epoch = math.ceil(len(loader) / grad_accum_steps)
    total_steps = max_steps if max_steps is not None else epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup_steps = int(warmup * total_steps) if warmup < 1 else int(warmup)

    optimizer = make_optimizer(model, lr, weight_decay)
    scheduler = linear_schedule(optimizer, warmup_steps, total_steps)
    ddp = DistributedDataParallel(model) if world > 1 else None
    net = ddp if ddp is not None else model
    result = TrainResult(model=model, steps=0, seconds=0.0)
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc="train", disable=not progress or rank != 0)
    running, n_running = 0.0, 0

    model.train()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every process
        n_batches = len(loader)
        for i, batch in enumerate(loader):
            group_start = i - i % grad_accum_steps
            group_size = min(grad_accum_steps, n_batches - group_start)  # the last group may be short
            last_in_group = i == group_start + group_size - 1
            batch = to_device(trim_padding(batch), device)
            # Between optimizer steps DDP need not average gradients: no_sync skips the all-reduce.
            sync = nullcontext() if ddp is None or last_in_group else ddp.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = net(**batch).loss
                (loss / group_size).backward()  # accumulate the mean over the group's micro-batches
            running, n_running = running + loss.item(), n_running + 1
            if not last_in_group:
                continue
            if max_grad_norm:
                # Clip the global gradient norm: one bad batch cannot throw the weights far away.
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            bar.update(1)
            if result.steps % log_every == 0 or result.steps == total_steps:
                entry = {"step": result.steps, "loss": running / n_running, "lr": scheduler.get_last_lr()[0]}
                result.history.append(entry)
                bar.set_postfix(loss=f"{entry['loss']:.4f}")
                running, n_running = 0.0, 0
            eval_now = eval_every and result.steps % eval_every == 0 and result.steps < total_steps
            if eval_data is not None and eval_now:
                metrics = evaluate(model, eval_data, eval_batch_size or batch_size, collate_fn, device, bf16)
                result.history.append({"step": result.steps, "eval": metrics})
                model.train()
            out_of_time = max_seconds is not None and time.perf_counter() - start > max_seconds
            if result.steps >= total_steps or out_of_time:
                break
        else:
            continue
        break
    bar.close()
    model.eval()
    if gradient_checkpointing:
        model.gradient_checkpointing_disable()
    result.seconds = time.perf_counter() - start
    if eval_data is not None:
        result.metrics = evaluate(model, eval_data, eval_batch_size or batch_size, collate_fn, device, bf16)
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
             device: str | torch.device | None = None, bf16: bool = False) -> dict[str, float]:
    """Loss and task metrics on `data`, chosen from what the model returns:

    classification / multiple choice / NSP: accuracy, f1 (macro); token classification: accuracy,
    f1 over the tagged tokens; masked LM: accuracy of the masked tokens and perplexity;
    pre-training: mlm_accuracy, perplexity, nsp_accuracy; QA: exact_match, f1.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = DataLoader(as_dataset(data), batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    model.eval()
    total_loss, n_examples, token_loss, n_tokens = 0.0, 0, 0.0, 0
    collected: dict[str, list[torch.Tensor]] = {}

    def keep(name, t):
        collected.setdefault(name, []).append(t.cpu())

    for batch in loader:
        batch = to_device(trim_padding(batch), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
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
            picked = (self.uniform(*input_ids.shape) < self.mlm_probability) & maskable
        labels = input_ids.masked_fill(~picked, IGNORE_INDEX)
        roll = self.uniform(*input_ids.shape)
        ids = input_ids.clone()
        ids[picked & (roll < 0.8)] = self.tokenizer.mask_token_id  # 80%: [MASK]
        random_tokens = picked & (roll >= 0.8) & (roll < 0.9)  # 10%: a random token; the last 10%: unchanged
        ids[random_tokens] = torch.randint(len(self.continues_word), (int(random_tokens.sum()),),
                                           generator=self.generator)
        return ids, labels

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
