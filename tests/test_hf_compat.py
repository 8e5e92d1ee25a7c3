"""Code written for transformers' MegatronBert runs unchanged here (issue 8): outputs index like ModelOutput,
return_dict=False and torchscript give tuples, embeddings can be read, replaced and resized, pruning takes
negative layers, gradient checkpointing honours use_reentrant, and Trainer finds every label argument.
Each behaviour is checked against transformers 4.57.6 on the same weights.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext

import pytest
import torch
import transformers
from transformers.utils import find_labels

import megabert_edu as mb

KW = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
          max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
NAMES = ["MegatronBertModel", "MegatronBertForPreTraining", "MegatronBertForMaskedLM", "MegatronBertForCausalLM",
         "MegatronBertForNextSentencePrediction", "MegatronBertForSequenceClassification",
         "MegatronBertForMultipleChoice", "MegatronBertForTokenClassification", "MegatronBertForQuestionAnswering"]
LM_NAMES = ["MegatronBertForPreTraining", "MegatronBertForMaskedLM", "MegatronBertForCausalLM"]
B, T, C = 2, 7, 3


def pair(name: str, **overrides):
    """(ours, transformers') in eval mode with identical weights."""
    kw = {**KW, "is_decoder": name == "MegatronBertForCausalLM", **overrides}
    torch.manual_seed(0)
    ours = getattr(mb, name)(mb.MegatronBertConfig(**kw)).eval()
    ref = getattr(transformers, name)(transformers.MegatronBertConfig(**kw)).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    return ours, ref


def inputs(name: str, labels: bool) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 99, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -2:] = 0
    batch = dict(input_ids=ids, attention_mask=mask)
    if labels:
        token_labels = torch.randint(0, 2, (B, T), generator=g)
        batch.update({
            "MegatronBertForPreTraining": dict(labels=token_labels, next_sentence_label=torch.tensor([0, 1])),
            "MegatronBertForMaskedLM": dict(labels=token_labels), "MegatronBertForCausalLM": dict(labels=ids),
            "MegatronBertForNextSentencePrediction": dict(labels=torch.tensor([1, 0])),
            "MegatronBertForSequenceClassification": dict(labels=torch.tensor([1, 0])),
            "MegatronBertForMultipleChoice": dict(labels=torch.tensor([2, 0])),
            "MegatronBertForTokenClassification": dict(labels=token_labels),
            "MegatronBertForQuestionAnswering": dict(start_positions=torch.tensor([1, 3]),
                                                     end_positions=torch.tensor([2, 9])),
        }.get(name, {}))
    if name == "MegatronBertForMultipleChoice":
        batch["input_ids"] = ids[:, None].expand(-1, C, -1).contiguous()  # (B, C, T)
        batch["attention_mask"] = mask[:, None].expand(-1, C, -1).contiguous()
    return batch


def assert_same_structure(ours, ref, name="output"):
    """Same nesting, same lengths, same numbers (tensors compared to 1e-5)."""
    if isinstance(ref, torch.Tensor):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4, msg=name)
        return
    if hasattr(ref, "to_legacy_cache"):  # transformers' Cache object <-> our per-layer tuples
        ref = ref.to_legacy_cache()
    ref = [r for r in ref if r is not None]  # its legacy cache entries end in (None, None) without cross-attention
    assert len(ours) == len(ref), f"{name}: {len(ours)} items, reference {len(ref)}"
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert_same_structure(a, b, f"{name}[{i}]")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("labels", [False, True], ids=["no labels", "labels"])
def test_outputs_index_like_model_output(name, labels):
    ours, ref = pair(name)
    batch = inputs(name, labels)
    with torch.no_grad():
        out = ours(**batch, output_hidden_states=True, output_attentions=True)
        expected = ref(**batch, output_hidden_states=True, output_attentions=True)
    assert out.keys() == list(expected.keys())
    assert list(out) == list(expected) and len(out) == len(expected)
    assert [k for k, _ in out.items()] == list(expected.keys())
    assert ("loss" in out) == ("loss" in expected) == (labels and name != "MegatronBertModel")
    assert_same_structure(out[0], expected[0])
    assert_same_structure(out[1:3], expected[1:3])
    assert_same_structure(out[-1], expected[-1])
    assert_same_structure(out.to_tuple(), expected.to_tuple())
    assert_same_structure(tuple(out.values()), tuple(expected.values()))
    first = next(iter(expected))
    assert_same_structure(out[first], expected[first])
    assert out.get("cross_attentions", "absent") == expected.get("cross_attentions", "absent") == "absent"


@pytest.mark.parametrize("name", NAMES)
def test_return_dict_false_returns_the_reference_tuple(name):
    ours, ref = pair(name)
    batch = inputs(name, labels=True)
    with torch.no_grad():
        out = ours(**batch, output_hidden_states=True, return_dict=False)
        expected = ref(**batch, output_hidden_states=True, return_dict=False)
    assert type(out) is tuple
    assert_same_structure(out, expected)


