"""The shipped teaching models (megabert_edu/assets) against their log, their model card, and their TF copy.

scripts/pretrain_tiny.py trains the models and writes training_log.json beside them; these tests
re-measure the shipped files and check that the log and the model card describe exactly them.
scripts/make_tf_fixtures.py --shipped writes the MLM model with real TensorFlow into
tests/fixtures/megabert-tiny-tf; it must hold the same float16 numbers as model.safetensors.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from megabert_edu import MegatronBertForCausalLM, MegatronBertForPreTraining
from megabert_edu.assets import ASSETS, TINY, TINY_CAUSAL
from megabert_edu.checkpoints.hf import read_state_dict
from megabert_edu.checkpoints.tf import list_tf_variables, read_tf_checkpoint, state_dict_to_tf
from megabert_edu.generation import generate
from megabert_edu.tokenization import WordPieceTokenizer
from megabert_edu.training import CausalLMCollator, MLMCollator, evaluate, nsp_pairs

REPO = Path(__file__).parent.parent
TF_COPY = Path(__file__).parent / "fixtures" / "megabert-tiny-tf" / "model.ckpt"
LOG = json.loads((ASSETS / "training_log.json").read_text())
CARD = (ASSETS / "README.md").read_text()


@pytest.fixture(scope="module")
def script():
    """scripts/pretrain_tiny.py as a module (scripts/ is not a package): its data preparation."""
    spec = importlib.util.spec_from_file_location("pretrain_tiny", REPO / "scripts" / "pretrain_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer.from_pretrained(TINY)


# ---- the TF copy ------------------------------------------------------------------------------------


def test_tf_copy_holds_the_shipped_weights_bit_for_bit():
    ours = state_dict_to_tf(read_state_dict(TINY))  # the safetensors file under its TF names
    from_tf = read_tf_checkpoint(TF_COPY)
    assert sorted(from_tf) == sorted(ours)
    assert {v.dtype for v in list_tf_variables(TF_COPY)} == {"float16"}  # as the index lists them
    for name, array in ours.items():
        assert from_tf[name].dtype == np.float16, name
        assert from_tf[name].shape == array.shape, name
        assert np.array_equal(from_tf[name].view(np.uint16), array.view(np.uint16)), name  # every bit


def test_tf_copy_loads_as_the_same_model(tokenizer):
    original = MegatronBertForPreTraining.from_pretrained(TINY).eval()
    from_tf = MegatronBertForPreTraining.from_pretrained(TF_COPY).eval()
    assert from_tf.config.layer_norm_position == "pre"  # from the TF names (Megatron's "ln" scopes)
    assert from_tf.load_report.ok
    theirs = from_tf.state_dict()
    for key, value in original.state_dict().items():
        assert torch.equal(theirs[key], value), key
    batch = tokenizer(["a young [MASK] that is kept as a pet"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(original(**batch).prediction_logits, from_tf(**batch).prediction_logits)


# ---- the assets, their log and their card -------------------------------------------------------------


def test_assets_are_stored_in_float16():
    for directory in (TINY, TINY_CAUSAL):
        with safe_open(directory / "model.safetensors", framework="pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {"F16"}, directory


def test_logged_held_out_metrics_are_those_of_the_shipped_files(script, tokenizer):
    """Re-measure the validation numbers the way the script does, on the files as shipped."""
    args = LOG["args"]
    size, max_length = int(args["eval_size"]), int(args["max_length"])
    val_docs = script.documents("validation")
    model = MegatronBertForPreTraining.from_pretrained(TINY).eval()
    pairs = nsp_pairs(val_docs, seed=12345)[:size]
    masks = MLMCollator(tokenizer, max_length=max_length, generator=torch.Generator().manual_seed(0))
    mlm = evaluate(model, pairs, batch_size=128, collate_fn=masks)
    for name in ("mlm_accuracy", "perplexity", "nsp_accuracy"):
        assert mlm[name] == pytest.approx(LOG["mlm_held_out"][name], rel=1e-4), name
    causal = MegatronBertForCausalLM.from_pretrained(TINY_CAUSAL).eval()
    texts = [{"text": script.corpus_text(d)} for d in val_docs][:size]
    clm = evaluate(causal, texts, batch_size=128, collate_fn=CausalLMCollator(tokenizer, max_length=max_length))
    for name in ("accuracy", "perplexity"):
        assert clm[name] == pytest.approx(LOG["clm_held_out"][name], rel=1e-4), name


def test_logged_generations_are_what_the_shipped_model_writes(script, tokenizer):
    causal = MegatronBertForCausalLM.from_pretrained(TINY_CAUSAL).eval()
    words = script.held_out_words(script.documents("validation"))
    assert [d[0] for d in words] == [g["word"] for g in LOG["held_out_words"]]
    for doc, logged in zip(words, LOG["held_out_words"], strict=True):
        ids = torch.tensor([tokenizer.encode(doc[0] + ":")[:-1]])  # no final [SEP]: the text goes on
        greedy = generate(causal, ids, max_new_tokens=24, eos_token_id=tokenizer.sep_token_id)
        assert tokenizer.decode(greedy[0], skip_special_tokens=True) == logged["greedy"]


def test_model_card_reports_the_logged_numbers_and_generations():
    assert f"**{LOG['mlm_held_out']['mlm_accuracy']:.1%}**" in CARD
    assert f"**{LOG['clm_held_out']['perplexity']:,.0f}**" in CARD
    for logged in LOG["held_out_words"]:
        assert logged["greedy"] in CARD, logged["word"]
        assert logged["sampled"] in CARD, logged["word"]
