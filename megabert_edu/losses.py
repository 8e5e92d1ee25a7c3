"""The task heads' losses, each with its label check.

The formulas are the reference's (transformers 4.57.6). The checks are ours: a label tensor of the wrong
shape or with an impossible value is an error that names the head, the argument and what was expected,
instead of a silent broadcast (regression), a silent reshape (token labels) or a deep torch message.
A loss with no label left to score (every label -100) is 0, not NaN: there is nothing to learn from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label value that is not scored (padding, unmasked tokens)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over the labels that are not ignore_index; 0 (still differentiable) if there are none."""
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0  # the reference divides 0 by 0 here and returns NaN
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


def check_class_ids(head: str, name: str, labels, shape: tuple, num_classes: int, meaning: str) -> None:
    """labels: an integer tensor of `shape` holding class ids in [0, num_classes) or -100."""
    check_label_tensor(head, name, labels, shape, meaning)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"{head}: {name} must hold integer class ids (torch.long); got {labels.dtype}")
    bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))]
    if bad.numel():
        raise ValueError(f"{head}: {name} must hold class ids in [0, {num_classes}) or {IGNORE_INDEX} (ignored); "
                         f"got {int(bad[0])}")


def check_label_tensor(head: str, name: str, labels, shape: tuple, meaning: str) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{head}: {name} must be a tensor of shape {shape} ({meaning}); got {type(labels).__name__}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{head}: {name} must have shape {tuple(shape)} ({meaning}); got {tuple(labels.shape)}")


def token_loss(head: str, logits: torch.Tensor, labels: torch.Tensor, name: str = "labels") -> torch.Tensor:
    """One class per token: logits (B, T, C), labels (B, T) in [0, C) or -100."""
    B, T, C = logits.shape
    check_class_ids(head, name, labels, (B, T), C, "batch, seq_len: one class id per token")
    return cross_entropy(logits.reshape(-1, C), labels.reshape(-1))


def causal_lm_loss(head: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Shift by one: the logits at t are scored against the label at t + 1 (computed in float32, as the reference)."""
    B, T, V = logits.shape
    check_class_ids(head, "labels", labels, (B, T), V, "batch, seq_len: the input ids, -100 where not scored")
    return cross_entropy(logits[:, :-1].float().reshape(-1, V), labels[:, 1:].reshape(-1))


def choice_loss(head: str, logits: torch.Tensor, labels: torch.Tensor, name: str = "labels",
                meaning: str = "batch: the index of the right choice") -> torch.Tensor:
    """One class per sequence: logits (B, C), labels (B,) (or (B, 1)) in [0, C) or -100."""
    B, C = logits.shape
    if isinstance(labels, torch.Tensor) and tuple(labels.shape) == (B, 1):
        labels = labels.view(B)  # the reference flattens labels with view(-1)
    check_class_ids(head, name, labels, (B,), C, meaning)
    return cross_entropy(logits, labels)


def sequence_classification_loss(head: str, problem_type: str | None, logits: torch.Tensor,
                                 labels: torch.Tensor) -> torch.Tensor:
    """The reference's problem_type rules: 1 label -> MSE; integer labels -> CE; otherwise BCE."""
    B, num_labels = logits.shape
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{head}: labels must be a tensor; got {type(labels).__name__}")
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "single_label_classification":
        return choice_loss(head, logits, labels, meaning="batch: one class id per sequence")
    if problem_type == "regression" and num_labels == 1:
        shape = (B,) if labels.dim() == 1 else (B, 1)  # the reference squeezes both sides
        check_label_tensor(head, "labels", labels, shape, "batch: one target value per sequence")
        return F.mse_loss(logits.view(B), labels.view(B).to(logits.dtype))
    meaning = "batch, num_labels: " + ("a target per output" if problem_type == "regression" else "0/1 per label")
    check_label_tensor(head, "labels", labels, (B, num_labels), meaning)
    if problem_type == "regression":
        return F.mse_loss(logits, labels.to(logits.dtype))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def span_loss(head: str, start: torch.Tensor, end: torch.Tensor, start_positions: torch.Tensor,
              end_positions: torch.Tensor) -> torch.Tensor:
    """Extractive QA: mean of the start and end cross-entropies.

    Positions past the (possibly truncated) input are clamped to T and then ignored, as in the reference.
    A negative position is an error (the reference would clamp it to 0 and train on the first token).
    """
    B, T = start.shape
    for name, positions in (("start_positions", start_positions), ("end_positions", end_positions)):
        if isinstance(positions, torch.Tensor) and tuple(positions.shape) == (B, 1):
            positions = positions.view(B)
        check_label_tensor(head, name, positions, (B,), "batch: a token index per example")
        if positions.is_floating_point() or positions.dtype == torch.bool:
            raise TypeError(f"{head}: {name} must hold integer token indices (torch.long); got {positions.dtype}")
        if positions.numel() and int(positions.min()) < 0:
            raise ValueError(f"{head}: {name} must be token indices >= 0; got {int(positions.min())}")
    s = start_positions.reshape(B).clamp(0, T)
    e = end_positions.reshape(B).clamp(0, T)
    return (cross_entropy(start, s, ignore_index=T) + cross_entropy(end, e, ignore_index=T)) / 2
