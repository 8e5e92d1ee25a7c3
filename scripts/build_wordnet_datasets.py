"""Build the bundled WordNet datasets in megabert_edu/data/wordnet/ from the WordNet 3.0 database.

    apt-get install wordnet-base            # Debian/Ubuntu: installs /usr/share/wordnet/data.*
    python scripts/build_wordnet_datasets.py [--wordnet-dir /usr/share/wordnet] [--seed 0]

The output is deterministic: the same WordNet files and seed give byte-identical files.

WordNet's data.{noun,verb,adj,adv} files have one synset (a set of synonyms sharing one sense)
per line, documented in `man 5 wndb`:

    offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt [ptr...] [frames...] | gloss

lex_filenum (00-44) names the lexicographer file the synset was written in, e.g. 05 noun.animal,
38 verb.motion: these 45 "supersenses" are our classification labels. The gloss is a definition
followed by example sentences in double quotes:

    breathe with great difficulty, as when experiencing a strong emotion; "She choked with emotion"

Files written (JSON lines, xz-compressed; `xzcat FILE | head` shows them):

    synsets.jsonl.xz            all synsets with their split. Every text lives here and only
                                here; the supersense and corpus tasks are plain views of it.
    definition_choice.jsonl.xz  a word and four synset ids, one of them its own (multiple choice)
    word_span.jsonl.xz          a synset id, one of its examples, and the character span of the
                                defined word in that example (extractive QA / BIO tagging)
    next_sentence.jsonl.xz      a synset id and the synset whose first example follows it (NSP)

The task files hold synset ids instead of repeating the texts (that keeps the package small);
megabert_edu/data/wordnet.py turns them back into plain-text records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import random
import re
import shutil
from collections import defaultdict
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "megabert_edu" / "data" / "wordnet"
LICENSE_OUT = OUT_DIR.parent / "WORDNET_LICENSE"
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
SPLITS = ("train", "validation", "test")

# Multiple-choice questions per split: plenty to fine-tune on in a classroom; more would only
# make the package bigger (each question stores four synset ids).
CHOICE_SIZES = {"train": 20000, "validation": 2000, "test": 2000}


# ----------------------------------------------------------------------------- parsing WordNet


def parse_gloss(gloss: str) -> tuple[str, list[str]]:
    """Split a gloss into its definition and its quoted example sentences.

    A handful of glosses have unbalanced quotes; those examples are cut at the next quote or the
    end of the line, which loses nothing that matters here.
    """
    quote = gloss.find('"')
    if quote < 0:
        return gloss.strip().rstrip(";").strip(), []
    definition = gloss[:quote].strip().rstrip(";").strip()
    examples = [m.strip().rstrip(";").strip() for m in re.findall(r'"([^"]+)(?:"|$)', gloss[quote:])]
    examples = [e for e in examples if len(e) > 2 and not e.startswith(";")]
    return definition, examples


def read_synsets(wordnet_dir: Path) -> list[dict]:
    """Every synset of WordNet 3.0 as a dict: id, pos, supersense, words, definition, examples."""
    synsets = []
    for pos, name in POS_FILES.items():
        with open(wordnet_dir / f"data.{name}", encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):  # the license header at the top of every data file
                    continue
                head, gloss = line.rstrip("\n").split(" | ", 1)
                fields = head.split()
                offset, lex_filenum, n_words = fields[0], int(fields[1]), int(fields[3], 16)
                # words alternate with their lex_id; adjectives may carry a syntactic marker such
                # as "(a)" or "(p)" (attributive / predicative) that is not part of the word.
                words = [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in fields[4:4 + 2 * n_words:2]]
                definition, examples = parse_gloss(gloss)
                if not definition:
                    continue
                synsets.append({"id": f"{pos}{offset}", "pos": pos, "supersense": lex_filenum,
                                "words": words, "definition": definition, "examples": examples})
    return synsets


def read_exceptions(wordnet_dir: Path) -> dict[str, dict[str, list[str]]]:
    """Irregular inflections from the *.exc files, inverted: pos -> base form -> inflected forms
    (e.g. "v" -> "take" -> ["taken", "takes", "took"... ])."""
    inverse: dict[str, dict[str, list[str]]] = {}
    for pos, name in POS_FILES.items():
        table = defaultdict(list)
        with open(wordnet_dir / f"{name}.exc", encoding="utf-8") as f:
            for line in f:
                inflected, *bases = line.split()
                for base in bases:
                    table[base.replace("_", " ")].append(inflected.replace("_", " "))
        inverse[pos] = table
    return inverse


# ----------------------------------------------------------------------------- splits


def stable_hash(text: str, seed: int) -> int:
    """A hash that, unlike Python's hash(), is the same in every process and on every machine."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")


