"""Bundled offline datasets (WordNet 3.0, see README.md here) and helpers that tokenise them."""

from .encoding import (
    BIO_LABELS,
    IGNORE_INDEX,
    encode_classification,
    encode_multiple_choice,
    encode_qa,
    encode_token_classification,
)
from .wordnet import SPLITS, SUPERSENSES, TASKS, load_wordnet

__all__ = [
    "BIO_LABELS", "IGNORE_INDEX", "SPLITS", "SUPERSENSES", "TASKS", "encode_classification",
    "encode_multiple_choice", "encode_qa", "encode_token_classification", "load_wordnet",
]
