# ruff: noqa: E402  (notebook cells import where the narrative needs them)
# %% [markdown]
# # 01 · Anatomy of Megatron-BERT
#
# ## Learning objectives
#
# - Name every block of Megatron-BERT (embeddings, self-attention, attention block, MLP, layer, encoder,
#   pooler, task heads) and the shape of the tensor each one returns.
# - Compute one attention head by hand and reproduce the library's numbers exactly.
# - Say where pre-LN (Megatron) and post-LN (BERT) put the LayerNorm, and see it in the state dict.
# - Count where the parameters of the 345M model are.
# - Read and change activations through hook points (`run_with_cache`, `run_with_hooks`).
#
# **Prerequisites:** PyTorch tensors and `nn.Module`; matrix multiplication and softmax; what a transformer
# layer is in outline.
#
# **Time:** {{RUNTIME}}; about 60 minutes in class with the exercises.

# %% [markdown]
# Megatron-BERT is BERT with one change: the LayerNorm moved from *after* each residual add to the
# *input* of each sub-layer (plus one final LayerNorm). Shoeybi et al. (2019, *Megatron-LM*) report that
# BERT-large (336M parameters) trains fine in the original post-LN order, but their 752M post-LN BERT got
# *worse*; with the LayerNorm moved, their 1.3B and 3.9B BERTs trained stably and did better. In this
# notebook we build the model one block at a time, run every block on a
# toy tensor the moment it exists, and look at the shapes that come out (the d2l.ai way), then check
# that the blocks, put together by hand, give exactly what `MegatronBertModel` gives.
#
# Shape vocabulary used everywhere in `megabert_edu`: **B** batch, **T** tokens, **nh** heads,
# **hs** head size, **H** hidden size (= nh · hs), **I** intermediate (MLP) size, **V** vocabulary.

# %% [markdown]
# ## Parameters
#
# The one cell to edit. `SCALE = "toy"` builds a model small enough to print; `"megatron-345m"` builds
# the real NVIDIA size (24 layers, H = 1024, 16 heads, 335M parameters) so you can see the true shapes
# and parameter counts (about a minute and 4 GB of RAM on a CPU; everything here is a forward pass on a
# few tokens, so a GPU buys nothing in this notebook). nbval compares the marked outputs of the default.

# %%
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: on a shared CPU, busy-waiting threads are slow
import torch

SCALE = "toy"  # or "megatron-345m"
SEED = 0

# %%
# %matplotlib inline
import inspect
import math

import matplotlib.pyplot as plt
import torch.nn.functional as F

from megabert_edu import (
    MegatronBertConfig,
    MegatronBertForCausalLM,
    MegatronBertForMaskedLM,
    MegatronBertForMultipleChoice,
    MegatronBertForNextSentencePrediction,
    MegatronBertForPreTraining,
    MegatronBertForQuestionAnswering,
    MegatronBertForSequenceClassification,
    MegatronBertForTokenClassification,
    MegatronBertModel,
)
from megabert_edu.modeling import (
    MegatronBertAttention,
    MegatronBertEmbeddings,
    MegatronBertEncoder,
    MegatronBertLayer,
    MegatronBertPooler,
    MegatronBertSelfAttention,
)
from megabert_edu.models import additive_attention_mask

torch.manual_seed(SEED)
torch.set_num_threads(2)
torch.set_grad_enabled(False)  # we only look at forward passes here
plt.rcParams["figure.dpi"] = 80

SIZES = {
    "toy": dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=256, max_position_embeddings=32),
    "megatron-345m": dict(vocab_size=29056, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                          intermediate_size=4096, max_position_embeddings=512),
}
cfg = MegatronBertConfig(**SIZES[SCALE])
B, T, H, nh, hs, I = 2, 6, cfg.hidden_size, cfg.num_attention_heads, cfg.head_size, cfg.intermediate_size
print(f"{SCALE}: H={H}, nh={nh}, hs={hs}, I={I}, layers={cfg.num_hidden_layers}, "
      f"layer_norm_position={cfg.layer_norm_position!r}")

# %% [markdown]
# ## The config
#
# `MegatronBertConfig` has every field of HuggingFace's `MegatronBertConfig`, with the same defaults
# (so a `config.json` from the Hub reads unchanged), plus one of our own: `layer_norm_position`,
# `"pre"` for Megatron and `"post"` for the original BERT. The defaults are the 345M model.