def assign_splits(synsets: list[dict], seed: int) -> None:
    """Give every synset a split (80% train, 10% validation, 10% test), in place.

    Synsets that share a definition or an example sentence are kept in the same split (they are
    joined with union-find first), so no test text is ever seen in training, by any task.
    """
    parent = list(range(len(synsets)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_owner: dict[str, int] = {}
    for i, s in enumerate(synsets):
        for text in [s["definition"], *s["examples"]]:
            key = text.lower()
            if key in first_owner:
                parent[find(i)] = find(first_owner[key])
            else:
                first_owner[key] = i
    # A group is named by its smallest synset id, so the result does not depend on file order.
    group_name: dict[int, str] = {}
    for i, s in enumerate(synsets):
        root = find(i)
        group_name[root] = min(group_name.get(root, s["id"]), s["id"])
    for i, s in enumerate(synsets):
        bucket = stable_hash(group_name[find(i)], seed) % 10
        s["split"] = "train" if bucket < 8 else "validation" if bucket == 8 else "test"


# ----------------------------------------------------------------------------- finding a word in a sentence


def surface_forms(word: str, pos: str, exceptions: dict[str, dict[str, list[str]]]) -> set[str]:
    """Spellings `word` may take in running text: itself, regular inflections, irregular ones.

    Verbs inflect their first word ("take a breath" -> "took a breath"), nouns their last
    ("brother-in-law" aside). Over-generated non-words ("runned") are harmless: they never match.
    """
    tokens = word.split(" ")
    head_index = 0 if pos == "v" else len(tokens) - 1
    head = tokens[head_index]
    forms = {head, *exceptions[pos].get(head, [])}
    stem_e = head[:-1] if head.endswith("e") else head
    stem_y = head[:-1] + "i" if head.endswith("y") else head
    double = head + head[-1] if re.search(r"[^aeiou][aeiou][bdgklmnprtv]$", head) else head
    if pos == "n":
        forms |= {head + "s", head + "es", stem_y + "es"}
    elif pos == "v":
        forms |= {head + "s", head + "es", stem_y + "es", head + "ed", head + "d", stem_y + "ed",
                  double + "ed", stem_e + "ing", double + "ing", head + "ing"}
    elif pos == "a":
        forms |= {head + "er", head + "est", head + "r", head + "st", stem_y + "er", stem_y + "est",
                  double + "er", double + "est"}
    return {" ".join(tokens[:head_index] + [form] + tokens[head_index + 1:]) for form in forms}


def find_word(sentence: str, forms: set[str]) -> tuple[int, int] | None:
    """The (start, end) character span of the one place a form occurs in `sentence` as a whole
    word, ignoring case; None if it does not occur or occurs at more than one place."""
    # Longest forms first, so that "took a breath" wins over a shorter form at the same place.
    longest_first = sorted(forms, key=lambda f: (-len(f), f))
    pattern = "|".join(re.escape(f).replace(r"\ ", r"\s+") for f in longest_first)
    spans = [m.span() for m in re.finditer(rf"(?<![\w-])(?:{pattern})(?![\w-])", sentence, re.IGNORECASE)]
    return spans[0] if len(spans) == 1 else None


# ----------------------------------------------------------------------------- tasks


def definition_choice(synsets: list[dict], seed: int) -> list[dict]:
    """Multiple choice: which of four definitions belongs to `word`?

    The three wrong definitions come from random synsets of the same part of speech (so the form
    of the definition gives nothing away) and the same split, none of which contains the word.
    """
    rng = random.Random(seed)
    pool = defaultdict(list)  # (split, pos) -> synsets
    senses = defaultdict(set)  # word -> the definitions of all its senses
    for s in synsets:
        pool[s["split"], s["pos"]].append(s)
        for w in s["words"]:
            senses[w.lower()].add(s["definition"])
    records = []
    for split in SPLITS:
        candidates = [s for s in synsets if s["split"] == split]
        for s in rng.sample(candidates, CHOICE_SIZES[split]):
            word = s["words"][0]
            wrong: list[dict] = []
            while len(wrong) < 3:
                other = rng.choice(pool[split, s["pos"]])
                # Another sense of the same word would be a right answer too.
                if other["definition"] not in senses[word.lower()] | {w["definition"] for w in wrong}:
                    wrong.append(other)
            label = rng.randrange(4)
            choices = [w["id"] for w in wrong[:label]] + [s["id"]] + [w["id"] for w in wrong[label:]]
            records.append({"word": word, "choices": choices, "label": label})
    return records


def word_span(synsets: list[dict], exceptions: dict[str, dict[str, list[str]]]) -> list[dict]:
    """Extractive QA: given a gloss (the question) and one of its example sentences (the context),
    find the synset's word in the sentence. Kept only where exactly one place matches."""
    records = []
    for s in synsets:
        for k, example in enumerate(s["examples"]):
            for word in s["words"]:
                span = find_word(example, surface_forms(word, s["pos"], exceptions))
                if span is not None:
                    records.append({"id": s["id"], "example": k, "word": word, "span": list(span)})
                    break
    return records


def next_sentence(synsets: list[dict], seed: int) -> list[dict]:
    """Next-sentence prediction: a definition is followed, half the time, by its own first example
    ("next" is the synset itself: label 0, "is next", in HuggingFace's convention) and otherwise
    by the first example of another synset with the same part of speech from the same split
    (label 1, "random")."""
    rng = random.Random(seed)
    pool = defaultdict(list)
    for s in synsets:
        if s["examples"]:
            pool[s["split"], s["pos"]].append(s)
    records = []
    for s in synsets:
        if not s["examples"]:
            continue
        other = s
        if rng.randrange(2) == 1:
            while other["id"] == s["id"]:
                other = rng.choice(pool[s["split"], s["pos"]])
        records.append({"id": s["id"], "next": other["id"]})
    return records


# ----------------------------------------------------------------------------- writing


def write_jsonl_xz(path: Path, records: list[dict]) -> None:
    """JSON lines, xz-compressed (a third smaller than gzip on this text)."""
    text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    path.write_bytes(lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    print(f"{path.name}: {len(records)} records, {path.stat().st_size / 1e6:.2f} MB")


def write_license(wordnet_dir: Path) -> None:
    """Copy WordNet's license (it must accompany every copy of the database)."""
    header = []
    with open(wordnet_dir / "data.noun", encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  "):
                break
            header.append(re.sub(r"^\s+\d+\s?", "", line.rstrip()))
    text = "\n".join(header).strip() + "\n"
    LICENSE_OUT.write_text(
        "The files in megabert_edu/data/wordnet/ are derived from WordNet 3.0\n"
        "(https://wordnet.princeton.edu/), distributed under the following license.\n\n" + text)


def build(wordnet_dir: Path, seed: int = 0) -> dict[str, list[dict]]:
    """All bundled files' records, by file name (without .jsonl.xz)."""
    synsets = read_synsets(wordnet_dir)
    exceptions = read_exceptions(wordnet_dir)
    assign_splits(synsets, seed)
    # Store in a seeded random order so that `limit=N` in the loaders takes a random sample
    # rather than, say, the first N nouns of WordNet's alphabetical-by-offset order.
    synsets.sort(key=lambda s: stable_hash(s["id"], seed))
    return {"synsets": synsets, "definition_choice": definition_choice(synsets, seed),
            "word_span": word_span(synsets, exceptions), "next_sentence": next_sentence(synsets, seed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.wordnet_dir / "data.noun").is_file():
        raise SystemExit(f"no WordNet data.noun in {args.wordnet_dir}; install it with "
                         "`apt-get install wordnet-base` or pass --wordnet-dir")
    files = build(args.wordnet_dir, args.seed)
    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)
    for name, records in files.items():
        write_jsonl_xz(OUT_DIR / f"{name}.jsonl.xz", records)
    write_license(args.wordnet_dir)


if __name__ == "__main__":
    main()