def test_config_return_dict_false_returns_tuples():
    ours, ref = pair("MegatronBertForSequenceClassification", return_dict=False)
    batch = inputs("MegatronBertForSequenceClassification", labels=True)
    out, expected = ours(**batch), ref(**batch)
    assert type(out) is tuple and len(out) == len(expected) == 2
    assert ours.config.use_return_dict is False
    assert type(ours(**batch, return_dict=True)) is not tuple  # the argument wins over the config


@pytest.mark.parametrize("name", ["MegatronBertModel", "MegatronBertForMaskedLM", "MegatronBertForQuestionAnswering"])
def test_torchscript_config_makes_the_model_traceable(name):
    ours, ref = pair(name, torchscript=True)
    ids = inputs(name, labels=False)["input_ids"]
    with torch.no_grad():
        traced = torch.jit.trace(ours, (ids,))
        out = traced(ids)
    assert type(out) is tuple
    assert_same_structure(out, ref(ids))
    if name == "MegatronBertForMaskedLM":  # the tie is kept (transformers copies the matrix under torchscript)
        assert ours.get_output_embeddings().weight is ours.get_input_embeddings().weight


def test_torchscript_model_loads_and_traces(tmp_path):
    ours, _ = pair("MegatronBertForMaskedLM")
    ours.save_pretrained(tmp_path)
    loaded = mb.MegatronBertForMaskedLM.from_pretrained(tmp_path, torchscript=True)
    ids = inputs("MegatronBertForMaskedLM", labels=False)["input_ids"]
    with torch.no_grad():
        traced = torch.jit.trace(loaded, (ids,))
        torch.testing.assert_close(traced(ids)[0], ours(ids).logits)


# ---- embeddings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_embedding_accessors(name):
    ours, ref = pair(name)
    assert ours.get_input_embeddings().weight.shape == ref.get_input_embeddings().weight.shape
    assert (ours.get_output_embeddings() is None) == (ref.get_output_embeddings() is None) == (name not in LM_NAMES)
    if name in LM_NAMES:
        assert ours.get_output_embeddings() is ours.cls.predictions.decoder
        assert ours.get_output_embeddings().weight is ours.get_input_embeddings().weight
    new = torch.nn.Embedding(99, 32)
    ours.set_input_embeddings(new)
    assert ours.get_input_embeddings() is new and ours.base_model.embeddings.word_embeddings is new


def test_set_output_embeddings_moves_the_bias_too():
    ours, _ = pair("MegatronBertForMaskedLM")
    decoder = torch.nn.Linear(32, 99)
    ours.set_output_embeddings(decoder)
    assert ours.get_output_embeddings() is decoder and ours.cls.predictions.bias is decoder.bias
    assert "cls.predictions.bias" in dict(ours.named_parameters())
    with pytest.raises(AttributeError, match="MegatronBertModel has no LM head"):
        mb.MegatronBertModel(mb.MegatronBertConfig(**KW)).set_output_embeddings(decoder)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("name", ["MegatronBertForMaskedLM", "MegatronBertForPreTraining", "MegatronBertModel"])
def test_resize_token_embeddings_like_transformers(name, tied):
    ours, ref = pair(name, tie_word_embeddings=tied)
    batch = inputs(name, labels=False)
    with torch.no_grad():
        before = ours(**batch)[0]
    for model in (ours, ref):
        torch.manual_seed(3)
        returned = model.resize_token_embeddings(120)
        assert returned is model.get_input_embeddings() and returned.weight.shape == (120, 32)
        assert model.config.vocab_size == 120 and model.vocab_size == 120
    old = ref.get_input_embeddings().weight[:99]
    for model in (ours, ref):  # added rows: the old rows' mean, up to a 1e-9-scaled covariance
        new_rows = model.get_input_embeddings().weight[99:]
        torch.testing.assert_close(new_rows, old.mean(0).expand(21, -1), atol=1e-3, rtol=0)
    torch.testing.assert_close(ours.get_input_embeddings().weight, ref.get_input_embeddings().weight,
                               atol=1e-3, rtol=0)
    if name in LM_NAMES:
        decoder, ref_decoder = ours.get_output_embeddings(), ref.get_output_embeddings()
        assert decoder.weight.shape == ref_decoder.weight.shape == (120, 32)
        assert decoder.bias is ours.cls.predictions.bias and decoder.bias.shape == (120,)
        assert (decoder.weight is ours.get_input_embeddings().weight) == tied
        torch.testing.assert_close(decoder.bias, ref_decoder.bias, atol=1e-6, rtol=0)
        torch.testing.assert_close(decoder.weight, ref_decoder.weight, atol=1e-3, rtol=0)
    with torch.no_grad():
        after = ours(**batch)[0]
        expected = ref(**batch)[0]
    torch.testing.assert_close(after[..., :99] if name in LM_NAMES else after, before, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(after, expected, atol=1e-3, rtol=1e-3)


def test_resize_pads_to_a_multiple_and_shrinks():
    ours, ref = pair("MegatronBertForMaskedLM")
    assert ours.resize_token_embeddings(100, pad_to_multiple_of=64).num_embeddings == 128
    assert ref.resize_token_embeddings(100, pad_to_multiple_of=64).num_embeddings == 128
    assert ours.resize_token_embeddings(pad_to_multiple_of=48).num_embeddings == 144  # None: pad the current size
    ours.resize_token_embeddings(50)
    assert ours.get_output_embeddings().weight.shape == (50, 32) and ours.cls.predictions.bias.shape == (50,)
    assert ours(torch.randint(0, 50, (1, 5))).logits.shape == (1, 5, 50)
    assert ours.resize_token_embeddings() is ours.get_input_embeddings()  # nothing asked: nothing changes


def test_resize_without_mean_resizing_uses_the_init_distribution():
    ours, _ = pair("MegatronBertForMaskedLM")
    torch.manual_seed(0)
    ours.resize_token_embeddings(5099, mean_resizing=False)
    added = ours.get_input_embeddings().weight[99:]
    assert abs(added.std().item() - ours.config.initializer_range) < 1e-3


# ---- pruning -----------------------------------------------------------------------------------------------


def test_prune_negative_layer_like_transformers():
    ours, ref = pair("MegatronBertModel")
    ours.prune_heads({-1: [0, 2], 0: [1]})
    ref.prune_heads({-1: [0, 2], 0: [1]})
    assert ours.config.pruned_heads == {1: [0, 2], 0: [1]}
    batch = inputs("MegatronBertModel", labels=False)
    with torch.no_grad():
        out, expected = ours(**batch, output_attentions=True), ref(**batch, output_attentions=True)
    assert [a.shape[1] for a in out.attentions] == [a.shape[1] for a in expected.attentions] == [3, 2]
    torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-4)