# %%
# NBVAL_CHECK_OUTPUT
default = MegatronBertConfig()
print({k: getattr(default, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "intermediate_size", "max_position_embeddings", "layer_norm_position")})
print("head size:", default.head_size)

# %% [markdown]
# ## 1. Embeddings
#
# A token becomes a vector by adding three learned vectors: one for the word, one for its position,
# one for its segment (sentence A or B). Original BERT then applies a LayerNorm; Megatron does not,
# because every layer normalises its own input. The raw sum *is* the start of the residual stream.

# %%
emb = MegatronBertEmbeddings(cfg).eval()
input_ids = torch.randint(1, cfg.vocab_size, (B, T))
token_type_ids = torch.tensor([[0, 0, 0, 1, 1, 1]] * B)
position_ids = torch.arange(T).unsqueeze(0)  # (1, T), broadcast over the batch
x = emb(input_ids, token_type_ids, position_ids)
by_hand = (emb.word_embeddings(input_ids) + emb.token_type_embeddings(token_type_ids)
           + emb.position_embeddings(position_ids))

# %%
# NBVAL_CHECK_OUTPUT
print("input_ids", tuple(input_ids.shape), "-> embeddings", tuple(x.shape))
print("word + position + segment, no LayerNorm:", torch.equal(x, by_hand))
print("LayerNorm in the embeddings:", emb.LayerNorm)

# %% [markdown]
# ## 2. Self-attention
#
# Each head projects every token to a query, a key and a value of size hs, scores every query against
# every key, turns each row of scores into weights with a softmax, and averages the values with those
# weights:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{h_s}}\right)V$$
#
# One head, with the shapes this notebook uses (the code below the picture only draws it):

# %%
def box(ax, xy, text, color="#dde8f5"):
    return ax.text(*xy, text, ha="center", va="center", fontsize=8.5,
                   bbox=dict(boxstyle="round,pad=0.4", fc=color, ec="0.4"))


def arrow(ax, a, b, **style):
    """An arrow from box a to box b, clipped at the boxes' edges."""
    ax.annotate("", xy=(0.5, 0.5), xycoords=b, xytext=(0.5, 0.5), textcoords=a,
                arrowprops={"arrowstyle": "->", "color": "0.35", "patchA": a.get_bbox_patch(),
                            "patchB": b.get_bbox_patch(), **style})


shape = {"x": (B, T, H), "q": (B, nh, T, hs), "map": (B, nh, T, T), "out": (B, T, H)}
nodes = {"x": ((0.6, 2.0), f"x\n(B, T, H)\n{shape['x']}"),
         "q": ((2.7, 3.4), "q = x W_Q, split heads\n(B, nh, T, hs)"),
         "k": ((2.7, 2.0), "k = x W_K, split heads\n(B, nh, T, hs)"),
         "v": ((2.7, 0.6), "v = x W_V, split heads\n(B, nh, T, hs)"),
         "scores": ((5.2, 2.7), f"scores = q kᵀ / √hs\n+ additive mask\n(B, nh, T, T)\n{shape['map']}"),
         "probs": ((7.5, 2.7), "probs = softmax\nover the keys\n(B, nh, T, T)"),
         "z": ((7.5, 0.6), f"z = probs v\n(B, nh, T, hs)\n{shape['q']}"),
         "out": ((9.7, 0.6), f"merge heads, W_O\n(B, T, H)\n{shape['out']}")}
fig, ax = plt.subplots(figsize=(11, 3.6))
ax.set_xlim(-0.3, 10.8), ax.set_ylim(-0.2, 4.1), ax.axis("off")
drawn = {name: box(ax, xy, text, color="#fde9c9" if name in ("scores", "probs") else "#dde8f5")
         for name, (xy, text) in nodes.items()}
for a, b in [("x", "q"), ("x", "k"), ("x", "v"), ("q", "scores"), ("k", "scores"), ("scores", "probs"),
             ("probs", "z"), ("v", "z"), ("z", "out")]:
    arrow(ax, drawn[a], drawn[b])
ax.set_title("self-attention: every head at once (nh heads of size hs, H = nh · hs); "
             "the orange maps are what hook_scores / hook_probs show", fontsize=9)
