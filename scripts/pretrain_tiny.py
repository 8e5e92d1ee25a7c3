"""Pre-train megabert-tiny, our own small pre-LN Megatron-BERT, on the bundled WordNet corpus.

    python scripts/pretrain_tiny.py                  # writes megabert_edu/assets/megabert-tiny{,-causal}/
    python scripts/pretrain_tiny.py --init-from megabert_edu/assets/megabert-tiny --out /tmp/next  # continue

Three stages, all with the library itself (its collators, models and ``training.train``):

1. a WordPiece vocabulary (8,000 tokens) learned from the training split of the corpus (or, with
   --init-from, the vocabulary and weights of an earlier run, trained further);
2. MegatronBertForPreTraining (pre-LN, 4 layers, hidden 256) trained with masked LM + next sentence
   prediction on (A, B) segment pairs cut from each synset's document;
3. a causal-LM copy: the same weights loaded into MegatronBertForCausalLM(is_decoder=True) and
   trained further left-to-right on "head words: definition; example; ..." texts, so that a prompt
   like "griddle:" asks for a definition.

Forward and backward run under bf16 autocast (--no-bf16 for float32); the weights and Adam's state
stay float32. Held-out numbers use the validation split (no validation sentence occurs in training;
see megabert_edu/data/README.md). The script writes the weights in float16 (the files stay small),
then re-loads them and measures everything on the re-loaded models; training_log.json gets the
arguments, the learning curves (plot-ready under "curves"), the metrics and the example outputs
that the model card (assets/README.md) quotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

import megabert_edu
from megabert_edu.data import load_wordnet
from megabert_edu.generation import fill_mask, generate, sample_mlm
from megabert_edu.tokenization import WordPieceTokenizer, train_wordpiece
from megabert_edu.training import CausalLMCollator, MLMCollator, evaluate, nsp_pairs, train

ASSETS = Path(megabert_edu.__file__).parent / "assets"
FILL_MASK_EXAMPLES = ["a young [MASK] that is kept as a pet", "the [MASK] of the united states",
                      "move [MASK] on foot", "a large body of [MASK] water"]
PROMPTS = ["dog, domestic dog:", "to run:", "a musical instrument"]
N_HELD_OUT_WORDS = 10


def corpus_text(doc: list[str]) -> str:
    """The causal LM's training text for one synset: "head words: definition; example; ..."."""
    return doc[0] + ": " + "; ".join(doc[1:])


def held_out_words(docs: list[list[str]], n: int = N_HELD_OUT_WORDS) -> list[list[str]]:
    """The first `n` validation synsets named by one plain lowercase word ("griddle", "hoe", ...)."""
    return [d for d in docs if d[0].isalpha() and d[0].islower()][:n]


def documents(split: str) -> list[list[str]]:
    """One document per synset: [head words, definition, example, example, ...]."""
    docs = []
    for record in load_wordnet("corpus", split):
        head, _, definition = record["sentences"][0].partition(": ")
        docs.append([head, definition, *record["sentences"][1:]])
    return docs


def curves(history: list[dict]) -> dict[str, list]:
    """train()'s history as plot-ready columns: training loss per logged step, held-out metrics per eval."""
    logged = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval" in h]
    return {"step": [h["step"] for h in logged], "train_loss": [h["loss"] for h in logged],
            "lr": [h["lr"] for h in logged], "eval_step": [h["step"] for h in evals],
            **{f"eval_{k}": [h["eval"][k] for h in evals] for k in (evals[0]["eval"] if evals else {})}}


