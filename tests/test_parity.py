"""Parity with the reference (transformers 4.57.6 MegatronBert / Bert): same weights, same numbers."""

from __future__ import annotations

import pytest
import torch
import transformers
from reference import assert_close, assert_outputs_match, legacy, make_pair, reference_config, tiny_config

import megabert_edu

TASKS = ["MegatronBertModel", "MegatronBertForPreTraining", "MegatronBertForMaskedLM", "MegatronBertForCausalLM",
         "MegatronBertForNextSentencePrediction", "MegatronBertForSequenceClassification",
         "MegatronBertForMultipleChoice", "MegatronBertForTokenClassification", "MegatronBertForQuestionAnswering"]
B, T, V = 3, 10, 99


def inputs(name: str, seed: int = 0, padded: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if padded:
        mask[1, 7:] = 0
        mask[2, 4:] = 0
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 6:] = 1
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if name == "MegatronBertForMultipleChoice":  # (B, C, T) with C = 2
        batch = {k: torch.stack([v, v.roll(1, dims=1)], dim=1) for k, v in batch.items()}
    return batch


def labels(name: str, seed: int = 0, **config) -> dict:
    g = torch.Generator().manual_seed(seed + 1)
    token_labels = torch.randint(0, V, (B, T), generator=g)
    token_labels[:, ::3] = -100
    return {
        "MegatronBertForPreTraining": dict(labels=token_labels, next_sentence_label=torch.tensor([0, 1, 1])),
        "MegatronBertForMaskedLM": dict(labels=token_labels),
        "MegatronBertForCausalLM": dict(labels=token_labels),
        "MegatronBertForNextSentencePrediction": dict(labels=torch.tensor([1, 0, 1])),
        "MegatronBertForSequenceClassification": dict(labels=torch.tensor([1, 0, 1])),
        "MegatronBertForMultipleChoice": dict(labels=torch.tensor([1, 0, 1])),
        "MegatronBertForTokenClassification": dict(labels=torch.randint(0, 2, (B, T), generator=g)),
        "MegatronBertForQuestionAnswering": dict(start_positions=torch.tensor([1, 4, 50]),
                                                 end_positions=torch.tensor([3, 0, 6])),
    }.get(name, {})


def run_both(ours, ref, **kwargs):
    with torch.no_grad():
        return ours(**kwargs), ref(**kwargs)


def extra_config(name: str) -> dict:
    return dict(is_decoder=True) if name == "MegatronBertForCausalLM" else {}


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("layer_norm_position", ["pre", "post"])
@pytest.mark.parametrize("flags", [False, True], ids=["plain", "attentions+hidden"])
def test_every_task_model_matches_reference(name, layer_norm_position, flags):
    ours, ref = make_pair(name, layer_norm_position=layer_norm_position, **extra_config(name))
    batch = {**inputs(name), **labels(name)}
    a, b = run_both(ours, ref, **batch, output_attentions=flags, output_hidden_states=flags)
    if "labels" in batch or "start_positions" in batch:
        assert a.loss is not None
    assert_outputs_match(a, b)
    if flags:
        assert len(a.hidden_states) == ours.config.num_hidden_layers + 1
        assert len(a.attentions) == ours.config.num_hidden_layers


@pytest.mark.parametrize("position_embedding_type", ["relative_key", "relative_key_query"])
@pytest.mark.parametrize("name", ["MegatronBertModel", "MegatronBertForMaskedLM", "MegatronBertForCausalLM"])
def test_relative_positions_match_reference(name, position_embedding_type):
    ours, ref = make_pair(name, position_embedding_type=position_embedding_type, **extra_config(name))
    batch = {**inputs(name), **labels(name)}
    a, b = run_both(ours, ref, **batch, output_attentions=True, use_cache=False) if "Causal" in name else \
        run_both(ours, ref, **batch, output_attentions=True)
    assert_outputs_match(a, b)


@pytest.mark.parametrize("problem_type,labels_", [
    ("regression", torch.tensor([0.5, -1.0, 2.0])),
    ("single_label_classification", torch.tensor([2, 0, 1])),
    ("multi_label_classification", torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0]])),
])
@pytest.mark.parametrize("explicit", [False, True], ids=["inferred", "explicit"])
def test_sequence_classification_losses(problem_type, labels_, explicit):
    num_labels = 1 if problem_type == "regression" else 3
    config = dict(num_labels=num_labels, problem_type=problem_type if explicit else None)
    ours, ref = make_pair("MegatronBertForSequenceClassification", **config)
    a, b = run_both(ours, ref, **inputs("x"), labels=labels_)
    assert_outputs_match(a, b)


def test_question_answering_clamps_and_ignores_out_of_range_positions():
    ours, ref = make_pair("MegatronBertForQuestionAnswering")
    batch = inputs("qa")
    # (a negative position is our error where the reference clamps it to 0: tests/robustness/test_inputs.py)
    a, b = run_both(ours, ref, **batch, start_positions=torch.tensor([[2], [99], [0]]),
                    end_positions=torch.tensor([[3], [99], [4]]))
    assert_outputs_match(a, b)