plt.show()

# %% [markdown]
# `MegatronBertSelfAttention` returns the per-head outputs concatenated back to (B, T, H), the
# attention map (only if asked for) and the keys/values (the KV cache of a decoder). (The output
# projection W_O lives one level up, in the attention block of section 3.)

# %%
attn = MegatronBertSelfAttention(cfg).eval()
z, probs, (k, v) = attn(x, output_attentions=True)

# %%
# NBVAL_CHECK_OUTPUT
print("x     ", tuple(x.shape), "  (B, T, H)")
print("z     ", tuple(z.shape), "  (B, T, H): nh heads of size hs, side by side")
print("probs ", tuple(probs.shape), "(B, nh, T, T): one T x T map per head")
print("k, v  ", tuple(k.shape), "(B, nh, T, hs)")
print("every row of every map sums to 1:", torch.allclose(probs.sum(-1), torch.ones(B, nh, T)))

# %% [markdown]
# The same computation written out by hand, with the module's own weights. `split_heads` is the one
# reshape that matters: (B, T, H) -> (B, T, nh, hs) -> (B, nh, T, hs), so that the heads become a batch
# dimension and one matrix multiply serves all of them.

# %%
def split_heads(t):
    return t.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)


q_, k_, v_ = split_heads(attn.query(x)), split_heads(attn.key(x)), split_heads(attn.value(x))
scores = q_ @ k_.transpose(-1, -2) / math.sqrt(hs)  # (B, nh, T, T)
p_ = scores.softmax(dim=-1)
z_ = (p_ @ v_).transpose(1, 2).reshape(B, T, H)  # (B, nh, T, hs) -> (B, T, nh*hs)

# %%
# NBVAL_CHECK_OUTPUT
print("by hand == module:", torch.allclose(z_, z, atol=1e-6), torch.allclose(p_, probs, atol=1e-6))

# %% [markdown]
# **Two paths, same numbers.** When nobody needs the attention map, the module calls PyTorch's fused
# `scaled_dot_product_attention` (FlashAttention-style kernels on a GPU) and never materialises the
# T x T maps. Asking for the maps (`output_attentions=True`, a `head_mask`, or a hook on `hook_probs`)
# switches that call to the explicit path you just wrote by hand.

# %%
# NBVAL_CHECK_OUTPUT
z_fast, probs_fast, _ = attn(x)
print("fast path returns no map:", probs_fast is None, "| same output:", torch.allclose(z_fast, z, atol=1e-6))

# %% [markdown]
# **Why divide by √hs?** If q and k have unit-variance entries, q·k is a sum of hs such products, so its
# standard deviation is √hs. Large scores push the softmax towards one-hot rows, whose gradient is almost
# zero. Dividing by √hs keeps the scores at unit scale whatever the head size.

# %%
for d in (16, 64, 256):
    qq, kk = torch.randn(1000, d), torch.randn(1000, 12, d)
    raw = torch.einsum("nd,ntd->nt", qq, kk)
    print(f"hs={d:3d}: std(q.k) = {raw.std():5.1f} (sqrt(hs) = {math.sqrt(d):4.1f}); mean largest weight "
          f"{raw.softmax(-1).max(-1).values.mean():.2f} unscaled vs "
          f"{(raw / math.sqrt(d)).softmax(-1).max(-1).values.mean():.2f} scaled")

# %% [markdown]
# **Padding.** A batch of sentences of different lengths is padded to the same T; the padding must not
# be attended to. The model turns the 1/0 `attention_mask` into an *additive* mask: 0 where a key may be
# seen, the most negative float where it may not, so its softmax weight becomes exactly 0.

# %%
attention_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # sentence 0 has 2 padding tokens
mask = additive_attention_mask(attention_mask, B, T, T, causal=False, dtype=torch.float32, device="cpu")
_, probs_masked, _ = attn(x, mask=mask, output_attentions=True)

# %%
# NBVAL_CHECK_OUTPUT
print("additive mask", tuple(mask.shape), "(B, 1, 1, T), broadcast over heads and queries")
print("weight on the padding keys of sentence 0:", probs_masked[0, :, :, 4:].abs().max().item())

