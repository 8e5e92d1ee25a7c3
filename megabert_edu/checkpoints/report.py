"""LoadReport: what a checkpoint loader did with every tensor name. Nothing is skipped silently."""

from __future__ import annotations

from dataclasses import dataclass, field


class CheckpointError(ValueError):
    """A checkpoint could not be loaded: missing tensors, wrong shapes, a corrupt or absent file."""


@dataclass
class LoadReport:
    """Names a loader loaded, could not find, did not expect, or skipped on purpose (optimizer state).

    `mismatched` holds (name, checkpoint shape, model shape) triples. `initialized` lists head weights
    that the checkpoint does not carry at all (e.g. a new classifier on a pre-trained encoder); they keep
    their random initialisation and do not make a strict load fail.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    initialized: list[str] = field(default_factory=list)  # task-head weights the checkpoint lacks: fresh

    @property
    def ok(self) -> bool:
        return not (self.missing or self.mismatched)

    def raise_if_failed(self, source: str = "checkpoint") -> None:
        """Raise CheckpointError naming every missing or mis-shaped tensor."""
        if self.ok:
            return
        lines = [f"could not load {source}:"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): " + ", ".join(self.missing))
        for name, got, want in self.mismatched:
            lines.append(f"  shape mismatch for {name}: checkpoint {tuple(got)} vs model {tuple(want)}")
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        raise CheckpointError("\n".join(lines))

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)}", f"missing {len(self.missing)}",
                 f"unexpected {len(self.unexpected)}", f"skipped {len(self.skipped)}",
                 f"mismatched {len(self.mismatched)}", f"newly initialised {len(self.initialized)}"]
        lines = ["LoadReport: " + ", ".join(parts)]
        for title, names in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("skipped", self.skipped), ("newly initialised", self.initialized)):
            if names:
                shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                lines.append(f"  {title}: {shown}")
        for name, got, want in self.mismatched:
            lines.append(f"  mismatched: {name} checkpoint {tuple(got)} vs model {tuple(want)}")
        return "\n".join(lines)
