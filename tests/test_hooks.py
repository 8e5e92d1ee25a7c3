"""Hook points: what they expose equals the reference's numbers, hooks never leak, bad names fail clearly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import assert_close, make_pair, tiny_config

import megabert_edu
from megabert_edu.hooks import UnknownHookName

LAYOUTS = ["pre", "post"]
L = 3  # tiny_config's layers


def inputs(B: int = 2, T: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids and a padding mask: the second sequence ends in two pad tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 99, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -2:] = 0
    return ids, mask


def test_hook_names_cover_the_design_and_add_nothing_to_the_state_dict():
    model = megabert_edu.MegatronBertModel(tiny_config(is_decoder=True, add_cross_attention=True))
    names = model.hook_names()
    per_layer = ["attention.hook_pre_ln", "hook_pre_ln", "intermediate.hook_act", "hook_out"]
    per_layer += [f"{block}.self.hook_{k}" for block in ("attention", "crossattention")
                  for k in ("q", "k", "v", "scores", "probs", "z")]
    per_layer += ["crossattention.hook_pre_ln"]
    expected = {"embeddings.hook_out", "encoder.hook_pre_ln"}
    expected |= {f"encoder.layer.{i}.{name}" for i in range(L) for name in per_layer}
    assert set(names) == expected and len(names) == len(expected)
    assert not any("hook" in key for key in model.state_dict())
    task = megabert_edu.MegatronBertForMaskedLM(tiny_config())
    assert all(name.startswith("bert.") for name in task.hook_names())


def test_plain_module_hooks_still_work_on_hook_points():
    """An idle HookPoint skips nn.Module's call machinery; anything attached the usual way re-enables it."""
    model = megabert_edu.MegatronBertModel(tiny_config()).eval()
    ids, _ = inputs()
    point = model.embeddings.hook_out
    doubled = model.run_with_hooks(ids, fwd_hooks=[("embeddings.hook_out", lambda x, n: 2 * x)])
    doubled = doubled.last_hidden_state
    handle = point.register_forward_pre_hook(lambda module, args: (2 * args[0],))
    try:
        assert_close(model(ids).last_hidden_state, doubled)
    finally:
        handle.remove()
    grads = []
    handle = point.register_full_backward_hook(lambda module, grad_in, grad_out: grads.append(grad_out[0]))
    try:
        model(ids).last_hidden_state.sum().backward()
    finally:
        handle.remove()
    assert len(grads) == 1 and grads[0].shape == (2, 7, 32)


@pytest.mark.parametrize("layout,positions",
                         [("pre", "absolute"), ("post", "absolute"), ("pre", "relative_key_query")])
def test_cached_attention_maps_equal_reference_output_attentions(layout, positions):
    ours, ref = make_pair("MegatronBertModel", layer_norm_position=layout, position_embedding_type=positions)
    ids, mask = inputs()
    _, cache = ours.run_with_cache(ids, attention_mask=mask, names="*.hook_probs")
    expected = ref(ids, attention_mask=mask, output_attentions=True).attentions
    assert list(cache) == [f"encoder.layer.{i}.attention.self.hook_probs" for i in range(L)]
    for i in range(L):
        assert_close(cache[f"encoder.layer.{i}.attention.self.hook_probs"], expected[i], f"layer {i}")


def test_cached_cross_attention_maps_equal_reference():
    ours, ref = make_pair("MegatronBertModel", is_decoder=True, add_cross_attention=True)
    ids, mask = inputs()
    memory = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    _, cache = ours.run_with_cache(ids, attention_mask=mask, encoder_hidden_states=memory,
                                   names="*.crossattention.self.hook_probs")
    ref_out = ref(ids, attention_mask=mask, encoder_hidden_states=memory, output_attentions=True)
    expected = ref_out.cross_attentions
    assert len(cache) == L
    for i in range(L):
        assert_close(cache[f"encoder.layer.{i}.crossattention.self.hook_probs"], expected[i], f"layer {i}")


def test_pre_ln_inputs_equal_reference_hidden_states():
    """Pre-LN: the input to layer i's attention LayerNorm is the reference's hidden_states[i]."""
    ours, ref = make_pair("MegatronBertModel")
    ids, mask = inputs()
    _, cache = ours.run_with_cache(ids, attention_mask=mask, names=["embeddings.hook_out", "*.hook_pre_ln"])
    hidden = ref(ids, attention_mask=mask, output_hidden_states=True).hidden_states  # L + 1 tensors
    assert_close(cache["embeddings.hook_out"], hidden[0], "embeddings")
    for i in range(L):
        assert_close(cache[f"encoder.layer.{i}.attention.hook_pre_ln"], hidden[i], f"layer {i} input")
    for i in range(L - 1):  # the residual leaving layer i enters layer i + 1
        assert_close(cache[f"encoder.layer.{i + 1}.attention.hook_pre_ln"], hidden[i + 1])


