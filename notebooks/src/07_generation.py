# ruff: noqa: E402  (notebook cells import where the narrative needs them)
# %% [markdown]
# # 07 · Generation: fill-mask, MLM sampling, and causal decoding with a KV cache
#
# ## Learning objectives
#
# - Get text out of a masked LM (fill-mask, mask-predict, Gibbs sampling) and out of a causal LM.
# - Explain greedy decoding, temperature, top-k, top-p and a repetition penalty, and write a sampler.
# - Explain the KV cache, check that it changes nothing, and measure what it saves as the text grows.
# - Measure what makes decoding fast and what it costs: batching, the KV cache's memory (against its formula),
#   a static, fixed-shape or compiled decode step, and bf16 weights vs autocast.
# - Judge a small model's generations against held-out definitions.
#
# **Prerequisites:** notebook 01 (attention, the causal mask); softmax and sampling from a distribution.
#
# **Time:** {{RUNTIME}}; about an hour in class with the exercises.

# %% [markdown]
# BERT was trained to fill in blanks, not to write. This notebook uses **megabert-tiny**, a small pre-LN
# Megatron-BERT that ships with `megabert_edu` (4 layers, H = 256, 5.4M parameters, pre-trained by this
# library on the bundled WordNet corpus in about twenty minutes of CPU time; see
# `megabert_edu/assets/README.md`), in two forms:
#
# * the **masked LM** (MLM + NSP pre-training): `fill_mask`, and sampling whole spans by re-masking
#   (mask-predict, Gibbs sampling);
# * a **causal LM** copy (the same weights trained further left to right, `is_decoder=True`): `generate`,
#   greedy and sampled, and the **KV cache** that makes left-to-right decoding cheap.
#
# These are teaching models, pre-trained on a CPU: the model card (`megabert_edu/assets/README.md`) gives
# their held-out MLM accuracy and perplexity. Watching *how* they fail is part of the lesson.

# %% [markdown]
# ## Parameters
#
# On a GPU, nothing to edit: the benchmarks of section 5 (fast decoding) run the same code on the same
# trained model with bigger sizes (batches up to 64, texts up to the model's 128 positions), and the compiled
# decode step becomes a CUDA graph.

# %%
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: on a shared CPU, busy-waiting threads are slow
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":  # section 5's benchmarks: a short sweep on a CPU...
    BENCH = dict(lengths=(16, 48, 96),  # new tokens: ms/token with and without the cache
                 batch_sizes=(1, 4, 16),  # sequences decoded together: tokens/s (the last also sizes the KV cache)
                 new_tokens=32,  # per sequence, in the batch and precision timings
                 mode_tokens=64,  # in the decode-mode timings (batch 1)
                 precision_batches=(1, 4),  # bf16 weights vs autocast vs fp32
                 repeats=3,  # timed runs per point (the median), after one warm-up
                 compile=True)  # time generate(compile=True) too (its first call compiles)
else:  # ...and the full one on a GPU
    BENCH = dict(lengths=(16, 32, 64, 96, 124), batch_sizes=(1, 2, 4, 8, 16, 32, 64), new_tokens=64,
                 mode_tokens=124, precision_batches=(1, 64), repeats=3, compile=True)
SEED = 0

# %%
# %matplotlib inline
import contextlib
import copy
import statistics
import time

import matplotlib.pyplot as plt
from IPython.display import display

from megabert_edu import MegatronBertConfig, MegatronBertForCausalLM, MegatronBertForMaskedLM, viz
from megabert_edu.assets import TINY, TINY_CAUSAL
from megabert_edu.generation import StaticCache, fill_mask, generate, sample_mlm
from megabert_edu.precision import choose_precision
from megabert_edu.tokenization import WordPieceTokenizer

torch.manual_seed(SEED)
torch.set_num_threads(2)
torch.set_grad_enabled(False)
plt.rcParams["figure.dpi"] = 80

tokenizer = WordPieceTokenizer.from_pretrained(TINY)
mlm = MegatronBertForMaskedLM.from_pretrained(TINY).to(DEVICE).eval()
lm = MegatronBertForCausalLM.from_pretrained(TINY_CAUSAL).to(DEVICE).eval()

# %% [markdown]
# The MLM checkpoint was saved from `MegatronBertForPreTraining`; loading it into `ForMaskedLM` leaves the
# pooler and the next-sentence head unused, and the `LoadReport` says so rather than dropping them silently.

# %%
c = mlm.config
print(f"megabert-tiny: {c.layer_norm_position}-LN, {c.num_hidden_layers} layers, H={c.hidden_size}, "
      f"{c.num_attention_heads} heads, vocabulary {c.vocab_size}, max {c.max_position_embeddings} positions")
print(mlm.load_report)
print("causal copy: is_decoder =", lm.config.is_decoder, "|", str(lm.load_report).splitlines()[0])

# %% [markdown]
# ## 1. Fill-mask
#
# The MLM head scores every vocabulary entry at every position; `fill_mask` shows the top guesses at each
# [MASK] with their softmax probabilities.

# %%
for text in ["a young [MASK] that is kept as a pet", "a large body of [MASK] water",
             "dog, domestic dog: a member of the genus [MASK]"]:
    guesses = fill_mask(mlm, tokenizer, text, top_k=5)[0]
    print(f"{text:<50}" + ", ".join(f"{g['token']} {g['score']:.3f}" for g in guesses))