# %% [markdown]
# ## 3. The attention block: where Megatron moved the LayerNorm
#
# Around the attention sits the output projection and the residual connection. This is the whole
# difference between Megatron-BERT and BERT, in two lines:
#
#     pre-LN  (Megatron):  x = x + sublayer(LN(x))
#     post-LN (BERT):      x = LN(x + sublayer(x))
#
# In pre-LN the residual stream x is never normalised: each sub-layer reads a normalised *copy* and adds
# its result back. The gradient flows along the un-normalised sum unchanged, which is why pre-LN trains
# deep stacks without warm-up tricks (notebook 04 measures this). The two blocks side by side (one layer;
# the ⊕ are the residual adds):

# %%
def column(ax, x, labels, residuals, title):
    """One layer drawn bottom-up; residuals are (from, to) rows joined by the skip path on the right."""
    drawn = [box(ax, (x, y), label,
                 color="#fde9c9" if "LayerNorm" in label else "white" if label == "⊕" else "#dde8f5")
             for y, label in enumerate(labels)]
    for a, b in zip(drawn[:-1], drawn[1:], strict=True):
        arrow(ax, a, b)
    side = x + 0.85  # the skip path runs up the right-hand side
    for a, b in residuals:
        ax.plot([x, side, side], [a, a, b], color="C3", zorder=1)
        ax.annotate("", xy=(0.5, 0.5), xycoords=drawn[b], xytext=(side, b), textcoords="data",
                    arrowprops={"arrowstyle": "->", "color": "C3", "patchB": drawn[b].get_bbox_patch()})
    ax.text(x, len(labels) - 0.2, title, ha="center", fontsize=10, weight="bold")


fig, ax = plt.subplots(figsize=(8, 5.2))
ax.set_xlim(-1.0, 3.9), ax.set_ylim(-1.0, 8.3), ax.axis("off")
column(ax, 0, ["x (residual stream)", "self-attention", "⊕", "LayerNorm", "MLP", "⊕", "LayerNorm", "next layer"],
       [(0, 2), (3, 5)], "post-LN (BERT)\nx = LN(x + sublayer(x))")
column(ax, 2.6, ["x (residual stream)", "LayerNorm", "self-attention", "⊕", "LayerNorm", "MLP", "⊕", "next layer"],
       [(0, 3), (3, 6)], "pre-LN (Megatron)\nx = x + sublayer(LN(x))")
ax.text(2.6, -0.75, "after the last layer: one final LayerNorm (encoder.ln)", ha="center", fontsize=8.5)
plt.show()

# %% [markdown]
# In post-LN the red skip path runs *into* a LayerNorm, so the stream is renormalised after every
# sub-layer; in pre-LN it bypasses every LayerNorm, from the embeddings to the final one. Here is the
# library's code; both layouts live in the same `forward`:

# %%
print(inspect.getsource(MegatronBertAttention.forward))

# %%
block = MegatronBertAttention(cfg).eval()
out, _, _ = block(x)
by_hand = x + block.output(block.self(block.ln(x))[0])

# %%
# NBVAL_CHECK_OUTPUT
print("block", tuple(x.shape), "->", tuple(out.shape), "| x + attn(LN(x)):",
      torch.allclose(out, by_hand, atol=1e-6))

# %% [markdown]
# ## 4. The MLP (feed-forward) block
#
# Two linear maps with a GELU between, applied to every token independently: H -> I -> H, with I = 4H.
# Most of a transformer's parameters live here.

# %%
mlp_parts = MegatronBertLayer(cfg).eval()  # a layer's MLP half: intermediate (H -> I) and output (I -> H)
intermediate, output = mlp_parts.intermediate, mlp_parts.output
h = intermediate(x)
y = output(h)

# %%
# NBVAL_CHECK_OUTPUT
print("x", tuple(x.shape), "-> intermediate", tuple(h.shape), "-> output", tuple(y.shape))
print("activation:", cfg.hidden_act, "| exact erf GELU:", torch.allclose(h, F.gelu(intermediate.dense(x))))

# %% [markdown]
# ## 5. One layer = attention block + MLP block
#
# $$a = x + \mathrm{Attn}(\mathrm{LN}_1(x)), \qquad y = a + \mathrm{MLP}(\mathrm{LN}_2(a))$$

