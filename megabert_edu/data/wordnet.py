"""The bundled WordNet 3.0 datasets: one task per model head, all made from the same synsets.

A synset is one sense of one or more words ("dog, domestic dog, Canis familiaris") with a gloss:
a definition and, for about a quarter of them, example sentences. From them:

    task               head                       input -> target
    supersense         sequence classification    definition -> one of 45 lexicographer files
    definition_choice  multiple choice            word + 4 definitions -> the word's own
    word_span          question answering, or     definition + example -> span of the defined word
                       token classification (BIO)
    next_sentence      next-sentence prediction   definition + example -> its own, or random?
    corpus             masked LM pre-training     words, definition and examples as plain text

Every synset belongs to one split (train 80% / validation 10% / test 10%, fixed by a seeded hash
in scripts/build_wordnet_datasets.py), and every task inherits its synsets' splits, so no test
text is ever seen in training by any task, pre-training on the corpus included.
"""

from __future__ import annotations

import json
import lzma
from functools import cache
from importlib import resources

# WordNet's lexicographer files (`man 5 lexnames`); a synset's file number is its supersense label.
SUPERSENSES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change",
    "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social",
    "verb.stative", "verb.weather", "adj.ppl",
)
TASKS = ("supersense", "definition_choice", "word_span", "next_sentence", "corpus")
SPLITS = ("train", "validation", "test")


@cache
def _read(name: str) -> tuple[dict, ...]:
    """One bundled file's JSON records (read once per process; callers get fresh dicts)."""
    path = resources.files(__package__) / "wordnet" / f"{name}.jsonl.xz"
    with path.open("rb") as raw, lzma.open(raw, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


@cache
def _synsets() -> dict[str, dict]:
    """synset id (part of speech + WordNet offset, e.g. "n02084071") -> synset."""
    return {s["id"]: s for s in _read("synsets")}


def load_wordnet(task: str, split: str = "train", limit: int | None = None) -> list[dict]:
    """The records of one task and split, as plain text and integer labels.

    Records are stored in a fixed random order, so `limit=n` gives a random sample of n.
    Record fields by task:

        supersense         id, text, label (0-44), label_name, words
        definition_choice  id, word, choices (4 definitions), label (0-3)
        word_span          id, question (definition), context (example), answer_text, answer_start, word
        next_sentence      id, text_a (definition), text_b (example), label (0 = its own, 1 = random)
        corpus             id, text, sentences ([words: definition, example, example, ...])
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    synsets = _synsets()
    records = []
    if task in ("supersense", "corpus"):  # plain views of the synsets themselves
        for s in _read("synsets"):
            if s["split"] != split:
                continue
            if task == "supersense":
                records.append({"id": s["id"], "text": s["definition"], "label": s["supersense"],
                                "label_name": SUPERSENSES[s["supersense"]], "words": list(s["words"])})
            else:
                sentences = [f"{', '.join(s['words'])}: {s['definition']}", *s["examples"]]
                records.append({"id": s["id"], "text": "; ".join(sentences), "sentences": sentences})
    elif task == "definition_choice":
        for r in _read(task):
            answer = synsets[r["choices"][r["label"]]]
            if answer["split"] == split:
                records.append({"id": answer["id"], "word": r["word"], "label": r["label"],
                                "choices": [synsets[c]["definition"] for c in r["choices"]]})
    elif task == "word_span":
        for r in _read(task):
            s = synsets[r["id"]]
            if s["split"] == split:
                context = s["examples"][r["example"]]
                start, end = r["span"]
                records.append({"id": f"{r['id']}-{r['example']}", "question": s["definition"],
                                "context": context, "answer_text": context[start:end],
                                "answer_start": start, "word": r["word"]})
    else:  # next_sentence
        for r in _read(task):
            s = synsets[r["id"]]
            if s["split"] == split:
                records.append({"id": r["id"], "text_a": s["definition"],
                                "text_b": synsets[r["next"]]["examples"][0],
                                "label": 0 if r["next"] == r["id"] else 1})
    return records[:limit]
