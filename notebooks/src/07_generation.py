# ruff: noqa: E402  (notebook cells import where the narrative needs them)
# %% [markdown]
# # 07 · Generation: fill-mask, MLM sampling, and causal decoding with a KV cache
#
# ## Learning objectives
#
# - Get text out of a masked LM (fill-mask, mask-predict, Gibbs sampling) and out of a causal LM.
# - Explain greedy decoding, temperature, top-k, top-p and a repetition penalty, and write a sampler.
# - Explain the KV cache, check that it changes nothing, and measure what it saves as the text grows.
# - Judge a small model's generations against held-out definitions.
#
# **Prerequisites:** notebook 01 (attention, the causal mask); softmax and sampling from a distribution.
#
# **Time:** {{RUNTIME}}; about 45 minutes in class with the exercises.

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
# On a GPU, nothing to edit: the KV-cache benchmark at the end switches to a model of the real 345M size
# (random weights, bf16) and longer sequences.

# %%
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: on a shared CPU, busy-waiting threads are slow
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BENCH = dict(lengths=(16, 32, 64, 96), big_model=False) if DEVICE == "cpu" else \
    dict(lengths=(32, 64, 128, 256, 448), big_model=True)
SEED = 0

# %%
# %matplotlib inline
import time

import matplotlib.pyplot as plt
from IPython.display import display

from megabert_edu import MegatronBertConfig, MegatronBertForCausalLM, MegatronBertForMaskedLM, viz
from megabert_edu.assets import TINY, TINY_CAUSAL
from megabert_edu.generation import fill_mask, generate, sample_mlm
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
# ### How much does the cache save?
#
# Time per generated token, with and without the cache, for several lengths of generated text. On a CPU we
# time megabert-tiny itself; on a GPU a model of the real Megatron-BERT-345M shape (random weights, bf16).
# Each point is the median of 3 timed runs after a warm-up; timings vary from machine to machine.

# %%
if BENCH["big_model"]:
    bench_cfg = MegatronBertConfig(vocab_size=29056, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                   intermediate_size=4096, max_position_embeddings=512, is_decoder=True)
    bench_dtype = choose_precision(DEVICE).autocast_dtype or torch.float32  # bf16, or fp16 on an older GPU
    bench_model = MegatronBertForCausalLM(bench_cfg).to(DEVICE, bench_dtype).eval()
else:
    bench_model = lm
start_ids = prompt[:, :4]


def ms_per_token(fn, n: int, repeats: int = 3) -> float:
    """Median wall time of fn() over `repeats` runs (after one warm-up), divided by the n tokens it makes."""
    fn()
    times = []
    for _ in range(repeats):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2] / n


timings = {"with the KV cache": [], "without (re-run the prefix)": []}
for n in BENCH["lengths"]:
    timings["with the KV cache"].append(ms_per_token(lambda n=n: bench_model.generate(start_ids, max_new_tokens=n), n))
    timings["without (re-run the prefix)"].append(
        ms_per_token(lambda n=n: greedy_without_cache(bench_model, start_ids, n), n))

fig, ax = plt.subplots(figsize=(6.5, 3.6))
for (label, values), marker in zip(timings.items(), "os", strict=True):
    ax.plot(BENCH["lengths"], values, marker=marker, label=label)
ax.set_xlabel("new tokens generated"), ax.set_ylabel("ms per token (mean over the run)")
ax.set_title(f"greedy decoding on {DEVICE}, {'345M shape' if BENCH['big_model'] else 'megabert-tiny'}")
ax.set_ylim(0, None), ax.legend()
plt.show()
for n, c, u in zip(BENCH["lengths"], *timings.values(), strict=True):
    print(f"{n:>4} new tokens: {c:6.2f} ms/token with the cache, {u:6.2f} without (x{u / c:.1f})")

# %% [markdown]
# Without the cache every step re-runs the whole prefix: the work per token grows with the length of the
# text. With it, each step processes one token (attending to the cached keys). How that shows in time
# depends on the model and the machine: for megabert-tiny on a CPU a forward pass over 100 tokens costs
# little more than over 10 (fixed per-call costs dominate), so the cache shows up as a roughly constant
# factor and the curves are noisy on a shared machine; for the 345M-shaped model on a GPU (the parameter
# cell) the uncached cost per token climbs with the length.
#
# ## Summary
#
# * `fill_mask` and `sample_mlm` get text out of a bidirectional MLM by filling blanks; a causal LM
#   (`is_decoder=True`) writes left to right with `generate`.
# * Greedy decoding loops; temperature, top-k, top-p and a repetition penalty trade faithfulness for variety.
# * The KV cache gives the same tokens as recomputing the prefix, for a fraction of the work.
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