# %% [markdown]
# Low confidence, and only partly sensible: function words where a determiner fits ("a", "the"), and
# elsewhere frequent WordNet *content* words ("person", "genus", "relating") rather than the right one.
# Small BERTs first sit on a *unigram plateau* (guessing the most frequent tokens everywhere); this model
# has just left it, and has learned only a little about which word fits here. Compare its guesses with raw
# token frequencies in the training text:

# %%
from collections import Counter

from megabert_edu.data import load_wordnet

corpus = [r["text"] for r in load_wordnet("corpus", "train", limit=2000)]
counts = Counter(t for ids in tokenizer(corpus)["input_ids"] for t in ids[1:-1])
total = sum(counts.values())
print("most frequent tokens:", ", ".join(f"{tokenizer.convert_ids_to_tokens(i)} {n / total:.3f}"
                                        for i, n in counts.most_common(6)))

# %% [markdown]
# ## 2. Writing with a masked LM
#
# A BERT can still produce text by filling blanks repeatedly (`sample_mlm`):
# * **mask-predict** (Ghazvininejad et al. 2019): predict every blank at once, re-mask the least confident
#   ones, predict again, re-masking fewer each time;
# * **Gibbs sampling** (Wang & Cho 2019, *BERT has a mouth and it must speak*): visit the blanks one by one,
#   mask one and resample it given all the others, sweep after sweep.
#
# A seeded `torch.Generator` makes the samples reproducible.