def length_buckets(records: list[dict], tokenizer: WordPieceTokenizer, batch_size: int, seed: int
                   ) -> list[list]:
    """Group records of similar length into batches, in a random order of batches.

    A batch is padded to its longest row; random batches of WordNet text waste about half their
    compute on padding. Sorting within chunks of 50 batches keeps some randomness and little padding.
    """
    rng = random.Random(seed)
    records = list(records)
    rng.shuffle(records)
    texts = [r.get("text") or r["text_a"] + " " + r["text_b"] for r in records]
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    order = list(range(len(records)))
    chunk = 50 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lengths.__getitem__)
        batches += [[records[i] for i in part[j:j + batch_size]] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


class SparsePreTrainingLoss(nn.Module):
    """ForPreTraining's loss (MLM + NSP), projecting onto the vocabulary only at the masked positions.

    Only ~15% of the tokens have an MLM label, and the vocabulary projection (H x V) is the largest
    matrix in a small model, so this gives the same loss for much less compute (NVIDIA's BERT
    pre-training does the same).
    """

    def __init__(self, model: megabert_edu.MegatronBertForPreTraining):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, input_ids, token_type_ids, attention_mask, labels, next_sentence_label):
        out = self.model.bert(input_ids, attention_mask, token_type_ids)
        picked = labels != -100
        logits = self.model.cls.predictions(out.last_hidden_state[picked])  # (N masked, V)
        nsp_logits = self.model.cls.seq_relationship(out.pooler_output)  # (B, 2)
        loss = F.cross_entropy(logits, labels[picked]) + F.cross_entropy(nsp_logits, next_sentence_label)
        return SimpleNamespace(loss=loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mlm-steps", type=int, default=4500)
    parser.add_argument("--clm-steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clm-lr", type=float, default=None, help="default: half of --lr")
    parser.add_argument("--warmup", type=float, default=0.05, help="fraction of each stage's steps")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast for forward and backward (float32 master weights)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="continue from a saved megabert-tiny directory (its vocabulary and weights)")
    parser.add_argument("--mlm-minutes", type=float, default=None, help="stop the MLM stage early")
    parser.add_argument("--clm-minutes", type=float, default=None, help="stop the causal stage early")
    parser.add_argument("--eval-every", type=int, default=500, help="held-out loss every N steps (curves)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-size", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Without this, CPU training slowed from ~5 to ~2 steps/s after ~1,000 MLM steps (likely cause: Adam's
    # moments for rarely seen vocabulary rows decaying into slow subnormal floats); flush them to zero.
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    log: dict = {"args": {k: str(v) for k, v in vars(args).items()}}

    # 1. Vocabulary ------------------------------------------------------------------------------
    train_docs, val_docs = documents("train"), documents("validation")
    if args.init_from is not None:  # continue an earlier run: keep its vocabulary
        tokenizer = WordPieceTokenizer.from_pretrained(args.init_from)
    else:
        tokenizer = train_wordpiece([" ".join(d) for d in train_docs], vocab_size=args.vocab_size)
    print(f"vocabulary: {tokenizer.vocab_size} tokens ({time.perf_counter() - started:.0f}s)")

    # 2. MLM + NSP ---------------------------------------------------------------------------------
    config = megabert_edu.MegatronBertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=4 * args.hidden, max_position_embeddings=128,
        layer_norm_position="pre")
    if args.init_from is not None:
        model = megabert_edu.MegatronBertForPreTraining.from_pretrained(args.init_from).float()
        config = model.config
    else:
        model = megabert_edu.MegatronBertForPreTraining(config)
    collate = MLMCollator(tokenizer, max_length=args.max_length)
    # Fresh NSP pairs (new cut points, new random partners) every epoch.
    batches, epoch = [], 0
    while len(batches) < args.mlm_steps:
        batches += length_buckets(nsp_pairs(train_docs, seed=epoch), tokenizer, args.batch_size, seed=epoch)
        epoch += 1
    val_pairs = nsp_pairs(val_docs, seed=12345)[:args.eval_size]

    def mlm_eval(m) -> dict:
        fixed = MLMCollator(tokenizer, max_length=args.max_length, generator=torch.Generator().manual_seed(0))
        return evaluate(m, val_pairs, batch_size=128, collate_fn=fixed)

    log["mlm_at_init"] = mlm_eval(model)
    print("before training:", log["mlm_at_init"])
    t0 = time.perf_counter()
    # For the learning curve: held-out loss (MLM + NSP) on 512 validation pairs every --eval-every steps.
    val_batches = [val_pairs[i:i + 128] for i in range(0, min(512, len(val_pairs)), 128)]
    result = train(SparsePreTrainingLoss(model), batches[:args.mlm_steps], val_batches, batch_size=1,
                   collate_fn=lambda items: collate(items[0]), lr=args.lr, warmup=args.warmup, seed=args.seed,
                   log_every=50, bf16=args.bf16, eval_every=args.eval_every,
                   max_seconds=args.mlm_minutes and 60 * args.mlm_minutes)
    log["mlm_seconds"] = time.perf_counter() - t0
    log["mlm_history"] = result.history
    log["mlm_steps_done"] = result.steps
    log["mlm_examples_seen"] = sum(len(b) for b in batches[:result.steps])
    print(f"MLM+NSP: {result.steps} steps in {log['mlm_seconds']:.0f}s")

    # 3. Causal LM ---------------------------------------------------------------------------------
    causal_config = dataclasses.replace(config, is_decoder=True)
    causal = megabert_edu.MegatronBertForCausalLM(causal_config)
    report = causal.load_state_dict(model.state_dict(), strict=False)  # encoder + LM head; no pooler/NSP
    assert not report.missing_keys, report.missing_keys
    texts = [{"text": corpus_text(d)} for d in train_docs]
    clm_batches, epoch = [], 0
    while len(clm_batches) < args.clm_steps:  # a new shuffle every epoch
        clm_batches += length_buckets(texts, tokenizer, args.batch_size, seed=99 + epoch)
        epoch += 1
    clm_collate = CausalLMCollator(tokenizer, max_length=args.max_length)
    val_texts = [{"text": corpus_text(d)} for d in val_docs][:args.eval_size]
    log["clm_before"] = evaluate(causal, val_texts, batch_size=128, collate_fn=clm_collate)
    t0 = time.perf_counter()
    val_text_batches = [val_texts[i:i + 128] for i in range(0, min(512, len(val_texts)), 128)]
    clm = train(causal, clm_batches[:args.clm_steps], val_text_batches, batch_size=1,
                collate_fn=lambda items: clm_collate(items[0]), lr=args.clm_lr or args.lr / 2, warmup=args.warmup,
                seed=args.seed, log_every=50, bf16=args.bf16, eval_every=args.eval_every,
                max_seconds=args.clm_minutes and 60 * args.clm_minutes)
    log["clm_seconds"] = time.perf_counter() - t0
    log["clm_steps_done"] = clm.steps
    log["clm_history"] = clm.history
    print(f"causal LM: {clm.steps} steps in {log['clm_seconds']:.0f}s")

    # 4. Save (float16), re-load, measure -----------------------------------------------------------
    mlm_dir, clm_dir = args.out / "megabert-tiny", args.out / "megabert-tiny-causal"
    for m, d in ((model, mlm_dir), (causal, clm_dir)):
        m.half().save_pretrained(d)
        m.float()
        tokenizer.save(d)
    model = megabert_edu.MegatronBertForPreTraining.from_pretrained(mlm_dir).eval()
    causal = megabert_edu.MegatronBertForCausalLM.from_pretrained(clm_dir).eval()
    tokenizer = WordPieceTokenizer.from_pretrained(mlm_dir)
    log["mlm_held_out"] = mlm_eval(model)
    log["clm_held_out"] = evaluate(causal, val_texts, batch_size=128, collate_fn=clm_collate)
    print("held out:", log["mlm_held_out"], log["clm_held_out"])

    log["fill_mask"] = {t: [(g["token"], round(g["score"], 3)) for g in fill_mask(model, tokenizer, t)[0]]
                        for t in FILL_MASK_EXAMPLES}
    log["generate_greedy"], log["generate_sampled"] = {}, {}
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)[:-1]])  # drop the final [SEP]: the text goes on
        greedy = generate(causal, ids, max_new_tokens=24, eos_token_id=tokenizer.sep_token_id)
        sampled = generate(causal, ids, max_new_tokens=24, do_sample=True, top_p=0.9, temperature=0.8,
                           eos_token_id=tokenizer.sep_token_id, generator=torch.Generator().manual_seed(0))
        log["generate_greedy"][prompt] = tokenizer.decode(greedy[0], skip_special_tokens=True)
        log["generate_sampled"][prompt] = tokenizer.decode(sampled[0], skip_special_tokens=True)
    log["held_out_words"] = []
    for doc in held_out_words(val_docs):
        ids = torch.tensor([tokenizer.encode(doc[0] + ":")[:-1]])
        greedy = generate(causal, ids, max_new_tokens=24, eos_token_id=tokenizer.sep_token_id)
        sampled = generate(causal, ids, max_new_tokens=24, do_sample=True, top_p=0.9, temperature=0.8,
                           eos_token_id=tokenizer.sep_token_id, generator=torch.Generator().manual_seed(0))
        log["held_out_words"].append({"word": doc[0], "wordnet": doc[1],
                                      "greedy": tokenizer.decode(greedy[0], skip_special_tokens=True),
                                      "sampled": tokenizer.decode(sampled[0], skip_special_tokens=True)})
    m_id = tokenizer.mask_token_id
    blanks = torch.tensor([tokenizer.encode("a [MASK] [MASK] [MASK] [MASK] [MASK] of water")])
    specials = tuple(tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    written = sample_mlm(model, blanks, m_id, steps=10, temperature=0.8, special_ids=specials,
                         generator=torch.Generator().manual_seed(0))
    log["mask_predict"] = tokenizer.decode(written[0], skip_special_tokens=True)
    log["curves"] = {"mlm": curves(log["mlm_history"]), "clm": curves(log["clm_history"])}
    log["total_seconds"] = time.perf_counter() - started
    log["hardware"] = (f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), "
                       f"{args.threads} torch thread(s), torch {torch.__version__}")
    log["parameters"] = {"pretraining": model.num_parameters(), "causal": causal.num_parameters()}
    (args.out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    examples = ("fill_mask", "generate_greedy", "generate_sampled", "held_out_words", "mask_predict")
    print(json.dumps({k: log[k] for k in examples}, indent=1))
    print(f"done in {log['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
