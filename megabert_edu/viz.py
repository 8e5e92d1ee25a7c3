"""Seeing what the model does: offline attention views, ipywidgets explorers and the plots the notebooks share.

Attention views are self-contained HTML: our own small JavaScript and CSS are inlined, nothing is loaded from
a network and no require.js is needed, so they render in JupyterLab, the classic Notebook, VS Code, an
nbconvert HTML export and a saved .html file alike, online or not.

    out = model(**batch, output_attentions=True)
    attention_view(tokens, out.attentions, layer=2, head=5)          # head view: two token columns, lines
    attention_view(tokens, out.attentions, mode="model")             # every layer x head as a thumbnail
    attention_view(tokens, cache, heads=live_heads(model)).save("attention.html")   # run_with_cache, pruned

    explore_attention(model, tokenizer, "The cat sat on the mat.")   # sentence box + layer/head sliders
    explore_pruning(model, batches, metric)                          # head toggles, metric recomputed live
    explore_generation(model, tokenizer, "Once upon a time")         # sampling sliders

    plot_head_grid(out.attentions, tokens); plot_pruning_curve(run, random_curves=...); ...

Each explorer keeps its logic in plain methods (``set``, ``toggle``, ``metric``, ``generate``) that the
widgets call, so code and tests can drive it without a browser. Without ipywidgets or a kernel an explorer
shows a static picture. Its picture is a separate output updated in place, so an exported notebook keeps
the last one even though the sliders themselves need a live kernel.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import html
import itertools
import json
import random
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from .analysis import LayerNormStats, Profile, attention_summary, live_heads, punctuation_ids
from .generation import generate
from .pruning import HeadImportance, PruningRun, ablate_heads, examples_per_second, keep_mask, prune_masked_heads

try:  # the notebooks extra; without it the explorers fall back to static pictures
    import ipywidgets as widgets
    from IPython import get_ipython
    from IPython.display import HTML, display
except ImportError:  # pragma: no cover - exercised only where the notebooks extra is missing
    widgets = None
    get_ipython = display = HTML = None
try:  # optional: the familiar bertviz views, made to work offline below
    import bertviz
except ImportError:  # pragma: no cover
    bertviz = None

PAD_TOKEN = "[PAD]"
PROBS_PATTERN = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.attention\.self\.hook_probs$")
_view_counter = itertools.count()


# ---------------------------------------------------------------------------------------------------
# Normalising what the model gives us: per layer (nh, T, T) numpy maps for one row, padding dropped


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x.astype(np.float32)
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def attention_layers(attentions: Any) -> list[np.ndarray]:
    """Per layer a (B, nh, T, T) array from out.attentions, a list of maps, or a run_with_cache cache.

    A cache is a dict {hook name: tensor}; its ``...encoder.layer.{i}.attention.self.hook_probs`` entries are
    taken in layer order (other hooks are ignored). Single maps (nh, T, T) get a batch axis of 1.
    """
    if isinstance(attentions, Mapping):
        found = {int(m.group(1)): v for k, v in attentions.items() if (m := PROBS_PATTERN.search(str(k)))}
        if not found:
            raise ValueError("attentions: the cache has no 'encoder.layer.{i}.attention.self.hook_probs' "
                             f"entries (keys: {sorted(attentions)[:5]}...); run_with_cache(names='*.hook_probs')")
        if sorted(found) != list(range(len(found))):
            raise ValueError(f"attentions: the cache has hook_probs for layers {sorted(found)}; "
                             "cache every layer (names='*.hook_probs') so the view can number them")
        attentions = [found[i] for i in range(len(found))]
    if isinstance(attentions, torch.Tensor | np.ndarray) or not isinstance(attentions, Sequence) or not attentions:
        raise TypeError("attentions must be out.attentions (a tuple of (B, nh, T, T) maps, one per layer), "
                        "a list of such maps, or a run_with_cache cache dict")
    layers = []
    for i, a in enumerate(attentions):
        a = _to_numpy(a, f"attentions[{i}]")
        a = a[None] if a.ndim == 3 else a
        if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attentions[{i}] must have shape (B, nh, T, T) or (nh, T, T); got {a.shape}")
        layers.append(a)
    if len({(a.shape[0], a.shape[-1]) for a in layers}) != 1:
        raise ValueError("attentions: every layer must have the same batch size and sequence length; got "
                         f"{[a.shape for a in layers]}")
    return layers


def _row_tokens(tokens: Sequence, row: int, batch: int) -> list[str]:
    if not isinstance(tokens, Sequence) or isinstance(tokens, str) or not tokens:
        raise TypeError("tokens must be a non-empty list of token strings (or a list of such lists, one per row)")
    if isinstance(tokens[0], str):
        return list(tokens)
    if not 0 <= row < len(tokens):
        raise ValueError(f"row={row} is out of range: tokens has {len(tokens)} rows")
    if len(tokens) != batch:
        raise ValueError(f"tokens has {len(tokens)} rows but the attentions have batch size {batch}")
    return list(tokens[row])


def select_row(tokens: Sequence, layers: list[np.ndarray], *, row: int = 0, attention_mask: Any = None,
               tokens_b: Sequence[str] | None = None) -> tuple[list[str], int | None, list[np.ndarray]]:
    """One row of a batch with its padding dropped: (tokens, index where sentence B starts, [(nh, T, T)])."""
    B, T = layers[0].shape[0], layers[0].shape[-1]
    if not 0 <= row < B:
        raise ValueError(f"row={row} is out of range: the attentions have batch size {B}")
    toks = _row_tokens(tokens, row, B) + (list(tokens_b) if tokens_b is not None else [])
    split = len(toks) - len(tokens_b) if tokens_b is not None else None
    if attention_mask is not None:
        mask = _to_numpy(attention_mask, "attention_mask")
        if mask.shape != (B, T):
            raise ValueError(f"attention_mask must have shape (B, T) = {(B, T)}; got {mask.shape}")
        keep = mask[row] > 0
        if len(toks) not in (T, int(keep.sum())):
            raise ValueError(f"tokens has {len(toks)} entries for row {row}, but the attentions cover {T} "
                             f"positions of which attention_mask marks {int(keep.sum())} as real")
        if len(toks) == T:  # one token per position, padding included: drop it
            split = None if split is None else int(keep[:split].sum())
            toks = [t for t, k in zip(toks, keep, strict=True) if k]
    else:
        if len(toks) != T:
            raise ValueError(f"tokens has {len(toks)} entries but the attentions cover {T} positions; pass one "
                             "token per position (with tokens_b: len(tokens) + len(tokens_b) == T)")
        keep = np.array([t != PAD_TOKEN for t in toks])
        split = None if split is None else int(keep[:split].sum())
        toks = [t for t in toks if t != PAD_TOKEN]
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        raise ValueError(f"row {row} has no real tokens: its attention_mask is all 0 (or its tokens all {PAD_TOKEN})")
    maps = [a[row][:, idx][:, :, idx] for a in layers]  # (nh, T', T')
    return toks, split, maps


def _check_heads(heads: Sequence[Sequence[int]] | None, maps: list[np.ndarray]) -> list[list[int]]:
    if heads is None:
        return [list(range(m.shape[0])) for m in maps]
    heads = [[int(h) for h in hs] for hs in heads]
    if len(heads) != len(maps) or any(len(h) != m.shape[0] for h, m in zip(heads, maps, strict=False)):
        raise ValueError(f"heads must list, per layer, the original numbers of the heads present "
                         f"(analysis.live_heads(model)); got {len(heads)} layers with "
                         f"{[len(h) for h in heads]} heads for maps with {[m.shape[0] for m in maps]}")
    return heads


# ---------------------------------------------------------------------------------------------------
# The HTML view


def _asset(name: str) -> str:
    return resources.files("megabert_edu").joinpath("viz_assets", name).read_text(encoding="utf-8")


@dataclass
class AttentionView:
    """A self-contained attention view; displays itself in notebooks (``_repr_html_``) and saves as a page."""

    data: dict
    element_id: str

    def html(self, standalone: bool = False) -> str:
        """The view as an HTML fragment (or, standalone=True, a complete page)."""
        payload = json.dumps(self.data, separators=(",", ":")).replace("</", "<\\/")
        fallback = html.escape(" ".join(self.data["tokens"]))
        fragment = (
            f'<div class="mbv" id="{self.element_id}" data-mode="{self.data["mode"]}">'
            f"<style>{_asset('attention.css')}</style>"
            f'<div class="mbv-fallback">Attention view (needs JavaScript). Tokens: {fallback}</div>'
            f'<script type="application/json" class="mbv-data">{payload}</script>'
            f"<script>(function () {{\n{_asset('attention.js')}\n"
            f'var root = document.getElementById("{self.element_id}");\n'
            'root.removeChild(root.querySelector(".mbv-fallback"));\n'
            'mbvRender(root, JSON.parse(root.querySelector(".mbv-data").textContent));\n'
            "})();</script></div>"
        )
        if not standalone:
            return fragment
        title = html.escape(f"attention: {' '.join(self.data['tokens'])[:80]}")
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>'
                f"<body>{fragment}</body></html>\n")

    def _repr_html_(self) -> str:
        return self.html()

    def save(self, path: str | Path) -> Path:
        """Write a standalone .html page; returns its path."""
        path = Path(path)
        path.write_text(self.html(standalone=True), encoding="utf-8")
        return path


def attention_view(tokens: Sequence, attentions: Any, *, layer: int = 0, head: int | str = 0,
                   tokens_b: Sequence[str] | None = None, mode: str = "head", row: int = 0,
                   attention_mask: Any = None, heads: Sequence[Sequence[int]] | None = None) -> AttentionView:
    """An offline, interactive attention view of one sequence (see the module docstring).

    heads: per layer the original numbers of the heads present (analysis.live_heads(model)) for a pruned model.
    """
    if mode not in ("head", "model"):
        raise ValueError(f"mode must be 'head' or 'model', got {mode!r}")
    layers = attention_layers(attentions)
    toks, split, maps = select_row(tokens, layers, row=row, attention_mask=attention_mask, tokens_b=tokens_b)
    heads = _check_heads(heads, maps)
    if not 0 <= layer < len(maps):
        raise ValueError(f"layer={layer} is out of range: the model has layers 0..{len(maps) - 1}")
    if head != "all" and int(head) not in heads[layer]:
        raise ValueError(f"head={head!r} is not in layer {layer}: its heads are {heads[layer]} (or 'all')")
    data = {
        "tokens": toks, "split": split, "mode": mode, "layer": int(layer),
        "head": "all" if head == "all" else int(head), "num_heads": max(max(h) for h in heads if h) + 1,
        "layers": [{"label": f"layer {i}", "heads": h, "attn": np.round(m, 4).tolist()}
                   for i, (h, m) in enumerate(zip(heads, maps, strict=True))],
    }
    digest = hashlib.sha1(json.dumps(data).encode()).hexdigest()[:8]
    return AttentionView(data, f"mbv-{digest}-{next(_view_counter)}")


def model_attention_view(model: nn.Module, tokenizer, text: str, *, text_b: str | None = None,
                         **kwargs) -> AttentionView:
    """Tokenize `text` (and `text_b`), run the model once and return attention_view(...) with live heads."""
    batch = tokenizer(text, text_b, return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    tokens_b = None
    if text_b is not None:
        split = int(batch["token_type_ids"][0].argmax())
        tokens, tokens_b = tokens[:split], tokens[split:]
    base = model.base_model
    with torch.no_grad():
        out = base(**{k: v.to(base.device) for k, v in batch.items()}, output_attentions=True)
    return attention_view(tokens, out.attentions, tokens_b=tokens_b, heads=live_heads(model), **kwargs)


# ---------------------------------------------------------------------------------------------------
# bertviz, offline: its three libraries come from npm packages that `make install` puts in the venv

BERTVIZ_JS_DIR = Path(sys.prefix) / "share" / "megabert_edu" / "js" / "node_modules"
BERTVIZ_LIBS = {  # what bertviz asks the CDN for -> the file of the npm package that replaces it
    "require": ("requirejs/require.js", "https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.6/require.min.js"),
    "d3": ("d3/dist/d3.min.js", "https://cdnjs.cloudflare.com/ajax/libs/d3/5.7.0/d3.min"),
    "jquery": ("jquery/dist/jquery.min.js", "https://cdnjs.cloudflare.com/ajax/libs/jquery/2.0.0/jquery.min"),
}


def bertviz_offline_available(js_dir: str | Path | None = None) -> bool:
    """True when bertviz is installed and require.js, d3 and jQuery are in `js_dir` (default: the venv's)."""
    root = Path(js_dir) if js_dir is not None else BERTVIZ_JS_DIR
    return bertviz is not None and all((root / file).is_file() for file, _ in BERTVIZ_LIBS.values())


def offline_bertviz_html(page: str, js_dir: str | Path | None = None) -> str:
    """Rewrite bertviz's HTML so it loads nothing from a network.

    require.js is inlined (only where the page has no require.js of its own, as the classic Notebook does);
    d3 and jQuery become data: URLs in require's paths, which require.js loads as they are.
    """
    root = Path(js_dir) if js_dir is not None else BERTVIZ_JS_DIR
    if not bertviz_offline_available(root):
        raise RuntimeError(f"bertviz offline needs bertviz and the npm packages requirejs, d3@5 and jquery@2 in "
                           f"{root} (make install puts them there when npm is available); use attention_view")
    require_file, require_url = BERTVIZ_LIBS["require"]
    require_tag = f'<script src="{require_url}"></script>'
    if require_tag not in page:
        raise RuntimeError("this bertviz version loads require.js differently; offline rewriting is not possible")
    require_js = (root / require_file).read_text(encoding="utf-8").replace("</script", "<\\/script")
    page = page.replace(require_tag, f"<script>if (typeof window.requirejs === 'undefined') {{\n{require_js}\n}}"
                                     "</script>")
    for name in ("d3", "jquery"):
        file, url = BERTVIZ_LIBS[name]
        if url not in page:
            raise RuntimeError(f"this bertviz version loads {name} from elsewhere than {url}; cannot rewrite it")
        data = base64.b64encode((root / file).read_bytes()).decode("ascii")
        page = page.replace(url, f"data:text/javascript;base64,{data}")
    return page


def bertviz_head_view(attention, tokens, *, js_dir: str | Path | None = None, **kwargs):
    """bertviz.head_view(attention, tokens, ...) that renders offline (returns an IPython HTML object)."""
    if bertviz is None:
        raise RuntimeError("bertviz is not installed (pip install bertviz); use attention_view")
    page = bertviz.head_view(attention, tokens, html_action="return", **kwargs).data
    return HTML(offline_bertviz_html(page, js_dir))


def bertviz_model_view(attention, tokens, *, js_dir: str | Path | None = None, **kwargs):
    """bertviz.model_view(attention, tokens, ...) that renders offline (returns an IPython HTML object)."""
    if bertviz is None:
        raise RuntimeError("bertviz is not installed (pip install bertviz); use attention_view")
    page = bertviz.model_view(attention, tokens, html_action="return", **kwargs).data
    return HTML(offline_bertviz_html(page, js_dir))


# ---------------------------------------------------------------------------------------------------
# Explorers


def _live_kernel() -> bool:
    """True inside a Jupyter kernel with ipywidgets: widgets can talk back to Python."""
    if widgets is None:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class _Explorer:
    """Shared display logic: live controls + a picture updated in place, or just the picture."""

    widget = None  # the ipywidgets box, once built
    inputs: dict  # its controls by name, so code (and tests) can set them as a user would

    def picture(self):  # what a static page shows
        raise NotImplementedError

    def controls(self):  # builds self.inputs and returns the box
        raise NotImplementedError

    def build_widget(self):
        """The live controls (ipywidgets); changing them calls the explorer's methods and redraws the picture."""
        if widgets is None:
            raise RuntimeError("the explorers' controls need ipywidgets (pip install ipywidgets)")
        self.widget = self.controls()
        return self.widget

    def _ipython_display_(self) -> None:
        if not _live_kernel():
            display(self.picture())
            return
        display(self.build_widget())
        self._handle = display(self.picture(), display_id=True)

    def refresh(self) -> None:
        """Redraw the picture in place (called by the widgets after each change)."""
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.update(self.picture())


class AttentionExplorer(_Explorer):
    """A sentence box and layer/head sliders over the head view and the selected head's Clark et al. statistics."""

    def __init__(self, model: nn.Module, tokenizer, text: str, *, text_b: str | None = None, layer: int = 0,
                 head: int = 0, punct_ids: Sequence[int] | None = None):
        self.model, self.tokenizer, self.text_b = model, tokenizer, text_b
        self.punct_ids = list(punct_ids) if punct_ids is not None else punctuation_ids(tokenizer.get_vocab())
        self.heads = live_heads(model)
        self.layer, self.head = layer, head
        self.set(text=text, layer=layer, head=head)

    def set(self, text: str | None = None, layer: int | None = None, head: int | None = None) -> None:
        """Change the sentence and/or the selected head; recomputes what depends on it."""
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("text must be a non-empty string")
            self.text = text
            batch = self.tokenizer(text, return_tensors="pt")
            self.summary = attention_summary(self.model, batch["input_ids"], batch["attention_mask"],
                                             cls_id=self.tokenizer.cls_token_id, sep_id=self.tokenizer.sep_token_id,
                                             punct_ids=self.punct_ids)
        layer = self.layer if layer is None else int(layer)
        head = self.head if head is None else int(head)
        if not 0 <= layer < len(self.heads) or head not in self.heads[layer]:
            raise ValueError(f"no head {head} in layer {layer}: live heads are {self.heads}")
        self.layer, self.head = layer, head

    def view(self) -> AttentionView:
        return model_attention_view(self.model, self.tokenizer, self.text, text_b=self.text_b, layer=self.layer,
                                    head=self.head)

    def stats(self) -> dict[str, float]:
        """Clark et al. (2019) statistics of the selected head on the current sentence."""
        return {name: float(t[self.layer, self.head]) for name, t in self.summary.as_dict().items()}

    def picture(self):
        rows = "".join(f"<tr><td>{k}</td><td>{v:.3f}</td></tr>" for k, v in self.stats().items())
        table = f"<table><caption>layer {self.layer}, head {self.head}</caption>{rows}</table>"
        return HTML(f'<div style="display:flex;gap:16px">{self.view().html()}{table}</div>')

    def controls(self):
        box = widgets.Text(value=self.text, description="sentence", continuous_update=False,
                           layout=widgets.Layout(width="60%"))
        layer = widgets.IntSlider(value=self.layer, min=0, max=len(self.heads) - 1, description="layer")
        head = widgets.Dropdown(options=self.heads[self.layer], value=self.head, description="head")

        def changed(_=None):
            if tuple(head.options) != tuple(self.heads[layer.value]):  # a pruned model: heads differ by layer
                head.options = self.heads[layer.value]  # may move head.value, which calls `changed` again
            self.set(text=box.value if box.value != self.text else None, layer=layer.value, head=head.value)
            self.refresh()

        self.inputs = {"text": box, "layer": layer, "head": head}
        for w in self.inputs.values():
            w.observe(changed, names="value")
        return widgets.HBox([box, layer, head])


def explore_attention(model: nn.Module, tokenizer, text: str, *, text_b: str | None = None, layer: int = 0,
                      head: int = 0) -> AttentionExplorer:
    """Sentence box + layer/head sliders over the head view, with the selected head's Clark et al. statistics."""
    return AttentionExplorer(model, tokenizer, text, text_b=text_b, layer=layer, head=head)


@dataclass
class PruneResult:
    """What "prune for real" measured: the pruned copy and its size and speed against the original."""

    model: nn.Module
    pruned_heads: dict[int, list[int]]
    params_before: int
    params_after: int
    examples_per_s_before: float
    examples_per_s_after: float
    metric_after: float

    def __str__(self) -> str:
        return (f"pruned {sum(len(h) for h in self.pruned_heads.values())} heads: parameters "
                f"{self.params_before:,} -> {self.params_after:,}, examples/s {self.examples_per_s_before:.1f} -> "
                f"{self.examples_per_s_after:.1f}, metric {self.metric_after:.4f}")


class PruningExplorer(_Explorer):
    """A grid of head toggles: the metric is recomputed with the switched-off heads ablated through hook_z."""

    def __init__(self, model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]],
                 metric: Callable[[nn.Module], float], *, speed_batches=None):
        if not callable(metric):
            raise TypeError("metric must be a function metric(model) -> float (higher is better)")
        self.model, self.batches, self.metric_fn = model.eval(), list(batches), metric
        self.speed_batches = list(speed_batches or self.batches)
        self.mask = keep_mask(model)  # (L, nh): 1 on, 0 switched off (pruned heads stay 0)
        self.available = self.mask.clone()
        with torch.no_grad():
            self.base_metric = float(metric(model))
        self.current = self.base_metric
        self.last_prune: PruneResult | None = None

    def toggle(self, layer: int, head: int, on: bool | None = None) -> float:
        """Switch a head on/off (on=None flips it); returns the recomputed metric."""
        L, H = self.mask.shape
        if not (0 <= layer < L and 0 <= head < H) or self.available[layer, head] == 0:
            raise ValueError(f"no live head {head} in layer {layer}")
        new = (self.mask[layer, head] == 0) if on is None else bool(on)
        self.mask[layer, head] = float(new)
        return self.metric()

    def set_mask(self, mask: torch.Tensor) -> float:
        """Use a whole (L, nh) keep-mask at once; returns the recomputed metric."""
        self.mask = keep_mask(self.model, mask) * self.available
        return self.metric()

    def metric(self) -> float:
        """The metric with every switched-off head ablated (output zeroed at hook_z, as head_mask = 0)."""
        with ablate_heads(self.model, self.mask), torch.no_grad():
            self.current = float(self.metric_fn(self.model))
        return self.current

    def prune(self) -> PruneResult:
        """Remove the switched-off heads for real from a copy; measure parameters and examples/s before/after."""
        pruned = copy.deepcopy(self.model)
        heads = prune_masked_heads(pruned, self.mask)
        with torch.no_grad():
            after = float(self.metric_fn(pruned))
        self.last_prune = PruneResult(pruned, heads, self.model.num_parameters(), pruned.num_parameters(),
                                      examples_per_second(self.model, self.speed_batches),
                                      examples_per_second(pruned, self.speed_batches), after)
        return self.last_prune

    def picture(self):
        fig, ax = plt.subplots(figsize=(0.45 * self.mask.shape[1] + 1.5, 0.45 * self.mask.shape[0] + 1))
        ax.imshow(self.mask.numpy(), cmap="Greys", vmin=-0.3, vmax=1.3)
        ax.set(xlabel="head", ylabel="layer", title=f"metric {self.current:.4f} (all heads: {self.base_metric:.4f}),"
               f" {int(self.mask.sum())} heads on")
        plt.close(fig)
        return fig

    def controls(self):
        L, H = self.mask.shape
        readout = widgets.HTML()

        def show():
            text = f"<b>metric {self.current:.4f}</b> (all heads {self.base_metric:.4f})"
            if self.last_prune is not None:
                text += f"<br>{html.escape(str(self.last_prune))}"
            readout.value = text

        def button(layer: int, head: int):
            b = widgets.ToggleButton(value=bool(self.mask[layer, head]), description=str(head),
                                     disabled=not bool(self.available[layer, head]),
                                     layout=widgets.Layout(width="42px"))

            def flip(change):
                self.toggle(layer, head, on=change["new"])
                show()
                self.refresh()
            b.observe(flip, names="value")
            return b

        self.inputs = {(i, h): button(i, h) for i in range(L) for h in range(H)}
        rows = [widgets.HBox([widgets.Label(f"layer {i}", layout=widgets.Layout(width="60px"))]
                             + [self.inputs[i, h] for h in range(H)]) for i in range(L)]
        prune = widgets.Button(description="prune for real", button_style="warning")
        self.inputs.update(prune=prune, readout=readout)

        def do_prune(_):
            self.prune()
            show()
        prune.on_click(do_prune)
        show()
        return widgets.VBox(rows + [prune, readout])