# %%
layer = MegatronBertLayer(cfg).eval()
y, layer_probs, _, _ = layer(x)
a = layer.attention(x)[0]
by_hand = a + layer.output(layer.intermediate(layer.ln(a)))

# %%
# NBVAL_CHECK_OUTPUT
print("layer", tuple(x.shape), "->", tuple(y.shape), "| a + MLP(LN(a)):", torch.allclose(y, by_hand, atol=1e-6))

# %% [markdown]
# ## 6. The encoder: L layers, then one final LayerNorm
#
# Because no layer normalises its *output* in pre-LN, the stream leaving the last layer is a raw sum;
# Megatron adds one LayerNorm at the very end (`encoder.ln`). `output_hidden_states=True` returns L + 1
# tensors, like HuggingFace's: the embeddings, the raw stream after layers 0 … L-2, and the final-LN
# output (so `hidden_states[-1] == last_hidden_state`).

# %%
encoder = MegatronBertEncoder(cfg).eval()
enc_out = encoder(x, output_hidden_states=True, output_attentions=True)

# %%
# NBVAL_CHECK_OUTPUT
print("keys:", [k for k, v in enc_out.items() if v is not None])
print("last_hidden_state", tuple(enc_out["last_hidden_state"].shape))
print("hidden_states:", len(enc_out["hidden_states"]), "tensors; attentions:", len(enc_out["attentions"]), "maps")
print("hidden_states[-1] is the final-LN output:",
      torch.equal(enc_out["hidden_states"][-1], enc_out["last_hidden_state"]))

# %% [markdown]
# ## 7. The pooler
#
# A sentence vector for next-sentence prediction and sequence classification:
# tanh(dense(h[CLS])), from the first token's final hidden state.

# %%
# NBVAL_CHECK_OUTPUT
pooler = MegatronBertPooler(cfg).eval()
pooled = pooler(enc_out["last_hidden_state"])
print("last_hidden_state", tuple(enc_out["last_hidden_state"].shape), "-> pooled", tuple(pooled.shape), "(B, H)")

# %% [markdown]
# ## 8. The whole model, and a check that we understood it
#
# `MegatronBertModel` = embeddings -> encoder -> pooler. We run its own sub-modules one after another by
# hand and compare with a single call of the model.

# %%
model = MegatronBertModel(cfg).eval()
full = model(input_ids, token_type_ids=token_type_ids)
h0 = model.embeddings(input_ids, token_type_ids, position_ids)
h_last = model.encoder(h0)["last_hidden_state"]

# %%
# NBVAL_CHECK_OUTPUT
print("model output fields:", full.keys())
print("embeddings -> encoder == model:", torch.equal(h_last, full.last_hidden_state))
print("pooler(encoder)     == model:", torch.equal(model.pooler(h_last), full.pooler_output))

# %% [markdown]
# Where the parameters are, in this model:

# %%
# NBVAL_CHECK_OUTPUT
def count(module):
    return sum(p.numel() for p in module.parameters())


first = model.encoder.layer[0]
rows = [("embeddings", count(model.embeddings)),
        ("  per layer: attention (LN, Q, K, V, out)", count(first.attention)),
        ("  per layer: MLP (LN, H->I, I->H)", count(first.ln) + count(first.intermediate) + count(first.output)),
        (f"encoder ({cfg.num_hidden_layers} layers + final LN)", count(model.encoder)),
        ("pooler", count(model.pooler)),
        ("total", model.num_parameters())]
for name, n in rows:
    print(f"{name:<42}{n:>13,}")

# %% [markdown]
# And at the real 345M shape (24 layers, H = 1024, I = 4096, vocabulary 29,056), whatever `SCALE` says. We
# build that model on PyTorch's `meta` device: every tensor has its shape but no storage, so counting its
# 335M parameters costs no memory and no time.

# %%
# NBVAL_CHECK_OUTPUT
with torch.device("meta"):
    big = MegatronBertForPreTraining(MegatronBertConfig())  # the defaults are the 345M model
