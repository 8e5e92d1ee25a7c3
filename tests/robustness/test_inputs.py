"""Bad inputs and labels give the library's own error, naming the argument (issue 9).

Each case checks the exception type and that the message names the argument and what it must hold.
Cases where the reference (transformers 4.57.6) silently returns a different answer are marked "silent in
the reference"; the others raise a raw torch message there.
"""

from __future__ import annotations

import pytest
import torch

import megabert_edu as mb

V, H, L, NH = 99, 32, 3, 4


def config(**overrides) -> mb.MegatronBertConfig:
    fields = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH, intermediate_size=37,
                  max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return mb.MegatronBertConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "base": mb.MegatronBertModel(config()).eval(),
        "mlm": mb.MegatronBertForMaskedLM(config()).eval(),
        "causal": mb.MegatronBertForCausalLM(config(is_decoder=True)).eval(),
        "cross": mb.MegatronBertModel(config(is_decoder=True, add_cross_attention=True)).eval(),
        "regression": mb.MegatronBertForSequenceClassification(config(num_labels=1)).eval(),
        "classify": mb.MegatronBertForSequenceClassification(config(num_labels=3)).eval(),
        "multilabel": mb.MegatronBertForSequenceClassification(
            config(num_labels=3, problem_type="multi_label_classification")).eval(),
        "tokens": mb.MegatronBertForTokenClassification(config(num_labels=5)).eval(),
        "qa": mb.MegatronBertForQuestionAnswering(config()).eval(),
        "nsp": mb.MegatronBertForNextSentencePrediction(config()).eval(),
        "pretrain": mb.MegatronBertForPreTraining(config()).eval(),
        "choice": mb.MegatronBertForMultipleChoice(config()).eval(),
    }


IDS = torch.arange(1, 17).view(2, 8)  # (B=2, T=8)


