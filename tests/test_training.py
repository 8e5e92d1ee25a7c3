"""The training loop (determinism, accumulation, DDP on two gloo processes), metrics and collators."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from reference import tiny_config

import megabert_edu
from megabert_edu.data import load_wordnet
from megabert_edu.tokenization import SPECIAL_TOKENS, WordPieceTokenizer, train_wordpiece
from megabert_edu.training import (
    IGNORE_INDEX,
    CausalLMCollator,
    MLMCollator,
    TrainConfig,
    accuracy,
    best_spans,
    evaluate,
    f1_score,
    linear_schedule,
    nsp_pairs,
    span_metrics,
    train,
    trim_padding,
)

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: a second thread only adds synchronisation (and, on a busy machine, waiting).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_classification(n: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Label = which of tokens 5, 6, 7 occurs most often: learnable, not trivial. Right-padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 8, (n, 12), generator=g)
    lengths = torch.randint(6, 13, (n,), generator=g)
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    counts = torch.stack([((ids == t) & (mask == 1)).sum(1) for t in (5, 6, 7)], dim=1)
    return {"input_ids": ids, "attention_mask": mask, "labels": counts.argmax(1)}


def classifier(dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    config = tiny_config(num_labels=3, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return megabert_edu.MegatronBertForSequenceClassification(config)


def run(model, data, **kwargs):
    kwargs = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "progress": False, **kwargs}
    return train(model, data, **kwargs)


def same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> bool:
    return all(torch.allclose(x, y, atol=atol, rtol=0) for x, y in zip(a.state_dict().values(),
                                                                       b.state_dict().values(), strict=True))


# ---------------------------------------------------------------------------------------------------
# The loop


def test_training_learns_the_toy_task():
    data, held_out = toy_classification(256), toy_classification(128, seed=1)
    model = classifier()
    before = evaluate(model, held_out)
    result = run(model, data, eval_data=held_out, epochs=6, eval_every=40)
    assert result.steps == 6 * 32
    assert result.metrics["accuracy"] > before["accuracy"] + 0.2 and result.metrics["accuracy"] > 0.7
    assert result.metrics["loss"] < before["loss"]
    assert [h["step"] for h in result.history if "eval" in h] == [40, 80, 120, 160, 192]
    assert set(result.metrics) == {"loss", "accuracy", "f1"}


def test_training_is_deterministic_with_dropout():
    data = toy_classification()
    a, b, c = classifier(0.1), classifier(0.1), classifier(0.1)
    run(a, data, seed=3), run(b, data, seed=3), run(c, data, seed=4)
    assert same_weights(a, b)
    assert not same_weights(a, c)


def test_gradient_accumulation_equals_a_bigger_batch():
    data = toy_classification()
    a, b = classifier(), classifier()
    run(a, data, batch_size=8)
    run(b, data, batch_size=4, grad_accum_steps=2)
    assert same_weights(a, b, atol=1e-5)
    c = classifier()
    run(c, data, batch_size=4)  # twice as many, smaller steps: different weights
    assert not same_weights(a, c, atol=1e-3)


def test_max_steps_and_schedule():
    model = classifier()
    result = run(model, toy_classification(), max_steps=5, warmup=2, log_every=1)
    assert result.steps == 5 and [h["step"] for h in result.history] == [1, 2, 3, 4, 5]
    assert result.history[-1]["lr"] == 0.0  # decayed to zero at the last step
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_schedule(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_train_counts_examples_and_times_evaluation_apart():
    data, held_out = toy_classification(60), toy_classification(32, seed=1)  # batches of 8: 7 full, 1 of 4
    result = run(classifier(), data, eval_data=held_out, epochs=2, eval_every=5)  # evaluates at steps 5, 10, 15
    assert result.steps == 16 and result.examples == 2 * 60
    assert 0 < result.eval_seconds < result.seconds
    assert result.examples_per_second == pytest.approx(120 / (result.seconds - result.eval_seconds))
    accumulated = run(classifier(), data, batch_size=4, grad_accum_steps=2, max_steps=3)
    assert accumulated.examples == 3 * 2 * 4 and accumulated.eval_seconds == 0.0


DDP_WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_training import classifier, toy_classification
    from megabert_edu.training import train
    model = classifier()
    train(model, toy_classification(), epochs=2, batch_size=2, grad_accum_steps=2, lr=1e-3, progress=False)
    if dist.get_rank() == 0:
        torch.save(model.state_dict(), {out!r})
    dist.destroy_process_group()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_equal_single_process(tmp_path):
    # torchrun starts 2 CPU processes; each trains on micro-batches of 2 with 2 accumulation steps,
    # so one optimizer step sees 2 x 2 x 2 = 8 examples: the same global batches as batch_size=8 here.
    out = tmp_path / "ddp.pt"
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER.format(tests=str(TESTS), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(worker)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = classifier()
    run(single, toy_classification(), batch_size=8)
    ddp = classifier()
    ddp.load_state_dict(torch.load(out))
    assert same_weights(single, ddp, atol=1e-5)
    assert not same_weights(classifier(), ddp, atol=1e-3)  # it did train


# ---------------------------------------------------------------------------------------------------
# Metrics and evaluation


def test_accuracy_and_f1():
    preds = torch.tensor([0, 1, 1, 2, 2, 2, 0])
    labels = torch.tensor([0, 1, 2, 2, 2, 0, IGNORE_INDEX])
    assert accuracy(preds, labels) == pytest.approx(4 / 6)
    # class 0: tp 1 fp 0 fn 1 -> 2/3; class 1: tp 1 fp 1 fn 0 -> 2/3; class 2: tp 2 fp 1 fn 1 -> 2/3
    assert f1_score(preds, labels) == pytest.approx(2 / 3)
    assert f1_score(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0]), "binary") == pytest.approx(0.5)


def test_spans():
    start = torch.tensor([[-10.0, 5.0, 1.0, 0.0]])
    end = torch.tensor([[9.0, 0.0, 0.0, 3.0]])  # the best end (0) lies before the best start: not allowed
    s, e = best_spans(start, end)
    assert (s.item(), e.item()) == (1, 3)
    m = span_metrics(torch.tensor([1, 2]), torch.tensor([3, 2]), torch.tensor([1, 0]), torch.tensor([3, 1]))
    assert m == pytest.approx({"exact_match": 0.5, "f1": 0.5})
    m = span_metrics(torch.tensor([1]), torch.tensor([2]), torch.tensor([2]), torch.tensor([4]))
    assert m["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))  # 1 shared token of 2 and of 3


def test_evaluate_picks_metrics_per_head():
    torch.manual_seed(0)
    ids = torch.randint(5, 99, (6, 10))
    qa = megabert_edu.MegatronBertForQuestionAnswering(tiny_config())
    spans = {"start_positions": torch.full((6,), 2), "end_positions": torch.full((6,), 3)}
    m = evaluate(qa, {"input_ids": ids, **spans})
    assert set(m) == {"loss", "exact_match", "f1"}
    tagger = megabert_edu.MegatronBertForTokenClassification(tiny_config(num_labels=3))
    labels = torch.randint(0, 3, (6, 10)).masked_fill(torch.rand(6, 10) < 0.3, IGNORE_INDEX)
    assert set(evaluate(tagger, {"input_ids": ids, "labels": labels})) == {"loss", "accuracy", "f1"}
    mlm = megabert_edu.MegatronBertForMaskedLM(tiny_config())
    m = evaluate(mlm, {"input_ids": ids, "labels": labels})
    assert set(m) == {"loss", "accuracy", "perplexity"}
    assert m["perplexity"] == pytest.approx(2.718281828 ** m["loss"])


def test_trim_padding():
    batch = {"input_ids": torch.tensor([[1, 2, 0, 0], [1, 0, 0, 0]]), "attention_mask": torch.tensor(
        [[1, 1, 0, 0], [1, 0, 0, 0]]), "labels": torch.tensor([3, 4])}
    out = trim_padding(batch)
    assert out["input_ids"].shape == (2, 2) and out["labels"].tolist() == [3, 4]


def test_trim_padding_keeps_every_real_token_of_a_left_padded_batch():
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 0]])  # left padding, and one unused column at the end
    ids = torch.tensor([[0, 0, 7, 8, 0], [0, 6, 7, 8, 0]])
    out = trim_padding({"input_ids": ids, "attention_mask": mask})
    assert out["input_ids"].tolist() == [[0, 0, 7, 8], [0, 6, 7, 8]]  # the trailing column only
    assert out["attention_mask"].sum() == mask.sum()


def test_left_padded_data_evaluates_like_right_padded():
    # A tagger scores every real token: dropping any of them (trimming the wrong side) changes the loss.
    right = toy_classification(16)
    mask = right["attention_mask"]
    right["labels"] = (right["input_ids"] - 5).masked_fill(mask == 0, IGNORE_INDEX)  # tag = which token
    shift = (mask.shape[1] - mask.sum(1)).tolist()
    left = {k: torch.stack([row.roll(n) for row, n in zip(v, shift, strict=True)]) for k, v in right.items()}
    left["position_ids"] = (left["attention_mask"].cumsum(1) - 1).clamp(min=0)  # real tokens start at 0
    torch.manual_seed(0)
    tagger = megabert_edu.MegatronBertForTokenClassification(tiny_config(num_labels=3))
    a, b = evaluate(tagger, right, batch_size=16), evaluate(tagger, left, batch_size=16)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["accuracy"] == b["accuracy"]


# ---------------------------------------------------------------------------------------------------
# TrainConfig and non-finite steps


def test_train_config_and_keywords_are_the_same_run():
    data = toy_classification()
    a, b = classifier(), classifier()
    run(a, data, lr=2e-3, seed=5)
    train(b, data, config=TrainConfig(epochs=2, batch_size=8, lr=2e-3, seed=5, progress=False))
    assert same_weights(a, b)
    c = classifier()
    train(c, data, config=TrainConfig(epochs=2, batch_size=8, lr=1.0), lr=2e-3, seed=5, progress=False)
    assert same_weights(a, c)  # keywords override the config's fields


def test_train_reports_the_precision_it_chose():
    result = run(classifier(), toy_classification(16), epochs=1)
    assert result.precision.startswith("CPU: fp32")
    result = run(classifier(), toy_classification(16), epochs=1, bf16=True)  # the keyword before TrainConfig
    assert result.precision == "bf16 requested"


def test_fp16_trains_through_the_grad_scaler():
    # fp16 is what choose_precision picks on GPUs without bf16; the CPU runs the same scaler code.
    model = classifier()
    result = run(model, toy_classification(), max_steps=4, precision="fp16", log_every=1)
    assert result.precision == "fp16 requested" and result.steps == 4
    assert all(p.isfinite().all() for p in model.parameters())
    assert not same_weights(model, classifier())


class LossTimes(torch.nn.Module):
    """A classifier whose loss is multiplied by `factor` on the forward calls listed in `at`.

    It keeps a copy of the weights as they were when the first poisoned call began.
    """

    def __init__(self, model, at: set[int], factor: float):
        super().__init__()
        self.model, self.at, self.factor, self.calls, self.before = model, at, factor, 0, None

    def forward(self, **batch):
        self.calls += 1
        if self.calls in self.at and self.before is None:
            self.before = {k: v.clone() for k, v in self.model.state_dict().items()}
        out = self.model(**batch)
        if self.calls in self.at:
            out.loss = out.loss * self.factor
        return out


@pytest.mark.parametrize("factor", [float("nan"), float("inf")])
def test_non_finite_loss_stops_before_touching_the_weights(factor):
    model = classifier()
    poisoned = LossTimes(model, at={3}, factor=factor)
    with pytest.raises(FloatingPointError, match=r"step 3: the loss is (nan|inf)"):
        run(poisoned, toy_classification(), max_steps=5)
    assert all(p.isfinite().all() for p in model.parameters())
    after_step_2 = poisoned.before
    assert all(torch.equal(v, after_step_2[k]) for k, v in model.state_dict().items())
    assert not same_weights(model, classifier())  # steps 1 and 2 did train


def test_on_nan_skip_counts_and_logs_the_skipped_steps():
    model = classifier()
    result = run(LossTimes(model, at={2, 4}, factor=float("nan")), toy_classification(), max_steps=6, log_every=1,
                 on_nan="skip")
    assert result.steps == 6 and result.skipped_steps == 2
    assert [h["step"] for h in result.history if "skipped" in h] == [2, 4]
    assert [h["step"] for h in result.history if "loss" in h] == [1, 3, 5, 6]
    assert all(p.isfinite().all() for p in model.parameters())
    assert not same_weights(model, classifier())  # the other steps trained


def test_mlm_collator_masks_at_least_one_token_per_row(tokenizer):
    short = [{"text": w} for w in ("dog", "a cat", "run fast", "blue", "tree", "go", "it is", "red sky")] * 25
    for whole_word in (False, True):
        collate = MLMCollator(tokenizer, whole_word=whole_word, generator=torch.Generator().manual_seed(0))
        batch = collate(short)
        assert bool(((batch["labels"] != IGNORE_INDEX).sum(1) >= 1).all())
    model = megabert_edu.MegatronBertForMaskedLM(tiny_config(vocab_size=tokenizer.vocab_size))
    assert model(**MLMCollator(tokenizer)(short[:8])).loss.isfinite()


# ---------------------------------------------------------------------------------------------------
# Pre-training collators


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    return train_wordpiece([r["text"] for r in load_wordnet("corpus", "validation")], vocab_size=2000)


@pytest.fixture(scope="module")
def texts() -> list[dict]:
    return [{"text": r["text"]} for r in load_wordnet("corpus", "validation", limit=400)]


def test_mlm_collator_80_10_10(tokenizer, texts):
    collate = MLMCollator(tokenizer, max_length=64, generator=torch.Generator().manual_seed(0))
    batch = collate(texts)
    original = tokenizer([t["text"] for t in texts], padding=True, truncation=True, max_length=64,
                         return_tensors="pt")["input_ids"]
    picked = batch["labels"] != IGNORE_INDEX
    special = torch.isin(original, torch.tensor([tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]))
    assert not (picked & special).any()
    assert torch.equal(batch["labels"][picked], original[picked])
    assert torch.equal(batch["input_ids"][~picked], original[~picked])  # only picked tokens change
    n = picked.sum().item()
    assert abs(n / (~special).sum().item() - 0.15) < 0.02
    as_mask = (batch["input_ids"][picked] == tokenizer.mask_token_id).sum().item() / n
    unchanged = (batch["input_ids"][picked] == original[picked]).sum().item() / n
    assert abs(as_mask - 0.8) < 0.03 and abs(unchanged - 0.1) < 0.03  # the rest (~10%) are random tokens
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}


def test_whole_word_masking_masks_every_piece(tokenizer, texts):
    g = torch.Generator().manual_seed(1)
    collate = MLMCollator(tokenizer, max_length=64, whole_word=True, generator=g)
    batch = collate(texts)
    picked = batch["labels"] != IGNORE_INDEX
    original = tokenizer([t["text"] for t in texts], padding=True, truncation=True, max_length=64,
                         return_tensors="pt")["input_ids"]
    tokens = [tokenizer.convert_ids_to_tokens(row) for row in original.tolist()]
    pieces = 0
    for b, row in enumerate(tokens):
        for t in range(1, len(row)):
            if row[t].startswith("##"):
                pieces += 1
                assert picked[b, t] == picked[b, t - 1], f"word split by masking at {row[t - 1:t + 1]}"
    assert pieces > 100  # the check above was exercised
    special = torch.isin(original, torch.tensor(range(len(SPECIAL_TOKENS))))
    assert 0.1 < picked.sum().item() / (~special).sum().item() < 0.2


def test_mlm_collator_pairs_and_nsp_labels(tokenizer):
    docs = [[f"doc {i} part {j}" for j in range(2 + i % 3)] for i in range(60)]
    pairs = nsp_pairs(docs, seed=0)
    assert len(pairs) == 60 and 15 < sum(p["label"] for p in pairs) < 45
    for p, doc in zip(pairs, docs, strict=True):
        joined = " ".join(doc)
        if p["label"] == 0:
            assert p["text_a"] + " " + p["text_b"] == joined  # B really continues A
        else:
            assert joined.startswith(p["text_a"] + " ") and not joined.endswith(" " + p["text_b"])
    assert pairs == nsp_pairs(docs, seed=0) and pairs != nsp_pairs(docs, seed=1)
    batch = MLMCollator(tokenizer)(pairs)
    assert batch["next_sentence_label"].tolist() == [p["label"] for p in pairs]
    assert (batch["token_type_ids"] == 1).any()
    model = megabert_edu.MegatronBertForPreTraining(tiny_config(vocab_size=tokenizer.vocab_size))
    assert model(**batch).loss.isfinite()


def test_causal_lm_collator(tokenizer, texts):
    batch = CausalLMCollator(tokenizer, max_length=32)(texts[:8])
    assert torch.equal(batch["labels"] == IGNORE_INDEX, batch["attention_mask"] == 0)
    config = tiny_config(vocab_size=tokenizer.vocab_size, is_decoder=True)
    model = megabert_edu.MegatronBertForCausalLM(config)
    collate = CausalLMCollator(tokenizer, 32)
    before = evaluate(model, texts[64:96], collate_fn=collate)
    result = train(model, texts[:64], collate_fn=collate, batch_size=16, lr=3e-3, epochs=3, progress=False,
                   eval_data=texts[64:96])
    assert set(result.metrics) == {"loss", "accuracy", "perplexity"}
    assert result.metrics["perplexity"] < 0.75 * before["perplexity"], (before, result.metrics)
