"""Bad input to train() and generate(): each case raises the library's own error naming the argument (issue 9)."""

from __future__ import annotations

import pytest
import torch

import megabert_edu as mb
from megabert_edu.generation import generate
from megabert_edu.training import TrainConfig, train

FIELDS = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
              max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip


def classifier(num_labels: int = 3) -> mb.MegatronBertForSequenceClassification:
    torch.manual_seed(0)
    return mb.MegatronBertForSequenceClassification(mb.MegatronBertConfig(**FIELDS, num_labels=num_labels))


def data(n: int = 8, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 50, (n, 6), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": torch.zeros(n, dtype=torch.long) if labels is None else labels}


def causal_lm(**overrides) -> mb.MegatronBertForCausalLM:
    torch.manual_seed(0)
    return mb.MegatronBertForCausalLM(mb.MegatronBertConfig(**{**FIELDS, "is_decoder": True, **overrides})).eval()


def quiet_train(model, train_data, **kwargs):
    return train(model, train_data, progress=False, **kwargs)


# ---------------------------------------------------------------------------------------------------
# train()


@pytest.mark.parametrize("empty", [{"input_ids": torch.zeros(0, 6, dtype=torch.long),
                                    "labels": torch.zeros(0, dtype=torch.long)}, []])
def test_empty_train_data(empty):
    with pytest.raises(ValueError, match="train_data is empty"):
        quiet_train(classifier(), empty)


def test_train_data_without_labels():
    with pytest.raises(ValueError, match=r"no loss: train_data has no labels \(batch keys \['input_ids'\]"):
        quiet_train(classifier(), {"input_ids": data()["input_ids"]})


@pytest.mark.parametrize("field, value", [("grad_accum_steps", 0), ("batch_size", 0), ("epochs", -1),
                                          ("batch_size", 2.5), ("max_steps", 0), ("log_every", True)])
def test_bad_step_counts_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig.{field} must be an integer >= 1"):
        quiet_train(classifier(), data(), **{field: value})
    with pytest.raises(ValueError, match=rf"TrainConfig.{field}"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field, value, message", [
    ("lr", 0.0, "TrainConfig.lr must be > 0"),
    ("warmup", -0.1, "TrainConfig.warmup must be >= 0"),
    ("on_nan", "ignore", r"TrainConfig.on_nan must be one of \('raise', 'skip'\), got 'ignore'"),
    ("precision", "fp8", r"TrainConfig.precision must be one of .*'fp8'"),
])
def test_bad_settings_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        quiet_train(classifier(), data(), **{field: value})


def test_unknown_keyword_is_named():
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['learning_rate'\]"):
        quiet_train(classifier(), data(), learning_rate=1e-3)


def test_config_passed_as_eval_data_is_explained():
    with pytest.raises(TypeError, match="pass the TrainConfig as config="):
        train(classifier(), data(), TrainConfig(progress=False))


@pytest.mark.parametrize("bad", [3, 7, -2])
def test_out_of_range_labels(bad):
    labels = torch.tensor([0, 1, 2, bad, 0, 1, 2, 0])
    with pytest.raises(ValueError, match="label"):
        quiet_train(classifier(num_labels=3), data(labels=labels), batch_size=8)


def test_ignored_labels_are_not_out_of_range():
    labels = torch.tensor([0, 1, 2, -100, 0, 1, 2, 0])
    model = mb.MegatronBertForTokenClassification(mb.MegatronBertConfig(**FIELDS, num_labels=3))
    tokens = labels[:, None].expand(8, 6).clone()
    result = quiet_train(model, data(labels=tokens), batch_size=8)
    assert result.steps == 1


# ---------------------------------------------------------------------------------------------------
# generate()

PROMPT = torch.tensor([[5, 6, 7]])


@pytest.mark.parametrize("value", [2.5, "4", None, True, torch.tensor(4)])
def test_non_integer_max_new_tokens(value):
    with pytest.raises(TypeError, match=r"max_new_tokens must be an int, got"):
        generate(causal_lm(), PROMPT, max_new_tokens=value)


def test_negative_max_new_tokens():
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0, got -1"):
        generate(causal_lm(), PROMPT, max_new_tokens=-1)


def test_one_dimensional_prompt_is_refused_with_the_fix():
    message = r"input_ids must be a 2-D tensor \(batch, tokens\), got \(3,\); .*input_ids\[None\]"
    with pytest.raises(ValueError, match=message):
        generate(causal_lm(), PROMPT[0], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids must be a 2-D tensor .* got list"):
        generate(causal_lm(), [[5, 6, 7]], max_new_tokens=2)


@pytest.mark.parametrize("shape", [(1, 0), (0, 3)])
def test_empty_prompt(shape):
    with pytest.raises(ValueError, match="input_ids is empty"):
        generate(causal_lm(), torch.zeros(shape, dtype=torch.long), max_new_tokens=2)


def test_eos_without_any_pad_id():
    model = causal_lm(pad_token_id=None)
    with pytest.raises(ValueError, match=r"eos_token_id=3 needs a pad_token_id"):
        generate(model, PROMPT, max_new_tokens=2, eos_token_id=3)
    assert generate(model, PROMPT, max_new_tokens=2, eos_token_id=3, pad_token_id=0).shape == (1, 5)


@pytest.mark.parametrize("cache", ["dynamic", "static", "fixed"])
def test_nan_logits_are_reported(cache):
    model = causal_lm()
    with torch.no_grad():
        model.cls.predictions.decoder.bias.fill_(float("nan"))  # every logit NaN
    with pytest.raises(FloatingPointError, match=r"logits are NaN at new token 0 \(batch rows \[0\]\)"):
        generate(model, PROMPT, max_new_tokens=3, cache=cache)


def test_unknown_cache_kind():
    with pytest.raises(ValueError, match=r"cache must be one of \('dynamic', 'static', 'fixed'\), got 'paged'"):
        generate(causal_lm(), PROMPT, max_new_tokens=2, cache="paged")


def test_right_padded_prompt_is_refused():
    with pytest.raises(ValueError, match="pad batched prompts on the LEFT"):
        generate(causal_lm(), PROMPT, attention_mask=torch.tensor([[1, 1, 0]]), max_new_tokens=2)
