"""Hook points: named places in the forward pass where you can read or replace an activation.

Every ``hook_*`` attribute of the model is a ``HookPoint``, an identity module. Its full name is its
module path (``bert.encoder.layer.3.attention.self.hook_probs``), so the vocabulary of activations is
the model's own structure. Idle hook points cost one identity call; nothing is stored unless asked for.

    out, cache = model.run_with_cache(ids, names="*.hook_probs")
    out = model.run_with_hooks(ids, fwd_hooks=[("*.layer.3.*.hook_z", zero_head_5)])
    with model.hooks(fwd_hooks=[...], bwd_hooks=[...]):
        ...  # hooks removed on exit, even if the body raises
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]
Names = str | Iterable[str] | Callable[[str], bool] | None


class UnknownHookName(KeyError):
    """A hook name or glob that matches no hook point. The message lists the closest valid names."""

    def __str__(self) -> str:  # KeyError would print the message in quotes, escaped
        return str(self.args[0])


class HookPoint(nn.Module):
    """Identity module: a stable, named tap on an activation."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Module.__call__ costs about a microsecond even when nothing listens; a model has ~10 hook
        # points per layer, so an idle hook point returns its input without going through it.
        if not (self._forward_hooks or self._forward_pre_hooks
                or self._backward_hooks or self._backward_pre_hooks):
            return x
        return super().__call__(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """True when something listens here (attention uses this to pick its explicit path)."""
        return bool(self._forward_hooks)


class HookedMixin:
    """hook_names / run_with_cache / run_with_hooks / hooks, for any nn.Module with HookPoints."""

    def hook_points(self) -> dict[str, HookPoint]:
        return {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}

    def hook_names(self) -> list[str]:
        """Every hook point's full name, in module order (layer by layer, as printed by the model)."""
        return list(self.hook_points())

    def active_hooks(self) -> list[str]:
        """Names of the hook points that have something attached right now (empty after every with-block)."""
        return [name for name, point in self.hook_points().items() if point.active]

    def resolve_hook_names(self, names: Names) -> list[str]:
        """Expand a glob, a list of globs or exact names, or a predicate into hook names.

        A glob that matches nothing raises UnknownHookName (a KeyError) listing the closest valid names.
        """
        valid = self.hook_names()
        if names is None:
            return valid
        if callable(names):
            return [n for n in valid if names(n)]
        patterns = [names] if isinstance(names, str) else list(names)
        chosen: list[str] = []
        for pattern in patterns:
            matched = [n for n in valid if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                hint = ", ".join(closest_names(pattern, valid))
                raise UnknownHookName(f"no hook point matches {pattern!r}; closest valid names: {hint}")
            chosen += [n for n in matched if n not in chosen]
        return chosen

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[Names, HookFn]] = (),
              bwd_hooks: Iterable[tuple[Names, HookFn]] = ()) -> Iterator[nn.Module]:
        """Attach hooks for the duration of a with-block.

        fwd: fn(activation, name) may return a replacement activation (or None to keep it).
        bwd: fn(grad, name) sees the gradient of the loss w.r.t. the activation; may return a new grad.
        """
        points = self.hook_points()
        handles = []
        try:
            for names, fn in fwd_hooks:
                for name in self.resolve_hook_names(names):
                    handles.append(points[name].register_forward_hook(_forward_hook(fn, name)))
            for names, fn in bwd_hooks:
                for name in self.resolve_hook_names(names):
                    handles.append(points[name].register_forward_hook(_backward_hook(fn, name)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(self, *args, fwd_hooks=(), bwd_hooks=(), **kwargs):
        """One forward pass with hooks attached. Backward hooks stay on this pass's graph only."""
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names: Names = None, device: str | torch.device | None = None,
                       detach: bool = True, **kwargs):
        """One forward pass; returns (output, {name: activation}) for the requested hook points only."""
        cache: dict[str, torch.Tensor] = {}

        def store(x: torch.Tensor, name: str) -> None:
            x = x.detach() if detach else x
            x = x.to(device) if device is not None else x
            # A chunked MLP calls its hooks once per chunk of the sequence: stitch them back together.
            cache[name] = torch.cat([cache[name], x], dim=1) if name in cache else x

        with self.hooks([(self.resolve_hook_names(names), store)]):
            out = self(*args, **kwargs)
        return out, cache


def closest_names(pattern: str, valid: list[str], n: int = 5) -> list[str]:
    """Full names that look like `pattern`; failing that, hook kinds (hook_probs, ...) like its last part."""
    close = difflib.get_close_matches(pattern, valid, n=n, cutoff=0.6)
    if close:
        return close
    kinds = sorted({name.rsplit(".", 1)[-1] for name in valid})
    return difflib.get_close_matches(pattern.rsplit(".", 1)[-1], kinds, n=n, cutoff=0.5) or kinds


def _forward_hook(fn: HookFn, name: str):
    def hook(module, inputs, output):
        return fn(output, name)
    return hook


def _backward_hook(fn: HookFn, name: str):
    def hook(module, inputs, output):
        if output.requires_grad:
            output.register_hook(lambda grad: fn(grad, name))
    return hook