total = big.num_parameters()  # the tied MLM decoder is the word-embedding matrix, counted once
big_layers = big.bert.encoder.layer
shares = {
    "MLPs": sum(count(lay.ln) + count(lay.intermediate) + count(lay.output) for lay in big_layers),
    "attention": sum(count(lay.attention) for lay in big_layers),
    "word embeddings": big.bert.embeddings.word_embeddings.weight.numel(),
}
shares["everything else"] = total - sum(shares.values())  # positions, segments, final LN, pooler, heads
print(f"total {total:,} parameters")
for name, n in shares.items():
    print(f"{name:<18}{n:>13,}  {n / total:6.1%}")

# %%
fig, ax = plt.subplots(figsize=(6, 2.2))
ax.barh(list(shares), [100 * n / total for n in shares.values()], color=["C0", "C1", "C2", "C7"])
ax.invert_yaxis()
ax.set_xlabel("% of the 345M model's parameters")
for i, n in enumerate(shares.values()):
    ax.text(100 * n / total + 0.5, i, f"{n / total:.0%}", va="center")
ax.set_xlim(0, 70)
plt.tight_layout()
plt.show()

# %% [markdown]
# The MLPs hold about 60% of the weights (two H x 4H matrices per layer), attention about 30% (four H x H
# matrices per layer), and the word embeddings about 9%. Per layer, the MLP has twice the attention's
# parameters: 8H² against 4H².

# %% [markdown]
# ## 9. Task heads
#
# Eight task models wrap the same `bert` body with a small head, and keep HuggingFace's class names and
# output field names so you can read both side by side. The masked-LM decoder *is* the word-embedding
# matrix (weight tying): the model scores a word by the dot product of the hidden state with that word's
# own input embedding.

# %%
heads_cfg = cfg.copy(num_labels=3)
C = 4  # choices, for multiple choice
examples = [
    (MegatronBertForPreTraining, dict(input_ids=input_ids)),
    (MegatronBertForMaskedLM, dict(input_ids=input_ids)),
    (MegatronBertForCausalLM, dict(input_ids=input_ids)),
    (MegatronBertForNextSentencePrediction, dict(input_ids=input_ids, token_type_ids=token_type_ids)),
    (MegatronBertForSequenceClassification, dict(input_ids=input_ids)),
    (MegatronBertForTokenClassification, dict(input_ids=input_ids)),
    (MegatronBertForQuestionAnswering, dict(input_ids=input_ids)),
    (MegatronBertForMultipleChoice, dict(input_ids=input_ids[:, None].expand(B, C, T))),  # (B, C, T)
]

# %%
# NBVAL_CHECK_OUTPUT
for cls, inputs in examples:
    options = dict(is_decoder=True) if cls is MegatronBertForCausalLM else {}
    if cls is MegatronBertForQuestionAnswering:
        options = dict(num_labels=2)  # a start and an end logit per token
    task_model = cls(heads_cfg.copy(**options)).eval()
    out = task_model(**inputs)
    fields = ", ".join(f"{k} {tuple(getattr(out, k).shape)}" for k in out.keys() if k != "past_key_values")
    print(f"{cls.__name__:<40}{tuple(inputs['input_ids'].shape)!s:<14}-> {fields}")
    if cls is MegatronBertForMaskedLM:
        tied = task_model.cls.predictions.decoder.weight is task_model.bert.embeddings.word_embeddings.weight
    del task_model  # one at a time: at the 345M size each is 1.3 GB
print("MLM decoder weight is the word-embedding matrix:", tied)

# %% [markdown]
# ## 10. Pre-LN vs post-LN in the state dict
#
# `layer_norm_position="post"` builds the original BERT in the same code, so Google's BERT checkpoints
# (and all-MiniLM-L6-v2, which notebooks 03–05 use) load too. The two layouts differ only in where the
# LayerNorms are, and so only in their names:

# %%
# NBVAL_CHECK_OUTPUT
post = MegatronBertModel(cfg.copy(layer_norm_position="post"))
pre_keys, post_keys = set(model.state_dict()), set(post.state_dict())
print("(layer 0 shown; every layer is the same)")
def first_layer_only(keys):
    return sorted(k for k in keys if ".layer." not in k or ".layer.0." in k)


print("only in pre-LN (Megatron):", *first_layer_only(pre_keys - post_keys), sep="\n  ")
print("only in post-LN (BERT):   ", *first_layer_only(post_keys - pre_keys), sep="\n  ")
print("shared:", len(pre_keys & post_keys), "tensors")