# %%
template = tokenizer("a [MASK] [MASK] [MASK] [MASK] [MASK] of water", return_tensors="pt")["input_ids"].to(DEVICE)
specials = tuple(tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
for method in ("mask_predict", "gibbs"):
    for temperature in (0.0, 0.8):
        g = torch.Generator(device=DEVICE).manual_seed(SEED)
        out = sample_mlm(mlm, template, tokenizer.mask_token_id, method=method, steps=8, temperature=temperature,
                         special_ids=specials, generator=g)
        print(f"{method:<13} temperature {temperature}: {tokenizer.decode(out[0], skip_special_tokens=True)!r}")

# %% [markdown]
# ## 3. Left to right: the causal LM
#
# `MegatronBertForCausalLM` is the same network with `is_decoder=True`: a causal mask stops each token from
# seeing the ones after it, so the logits at position t predict token t + 1. Its attention maps are lower
# triangular:

# %%
prompt = torch.tensor([tokenizer.encode("dog, domestic dog:")[:-1]], device=DEVICE)  # drop the final [SEP]
_, cache = lm.run_with_cache(prompt, names="*.layer.0.attention.self.hook_probs")
probs = cache["bert.encoder.layer.0.attention.self.hook_probs"][0]  # (nh, T, T)
print(tokenizer.convert_ids_to_tokens(prompt[0]), "-> attention maps", tuple(probs.shape))

# %%
# NBVAL_CHECK_OUTPUT
print("any attention weight above the diagonal (on a later token):", bool(torch.triu(probs, 1).any()))

# %% [markdown]
# The same maps in the interactive view (every line goes to the left: no token looks ahead):

# %%
viz.attention_view(tokenizer.convert_ids_to_tokens(prompt[0]), cache, layer=0, head="all")

# %% [markdown]
# **Greedy decoding** takes the most likely token at every step. Small models fall into loops quickly:

# %%
greedy = lm.generate(prompt, max_new_tokens=24, eos_token_id=tokenizer.sep_token_id)
print(tokenizer.decode(greedy[0]))

# %% [markdown]
# **Sampling** draws the next token from the softmax instead. Three knobs, applied in this order (the order
# HuggingFace's logits processors use, so the same seed gives the same tokens):
# * `repetition_penalty` (CTRL): make tokens already generated less likely;
# * `temperature`: < 1 sharpens the distribution, > 1 flattens it;
# * `top_k` keeps the k most likely tokens, `top_p` (nucleus) the fewest whose probabilities sum to p.

# %%
settings = [dict(do_sample=False, repetition_penalty=1.3),
            dict(do_sample=True, temperature=1.0),
            dict(do_sample=True, temperature=0.8, top_k=40),
            dict(do_sample=True, temperature=0.8, top_p=0.9)]
for kwargs in settings:
    g = torch.Generator(device=DEVICE).manual_seed(SEED)
    out = lm.generate(prompt, max_new_tokens=24, eos_token_id=tokenizer.sep_token_id, generator=g, **kwargs)
    print(f"{str(kwargs):<58} {tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)!r}")

# %% [markdown]
# How good is it? Ten *held-out* words (from the validation split, never seen in pre-training): the prompt
# is the word and a colon, as in the corpus; the model writes the definition. Greedy with a repetition
# penalty, and nucleus sampling, beside WordNet's own definition:

# %%
held_out = load_wordnet("corpus", "validation", limit=10)
for i, r in enumerate(held_out):
    head_words, definition = r["text"].split(":", 1)
    ids_ = torch.tensor([tokenizer.encode(head_words + ":")[:-1]], device=DEVICE)
    g = torch.Generator(device=DEVICE).manual_seed(SEED + i)  # a different draw for each word
    greedy_ = lm.generate(ids_, max_new_tokens=20, eos_token_id=tokenizer.sep_token_id, repetition_penalty=1.3)
    nucleus = lm.generate(ids_, max_new_tokens=20, eos_token_id=tokenizer.sep_token_id, do_sample=True,
                          temperature=0.8, top_p=0.9, generator=g)
    print(f"{head_words}:\n    WordNet: {definition.split(';')[0].strip()[:80]}")
    for name, out_ in (("greedy", greedy_), ("top-p", nucleus)):
        print(f"    {name:<8} {tokenizer.decode(out_[0, ids_.shape[1]:], skip_special_tokens=True)[:80]}")

# %% [markdown]
# Read them critically: they have the *form* of a WordNet definition ("a person who ...", "any of various
# ..."), but few say anything true about the word. A model of 5M parameters, pre-trained for well under an
# hour on a CPU, has learned the genre, not the meanings; the model card (`megabert_edu/assets/README.md`)
# gives its held-out MLM accuracy and perplexity against the targets it was trained for.
#
# An explorer for the sampling knobs (live with a running kernel; a static picture otherwise):

# %%
display(viz.explore_generation(lm, tokenizer, "dog, domestic dog:", max_new_tokens=20))

# %% [markdown]
# ## 4. The KV cache
#
# Decoding one token at a time by re-running the whole prefix costs O(T²) attention per step. But the keys
# and values of earlier tokens never change (a causal token cannot see later ones), so we can keep them:
# run the prompt once ("prefill"), keep every layer's K and V, and from then on feed only the newest token,
# which attends to the cached keys. That is `past_key_values`:

# %%
out = lm(prompt, use_cache=True)
past = out.past_key_values
print(len(past), "layers; each (k, v) of shape", tuple(past[0][0].shape), "(B, nh, T, hs)")
next_id = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
step = lm(next_id, past_key_values=past, use_cache=True)  # only the new token goes in
full = lm(torch.cat([prompt, next_id], dim=1))  # the whole prefix again, no cache
print("after one step:", tuple(step.past_key_values[0][0].shape))

# %%
# NBVAL_CHECK_OUTPUT
B, T = prompt.shape
nh, hs = lm.config.num_attention_heads, lm.config.head_size
print("one (k, v) pair per layer:", len(past) == lm.config.num_hidden_layers)
print("cache is (B, nh, T, hs), then T + 1:", tuple(past[0][0].shape) == (B, nh, T, hs),
      tuple(step.past_key_values[0][1].shape) == (B, nh, T + 1, hs))
print("cached step == full recompute:", torch.allclose(step.logits[:, -1], full.logits[:, -1], atol=1e-4))

# %% [markdown]
# `generate` is that loop. Written without a cache it is four lines, and gives the same tokens:


# %%
def greedy_without_cache(model, ids, new_tokens):
    for _ in range(new_tokens):
        logits = model(ids).logits[:, -1]  # re-runs the whole prefix every step
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


# %%
# NBVAL_CHECK_OUTPUT
print("same tokens with and without the cache:",
      torch.equal(greedy_without_cache(lm, prompt, 24), lm.generate(prompt, max_new_tokens=24)))

# %% [markdown]
# **Batches of prompts** of different lengths are padded on the *left*, so every row's next token lands in
# the same column; the attention mask hides the padding and positions are counted from each row's first
# real token. Each row comes out exactly as if it had been generated alone:

# %%
# NBVAL_CHECK_OUTPUT
prompts = ["to run:", "a musical instrument", "dog, domestic dog:"]
rows = [tokenizer.encode(p)[:-1] for p in prompts]
width = max(len(r) for r in rows)
ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows], device=DEVICE)
mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=DEVICE)
batched = generate(lm, ids, max_new_tokens=12, attention_mask=mask)
alone = [generate(lm, torch.tensor([r], device=DEVICE), max_new_tokens=12)[0, len(r):] for r in rows]
print("left-padded batch, each row as if generated alone:",
      all(torch.equal(batched[i, width:], alone[i]) for i in range(len(rows))))

# %%
for i in range(len(rows)):
    print(f"  {prompts[i]!r:<24} -> {tokenizer.decode(batched[i, width:])!r}")

# %% [markdown]
# ## 5. Fast decoding
#
# The tokens are right; now make them come quickly. Five measurements, all on the trained causal model `lm`
# and all with one code path: the Parameters cell sizes them for the device (a CPU runs a short sweep, a GPU
# batches up to 64 rows and texts up to the model's 128 positions). Each timing is the median of a few runs
# after a warm-up run; on a GPU the clock is read only after `torch.cuda.synchronize()`, because CUDA works
# asynchronously and would otherwise stop the clock before the GPU has finished. Timings vary from machine to
# machine and from run to run on a shared one: read the shapes of the curves, and the printed lines beneath
# each plot, which are written from this run's numbers.

# %%
def sync() -> None:
    """Wait for the GPU to finish its queued work (a no-op on the CPU)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, repeats: int = BENCH["repeats"], warm_up: bool = True) -> float:
    """Median wall time of fn() over `repeats` runs, after one untimed warm-up run (unless warm_up=False)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