def cache(layers=L, heads=NH, length=3, items=2, batch=2):
    return tuple(tuple(torch.zeros(batch, heads, length, H // NH) for _ in range(items)) for _ in range(layers))


# (case id, model, keyword arguments, exception type, regex the message must match)
BAD_INPUTS = [
    # attention_mask values (silent in the reference: any float is used as a weight)
    ("mask 0/2.0", "base", dict(attention_mask=torch.tensor([[1.0] * 6 + [2.0, 0.0]] * 2)), ValueError,
     r"attention_mask must hold only 1 \(attend\) and 0 \(masked\).*got 2\.0"),
    ("mask 0/0.5", "base", dict(attention_mask=torch.tensor([[1.0] * 6 + [0.5, 0.0]] * 2)), ValueError,
     r"attention_mask must hold only 1 .*got 0\.5"),
    ("additive mask 0/-10000", "base", dict(attention_mask=torch.tensor([[0.0] * 6 + [-10000.0] * 2] * 2)),
     ValueError, r"attention_mask must hold only 1 .*An additive mask .* is not accepted"),
    ("mask as a list", "base", dict(attention_mask=[[1] * 8] * 2), TypeError, r"attention_mask must be a tensor"),
    ("3-D mask with 2s", "base", dict(attention_mask=torch.full((2, 8, 8), 2)), ValueError,
     r"attention_mask must hold only 1"),
    ("encoder mask 0/3", "cross", dict(encoder_hidden_states=torch.zeros(2, 5, H),
                                       encoder_attention_mask=torch.tensor([[1, 1, 1, 3, 0]] * 2)), ValueError,
     r"encoder_attention_mask must hold only 1"),
    # token ids and embeddings
    ("uint8 input_ids", "base", dict(input_ids=IDS.to(torch.uint8)), TypeError,
     r"input_ids must be an integer tensor \(torch.long or torch.int32\), got torch.uint8"),
    ("empty sequence T=0", "base", dict(input_ids=torch.zeros(2, 0, dtype=torch.long)), ValueError,
     r"input_ids is empty \(shape \(2, 0\)\)"),
    ("empty batch B=0", "base", dict(input_ids=torch.zeros(0, 8, dtype=torch.long)), ValueError,
     r"input_ids is empty \(shape \(0, 8\)\)"),
    ("empty inputs_embeds", "base", dict(input_ids=None, inputs_embeds=torch.zeros(2, 0, H)), ValueError,
     r"inputs_embeds is empty"),
    ("float64 inputs_embeds", "base", dict(input_ids=None, inputs_embeds=torch.zeros(2, 8, H, dtype=torch.float64)),
     TypeError, r"inputs_embeds has dtype torch.float64 but the model computes in torch.float32"),
    ("bfloat16 inputs_embeds", "base", dict(input_ids=None, inputs_embeds=torch.zeros(2, 8, H, dtype=torch.bfloat16)),
     TypeError, r"inputs_embeds has dtype torch.bfloat16"),
    ("inputs_embeds as a list", "base", dict(input_ids=None, inputs_embeds=[[0.0] * H]), TypeError,
     r"inputs_embeds must be a tensor"),
    # positions, token types, head mask
    ("float position_ids", "base", dict(position_ids=torch.arange(8.0)), TypeError,
     r"position_ids must be an integer tensor"),
    ("position_ids (3, T) for batch 2", "base", dict(position_ids=torch.arange(8).expand(3, 8)), ValueError,
     r"position_ids must have shape \(2, 8\), \(1, 8\) or \(8,\).*got shape \(3, 8\)"),
    ("position_ids of 5 positions for 8 tokens", "base", dict(position_ids=torch.arange(5)), ValueError,
     r"position_ids must have shape"),
    ("position_ids past max_position_embeddings", "base", dict(position_ids=torch.arange(60, 68)), ValueError,
     r"position_ids must be in \[0, 64\) \(max_position_embeddings=64\)"),
    ("float token_type_ids", "base", dict(token_type_ids=torch.zeros(2, 8)), TypeError,
     r"token_type_ids must be an integer tensor"),
    ("bool token_type_ids", "base", dict(token_type_ids=torch.zeros(2, 8, dtype=torch.bool)), TypeError,
     r"token_type_ids must be an integer tensor"),
    ("head_mask as a list", "base", dict(head_mask=[1.0] * NH), TypeError, r"head_mask must be a tensor"),
    # KV cache and encoder states
    ("past_key_values a tensor", "causal", dict(past_key_values=torch.zeros(3)), TypeError,
     r"past_key_values must be a tuple of 3 per-layer tuples"),
    ("past_key_values for 1 of 3 layers", "causal", dict(past_key_values=cache(layers=1)), ValueError,
     r"past_key_values must be a tuple of 3 .*got 1 entries"),
    ("past_key_values entry of 3 tensors", "causal", dict(past_key_values=cache(items=3)), ValueError,
     r"past_key_values\[0\] must be \(key, value\) or \(key, value, cross_key, cross_value\)"),
    ("past_key_values with 2 heads", "causal", dict(past_key_values=cache(heads=2)), ValueError,
     r"past_key_values\[0\]\[0\] must have shape \(batch=2, heads=4, cached, head_size=8\); got \(2, 2, 3, 8\)"),
    ("past_key_values for batch 1", "causal", dict(past_key_values=cache(batch=1)), ValueError,
     r"past_key_values\[0\]\[0\] must have shape \(batch=2"),
    ("past_key_values of unequal lengths", "causal",
     dict(past_key_values=cache()[:2] + ((torch.zeros(2, NH, 4, 8), torch.zeros(2, NH, 4, 8)),)), ValueError,
     r"past_key_values entries cache different numbers of tokens: \[3, 4\]"),
    ("encoder_hidden_states of hidden 16", "cross", dict(encoder_hidden_states=torch.zeros(2, 5, 16)), ValueError,
     r"encoder_hidden_states must have shape \(2, source_len > 0, 32\); got \(2, 5, 16\)"),
    ("encoder_hidden_states for batch 3", "cross", dict(encoder_hidden_states=torch.zeros(3, 5, H)), ValueError,
     r"encoder_hidden_states must have shape \(2,"),
    ("encoder_hidden_states 2-D", "cross", dict(encoder_hidden_states=torch.zeros(5, H)), ValueError,
     r"encoder_hidden_states must have shape"),
    ("encoder_hidden_states float64", "cross", dict(encoder_hidden_states=torch.zeros(2, 5, H, dtype=torch.float64)),
     TypeError, r"encoder_hidden_states has dtype torch.float64"),
    ("encoder_hidden_states a list", "cross", dict(encoder_hidden_states=[[0.0]]), TypeError,
     r"encoder_hidden_states must be a tensor"),
    ("encoder_hidden_states without cross-attention", "base", dict(encoder_hidden_states=torch.zeros(2, 5, H)),
     ValueError, r"encoder_hidden_states given but the model has no cross-attention"),
    ("encoder_attention_mask without encoder states", "cross", dict(encoder_attention_mask=torch.ones(2, 5)),
     ValueError, r"encoder_attention_mask given without encoder_hidden_states"),
    ("multiple choice with 2-D input_ids", "choice", dict(), ValueError,
     r"MegatronBertForMultipleChoice: input_ids must have shape \(batch, num_choices, seq_len\); got \(2, 8\)"),
]

BAD_LABELS = [
    # (case id, model, keyword arguments, exception type, regex)
    ("MLM labels (4, 4) for (2, 8) ids", "mlm", dict(labels=torch.zeros(4, 4, dtype=torch.long)), ValueError,
     r"MegatronBertForMaskedLM: labels must have shape \(2, 8\) \(batch, seq_len.*got \(4, 4\)"),
    ("MLM label = vocab_size", "mlm", dict(labels=torch.full((2, 8), V)), ValueError,
     r"MegatronBertForMaskedLM: labels must hold class ids in \[0, 99\) or -100 .*got 99"),
    ("MLM label -5", "mlm", dict(labels=torch.full((2, 8), -5)), ValueError, r"labels must hold class ids.*got -5"),
    ("MLM float labels", "mlm", dict(labels=torch.zeros(2, 8)), TypeError,
     r"MegatronBertForMaskedLM: labels must hold integer class ids"),
    ("MLM labels a list", "mlm", dict(labels=[[0] * 8] * 2), TypeError,
     r"MegatronBertForMaskedLM: labels must be a tensor of shape \(2, 8\)"),
    ("causal LM labels (2, 7)", "causal", dict(labels=torch.zeros(2, 7, dtype=torch.long)), ValueError,
     r"MegatronBertForCausalLM: labels must have shape \(2, 8\)"),
    ("token labels (2, 8, 1)", "tokens", dict(labels=torch.zeros(2, 8, 1, dtype=torch.long)), ValueError,
     r"MegatronBertForTokenClassification: labels must have shape \(2, 8\)"),
    ("token label = num_labels", "tokens", dict(labels=torch.full((2, 8), 5)), ValueError,
     r"MegatronBertForTokenClassification: labels must hold class ids in \[0, 5\) or -100"),
    ("regression labels (2, 2) for (2, 1) logits", "regression", dict(labels=torch.zeros(2, 2)), ValueError,
     r"MegatronBertForSequenceClassification: labels must have shape \(2, 1\) \(batch: one target value"),
    ("regression labels (1, 3)", "regression", dict(labels=torch.zeros(1, 3)), ValueError,
     r"MegatronBertForSequenceClassification: labels must have shape \(2, 1\)"),
    ("regression labels (3,)", "regression", dict(labels=torch.zeros(3)), ValueError,
     r"labels must have shape \(2,\) \(batch: one target value per sequence\); got \(3,\)"),
    ("class id = num_labels", "classify", dict(labels=torch.tensor([0, 3])), ValueError,
     r"MegatronBertForSequenceClassification: labels must hold class ids in \[0, 3\) or -100 .*got 3"),
    ("class labels (2, 3) long", "classify", dict(labels=torch.zeros(2, 3, dtype=torch.long)), ValueError,
     r"MegatronBertForSequenceClassification: labels must have shape \(2,\)"),
    ("multi-label labels (2,)", "multilabel", dict(labels=torch.zeros(2)), ValueError,
     r"labels must have shape \(2, 3\) \(batch, num_labels: 0/1 per label\)"),
    ("NSP label 2", "nsp", dict(labels=torch.tensor([0, 2])), ValueError,
     r"MegatronBertForNextSentencePrediction: labels must hold class ids in \[0, 2\).*got 2"),
    ("NSP labels (2, 2)", "nsp", dict(labels=torch.zeros(2, 2, dtype=torch.long)), ValueError,
     r"labels must have shape \(2,\) \(batch: 0 = sentence B follows A"),
    ("pre-training next_sentence_label 3", "pretrain",
     dict(labels=torch.zeros(2, 8, dtype=torch.long), next_sentence_label=torch.tensor([3, 0])), ValueError,
     r"MegatronBertForPreTraining: next_sentence_label must hold class ids in \[0, 2\)"),
    ("pre-training MLM labels (2, 4)", "pretrain",
     dict(labels=torch.zeros(2, 4, dtype=torch.long), next_sentence_label=torch.tensor([1, 0])), ValueError,
     r"MegatronBertForPreTraining: labels must have shape \(2, 8\)"),
    ("QA start position -1", "qa", dict(start_positions=torch.tensor([-1, 2]), end_positions=torch.tensor([3, 4])),
     ValueError, r"MegatronBertForQuestionAnswering: start_positions must be token indices >= 0; got -1"),
    ("QA end position -3", "qa", dict(start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, -3])),
     ValueError, r"end_positions must be token indices >= 0; got -3"),
    ("QA float positions", "qa", dict(start_positions=torch.tensor([1.0, 2.0]), end_positions=torch.tensor([3, 4])),
     TypeError, r"start_positions must hold integer token indices"),
    ("QA positions (2, 2)", "qa", dict(start_positions=torch.zeros(2, 2, dtype=torch.long),
                                      end_positions=torch.tensor([3, 4])), ValueError,
     r"start_positions must have shape \(2,\) \(batch: a token index per example\); got \(2, 2\)"),
]


def run(model, kwargs):
    kwargs = dict(kwargs)
    return model(input_ids=kwargs.pop("input_ids", IDS), **kwargs)


@pytest.mark.parametrize(("model", "kwargs", "error", "message"), [c[1:] for c in BAD_INPUTS],
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_names_the_argument(models, model, kwargs, error, message):
    with pytest.raises(error, match=message):
        run(models[model], kwargs)


@pytest.mark.parametrize(("model", "kwargs", "error", "message"), [c[1:] for c in BAD_LABELS],
                         ids=[c[0] for c in BAD_LABELS])
def test_bad_labels_name_the_head_and_expected_shape(models, model, kwargs, error, message):
    with pytest.raises(error, match=message):
        run(models[model], kwargs)


def test_bad_multiple_choice_label(models):
    ids = IDS[:, None].expand(-1, 3, -1)  # (B=2, C=3, T=8)
    with pytest.raises(ValueError, match=r"MegatronBertForMultipleChoice: labels must hold class ids in \[0, 3\)"):
        models["choice"](ids, labels=torch.tensor([0, 3]))


# ---- accepted masks -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bool, torch.long, torch.int32, torch.float32, torch.float16])
def test_zero_one_masks_of_every_dtype_give_the_same_output(models, dtype):
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    reference = models["base"](IDS, attention_mask=mask).last_hidden_state
    out = models["base"](IDS, attention_mask=mask.to(dtype)).last_hidden_state
    torch.testing.assert_close(out, reference)


# ---- nothing to score: a 0 loss, not NaN (the reference returns NaN) --------------------------------


@pytest.mark.parametrize(("model", "kwargs"), [
    ("mlm", dict(labels=torch.full((2, 8), -100))),
    ("causal", dict(labels=torch.full((2, 8), -100))),
    ("tokens", dict(labels=torch.full((2, 8), -100))),
    ("classify", dict(labels=torch.full((2,), -100))),
    ("qa", dict(start_positions=torch.tensor([8, 50]), end_positions=torch.tensor([9, 8]))),  # all past the input
    ("pretrain", dict(labels=torch.full((2, 8), -100), next_sentence_label=torch.full((2,), -100))),
], ids=["masked LM", "causal LM", "token classification", "sequence classification", "QA", "pre-training"])
def test_all_ignored_labels_give_zero_loss_with_a_gradient(models, model, kwargs):
    m = models[model].train()
    try:
        loss = run(m, kwargs).loss
        assert loss.item() == 0.0
        loss.backward()  # still part of the graph: a training loop can step on it
        grads = [p.grad for p in m.parameters() if p.grad is not None]
        assert grads and all(bool((g == 0).all()) for g in grads)
    finally:
        m.zero_grad(set_to_none=True)
        m.eval()


# ---- pruning, resizing, checkpointing arguments -----------------------------------------------------


def test_mixed_int_and_str_layer_keys_are_merged_before_the_every_head_check():
    model = mb.MegatronBertModel(config())
    with pytest.raises(ValueError, match="cannot prune every head of layer 0; keep at least one"):
        model.prune_heads({0: [0, 1], "0": [2, 3]})
    assert model.encoder.layer[0].attention.self.num_attention_heads == NH  # nothing was pruned
    assert model.config.pruned_heads == {}


def test_negative_and_string_keys_for_one_layer_are_merged():
    model = mb.MegatronBertModel(config())
    model.prune_heads({-1: [0], "2": [1], 2: [1]})
    assert model.config.pruned_heads == {2: [0, 1]}
    assert model.encoder.layer[2].attention.self.num_attention_heads == NH - 2


@pytest.mark.parametrize(("plan", "error", "message"), [
    ({"a": [0]}, TypeError, r"layer 'a' must be an integer"),
    ({1.5: [0]}, TypeError, r"layer 1.5 must be an integer"),
    ({-4: [0]}, ValueError, r"cannot prune layer -4: the model has layers 0..2 \(or -3..-1\)"),
    ({0: 1}, TypeError, r"heads to prune in layer 0 must be a list of head numbers; got 1"),
    ({0: ["x"]}, TypeError, r"head 'x' of layer 0 must be an integer"),
    ([0, 1], TypeError, r"heads_to_prune must be a dict"),
], ids=["str layer", "float layer", "layer -4 of 3", "heads an int", "head a str", "a list"])
def test_bad_pruning_plan_names_the_problem(plan, error, message):
    with pytest.raises(error, match=message):
        mb.MegatronBertModel(config()).prune_heads(plan)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(new_num_tokens=120, pad_to_multiple_of=1.3), r"pad_to_multiple_of=1.3 must be a positive integer"),
    (dict(new_num_tokens=120, pad_to_multiple_of=0), r"pad_to_multiple_of=0 must be a positive integer"),
    (dict(new_num_tokens=0), r"new_num_tokens must be a positive integer; got 0"),
    (dict(new_num_tokens=12.5), r"new_num_tokens must be a positive integer; got 12.5"),
], ids=["pad 1.3", "pad 0", "0 tokens", "12.5 tokens"])
def test_bad_resize_arguments(kwargs, message):
    model = mb.MegatronBertForMaskedLM(config())
    with pytest.raises(ValueError, match=message):
        model.resize_token_embeddings(**kwargs)
    assert model.get_input_embeddings().num_embeddings == V


def test_resize_needs_embedding_input_embeddings():
    model = mb.MegatronBertForMaskedLM(config())
    model.set_input_embeddings(torch.nn.Linear(4, 4))
    with pytest.raises(TypeError, match="resize_token_embeddings needs nn.Embedding input embeddings; got Linear"):
        model.resize_token_embeddings(120)


def test_gradient_checkpointing_kwargs_must_be_a_dict():
    with pytest.raises(TypeError, match="gradient_checkpointing_kwargs must be a dict"):
        mb.MegatronBertModel(config()).gradient_checkpointing_enable(gradient_checkpointing_kwargs=[False])


def test_missing_output_field_by_key_names_the_set_fields(models):
    out = models["mlm"](IDS)
    with pytest.raises(KeyError, match=r"'loss' is not set in this TaskOutput; set fields: \['logits'\]"):
        out["loss"]
    assert out.get("loss") is None and "loss" not in out
