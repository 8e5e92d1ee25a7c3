"""Bad hooks give the library's own error naming the hook point, never a silent wrong answer (issue 9).

A forward hook returns None or a replacement of the activation's shape; a floating-point replacement in
another dtype is cast back. Each case checks the exception type and that the message names the hook point
(or the argument) and what it must hold, and that no hook is left attached afterwards.
"""

from __future__ import annotations

import pytest
import torch

import megabert_edu as mb
from megabert_edu.hooks import HookError
from megabert_edu.pruning import head_importance, head_means

POINT = "encoder.layer.0.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = mb.MegatronBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0, num_labels=2)
    return mb.MegatronBertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(1, 99, (2, 6), generator=torch.Generator().manual_seed(0))


def forward_with(model, ids, fwd_hooks=(), bwd_hooks=()):
    return model.base_model.run_with_hooks(ids, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks)


def test_a_replacement_of_another_shape_names_the_point_and_both_shapes(model, ids):
    """Silent before: x[:, :-1] at a layer output shortened the sequence for every later layer."""
    with pytest.raises(HookError, match=r"encoder\.layer\.0\.hook_resid_post returned shape \(2, 5, 32\).*"
                                        r"has shape \(2, 6, 32\)"):
        forward_with(model, ids, [(POINT, lambda x, name: x[:, :-1])])
    assert model.active_hooks() == []


def test_a_broadcastable_replacement_is_still_refused(model, ids):
    """(1, 6, 32) would broadcast against the residual without a word."""
    with pytest.raises(HookError, match=r"hook_resid_post returned shape \(1, 6, 32\)"):
        forward_with(model, ids, [(POINT, lambda x, name: x[:1])])


@pytest.mark.parametrize("value,kind", [([1.0, 2.0], "list"), (2.0, "float"), (3, "int"), ("x", "str")])
def test_a_replacement_that_is_not_a_tensor_names_what_it_was(model, ids, value, kind):
    with pytest.raises(HookError, match=rf"at {POINT} returned {kind}; a hook must return None .* or a tensor "
                                        r"of shape \(2, 6, 32\)"):
        forward_with(model, ids, [(POINT, lambda x, name: value)])
    assert model.active_hooks() == []


def test_an_integer_replacement_is_refused(model, ids):
    with pytest.raises(HookError, match=rf"{POINT} returned a torch.int64 tensor for a torch.float32 activation"):
        forward_with(model, ids, [(POINT, lambda x, name: x.long())])


def test_a_float64_replacement_is_cast_back_and_gives_the_float32_answer(model, ids):
    """A hook computing in double precision is fine: the activation keeps the model's dtype."""
    doubled32 = forward_with(model, ids, [(POINT, lambda x, name: x * 2)]).last_hidden_state
    doubled64 = forward_with(model, ids, [(POINT, lambda x, name: x.double() * 2)]).last_hidden_state
    assert doubled64.dtype == torch.float32
    assert torch.allclose(doubled64, doubled32, atol=1e-6)
    assert not torch.allclose(doubled32, model.base_model(ids).last_hidden_state)


def test_fwd_hooks_given_as_a_single_pair_says_to_wrap_it_in_a_list(model, ids):
    with pytest.raises(HookError, match=r"fwd_hooks must be a list of \(names, fn\) pairs, got a single pair; "
                                        r"wrap it in a list: fwd_hooks=\[\('encoder"):
        forward_with(model, ids, (POINT, lambda x, name: None))
    with pytest.raises(HookError, match="bwd_hooks must be a list of .* single pair"):
        forward_with(model, ids, bwd_hooks=(["*.hook_z", POINT], lambda g, name: None))


@pytest.mark.parametrize("hooks,message", [
    ([(POINT, "print")], r"fwd_hooks\[0\]: the hook for 'encoder.layer.0.hook_resid_post' is not callable \(got str\)"),
    ([(POINT, None)], r"fwd_hooks\[0\]: the hook for .* is not callable \(got NoneType\)"),
    ([POINT], r"fwd_hooks\[0\] must be a \(names, fn\) pair; got str"),
    ([(POINT, print, "extra")], r"fwd_hooks\[0\] must be a \(names, fn\) pair; got tuple"),
    (POINT, "fwd_hooks must be a list of .* got str"),
    (7, "fwd_hooks must be a list of .* got int"),
])
def test_malformed_fwd_hooks_are_named(model, ids, hooks, message):
    with pytest.raises(HookError, match=message):
        forward_with(model, ids, hooks)
    assert model.active_hooks() == []


def test_hook_names_of_the_wrong_type_are_named(model, ids):
    with pytest.raises(HookError, match="hook names must be strings .* got int 3"):
        forward_with(model, ids, [(3, print)])
    with pytest.raises(HookError, match="hook names must be strings .* got NoneType"):
        model.base_model.run_with_cache(ids, names=[POINT, None])
    assert model.active_hooks() == []


def test_a_backward_hook_returning_another_shape_names_the_gradient(model, ids):
    out = forward_with(model, ids, bwd_hooks=[(POINT, lambda g, name: g[:, :1])])
    with pytest.raises(HookError, match=rf"at {POINT} returned shape \(2, 1, 32\), but the gradient there has "
                                        r"shape \(2, 6, 32\)"):
        out.last_hidden_state.sum().backward()


def test_head_importance_and_head_means_refuse_an_empty_batch_list(model):
    """Silent before: all-NaN scores (an average over no examples)."""
    with pytest.raises(ValueError, match="head_importance needs at least one batch; got an empty `batches`"):
        head_importance(model, [])
    with pytest.raises(ValueError, match="head_means needs at least one batch"):
        head_means(model, iter([]))
    with pytest.raises(ValueError, match="every item of `batches` must be a dict of model inputs with 'input_ids'"):
        head_importance(model, [torch.ones(1, 4, dtype=torch.long)])
