"""Hook points: named places in the forward pass where you can read or replace an activation.

Every ``hook_*`` attribute of the model is a ``HookPoint``, an identity module. Its full name is its
module path (``bert.encoder.layer.3.attention.self.hook_probs``), so the vocabulary of activations is
the model's own structure. Idle hook points cost one identity call; nothing is stored unless asked for.

    out, cache = model.run_with_cache(ids, names="*.hook_probs")
    out = model.run_with_hooks(ids, fwd_hooks=[("*.layer.3.*.hook_z", zero_head_5)])
    with model.hooks(fwd_hooks=[...], bwd_hooks=[...]):
        ...  # hooks removed on exit, even if the body raises

A forward hook ``fn(activation, name)`` returns None (keep the activation) or a replacement of the same
shape; a floating-point replacement in another dtype or on another device is cast back to the
activation's. Anything else (another shape, a list, a number, an integer tensor) raises ``HookError``
naming the hook point, instead of broadcasting silently into a wrong answer further on.

Names are relative to the bare model (task models prefix ``bert.``). ``model.hook_names()`` is the one
place that lists them and ``layer_hook(i, "hook_attn_out")`` the one place that spells a per-layer name.
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


class HookError(ValueError):
    """A hook was given, or returned, something its hook point cannot use. The message names the point."""


def layer_hook(layer: int, point: str) -> str:
    """Full name of a hook point in encoder layer `layer`, e.g. layer_hook(3, "attention.self.hook_z")."""
    return f"encoder.layer.{layer}.{point}"


class HookPoint(nn.Module):
    """Identity module: a stable, named tap on an activation."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Module.__call__ costs about a microsecond even when nothing listens; a model has ~10 hook
        # points per layer, so an idle hook point returns its input without going through it.
        if not (self._forward_hooks or self._forward_pre_hooks or self._backward_hooks
                or self._backward_pre_hooks):  # = not self.active, without the property call
            return x
        return super().__call__(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """True when something listens here (attention and LayerNorm use this to pick their explicit paths)."""
        return bool(self._forward_hooks or self._forward_pre_hooks or self._backward_hooks
                    or self._backward_pre_hooks)


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
        patterns = [names] if isinstance(names, str) or not isinstance(names, Iterable) else list(names)
        chosen: list[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise HookError(f"hook names must be strings (exact names or globs), a list of them or a "
                                f"predicate; got {type(pattern).__name__} {pattern!r:.80}")
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

        fwd: fn(activation, name) may return a same-shape replacement activation (or None to keep it).
        bwd: fn(grad, name) sees the gradient of the loss w.r.t. the activation; may return a new grad.
        """
        points = self.hook_points()
        attach = [(fn, name, _forward_hook) for names, fn in hook_pairs("fwd_hooks", fwd_hooks)
                  for name in self.resolve_hook_names(names)]
        attach += [(fn, name, _backward_hook) for names, fn in hook_pairs("bwd_hooks", bwd_hooks)
                   for name in self.resolve_hook_names(names)]
        handles = []
        try:
            for fn, name, wrap in attach:
                handles.append(points[name].register_forward_hook(wrap(fn, name)))
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
        with self.hooks([(self.resolve_hook_names(names), caching_hook(cache, detach, device))]):
            out = self(*args, **kwargs)
        return out, cache


def caching_hook(cache: dict[str, torch.Tensor], detach: bool = True,
                 device: str | torch.device | None = None) -> HookFn:
    """A forward hook that stores each activation it sees in `cache`, under its hook point's name."""

    def store(x: torch.Tensor, name: str) -> None:
        x = x.detach() if detach else x
        x = x.to(device) if device is not None else x
        # A chunked MLP calls its hooks once per chunk of the sequence: stitch them back together.
        cache[name] = torch.cat([cache[name], x], dim=1) if name in cache else x

    return store


def closest_names(pattern: str, valid: list[str], n: int = 5) -> list[str]:
    """Full names that look like `pattern`; failing that, hook kinds (hook_probs, ...) like its last part."""
    close = difflib.get_close_matches(pattern, valid, n=n, cutoff=0.6)
    if close:
        return close
    kinds = sorted({name.rsplit(".", 1)[-1] for name in valid})
    return difflib.get_close_matches(pattern.rsplit(".", 1)[-1], kinds, n=n, cutoff=0.5) or kinds


def hook_pairs(kind: str, pairs) -> list[tuple[Names, HookFn]]:
    """fwd_hooks / bwd_hooks checked: a list of (names, fn) pairs whose fns are callable."""
    if is_pair(pairs) and not is_pair(pairs[0]):
        raise HookError(f"{kind} must be a list of (names, fn) pairs, got a single pair; "
                        f"wrap it in a list: {kind}=[({pairs[0]!r:.60}, fn)]")
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise HookError(f"{kind} must be a list of (names, fn) pairs; got {type(pairs).__name__}")
    checked = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise HookError(f"{kind}[{i}] must be a (names, fn) pair; got {type(pair).__name__} {pair!r:.80}")
        names, fn = pair
        if not callable(fn):
            raise HookError(f"{kind}[{i}]: the hook for {names!r} is not callable (got {type(fn).__name__}); "
                            f"a hook is a function fn(activation, name)")
        checked.append((names, fn))
    return checked


def is_pair(x) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 2 and callable(x[1])


def checked_replacement(new, old: torch.Tensor, name: str, fn: HookFn, what: str = "activation"):
    """A hook's return value, checked: None, or a tensor shaped like `old` (cast to old's dtype and device)."""
    if new is None:
        return None
    fn_name = getattr(fn, "__qualname__", type(fn).__name__)
    if not isinstance(new, torch.Tensor):
        raise HookError(f"hook {fn_name} at {name} returned {type(new).__name__}; a hook must return None "
                        f"(keep the {what}) or a tensor of shape {tuple(old.shape)}")
    if new.shape != old.shape:
        raise HookError(f"hook {fn_name} at {name} returned shape {tuple(new.shape)}, but the {what} there "
                        f"has shape {tuple(old.shape)}; a replacement must have the same shape")
    if old.is_floating_point() and not new.is_floating_point():
        raise HookError(f"hook {fn_name} at {name} returned a {new.dtype} tensor for a {old.dtype} {what}; "
                        f"a replacement must be floating point")
    return new.to(device=old.device, dtype=old.dtype)


def _forward_hook(fn: HookFn, name: str):
    def hook(module, inputs, output):
        return checked_replacement(fn(output, name), output, name, fn)
    return hook


def _backward_hook(fn: HookFn, name: str):
    def hook(module, inputs, output):
        if output.requires_grad:
            output.register_hook(lambda grad: checked_replacement(fn(grad, name), grad, name, fn, "gradient"))
    return hook