torch.manual_seed(SEED)
start_ids = prompt[:, :4]  # "[CLS] dog , domestic": 4 prompt tokens leave room for 124 new ones in 128 positions
print(f"{DEVICE}: {lm.num_parameters() / 1e6:.2f}M parameters, {next(lm.parameters()).dtype}; BENCH = {BENCH}")

# %% [markdown]
# ### 5.1 What the cache saves, as the text grows
#
# Time per generated token, with the KV cache (`generate`) and without it (`greedy_without_cache` above,
# which re-runs the whole prefix at every step), for several lengths of generated text.

# %%
ms_per_token = {"with the KV cache": [], "without (re-run the prefix)": []}
for i, n in enumerate(BENCH["lengths"]):  # one warm-up run each, before the first length
    cached = median_seconds(lambda n=n: generate(lm, start_ids, max_new_tokens=n), warm_up=i == 0)
    uncached = median_seconds(lambda n=n: greedy_without_cache(lm, start_ids, n), warm_up=i == 0)
    ms_per_token["with the KV cache"].append(1e3 * cached / n)
    ms_per_token["without (re-run the prefix)"].append(1e3 * uncached / n)

fig, ax = plt.subplots(figsize=(6.5, 3.6))
for (label, values), marker in zip(ms_per_token.items(), "os", strict=True):
    ax.plot(BENCH["lengths"], values, marker=marker, label=label)
ax.set_xlabel("new tokens generated"), ax.set_ylabel("ms per token (mean over the run)")
ax.set_title(f"greedy decoding, megabert-tiny-causal on {DEVICE}")
ax.set_ylim(0, None), ax.legend()
plt.show()
cached, uncached = ms_per_token.values()
first, last = BENCH["lengths"][0], BENCH["lengths"][-1]
print(f"with the cache: {cached[0]:.2f} ms/token over {first} new tokens, {cached[-1]:.2f} over {last} "
      f"(x{cached[-1] / cached[0]:.2f}); without: {uncached[0]:.2f} -> {uncached[-1]:.2f} "
      f"(x{uncached[-1] / uncached[0]:.2f}). At {last} tokens the cache is {uncached[-1] / cached[-1]:.1f}x faster.")

# %% [markdown]
# With the cache every step feeds one token through the model (attending to the cached keys), so the time
# per token should stay nearly flat as the text grows; without it every step re-runs the whole prefix, so
# the time per token grows with the length (the attention part of it quadratically). How steep that growth
# looks depends on the machine: for a model this small, fixed costs per forward pass (Python, launching
# operations) are a large part of each step, and they do not grow with the prefix. The printed ratios say how
# it came out here.
#
# ### 5.2 Throughput: decode a batch at once
#
# A decoding step for one sequence is a string of small matrix-vector products: the hardware mostly waits for
# the weights to arrive and for Python to launch the next operation. Decoding B sequences together reads the
# same weights once per step for all B rows, so tokens per second can rise almost B-fold until the
# arithmetic, not the overhead, is the limit. Below, the same prompt in every row (the cost does not depend
# on which tokens they are), greedy, with the default cache.

# %%
new = BENCH["new_tokens"]
tokens_per_s, ms_per_step = [], []
for b in BENCH["batch_sizes"]:
    rows_b = start_ids.repeat(b, 1)  # (b, 4)
    seconds = median_seconds(lambda rows_b=rows_b: generate(lm, rows_b, max_new_tokens=new))
    tokens_per_s.append(b * new / seconds)
    ms_per_step.append(1e3 * seconds / new)

fig, ax = plt.subplots(figsize=(6.5, 3.6))
ax.plot(BENCH["batch_sizes"], tokens_per_s, marker="o")
ax.set_xscale("log", base=2), ax.set_xticks(BENCH["batch_sizes"], [str(b) for b in BENCH["batch_sizes"]])
ax.set_xlabel("batch size (sequences decoded together)"), ax.set_ylabel("new tokens per second")
ax.set_title(f"throughput, {new} new tokens per sequence, {DEVICE}"), ax.set_ylim(0, None)
plt.show()
for b, tps, ms in zip(BENCH["batch_sizes"], tokens_per_s, ms_per_step, strict=True):
    print(f"batch {b:>3}: {tps:8.0f} tokens/s, {ms:6.2f} ms per decoding step")
b_max = BENCH["batch_sizes"][-1]
print(f"batch {b_max} makes {tokens_per_s[-1] / tokens_per_s[0]:.1f}x the tokens/s of batch 1, while one step takes "
      f"{ms_per_step[-1] / ms_per_step[0]:.1f}x as long.")