def explore_pruning(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]],
                    metric: Callable[[nn.Module], float], *, speed_batches=None) -> PruningExplorer:
    """Head toggles with the metric recomputed live by hook ablation, and a "prune for real" button."""
    return PruningExplorer(model, batches, metric, speed_batches=speed_batches)


class GenerationExplorer(_Explorer):
    """Temperature, top-k, top-p, repetition penalty and seed sliders over a causal LM's continuation."""

    def __init__(self, model: nn.Module, tokenizer, prompt: str, *, max_new_tokens: int = 20):
        if not model.config.is_decoder:
            raise ValueError("explore_generation needs a causal LM (MegatronBertForCausalLM, is_decoder=True)")
        self.model, self.tokenizer, self.prompt, self.max_new_tokens = model, tokenizer, prompt, max_new_tokens
        self.settings = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0, "seed": 0,
                         "greedy": False}

    def set(self, **settings) -> str:
        """Change any of temperature, top_k (0 = off), top_p, repetition_penalty, seed, greedy, prompt;
        returns the new continuation."""
        if "prompt" in settings:
            self.prompt = settings.pop("prompt")
        unknown = set(settings) - set(self.settings)
        if unknown:
            raise ValueError(f"unknown generation settings {sorted(unknown)}; choose from {sorted(self.settings)}")
        self.settings.update(settings)
        return self.generate()

    def generate(self) -> str:
        """The prompt's continuation under the current settings (the same seed gives the same text)."""
        s = self.settings
        ids = torch.tensor([self.tokenizer(self.prompt)["input_ids"][:-1]])  # drop [SEP]: the text goes on
        gen = torch.Generator().manual_seed(int(s["seed"]))
        out = generate(self.model, ids.to(self.model.device), max_new_tokens=self.max_new_tokens,
                       do_sample=not s["greedy"], temperature=float(s["temperature"]),
                       top_k=int(s["top_k"]) or None, top_p=float(s["top_p"]) if s["top_p"] < 1 else None,
                       repetition_penalty=float(s["repetition_penalty"]), generator=gen,
                       eos_token_id=self.tokenizer.sep_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:].cpu(), skip_special_tokens=True)

    def picture(self):
        s = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return HTML(f"<p><b>{html.escape(self.prompt)}</b> {html.escape(self.generate())}</p>"
                    f"<p style='color:#777'>{html.escape(s)}</p>")

    def controls(self):
        s = self.settings
        sliders = {
            "temperature": widgets.FloatSlider(value=s["temperature"], min=0.1, max=2.0, step=0.05),
            "top_k": widgets.IntSlider(value=s["top_k"], min=0, max=100),
            "top_p": widgets.FloatSlider(value=s["top_p"], min=0.05, max=1.0, step=0.05),
            "repetition_penalty": widgets.FloatSlider(value=s["repetition_penalty"], min=1.0, max=2.0, step=0.05),
            "seed": widgets.IntText(value=s["seed"]),
            "greedy": widgets.Checkbox(value=s["greedy"]),
        }
        prompt = widgets.Text(value=self.prompt, description="prompt", continuous_update=False)

        def changed(_=None):
            self.prompt = prompt.value
            self.settings.update({k: w.value for k, w in sliders.items()})
            self.refresh()

        self.inputs = {**sliders, "prompt": prompt}
        for name, w in self.inputs.items():
            w.description = name
            w.observe(changed, names="value")
        return widgets.VBox([prompt, *sliders.values()])