def test_final_layernorm_of_encoder_pre_ln_equals_last_hidden_state():
    ours, ref = make_pair("MegatronBertModel")
    with torch.no_grad():  # give the final LN a non-trivial gain, so it is not an identity-like map
        ours.encoder.ln.weight.uniform_(0.5, 2.0)
        ref.encoder.ln.weight.copy_(ours.encoder.ln.weight)
    ids, mask = inputs()
    out, cache = ours.run_with_cache(ids, attention_mask=mask, names="encoder.hook_pre_ln")
    final = ours.encoder.ln(cache["encoder.hook_pre_ln"])
    assert_close(final, out.last_hidden_state)
    assert_close(final, ref(ids, attention_mask=mask).last_hidden_state)
    assert (cache["encoder.hook_pre_ln"] - final).abs().max() > 0.1  # the cache really is before the LN


def test_post_ln_hooks_sit_on_the_layernorm_inputs():
    """Post-LN (BERT): each hook_pre_ln is the sum entering a LayerNorm; layer outputs are hidden_states."""
    ours, ref = make_pair("MegatronBertModel", layer_norm_position="post")
    ids, mask = inputs()
    _, cache = ours.run_with_cache(ids, attention_mask=mask)
    hidden = ref(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert_close(cache["embeddings.hook_out"], hidden[0])
    for i, layer in enumerate(ours.encoder.layer):
        assert_close(cache[f"encoder.layer.{i}.hook_out"], hidden[i + 1])
        assert_close(layer.output.LayerNorm(cache[f"encoder.layer.{i}.hook_pre_ln"]), hidden[i + 1])


def test_run_with_cache_returns_only_requested_names_detached_and_moved():
    model = megabert_edu.MegatronBertModel(tiny_config())
    ids, mask = inputs()
    names = ["*.layer.1.*.hook_q", "embeddings.hook_out"]
    _, cache = model.run_with_cache(ids, attention_mask=mask, names=names)
    assert sorted(cache) == ["embeddings.hook_out", "encoder.layer.1.attention.self.hook_q"]
    assert not any(x.requires_grad for x in cache.values())
    _, cache = model.run_with_cache(ids, names=lambda n: n.endswith("hook_act"), device="meta")
    assert len(cache) == L and all(x.device.type == "meta" for x in cache.values())
    _, cache = model.run_with_cache(ids, names="*.layer.0.hook_out", detach=False)
    assert cache["encoder.layer.0.hook_out"].requires_grad  # for attribution: gradients flow through it
    assert model.active_hooks() == []


def test_chunked_mlp_is_cached_whole():
    model = megabert_edu.MegatronBertModel(tiny_config(layer_norm_position="post")).eval()
    ids, _ = inputs(T=8)
    _, whole = model.run_with_cache(ids, names=["*.hook_act", "*.hook_pre_ln"])
    model.config.chunk_size_feed_forward = 2
    for layer in model.encoder.layer:
        layer.chunk_size_feed_forward = 2
    _, chunked = model.run_with_cache(ids, names=["*.hook_act", "*.hook_pre_ln"])
    assert whole.keys() == chunked.keys()
    for name in whole:
        assert_close(chunked[name], whole[name], name)


def test_unknown_names_raise_with_the_closest_valid_names():
    model = megabert_edu.MegatronBertModel(tiny_config())
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(UnknownHookName, match="encoder.layer.0.attention.self.hook_probs"):
        model.run_with_cache(ids, names="encoder.layer.0.attention.self.hook_prb")
    with pytest.raises(KeyError, match="hook_probs"):  # a glob: suggest the hook kind
        model.run_with_hooks(ids, fwd_hooks=[("*.hook_prbs", print)])
    task = megabert_edu.MegatronBertForMaskedLM(tiny_config())
    with pytest.raises(KeyError, match=r"bert\.encoder\.layer\.2\.hook_out"):  # forgot the "bert." prefix
        task.resolve_hook_names("encoder.layer.2.hook_out")
    assert task.active_hooks() == [] and model.active_hooks() == []


def test_forward_hook_replacement_zeroing_head_equals_head_mask():
    ours, ref = make_pair("MegatronBertModel")
    ids, mask = inputs()
    layer, head = 1, 2

    def zero_head(z, name):  # z: (B, nh, T, hs)
        z = z.clone()
        z[:, head] = 0
        return z

    hooked = ours.run_with_hooks(ids, attention_mask=mask,
                                 fwd_hooks=[(f"encoder.layer.{layer}.attention.self.hook_z", zero_head)])
    head_mask = torch.ones(L, 4)
    head_mask[layer, head] = 0
    hooked = hooked.last_hidden_state
    assert_close(hooked, ours(ids, attention_mask=mask, head_mask=head_mask).last_hidden_state)
    assert_close(hooked, ref(ids, attention_mask=mask, head_mask=head_mask).last_hidden_state)
    assert (hooked - ours(ids, attention_mask=mask).last_hidden_state).abs().max() > 1e-4


def test_backward_hooks_give_gradients_with_respect_to_activations():
    ours, ref = make_pair("MegatronBertModel")
    ids, mask = inputs()
    grads = {}

    def keep(grad, name):
        grads[name] = grad

    out = ours.run_with_hooks(ids, attention_mask=mask, bwd_hooks=[("*.hook_probs", keep)])
    assert ours.active_hooks() == []  # the tensor hooks live on this pass's graph only
    out.last_hidden_state.pow(2).sum().backward()
    ref_out = ref(ids, attention_mask=mask, output_attentions=True)
    expected = torch.autograd.grad(ref_out.last_hidden_state.pow(2).sum(), ref_out.attentions)
    assert len(grads) == L
    for i in range(L):
        assert_close(grads[f"encoder.layer.{i}.attention.self.hook_probs"], expected[i], f"dL/dprobs {i}")


def test_backward_hook_can_replace_the_gradient():
    model = megabert_edu.MegatronBertModel(tiny_config())
    ids, _ = inputs()
    out = model.run_with_hooks(ids, bwd_hooks=[("encoder.hook_pre_ln", lambda g, name: torch.zeros_like(g))])
    out.last_hidden_state.sum().backward()
    assert model.encoder.ln.weight.grad.abs().sum() > 0  # above the hook: untouched
    assert model.encoder.layer[0].intermediate.dense.weight.grad.abs().sum() == 0  # below: cut off


def test_hooks_are_removed_after_an_exception_in_the_body():
    model = megabert_edu.MegatronBertModel(tiny_config())
    ids, _ = inputs()
    calls = []
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(fwd_hooks=[("*", lambda x, n: calls.append(n))]):
            model(ids)
            raise RuntimeError("boom")
    assert model.active_hooks() == []
    n = len(calls)
    model(ids)
    assert len(calls) == n


def test_hooks_are_removed_after_an_exception_in_a_hook_or_a_bad_name():
    model = megabert_edu.MegatronBertModel(tiny_config())
    ids, _ = inputs()

    def fail(x, name):
        raise ValueError("hook failed")

    with pytest.raises(ValueError, match="hook failed"):
        model.run_with_hooks(ids, fwd_hooks=[("*.hook_out", lambda x, n: None), ("*.layer.1.hook_out", fail)])
    assert model.active_hooks() == []
    with pytest.raises(UnknownHookName):  # the first pattern was attached before the second failed
        with model.hooks(fwd_hooks=[("*.hook_q", print), ("*.hook_nope", print)]):
            pass
    assert model.active_hooks() == []
    with pytest.raises(ValueError, match="out of range"):  # a forward that fails on its input
        model.run_with_cache(ids + 1000)
    assert model.active_hooks() == []


def test_nested_hook_contexts_compose_and_unwind_in_order():
    model = megabert_edu.MegatronBertModel(tiny_config()).eval()
    ids, _ = inputs()
    name = "embeddings.hook_out"
    both = model.run_with_hooks(ids, fwd_hooks=[(name, lambda x, n: x * 2 + 1)]).last_hidden_state
    outer_only = model.run_with_hooks(ids, fwd_hooks=[(name, lambda x, n: x * 2)]).last_hidden_state
    with model.hooks(fwd_hooks=[(name, lambda x, n: x * 2)]):
        with model.hooks(fwd_hooks=[(name, lambda x, n: x + 1)]):  # runs after the outer one
            assert_close(model(ids).last_hidden_state, both)
            assert model.active_hooks() == [name]
        assert_close(model(ids).last_hidden_state, outer_only)
    assert model.active_hooks() == []


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fast_and_explicit_attention_paths_agree(layout, monkeypatch):
    ours, ref = make_pair("MegatronBertModel", layer_norm_position=layout)
    ids, mask = inputs()
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))

    fast = ours(ids, attention_mask=mask).last_hidden_state
    assert len(calls) == L
    calls.clear()
    explicit = ours.run_with_hooks(ids, attention_mask=mask, fwd_hooks=[("*.hook_probs", lambda x, n: None)])
    assert len(calls) == 0  # reading the attention map switched every layer to the explicit path
    one = [("encoder.layer.1.attention.self.hook_scores", lambda x, n: None)]
    one_layer = ours.run_with_hooks(ids, attention_mask=mask, fwd_hooks=one)
    assert len(calls) == L - 1  # ... only in the layer that asked
    calls.clear()
    ours.run_with_hooks(ids, attention_mask=mask, fwd_hooks=[("*.hook_z", lambda x, n: None)])
    assert len(calls) == L  # hook_z does not need the map: the fast path stays
    assert_close(explicit.last_hidden_state, fast)
    assert_close(one_layer.last_hidden_state, fast)
    assert_close(fast, ref(ids, attention_mask=mask).last_hidden_state)