# %% [markdown]
# As long as a step for B sequences takes much less than B times as long as a step for one, batching is
# nearly free throughput; where the curve flattens, the device has run out of idle arithmetic and each step
# takes proportionally longer. Where that happens depends on the device: a CPU has a few cores to keep busy,
# a GPU thousands of arithmetic units that a model this small leaves mostly idle at batch 1. The price of
# batching is latency: each sequence waits for the whole batch's step.
#
# ### 5.3 What the cache costs in memory
#
# The cache holds a key and a value vector of `hidden_size` numbers for every layer, every sequence and every
# position, so its size is
#
# $$\text{bytes} = 2 \times \text{layers} \times \text{batch} \times \text{length} \times \text{hidden} \times
# \text{bytes per element}.$$
#
# We measure it against that formula for a batch of `BENCH["batch_sizes"][-1]` sequences. **What is measured
# depends on the device.** On a GPU, PyTorch's allocator counts every byte it hands out:
# `torch.cuda.reset_peak_memory_stats()`, then `torch.cuda.max_memory_allocated()` minus what was allocated
# before, around building a `StaticCache` (the preallocated cache `generate(cache="static")` uses). A CPU has
# no such counter in PyTorch, so there we add up the bytes of the buffers `StaticCache` actually allocated
# (`tensor.nbytes`), which checks the layout but not the allocator. On a GPU the plot adds the peak of a whole
# `generate` call (above what was allocated before it) with the dynamic and the static cache.

# %%
cfg = lm.config
bytes_per_element = next(lm.parameters()).element_size()  # fp32: 4
kv_batch = BENCH["batch_sizes"][-1]
kv_lengths = (16, 32, 64, 128)  # cache slots = prompt + new tokens


def kv_formula(batch: int, length: int) -> int:
    return 2 * cfg.num_hidden_layers * batch * length * cfg.hidden_size * bytes_per_element  # K and V