# ---- gradient checkpointing ---------------------------------------------------------------------------------


def layer_grads(model, batch):
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if ".encoder.layer." in n}


@pytest.mark.parametrize("kwargs", [None, {"use_reentrant": True}, {"use_reentrant": False}],
                         ids=["default", "reentrant", "non-reentrant"])
def test_gradient_checkpointing_gives_the_same_gradients(kwargs):
    ours, _ = pair("MegatronBertForSequenceClassification")
    ours.train()
    batch = inputs("MegatronBertForSequenceClassification", labels=True)
    plain = layer_grads(ours, batch)
    assert ours.supports_gradient_checkpointing and not ours.is_gradient_checkpointing
    ours.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    assert ours.is_gradient_checkpointing
    checkpointed = layer_grads(ours, batch)
    for n, g in plain.items():
        torch.testing.assert_close(checkpointed[n], g, atol=1e-6, rtol=1e-5, msg=n)
    ours.gradient_checkpointing_disable()
    assert not ours.is_gradient_checkpointing


@pytest.mark.parametrize("use_reentrant", [None, True, False], ids=["default", "reentrant", "non-reentrant"])
def test_use_reentrant_is_honoured_like_transformers(use_reentrant):
    """Frozen embeddings: reentrant checkpointing sees no input that needs a gradient, so the layers get none
    (a known transformers pitfall); non-reentrant checkpointing still trains them. Same in both libraries."""
    kwargs = None if use_reentrant is None else {"use_reentrant": use_reentrant}
    got = {}
    for lib, model in zip(("ours", "reference"), pair("MegatronBertForSequenceClassification"), strict=True):
        model.train()
        model.get_input_embeddings().requires_grad_(False)
        model.base_model.embeddings.position_embeddings.requires_grad_(False)
        model.base_model.embeddings.token_type_embeddings.requires_grad_(False)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        with pytest.warns(UserWarning, match="requires_grad") if use_reentrant is not False else nullcontext():
            grads = layer_grads(model, inputs("MegatronBertForSequenceClassification", labels=True))
        got[lib] = sorted(n.split("encoder.")[1] for n, g in grads.items() if g is not None)
    assert got["ours"] == got["reference"]
    assert (got["ours"] == []) == (use_reentrant is not False)


def test_gradient_checkpointing_flag_in_the_config_enables_it():
    config = mb.MegatronBertConfig(**KW)
    config.gradient_checkpointing = True  # what old config.json files carry
    model = mb.MegatronBertForMaskedLM(config)
    assert model.is_gradient_checkpointing
    assert "gradient_checkpointing" not in config.to_dict()


# ---- signatures: what Trainer and pipelines read ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_signatures_expose_input_ids_and_labels_like_transformers(name):
    ours, ref = getattr(mb, name), getattr(transformers, name)
    assert ours.main_input_name == ref.main_input_name == "input_ids"
    assert list(inspect.signature(ours.forward).parameters)[1] == "input_ids"
    assert find_labels(ours) == find_labels(ref)
    ours_params = [p for p in inspect.signature(ours.forward).parameters if p != "kwargs"]
    ref_params = [p for p in inspect.signature(ref.forward).parameters if p not in ("kwargs", "cache_position")]
    assert ours_params == ref_params  # same names, same order: positional calls mean the same thing
