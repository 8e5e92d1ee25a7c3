"""Growing or shrinking the vocabulary: new rows for the word embeddings and the LM head's decoder.

Same rules as transformers 4.57 (``resize_token_embeddings``): existing rows are kept, rows past the new
size are dropped, and added rows are drawn from a normal distribution with the old rows' mean and a tiny
covariance (1e-9 times theirs), so a new token starts as an "average" token and the model's predictions
for the old tokens barely move (https://nlp.stanford.edu/~johnhew/vocab-expansion.html).
With ``mean_resizing=False`` added rows get the model's usual N(0, initializer_range) instead.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import constraints

EPSILON = 1e-9  # scale of the old rows' covariance used for new rows


def resize_rows(weight: torch.Tensor, new_rows: int, mean_resizing: bool, std: float) -> torch.Tensor:
    """A (new_rows, D) copy of weight (V, D): old rows first, added rows initialised as described above."""
    old_rows, dim = weight.shape
    new = torch.empty(new_rows, dim, dtype=weight.dtype, device=weight.device)
    n = min(old_rows, new_rows)
    with torch.no_grad():
        if new_rows > old_rows:
            added = new[old_rows:]
            if mean_resizing:
                added.copy_(sample_like_rows(weight, new_rows - old_rows))
            else:
                added.normal_(mean=0.0, std=std)
        new[:n] = weight[:n]
    return new


def sample_like_rows(weight: torch.Tensor, count: int) -> torch.Tensor:
    """`count` rows from N(mean, 1e-9 * covariance) of weight's rows; the mean itself if that is degenerate."""
    rows = weight.detach().float()
    mean = rows.mean(dim=0)
    centered = rows - mean
    covariance = centered.T @ centered / rows.shape[0]  # (D, D)
    if constraints.positive_definite.check(EPSILON * covariance).all():
        dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=EPSILON * covariance)
        return dist.sample((count,)).to(weight.dtype)
    return mean.expand(count, -1).to(weight.dtype)  # fewer rows than dimensions: no full-rank covariance


def resize_bias(bias: torch.Tensor, new_size: int, mean_resizing: bool) -> torch.Tensor:
    """Old entries first; added entries near the old mean (mean_resizing) or zero."""
    new = torch.zeros(new_size, dtype=bias.dtype, device=bias.device)
    n = min(bias.shape[0], new_size)
    with torch.no_grad():
        if new_size > bias.shape[0] and mean_resizing:
            old = bias.detach().float()
            new[bias.shape[0]:].normal_(mean=float(old.mean()), std=EPSILON * float(old.std()))
        new[:n] = bias[:n]
    return new


def resize_embedding(embedding: nn.Embedding, new_num_tokens: int, mean_resizing: bool, std: float) -> nn.Embedding:
    """Resize in place (the module object stays, so custom Embedding subclasses survive) and return it."""
    requires_grad = embedding.weight.requires_grad
    weight = resize_rows(embedding.weight, new_num_tokens, mean_resizing, std)
    embedding.weight = nn.Parameter(weight, requires_grad=requires_grad)
    embedding.num_embeddings = new_num_tokens
    if embedding.padding_idx is not None and embedding.padding_idx >= new_num_tokens:
        embedding.padding_idx = None  # the padding row was cut off
    return embedding


def rounded_vocab_size(new_num_tokens: int | None, current: int, pad_to_multiple_of: int | None) -> int | None:
    """Check the arguments of resize_token_embeddings and apply pad_to_multiple_of."""
    if new_num_tokens is not None and (isinstance(new_num_tokens, bool) or not isinstance(new_num_tokens, int)
                                       or new_num_tokens <= 0):
        raise ValueError(f"new_num_tokens must be a positive integer; got {new_num_tokens!r}")
    if pad_to_multiple_of is None:
        return new_num_tokens
    if isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0:
        raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of!r} must be a positive integer "
                         "(the vocabulary is padded up to a multiple of it)")
    n = current if new_num_tokens is None else new_num_tokens
    return -(-n // pad_to_multiple_of) * pad_to_multiple_of