def kv_measured(batch: int, length: int) -> int:
    """Bytes of a StaticCache(lm, batch, length): allocator peak on CUDA, the buffers' nbytes on the CPU."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        cache_ = StaticCache(lm, batch, length)
        torch.cuda.synchronize()
        used = torch.cuda.max_memory_allocated() - before
    else:
        cache_ = StaticCache(lm, batch, length)
        used = sum(buffer.nbytes for pair in cache_.buffers for buffer in pair)
    del cache_
    return used


def generate_peak(batch: int, length: int, cache: str) -> int:
    """CUDA only: peak bytes allocated during a greedy generate call filling `length` slots, above the start."""
    rows_b = start_ids.repeat(batch, 1)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    generate(lm, rows_b, max_new_tokens=length - rows_b.shape[1], cache=cache)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


MiB = 2**20
kv_bytes = {"formula": [kv_formula(kv_batch, n) for n in kv_lengths],
            "StaticCache, measured": [kv_measured(kv_batch, n) for n in kv_lengths]}
if DEVICE == "cuda":
    for kind in ("dynamic", "static"):
        kv_bytes[f'peak of generate(cache="{kind}")'] = [generate_peak(kv_batch, n, kind) for n in kv_lengths]
weights = sum(p.nbytes for p in lm.parameters())

fig, ax = plt.subplots(figsize=(6.5, 3.6))
for (label, values), style in zip(kv_bytes.items(), ("-", "o", "s--", "^--"), strict=False):
    ax.plot(kv_lengths, [v / MiB for v in values], style, label=label)
ax.axhline(weights / MiB, color="grey", linestyle=":", label="the model's weights")
ax.set_xlabel("tokens in the cache (prompt + new)"), ax.set_ylabel("MiB")
ax.set_title(f"KV cache of megabert-tiny-causal, batch {kv_batch}, {next(lm.parameters()).dtype}, {DEVICE}")
ax.set_ylim(0, None), ax.legend()
plt.show()
per_token = kv_formula(1, 1)
how = "torch.cuda.max_memory_allocated" if DEVICE == "cuda" else "the StaticCache buffers' nbytes (CPU)"
print(f"{per_token / 1024:.0f} KiB per token per sequence (2 x {cfg.num_hidden_layers} layers x {cfg.hidden_size} x "
      f"{bytes_per_element} bytes); measured with {how}: "
      + ", ".join(f"{m / f:.3f}" for m, f in zip(kv_bytes["StaticCache, measured"], kv_bytes["formula"], strict=True))
      + " x the formula")
print(f"batch {kv_batch} x {kv_lengths[-1]} tokens: {kv_bytes['formula'][-1] / MiB:.0f} MiB of cache against "
      f"{weights / MiB:.1f} MiB of weights")
for label, values in list(kv_bytes.items())[2:]:
    print(f"{label}: " + ", ".join(f"{v / f:.2f}" for v, f in zip(values, kv_bytes["formula"], strict=True))
          + " x the formula")

# %% [markdown]
# The cache grows linearly with both batch and length; the printed ratios show whether the measurement
# matches the formula (a ratio of 1.000 means nothing else is stored). The weights are paid once, the cache
# per sequence and per token, so at a large enough batch and length it outweighs the model (compare the grey
# line); for a real model it is far larger (Exercise 4 computes it for the 345M shape). On a GPU the two peaks
# of whole `generate` calls also include the activations of each step, and the dynamic cache's peak includes
# its copying: every step concatenates the old keys and values with the new ones into a new, longer tensor,
# so for a moment both exist. The printed ratios say how large those extras were.
#
# ### 5.4 Decode modes: dynamic, static, fixed, compiled
#
# `generate` keeps the cache in three ways that give the same greedy tokens (`tests/test_generation.py` checks
# this, and so does the cell after the plot), and can compile the decode step:
#
# * `cache="dynamic"`: the readable loop, the cache grows by `torch.cat` at every step (a new tensor each time);
# * `cache="static"`: the cache is allocated once for the whole text and each step writes its slot in place;
# * `cache="fixed"`: static, and every step has *the same shapes* (it attends over all slots; a mask hides the
#   empty ones) — the form a compiler or a CUDA graph can capture once and replay;
# * `compile=True`: that fixed-shape step through `torch.compile`, traced as one graph. On a GPU it uses
#   `mode="reduce-overhead"`, which records the step as a **CUDA graph**: one launch replays the hundreds of
#   small kernels a step is made of, instead of Python launching them one by one.
#
# Compiling costs time once (the first call); we time it separately.

# %%
n = BENCH["mode_tokens"]
modes = {"dynamic": dict(cache="dynamic"), "static": dict(cache="static"), "fixed": dict(cache="fixed")}
if BENCH["compile"]:
    modes["compiled"] = dict(compile=True)
mode_outputs, mode_tokens_per_s, compile_seconds = {}, {}, None
for name, kwargs in modes.items():
    def run(kwargs=kwargs):
        return generate(lm, start_ids, max_new_tokens=n, **kwargs)

    if name == "compiled":
        sync()
        t0 = time.perf_counter()
        run()  # compiles (and on a GPU records the CUDA graph)
        sync()
        compile_seconds = time.perf_counter() - t0
    mode_outputs[name] = run()
    mode_tokens_per_s[name] = n / median_seconds(run)

fig, ax = plt.subplots(figsize=(6.5, 3.2))
ax.barh(list(mode_tokens_per_s)[::-1], list(mode_tokens_per_s.values())[::-1], color="tab:blue")
ax.set_xlabel("new tokens per second (batch 1)"), ax.set_title(f"decode modes, {n} new tokens, {DEVICE}")
plt.show()
base = mode_tokens_per_s["dynamic"]
print(", ".join(f"{name} {tps:.0f} tokens/s (x{tps / base:.2f})" for name, tps in mode_tokens_per_s.items()))
if compile_seconds is not None:
    extra = compile_seconds - n / mode_tokens_per_s["compiled"]  # the first call's cost beyond generating
    saved = 1 / mode_tokens_per_s["dynamic"] - 1 / mode_tokens_per_s["compiled"]  # seconds per token
    print(f"the first compiled call took {compile_seconds:.1f} s (compiling, unless torch's on-disk cache already "
          f"held this graph); " + (f"against the dynamic cache that pays off after about {extra / saved:,.0f} tokens"
                                   if saved > 0 else "and the compiled step was not faster here"))
else:
    print("compile=True skipped on this device (BENCH['compile'] is False)")

# %%
# NBVAL_CHECK_OUTPUT
print("same greedy tokens as the dynamic cache:",
      {name: torch.equal(out, mode_outputs["dynamic"]) for name, out in mode_outputs.items()})

# %% [markdown]
# For one sequence of a small model a decoding step is mostly overhead: Python, dispatching each operation,
# and (on a GPU) launching each kernel. The static cache avoids re-allocating and copying the cache at every
# step, but for a model this small and texts this short that copy is cheap, so it may not show (compare the
# bars). The fixed shapes save nothing by themselves (every step attends over the empty slots too): they are
# what makes the compiled step possible. Compiling attacks the overhead: on a CPU it fuses operations into
# fewer, larger ones and drops most of the Python; on a GPU it also replays the whole step as one CUDA graph.
# Whether it pays for its compile time depends on how many tokens you will generate: the printed line says
# after how many here. (Note that `generate` still reads a value back from the device at every step, to check
# the logits for NaN, so the CPU waits for the GPU once per token even with a CUDA graph.)
#
# ### 5.5 Lower precision: bf16 weights vs autocast
#
# Two ways to compute in 16-bit floats. `torch.autocast` keeps the fp32 weights and casts them to 16 bits for
# each matrix product (numerically sensitive operations such as layer norm stay in fp32), so every step pays
# for the casts. Converting the weights (`model.to(torch.bfloat16)`, on a copy so `lm` stays fp32) halves
# their memory and skips the casts, but runs everything, layer norm included, in 16 bits. `choose_precision` picks
# the autocast dtype for the device (bf16 where the hardware has it natively, fp16 on older GPUs; on a CPU
# only with `cpu_bf16=True` and AMX/AVX512-BF16 instructions), and the converted copy uses the same dtype.
#
# bf16 keeps 8 bits of mantissa, about 2-3 significant digits, so the logits change a little; where the two
# best tokens are nearly tied, greedy decoding may choose the other one, and from there on the text differs.
# We time both at batch 1 and at a larger batch, and compare the greedy continuations of the ten held-out
# words from section 3 with fp32's, token by token.

# %%
precision = choose_precision(DEVICE, cpu_bf16=True)
print(precision.reason)
half = precision.autocast_dtype or torch.bfloat16  # the converted copy's dtype
lm_half = copy.deepcopy(lm).to(half)
variants = {"fp32": (lm, contextlib.nullcontext)}
if precision.autocast_dtype is not None:
    variants[f"{precision.name} autocast"] = (lm, precision.autocast)
variants[f"{'bf16' if half == torch.bfloat16 else 'fp16'} weights"] = (lm_half, contextlib.nullcontext)

# the ten held-out words of section 3, left-padded into one batch
word_rows = [tokenizer.encode(r["text"].split(":", 1)[0] + ":")[:-1] for r in held_out]
W = max(len(r) for r in word_rows)
word_ids = torch.tensor([[tokenizer.pad_token_id] * (W - len(r)) + r for r in word_rows], device=DEVICE)
word_mask = torch.tensor([[0] * (W - len(r)) + [1] * len(r) for r in word_rows], device=DEVICE)

precision_tps, continuations = {}, {}
for name, (model, context) in variants.items():
    with context():
        continuations[name] = generate(model, word_ids, max_new_tokens=24, attention_mask=word_mask)[:, W:]
        precision_tps[name] = []
        for b in BENCH["precision_batches"]:
            rows_b = start_ids.repeat(b, 1)
            seconds = median_seconds(lambda model=model, rows_b=rows_b: generate(model, rows_b, max_new_tokens=new))
            precision_tps[name].append(b * new / seconds)

fig, ax = plt.subplots(figsize=(6.5, 3.4))
width_ = 0.8 / len(BENCH["precision_batches"])
for j, b in enumerate(BENCH["precision_batches"]):
    ax.bar([i + j * width_ for i in range(len(variants))], [precision_tps[name][j] for name in variants],
           width_, label=f"batch {b}")
ax.set_xticks([i + width_ * (len(BENCH["precision_batches"]) - 1) / 2 for i in range(len(variants))], list(variants))
ax.set_ylabel("new tokens per second"), ax.set_title(f"precision, {new} new tokens per sequence, {DEVICE}")
ax.legend()
plt.show()
reference = continuations["fp32"]
for name in variants:
    same = continuations[name] == reference  # (10, 24)
    speed = ", ".join(f"batch {b}: {tps:.0f} tokens/s (x{tps / ref:.2f})" for b, tps, ref in
                      zip(BENCH["precision_batches"], precision_tps[name], precision_tps["fp32"], strict=True))
    print(f"{name:<16} {speed}; {same.float().mean():.0%} of the greedy tokens equal fp32's, "
          f"{int(same.all(1).sum())} of {len(word_rows)} continuations identical")

# %% [markdown]
# Lower precision may change the text: the printed agreement says how many of fp32's greedy tokens each
# variant reproduced here, on these ten prompts (a single flip changes the context of every later token, so
# count whole continuations too, not only tokens). Whether it is faster depends on where the time goes. A
# 16-bit product moves half the bytes and, on hardware with bf16 units (tensor cores, AMX), runs at a
# higher rate; but at batch 1 a small model spends its step on overhead rather than arithmetic, and autocast
# adds a cast per weight per step. Compare the two batch sizes in the plot.
#
# ## Summary
#
# * `fill_mask` and `sample_mlm` get text out of a bidirectional MLM by filling blanks; a causal LM
#   (`is_decoder=True`) writes left to right with `generate`.
# * Greedy decoding loops; temperature, top-k, top-p and a repetition penalty trade faithfulness for variety.
# * The KV cache gives the same tokens as recomputing the prefix; without it the cost per token grows with the
#   length of the text, with it a step feeds one token.
# * Batching raises tokens/s until the device runs out of idle arithmetic; the KV cache costs
#   2 × layers × batch × length × hidden × bytes, and at large batches it outweighs the weights.
# * A static cache, fixed shapes and a compiled (on a GPU, CUDA-graph) step give the same greedy tokens and cut
#   per-step overhead; compiling costs time once. bf16 (weights or autocast) changes some greedy tokens:
#   measure the agreement, do not assume it.
# * To see better text, pre-train longer: `python scripts/pretrain_tiny.py --mlm-steps 20000 --clm-steps 5000`
#   (on a GPU it picks the device itself), then rerun this notebook.

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your code and a check cell below it that tells you what to look at if the
# answer is not right yet.
#
# ### Exercise 1: write a top-k sampler
#
# Write `sample_top_k(logits, k, temperature, generator)`: for each row of `logits` (B, V), divide by the
# temperature, keep only the k largest logits, turn them into probabilities with a softmax, and draw one
# token id with `torch.multinomial(..., generator=generator)`. Return a (B,) tensor of ids.

# %%
# EXERCISE
def sample_top_k(logits, k, temperature, generator):
    # BEGIN SOLUTION: return None
    logits = logits / temperature
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit of each row
    logits = logits.masked_fill(logits < kth, float("-inf"))  # everything below it gets probability 0
    return torch.multinomial(logits.softmax(-1), num_samples=1, generator=generator).squeeze(1)
    # END SOLUTION


# %%
# CHECK
row = lm(prompt).logits[0, -1].float().cpu()  # the model's next-token logits after the prompt, (V,)
draws = sample_top_k(row.expand(4000, -1), 5, 0.8, torch.Generator().manual_seed(SEED))
assert isinstance(draws, torch.Tensor) and draws.shape == (4000,), "return one token id per row: shape (B,)"
allowed = torch.topk(row, 5).indices
assert torch.isin(draws, allowed).all(), "a token outside the top 5 was drawn: mask everything below the k-th logit"
expected = torch.zeros_like(row)
expected[allowed] = (row[allowed] / 0.8).softmax(-1)
observed = torch.bincount(draws, minlength=len(row)).float() / len(draws)
assert (observed - expected).abs().max() < 0.03, (
    "the frequencies do not follow softmax(logits / temperature) over the top k: divide by the temperature "
    "before the softmax, and renormalise over the kept tokens only")
print("top-k sampler: only the top 5 tokens, frequencies as expected: passed")

# %% [markdown]
# ### Exercise 2: greedy decoding with the KV cache, by hand
#
# Write the loop `generate` runs: one call on the prompt with `use_cache=True`, then repeatedly feed *only*
# the newest token with `past_key_values=...`, taking the argmax of the last logits each time. Produce
# 12 new tokens after `prompt` and set `by_hand` to the (1, T + 12) ids, prompt included.

# %%
# EXERCISE
# BEGIN SOLUTION: by_hand = None
out_ = lm(prompt, use_cache=True)
ids_ = prompt
for _ in range(12):
    next_ = out_.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    ids_ = torch.cat([ids_, next_], dim=1)
    out_ = lm(next_, past_key_values=out_.past_key_values, use_cache=True)  # only the new token goes in
by_hand = ids_
# END SOLUTION

# %%
# CHECK
reference = lm.generate(prompt, max_new_tokens=12)
assert isinstance(by_hand, torch.Tensor), "by_hand should be the (1, T + 12) tensor of ids"
assert by_hand.shape == reference.shape, f"expected shape {tuple(reference.shape)}, got {tuple(by_hand.shape)}"
assert torch.equal(by_hand, reference), (
    "different tokens: after the first call feed only the newest token together with the *updated* "
    "past_key_values of the previous call, and take the argmax at the last position")
print("greedy with the KV cache by hand == generate:", tokenizer.decode(by_hand[0]), "| passed")

# %% [markdown]
# ### Exercise 3: the nucleus
#
# Top-p keeps the smallest set of most likely tokens whose probabilities add up to at least p. For the
# probability vector `probs` (V,) of the model's next token after the prompt, set `nucleus_ids` to the set
# of token ids kept for p = 0.9.

# %%
# EXERCISE
probs = lm(prompt).logits[0, -1].float().softmax(-1).cpu()  # (V,)
# BEGIN SOLUTION: nucleus_ids = None
sorted_probs, order = probs.sort(descending=True)
count = int((sorted_probs.cumsum(0) < 0.9).sum()) + 1  # tokens needed to reach 0.9
nucleus_ids = set(order[:count].tolist())
# END SOLUTION

# %%
# CHECK
from megabert_edu.generation import top_p_filter

assert isinstance(nucleus_ids, set) and nucleus_ids, "nucleus_ids should be a non-empty set of token ids"
kept = set(torch.isfinite(top_p_filter(probs.log()[None], 0.9))[0].nonzero().flatten().tolist())
mass = probs[list(nucleus_ids)].sum().item()
assert mass >= 0.9 - 1e-6, f"your tokens hold only {mass:.3f} of the probability: keep adding the next most likely"
assert nucleus_ids == kept, (
    f"{len(nucleus_ids)} tokens, the library keeps {len(kept)}: take tokens in order of decreasing probability "
    "and stop as soon as the running sum reaches 0.9")
print(f"nucleus of {len(kept)} tokens holds {mass:.1%} of the probability: passed")


# %% [markdown]
# ### Exercise 4: the KV cache of a real model, by the formula
#
# Write `kv_cache_bytes(config, batch, length, dtype)`: the bytes a KV cache takes for `batch` sequences of
# `length` tokens of a model with this config, its keys and values stored in `dtype`
# (`torch.empty((), dtype=dtype).element_size()` gives the bytes per element). The check compares it with
# what `StaticCache` allocates for three models (megabert-tiny in fp32, its 16-bit copy from section 5, a
# small random one), then prints what your formula says for the Megatron-BERT-345M shape in bf16.

# %%
# EXERCISE
def kv_cache_bytes(config, batch, length, dtype):
    # BEGIN SOLUTION: return None
    bytes_per_element = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * batch * length * config.hidden_size * bytes_per_element  # K and V
    # END SOLUTION


# %%
# CHECK
small = MegatronBertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=3, num_attention_heads=2,
                           intermediate_size=96, is_decoder=True)
for model, batch, length in ((lm, 3, 50), (lm_half, 2, 17), (MegatronBertForCausalLM(small).to(DEVICE), 5, 9)):
    dtype = next(model.parameters()).dtype
    allocated = sum(buffer.nbytes for pair in StaticCache(model, batch, length).buffers for buffer in pair)
    answer = kv_cache_bytes(model.config, batch, length, dtype)
    assert answer is not None, "return the number of bytes"
    assert answer == allocated, (
        f"{model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, batch {batch}, {length} tokens, "
        f"{dtype}: you say {answer}, StaticCache allocates {allocated} bytes. Count a key AND a value per layer, "
        "token and sequence, each hidden_size numbers of element_size bytes")
config_345m = MegatronBertConfig(vocab_size=29056, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                 intermediate_size=4096, max_position_embeddings=512, is_decoder=True)
per_sequence = kv_cache_bytes(config_345m, 1, 512, torch.bfloat16)
print(f"Megatron-BERT-345M in bf16: {per_sequence / 2**20:.0f} MiB of keys and values per 512-token sequence, "
      f"{64 * per_sequence / 2**30:.0f} GiB for a batch of 64: passed")