# %% [markdown]
# ## 11. Hook points: a name for every activation
#
# Every interesting activation passes through an identity module called `hook_*`. Its name is its
# module path, so the list of names is the model's structure. Hooks add nothing to the state dict and
# cost nothing when unused.

# %%
# NBVAL_CHECK_OUTPUT
names = model.hook_names()
print(len(names), "hook points; layer 0 has:")
for n in names:
    if n.startswith(("embeddings", "encoder.layer.0.", "encoder.hook")):
        print("  ", n)

# %% [markdown]
# `run_with_cache` runs the model once and keeps only the activations you name (a glob, a list, or a
# predicate), detached:

# %%
# NBVAL_CHECK_OUTPUT
_, cache = model.run_with_cache(input_ids, names=["*.hook_probs", "encoder.layer.0.attention.self.hook_z",
                                                  "encoder.layer.1.hook_resid_post"])
for name, t in cache.items():
    print(f"{name:<48}{tuple(t.shape)}")

# %% [markdown]
# `run_with_hooks` lets a function read *or replace* an activation. Zeroing one head's output at
# `hook_z` is exactly what HuggingFace's `head_mask` does (notebook 06 builds pruning on this). Hooks are
# removed when the call returns, even after an error, so nothing leaks into the next forward pass.

# %%
def zero_head_2(z, name):  # z: (B, nh, T, hs)
    z = z.clone()
    z[:, 2] = 0
    return z


hooked = model.run_with_hooks(input_ids, fwd_hooks=[("encoder.layer.1.attention.self.hook_z", zero_head_2)])
head_mask = torch.ones(cfg.num_hidden_layers, nh)
head_mask[1, 2] = 0
masked = model(input_ids, head_mask=head_mask)

# %%
# NBVAL_CHECK_OUTPUT
print("hook == head_mask:", torch.allclose(hooked.last_hidden_state, masked.last_hidden_state, atol=1e-4))
print("output changed:", not torch.allclose(hooked.last_hidden_state, full.last_hidden_state))
print("hooks left behind:", model.active_hooks())

# %% [markdown]
# ## 12. Mistakes get a clear error
#
# A wrong input fails at the door with a message naming the problem, not deep inside an `nn.Embedding`
# with an index error. On a GPU the raw failure is worse: an out-of-range index trips CUDA's
# *device-side assert*, which names no argument, may be reported at a later, unrelated line, and leaves
# the CUDA context unusable until the kernel restarts.

# %%
# NBVAL_CHECK_OUTPUT
for bad in (dict(input_ids=torch.tensor([[1, 2, cfg.vocab_size]])),
            dict(input_ids=torch.ones(1, cfg.max_position_embeddings + 1, dtype=torch.long)),
            dict(input_ids=input_ids, attention_mask=torch.ones(B, T + 1))):
    try:
        model(**bad)
    except (ValueError, TypeError) as e:
        print(type(e).__name__ + ":", e)

# %% [markdown]
# ## What's next
#
# * **02** loads real checkpoints: TensorFlow (without TensorFlow), HuggingFace and Megatron-LM.
# * **03** looks at the attention maps of a real pretrained model.
# * **04** measures what the LayerNorm move does to the residual stream.

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your code and a check cell below it: run both; the check passes when your
# answer is right and otherwise tells you what to look at.
#
# ### Exercise 1: a pre-LN layer with plain tensor operations
#
# Write `my_layer(x, layer)` that computes what `MegatronBertLayer` computes, using only the layer's weights
# and `F.layer_norm`, `F.linear`, `F.gelu`, `softmax`, `@`, `view`/`transpose` (no calls of the layer's
# sub-modules). `layer` is the section-5 layer; its sub-modules are `layer.attention.ln`,
# `layer.attention.self.{query,key,value}`, `layer.attention.output.dense`, `layer.ln`,
# `layer.intermediate.dense` and `layer.output.dense`. No mask: every token sees every token.