@pytest.mark.parametrize("shape", ["1d", "2d"])
def test_head_mask_matches_reference(shape):
    ours, ref = make_pair("MegatronBertForSequenceClassification")
    head_mask = torch.tensor([1.0, 0.0, 1.0, 0.5]) if shape == "1d" else \
        torch.tensor([[1.0, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]])
    a, b = run_both(ours, ref, **inputs("x"), head_mask=head_mask, output_attentions=True)
    assert_outputs_match(a, b)


def test_pruned_heads_match_reference_and_parameter_counts():
    ours, ref = make_pair("MegatronBertForMaskedLM")
    heads = {0: [0, 2], 2: [3]}
    ours.prune_heads(heads)
    ref.prune_heads(heads)
    ours.prune_heads({0: [0, 1]})  # head 0 already gone: only head 1 is new, numbered as originally
    ref.prune_heads({0: [0, 1]})
    assert ours.num_parameters() == ref.num_parameters()
    assert ours.config.pruned_heads == {0: [0, 1, 2], 2: [3]}
    a, b = run_both(ours, ref, **inputs("x"), output_attentions=True)
    assert_outputs_match(a, b)
    assert a.attentions[0].shape[1] == 1


def test_pruned_model_saves_and_reloads(tmp_path):
    ours, _ = make_pair("MegatronBertForMaskedLM")
    ours.prune_heads({1: [1, 3]})
    ours.save_pretrained(tmp_path)
    again = megabert_edu.MegatronBertForMaskedLM.from_pretrained(tmp_path).eval()
    ref = transformers.MegatronBertForMaskedLM.from_pretrained(tmp_path).eval()
    batch = inputs("x")
    with torch.no_grad():
        assert_close(again(**batch).logits, ours(**batch).logits)
        assert_close(ref(**batch).logits, ours(**batch).logits)


def test_chunked_feed_forward_matches_reference():
    ours, ref = make_pair("MegatronBertModel", chunk_size_feed_forward=2)
    a, b = run_both(ours, ref, **inputs("x"), output_hidden_states=True)
    assert_outputs_match(a, b)


def test_inputs_embeds_and_position_ids_match_reference():
    ours, ref = make_pair("MegatronBertModel")
    embeds = torch.randn(B, T, 32, generator=torch.Generator().manual_seed(3))
    positions = torch.arange(5, 5 + T).expand(B, T)
    a, b = run_both(ours, ref, inputs_embeds=embeds, position_ids=positions)
    assert_outputs_match(a, b)


@pytest.mark.parametrize("position_embedding_type", ["absolute", "relative_key"])
def test_decoder_with_cross_attention_matches_reference(position_embedding_type):
    ours, ref = make_pair("MegatronBertForCausalLM", is_decoder=True, add_cross_attention=True,
                          position_embedding_type=position_embedding_type)
    g = torch.Generator().manual_seed(5)
    enc = torch.randn(B, 6, 32, generator=g)
    enc_mask = torch.ones(B, 6, dtype=torch.long)
    enc_mask[0, 4:] = 0
    batch = {**inputs("x"), **labels("MegatronBertForCausalLM")}
    a, b = run_both(ours, ref, **batch, encoder_hidden_states=enc, encoder_attention_mask=enc_mask,
                    output_attentions=True, output_hidden_states=True)
    assert_outputs_match(a, b)
    assert a.cross_attentions[0].shape == (B, 4, T, 6)


def test_kv_cache_matches_reference_and_full_forward():
    ours, ref = make_pair("MegatronBertForCausalLM", is_decoder=True, add_cross_attention=True)
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(1, V, (B, T), generator=g)
    enc = torch.randn(B, 5, 32, generator=g)
    with torch.no_grad():
        full = ours(ids, encoder_hidden_states=enc, use_cache=False).logits
        a = ours(ids[:, :4], encoder_hidden_states=enc, use_cache=True)
        b = ref(ids[:, :4], encoder_hidden_states=enc, use_cache=True)
        assert_close(a.logits, b.logits, "prefill logits")
        assert_close(a.past_key_values, b.past_key_values, "prefill cache")
        past_a, past_b, steps = a.past_key_values, b.past_key_values, [a.logits]
        for t in range(4, T):
            a = ours(ids[:, t:t + 1], encoder_hidden_states=enc, past_key_values=past_a, use_cache=True)
            b = ref(ids[:, t:t + 1], encoder_hidden_states=enc, past_key_values=past_b, use_cache=True)
            assert_close(a.logits, b.logits, f"step {t} logits")
            past_a, past_b = a.past_key_values, b.past_key_values
            steps.append(a.logits)
        assert_close(past_a, legacy(past_b), "final cache")
    assert len(past_a[0]) == 4 and past_a[0][0].shape == (B, 4, T, 8) and past_a[0][2].shape == (B, 4, 5, 8)
    assert_close(torch.cat(steps, dim=1), full, "cached decoding vs full forward")


