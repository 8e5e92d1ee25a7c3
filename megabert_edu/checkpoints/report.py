"""LoadReport: what a checkpoint loader did with every tensor name. Nothing is skipped silently."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint could not be loaded: missing tensors, wrong shapes, a corrupt or absent file."""


class CheckpointMismatchError(CheckpointError, RuntimeError):
    """The checkpoint's tensors do not fit the model (missing, mis-shaped, or encoder tensors the config leaves
    out). Also a RuntimeError, as transformers' "Error(s) in loading state_dict", so HF-style code catches it."""


@dataclass
class LoadReport:
    """Names a loader loaded, could not find, did not expect, or skipped on purpose (optimizer state).

    - ``missing``: tensors the model needs that the checkpoint lacks (strict loading fails).
    - ``mismatched``: (name, checkpoint shape, model shape) triples (strict loading fails).
    - ``unexpected``: checkpoint tensors the model has no place for. Another task's head (``cls.*`` when
      loading a bare encoder, ``classifier``, ``qa_outputs``) is dropped and listed here, as in transformers.
    - ``unexpected_body``: the subset of ``unexpected`` that belongs to the encoder itself -- a layer past
      ``num_hidden_layers``, relative-position or cross-attention weights the config leaves out. The config
      disagrees with the checkpoint, so strict loading fails on them.
    - ``initialized``: head weights the checkpoint does not carry at all (a new classifier on a pre-trained
      encoder); they keep their random initialisation and do not make a strict load fail.
    - ``reinitialized``: (name, checkpoint shape, model shape) of tensors left at their fresh initialisation
      because ``ignore_mismatched_sizes=True`` (e.g. a 2-way classifier loaded as a 5-way one).
    - ``dtype``: the floating-point dtype the checkpoint stores (what ``torch_dtype="auto"`` picks).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    initialized: list[str] = field(default_factory=list)
    unexpected_body: list[str] = field(default_factory=list)
    reinitialized: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    dtype: Any = None  # torch.dtype of the stored weights, when known

    @property
    def ok(self) -> bool:
        return not (self.missing or self.mismatched or self.unexpected_body)

    def raise_if_failed(self, source: str = "checkpoint") -> None:
        """Raise CheckpointMismatchError naming every missing, mis-shaped or unexpected encoder tensor."""
        if self.ok:
            return
        lines = [f"could not load {source}:"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): " + ", ".join(self.missing))
        for name, got, want in self.mismatched:
            lines.append(f"  shape mismatch for {name}: checkpoint {tuple(got)} vs model {tuple(want)}")
        if self.mismatched:
            lines.append("  (from_pretrained(..., ignore_mismatched_sizes=True) re-initialises mis-shaped tensors)")
        if self.unexpected_body:
            lines.append(f"  the checkpoint has encoder tensors the config leaves out ({len(self.unexpected_body)}): "
                         + ", ".join(self.unexpected_body)
                         + " (check num_hidden_layers, position_embedding_type, add_cross_attention)")
        others = [n for n in self.unexpected if n not in self.unexpected_body]
        if others:
            lines.append(f"  unexpected ({len(others)}): " + ", ".join(others))
        raise CheckpointMismatchError("\n".join(lines))

    def loading_info(self) -> dict[str, list]:
        """transformers' ``output_loading_info=True`` dict (names only; missing_keys include new head weights)."""
        return {
            "missing_keys": self.missing + self.initialized,
            "unexpected_keys": list(self.unexpected),
            "mismatched_keys": [name for name, _, _ in self.mismatched + self.reinitialized],
            "error_msgs": [],
        }

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)}", f"missing {len(self.missing)}",
                 f"unexpected {len(self.unexpected)}", f"skipped {len(self.skipped)}",
                 f"mismatched {len(self.mismatched)}", f"newly initialised {len(self.initialized)}"]
        if self.reinitialized:
            parts.append(f"re-initialised (size mismatch) {len(self.reinitialized)}")
        lines = ["LoadReport: " + ", ".join(parts)]
        for title, names in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("skipped", self.skipped), ("newly initialised", self.initialized)):
            if names:
                shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                lines.append(f"  {title}: {shown}")
        for name, got, want in self.mismatched:
            lines.append(f"  mismatched: {name} checkpoint {tuple(got)} vs model {tuple(want)}")
        for name, got, want in self.reinitialized:
            lines.append(f"  re-initialised: {name} checkpoint {tuple(got)} vs model {tuple(want)}")
        return "\n".join(lines)