# %%
# EXERCISE
def my_layer(x, layer):
    """(B, T, H) -> (B, T, H): a = x + Attn(LN1(x)); y = a + MLP(LN2(a))."""
    # BEGIN SOLUTION: return None
    att, eps = layer.attention, cfg.layer_norm_eps

    def ln(t, norm):
        return F.layer_norm(t, (H,), norm.weight, norm.bias, eps)

    def heads(t):
        return t.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)

    h = ln(x, att.ln)
    q, k, v = (heads(F.linear(h, m.weight, m.bias)) for m in (att.self.query, att.self.key, att.self.value))
    z = ((q @ k.transpose(-1, -2)) / math.sqrt(hs)).softmax(-1) @ v  # (B, nh, T, hs)
    a = x + F.linear(z.transpose(1, 2).reshape(B, T, H), att.output.dense.weight, att.output.dense.bias)
    m = F.gelu(F.linear(ln(a, layer.ln), layer.intermediate.dense.weight, layer.intermediate.dense.bias))
    return a + F.linear(m, layer.output.dense.weight, layer.output.dense.bias)
    # END SOLUTION


# %%
# CHECK
mine = my_layer(x, layer)
assert isinstance(mine, torch.Tensor), "my_layer should return a tensor of shape (B, T, H)"
assert mine.shape == (B, T, H), f"expected shape {(B, T, H)}, got {tuple(mine.shape)}: did you merge the heads back?"
assert torch.allclose(mine, layer(x)[0], atol=1e-5), (
    "shape is right but the numbers differ: check the LayerNorm inputs (pre-LN normalises a copy, the "
    "residual adds the raw x), the 1/sqrt(hs) scale, and that softmax runs over the last (key) dimension")
print("my_layer == MegatronBertLayer: passed")

# %% [markdown]
# ### Exercise 2: count the parameters with a formula
#
# Write `layer_params(H, I)`: the number of parameters of one pre-LN layer with hidden size H and MLP size I
# (every `nn.Linear` has a bias; every LayerNorm a weight and a bias). The check compares it with the
# counted layers of the toy model and of the meta-device 345M model above.

# %%
# EXERCISE
def layer_params(H, I):
    # BEGIN SOLUTION: return None
    attention = 2 * H + 4 * (H * H + H)  # LN + Q, K, V, output projection
    mlp = 2 * H + (H * I + I) + (I * H + H)  # LN + H->I + I->H
    return attention + mlp
    # END SOLUTION


# %%
# CHECK
for c, lay in ((cfg, model.encoder.layer[0]), (big.config, big.bert.encoder.layer[0])):
    got, want = layer_params(c.hidden_size, c.intermediate_size), count(lay)
    assert got == want, (f"H={c.hidden_size}, I={c.intermediate_size}: your formula gives {got}, the layer has "
                         f"{want}: did you count the biases and both LayerNorms (weight and bias each)?")
print(f"layer_params(1024, 4096) = {layer_params(1024, 4096):,}: passed")

# %% [markdown]
# ### Exercise 3: a causal mask by hand
#
# A decoder (notebook 07) must not look ahead. Using the section-2 tensors `q_` and `k_` (B, nh, T, hs),
# compute `causal_probs` (B, nh, T, T): the attention map in which each query sees only itself and the
# keys before it. Block the future by setting its scores to `-inf` (or the most negative float) before
# the softmax. The check compares with the module run with the library's causal mask.

# %%
# EXERCISE
# BEGIN SOLUTION: causal_probs = None
future = torch.ones(T, T, dtype=torch.bool).triu(1)  # (T, T): True above the diagonal
causal_scores = (q_ @ k_.transpose(-1, -2) / math.sqrt(hs)).masked_fill(future, float("-inf"))
causal_probs = causal_scores.softmax(-1)  # (B, nh, T, T)
# END SOLUTION

# %%
# CHECK
causal_mask = additive_attention_mask(None, B, T, T, causal=True, dtype=torch.float32, device="cpu")
_, expected, _ = attn(x, mask=causal_mask, output_attentions=True)
assert isinstance(causal_probs, torch.Tensor), "set causal_probs to a (B, nh, T, T) tensor"
assert causal_probs.shape == expected.shape, f"expected shape {tuple(expected.shape)}, got {tuple(causal_probs.shape)}"
assert not torch.triu(causal_probs, 1).any(), "some query still attends to a later key: mask above the diagonal"
assert torch.allclose(causal_probs, expected, atol=1e-6), (
    "the future is masked but the weights differ: mask the scores *before* the softmax and keep the 1/sqrt(hs)")
print("causal attention by hand == the module with the causal mask: passed")