@pytest.mark.parametrize("position_embedding_type", ["relative_key", "relative_key_query"])
def test_relative_kv_cache_single_token_steps_match_reference(position_embedding_type):
    ours, ref = make_pair("MegatronBertForCausalLM", is_decoder=True, position_embedding_type=position_embedding_type)
    ids = torch.randint(1, V, (B, 6), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full = ours(ids, use_cache=False).logits
        past_a = past_b = None
        for t in range(6):  # the reference is only right for one-token steps (query position = key_len - 1)
            a = ours(ids[:, t:t + 1], past_key_values=past_a, use_cache=True)
            b = ref(ids[:, t:t + 1], past_key_values=past_b, use_cache=True)
            assert_close(a.logits, b.logits, f"step {t}")
            assert_close(a.logits[:, 0], full[:, t], f"step {t} vs full forward")
            past_a, past_b = a.past_key_values, b.past_key_values


@pytest.mark.parametrize("name", ["MegatronBertForPreTraining", "MegatronBertForQuestionAnswering"])
@pytest.mark.parametrize("layer_norm_position", ["pre", "post"])
def test_gradients_match_reference_in_train_mode(name, layer_norm_position):
    ours, ref = make_pair(name, layer_norm_position=layer_norm_position)
    ours.train(), ref.train()
    batch = {**inputs(name), **labels(name)}
    ours(**batch).loss.backward()
    ref(**batch).loss.backward()
    ref_grads = dict(ref.named_parameters())
    for key, p in ours.named_parameters():
        assert_close(p.grad, ref_grads[key].grad, f"grad {key}")


def test_gradient_checkpointing_gives_the_same_gradients():
    ours, _ = make_pair("MegatronBertForMaskedLM")
    twin, _ = make_pair("MegatronBertForMaskedLM")
    twin.gradient_checkpointing_enable()
    batch = {**inputs("x"), **labels("MegatronBertForMaskedLM")}
    for model in (ours, twin):
        model.train()
        model(**batch).loss.backward()
    for (key, p), q in zip(ours.named_parameters(), twin.parameters(), strict=True):
        assert_close(p.grad, q.grad, key)


def test_fast_and_explicit_attention_paths_agree():
    ours, _ = make_pair("MegatronBertModel", is_decoder=True)
    batch = inputs("x")
    with torch.no_grad():
        fast = ours(**batch, use_cache=False).last_hidden_state
        explicit = ours(**batch, use_cache=False, output_attentions=True).last_hidden_state
    assert_close(fast, explicit)


@pytest.mark.parametrize("name", ["MegatronBertForPreTraining", "MegatronBertForSequenceClassification"])
@pytest.mark.parametrize("layer_norm_position", ["pre", "post"])
def test_save_pretrained_loads_in_transformers_and_back(tmp_path, name, layer_norm_position):
    ours, _ = make_pair(name, layer_norm_position=layer_norm_position, num_labels=3)
    ours.save_pretrained(tmp_path / "ours")
    ref_cls = getattr(transformers, name if layer_norm_position == "pre" else name.replace("MegatronBert", "Bert"))
    ref = ref_cls.from_pretrained(tmp_path / "ours").eval()
    a, b = run_both(ours, ref, **inputs(name))
    assert_outputs_match(a, b)
    ref.save_pretrained(tmp_path / "ref")  # and the reverse
    back = getattr(megabert_edu, name).from_pretrained(tmp_path / "ref").eval()
    assert back.config.layer_norm_position == layer_norm_position
    a, b = run_both(back, ref, **inputs(name))
    assert_outputs_match(a, b)


def test_bare_encoder_checkpoint_loads_into_task_model_with_a_fresh_head(tmp_path):
    base, _ = make_pair("MegatronBertModel")
    base.save_pretrained(tmp_path)
    model = megabert_edu.MegatronBertForSequenceClassification.from_pretrained(tmp_path)
    report = model.load_report
    assert report.initialized == ["classifier.weight", "classifier.bias"] and not report.missing
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight,
                       base.encoder.layer[0].attention.self.query.weight)


def test_weight_init_follows_reference_rules():
    model = megabert_edu.MegatronBertForMaskedLM(tiny_config(hidden_size=64, intermediate_size=128,
                                                             initializer_range=0.05))
    w = model.bert.encoder.layer[0].intermediate.dense.weight
    assert abs(w.std().item() - 0.05) < 0.005
    assert torch.all(model.bert.encoder.layer[0].intermediate.dense.bias == 0)
    assert torch.all(model.bert.encoder.ln.weight == 1)
    assert torch.all(model.cls.predictions.bias == 0)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.bert.embeddings.word_embeddings.weight[0].abs().sum() > 0  # Megatron keeps the padding row


def test_pytorch_model_bin_directory_loads(tmp_path):
    ref = transformers.MegatronBertForMaskedLM(reference_config(tiny_config())).eval()
    ref.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    ours = megabert_edu.MegatronBertForMaskedLM.from_pretrained(tmp_path).eval()
    a, b = run_both(ours, ref, **inputs("x"))
    assert_outputs_match(a, b)