def explore_generation(model: nn.Module, tokenizer, prompt: str, *, max_new_tokens: int = 20) -> GenerationExplorer:
    """Sampling sliders (temperature, top-k, top-p, repetition penalty, seed) regenerating live."""
    return GenerationExplorer(model, tokenizer, prompt, max_new_tokens=max_new_tokens)


# ---------------------------------------------------------------------------------------------------
# Plots


def _axes(ax, figsize=(5, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_attention(tokens: Sequence[str], attention: Any, *, tokens_keys: Sequence[str] | None = None, ax=None,
                   title: str | None = None, cmap: str = "Blues"):
    """One head's (T, T) map as a heat map, queries down the side, keys along the top."""
    a = _to_numpy(attention, "attention")
    keys = list(tokens_keys) if tokens_keys is not None else list(tokens)
    if a.ndim != 2 or a.shape != (len(tokens), len(keys)):
        raise ValueError(f"attention must be one head's (queries, keys) = {(len(tokens), len(keys))} map; "
                         f"got {a.shape}")
    ax = _axes(ax, (0.35 * len(keys) + 1.5, 0.35 * len(tokens) + 1))
    ax.imshow(a, cmap=cmap, vmin=0, vmax=max(float(a.max()), 1e-6))
    ax.set_xticks(range(len(keys)), keys, rotation=90)
    ax.set_yticks(range(len(tokens)), tokens)
    ax.set(xlabel="key", ylabel="query", title=title)
    return ax


def plot_head_grid(attentions: Any, tokens: Sequence | None = None, *, row: int = 0, attention_mask: Any = None,
                   heads: Sequence[Sequence[int]] | None = None, size: float = 1.2):
    """Every (layer, head) map as a small heat map; pruned heads are blank cells. Returns the Figure."""
    layers = attention_layers(attentions)
    T = layers[0].shape[-1]
    toks = tokens if tokens is not None else [str(i) for i in range(T)]
    _, _, maps = select_row(toks, layers, row=row, attention_mask=attention_mask)
    heads = _check_heads(heads, maps)
    H = max(max(h) for h in heads if h) + 1
    fig, axes = plt.subplots(len(maps), H, figsize=(size * H, size * len(maps)), squeeze=False)
    for layer, (hs, m) in enumerate(zip(heads, maps, strict=True)):
        for h in range(H):
            ax = axes[layer, h]
            ax.set_xticks([])
            ax.set_yticks([])
            if h in hs:
                ax.imshow(m[hs.index(h)], cmap="Blues", vmin=0, vmax=1)
            else:
                ax.text(0.5, 0.5, "pruned", ha="center", va="center", fontsize=7, color="grey",
                        transform=ax.transAxes)
            if layer == 0:
                ax.set_title(f"head {h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_head_importance(scores: torch.Tensor | HeadImportance, *, ax=None, title: str = "head importance",
                         cmap: str = "viridis", annotate: bool = True):
    """(L, nh) scores as a heat map; NaN (masked or pruned) heads in grey."""
    s = _to_numpy(scores.importance if isinstance(scores, HeadImportance) else scores, "scores")
    if s.ndim != 2:
        raise ValueError(f"scores must be a (layers, heads) table; got shape {s.shape}")
    L, H = s.shape
    ax = _axes(ax, (0.5 * H + 2, 0.45 * L + 1.2))
    colours = plt.get_cmap(cmap).with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(s), cmap=colours)
    ax.figure.colorbar(im, ax=ax, shrink=0.8)
    if annotate:
        for (i, j), v in np.ndenumerate(s):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set(xlabel="head", ylabel="layer", title=title)
    return ax


def _curve_points(curve: PruningRun | Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    if isinstance(curve, PruningRun):
        total = curve.steps[0].heads_left
        return [(1 - s.heads_left / total, s.metric) for s in curve.steps]
    points = [(float(x), float(y)) for x, y in curve]
    if not points:
        raise ValueError("curve is empty: give a PruningRun or a list of (share of heads removed, metric)")
    return points


def random_pruning_curves(model: nn.Module, metric: Callable[[nn.Module], float], shares: Sequence[float], *,
                          draws: int = 5, seed: int = 0) -> list[list[tuple[float, float]]]:
    """For each draw, the metric with a random `share` of the heads masked (hook ablation), for every share.

    Never masks the last live head of a layer, as iterative pruning does not either.
    """
    live = keep_mask(model)
    curves = []
    for draw in range(draws):
        rng = random.Random(seed + draw)
        order = rng.sample(live.nonzero().tolist(), k=int(live.sum()))  # one random removal order per draw
        curve = []
        for share in shares:
            mask, n = live.clone(), round(float(share) * int(live.sum()))
            for layer, head in order:
                if int(live.sum() - mask.sum()) >= n:
                    break
                if mask[layer].sum() > 1:
                    mask[layer, head] = 0.0
            with ablate_heads(model, mask), torch.no_grad():
                curve.append((1 - float(mask.sum() / live.sum()), float(metric(model))))
        curves.append(curve)
    return curves


def plot_pruning_curve(curve: PruningRun | Sequence[tuple[float, float]], *,
                       random_curves: Sequence[Sequence[tuple[float, float]]] | None = None, ax=None,
                       label: str = "by importance"):
    """Metric against the share of heads removed; random pruning as a min-max band with its mean.

    For a PruningRun the stopping threshold is a dotted line and the rejected step a red cross.
    """
    ax = _axes(ax)
    x, y = zip(*_curve_points(curve), strict=True)
    ax.plot(x, y, "o-", label=label)
    if isinstance(curve, PruningRun):
        ax.axhline(curve.threshold * curve.base_metric, color="black", linestyle=":", linewidth=1,
                   label=f"threshold ({curve.threshold:.0%} of the start)")
        if curve.rejected is not None:
            total = curve.steps[0].heads_left
            ax.plot([1 - curve.rejected.heads_left / total], [curve.rejected.metric], "x", color="red",
                    markersize=9, label="rejected step")
    if random_curves:
        pts = np.array([[p for p in c] for c in random_curves], dtype=float)  # (draws, shares, 2)
        xs = pts[..., 0].mean(0)
        ax.fill_between(xs, pts[..., 1].min(0), pts[..., 1].max(0), alpha=0.25, color="grey",
                        label=f"random ({len(random_curves)} draws)")
        ax.plot(xs, pts[..., 1].mean(0), "--", color="grey")
    ax.set(xlabel="share of heads removed", ylabel="metric")
    ax.legend()
    return ax


def _labelled(obj, kind) -> dict:
    if isinstance(obj, kind):
        return {"": obj}
    if isinstance(obj, Mapping) and all(isinstance(v, kind) for v in obj.values()):
        return dict(obj)
    raise TypeError(f"expected a {kind.__name__} or a dict of them, got {type(obj).__name__}")


def plot_residual_norms(profiles: Profile | Mapping[str, Profile], *, ax=None, per_position: bool = False):
    """Residual-stream norm after the embeddings and each layer (analysis.residual_norms); several to compare."""
    ax = _axes(ax, (6, 4))
    for name, p in _labelled(profiles, Profile).items():
        if per_position:
            for i, (label, row) in enumerate(zip(p.labels, p.by_position, strict=True)):
                ax.plot(row.numpy(), color=plt.get_cmap("viridis")(i / max(1, len(p.labels) - 1)),
                        label=f"{name} {label}".strip())
        else:
            ax.plot(range(len(p.labels)), p.mean.numpy(), "o-", label=name or None)
            ax.set_xticks(range(len(p.labels)), p.labels, rotation=45, ha="right")
    ax.set(xlabel="position" if per_position else "", ylabel="residual norm (mean over real tokens)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return ax


LAYERNORM_FIELDS = ("input_std", "input_norm", "weight_mean", "weight_abs_max", "bias_norm")


def plot_layernorm_scales(stats: LayerNormStats | Mapping[str, LayerNormStats], *, ax=None,
                          field: str = "input_std"):
    """One LayerNorm statistic (analysis.layernorm_stats) at every LayerNorm in forward order."""
    if field not in LAYERNORM_FIELDS:
        raise ValueError(f"field must be one of {LAYERNORM_FIELDS}, got {field!r}")
    ax = _axes(ax, (7, 4))
    for name, s in _labelled(stats, LayerNormStats).items():
        v = getattr(s, field)
        v = v.mean if isinstance(v, Profile) else v
        ax.plot(range(len(s.labels)), v.numpy(), "o-", label=name or None)
        ax.set_xticks(range(len(s.labels)), s.labels, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel=field.replace("_", " "), yscale="log" if field == "input_std" else "linear",
           title="what each LayerNorm divides by" if field == "input_std" else None)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return ax


def _history(obj) -> list[dict]:
    history = getattr(obj, "history", obj)
    if not isinstance(history, Sequence) or not all(isinstance(e, Mapping) and "step" in e for e in history):
        raise TypeError("history must be a TrainResult or its .history list of {'step', ...} entries")
    return list(history)


def plot_training_curves(history, *, metrics: Sequence[str] | None = None, axes=None):
    """Training loss (and learning rate) against step, plus one panel per evaluation metric. Returns the Figure.

    history: a TrainResult, its .history list, or {label: either} to compare runs.
    """
    runs = {k: _history(v) for k, v in history.items()} if isinstance(history, Mapping) else {"": _history(history)}
    found = sorted({m for h in runs.values() for e in h for m in e.get("eval", {})})
    metrics = list(metrics) if metrics is not None else found
    missing = set(metrics) - set(found)
    if missing:
        raise ValueError(f"metrics {sorted(missing)} are not in the history; it has {found}")
    if axes is None:
        _, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.5 * (1 + len(metrics)), 3.5), squeeze=False)
        axes = axes[0]
    lr_ax = axes[0].twinx()  # the schedule beside the loss: warm-up and decay explain its shape
    for name, h in runs.items():
        train_log = [e for e in h if "loss" in e]
        steps = [e["step"] for e in train_log]
        axes[0].plot(steps, [e["loss"] for e in train_log], label=name or "train loss")
        if any("lr" in e for e in train_log):
            lr_ax.plot(steps, [e.get("lr", float("nan")) for e in train_log], ":", color="grey", linewidth=1)
        for ax, m in zip(axes[1:], metrics, strict=False):
            evals = [e for e in h if m in e.get("eval", {})]
            ax.plot([e["step"] for e in evals], [e["eval"][m] for e in evals], "o-", label=name or None)
            ax.set(xlabel="step", title=m)
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    lr_ax.set_ylabel("learning rate (dotted)", color="grey")
    axes[0].legend()
    axes[0].figure.tight_layout()
    return axes[0].figure
