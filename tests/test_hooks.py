"""Hook points: what they expose equals the reference's numbers, hooks never leak, bad names fail clearly."""

from __future__ import annotations

import hashlib

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


ATTENTION = ["self.hook_q", "self.hook_k", "self.hook_v", "self.hook_scores", "self.hook_probs", "self.hook_z"]
RESIDUAL = ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"]


def test_hook_names_follow_the_residual_stream_and_add_nothing_to_the_state_dict():
    """The vocabulary of ../shared/DESIGN.md "Hooks", plus what each LayerNorm divides by (hook_scale)."""
    model = megabert_edu.MegatronBertModel(tiny_config(is_decoder=True, add_cross_attention=True))
    per_layer = RESIDUAL + ["hook_cross_attn_out", "intermediate.hook_act", "ln.hook_scale"]
    per_layer += [f"{block}.{point}" for block in ("attention", "crossattention") for point in ATTENTION]
    per_layer += ["attention.ln.hook_scale", "crossattention.ln.hook_scale"]
    expected = {"embeddings.hook_out", "encoder.hook_resid_final", "encoder.hook_ln_final", "encoder.ln.hook_scale"}
    expected |= {f"encoder.layer.{i}.{name}" for i in range(L) for name in per_layer}
    names = model.hook_names()
    assert set(names) == expected and len(names) == len(expected)
    assert not any("hook" in key for key in model.state_dict())

    post = megabert_edu.MegatronBertModel(tiny_config(layer_norm_position="post"))  # no final LayerNorm
    per_layer = RESIDUAL + ["intermediate.hook_act", "attention.output.LayerNorm.hook_scale",
                            "output.LayerNorm.hook_scale"] + [f"attention.{point}" for point in ATTENTION]
    expected = {"embeddings.hook_out", "embeddings.LayerNorm.hook_scale", "encoder.hook_resid_final"}
    expected |= {f"encoder.layer.{i}.{name}" for i in range(L) for name in per_layer}
    assert set(post.hook_names()) == expected
    task = megabert_edu.MegatronBertForMaskedLM(tiny_config())
    assert all(name.startswith("bert.") for name in task.hook_names())


# sha256 (first 16 hex digits) of every state dict built with torch.manual_seed(0), recorded before the forward
# path was rewritten as a residual stream: the rewrite kept every module, parameter, name and init draw.
STATE_DICT_HASHES = {
    ("pre", "MegatronBertModel"): "12e062ef951201b0",
    ("pre", "MegatronBertForPreTraining"): "a48eecc3ac5c0915",
    ("pre", "MegatronBertForMaskedLM"): "cb4a39f47492d766",
    ("pre", "MegatronBertForCausalLM"): "cb4a39f47492d766",
    ("pre", "MegatronBertForNextSentencePrediction"): "2fb31f26171df177",
    ("pre", "MegatronBertForSequenceClassification"): "d13d8b996b54d33a",
    ("pre", "MegatronBertForMultipleChoice"): "75e91d33f9aaa9a9",
    ("pre", "MegatronBertForTokenClassification"): "6943627e530691a8",
    ("pre", "MegatronBertForQuestionAnswering"): "8ff3c066b841011e",
    ("post", "MegatronBertModel"): "1079d4bf783d7da0",
    ("post", "MegatronBertForPreTraining"): "d949eb74ff9d88e4",
    ("post", "MegatronBertForMaskedLM"): "6c341e70326b73d8",
    ("post", "MegatronBertForCausalLM"): "6c341e70326b73d8",
    ("post", "MegatronBertForNextSentencePrediction"): "027668952bcf2e3c",
    ("post", "MegatronBertForSequenceClassification"): "1f5cfdbc1635d956",
    ("post", "MegatronBertForMultipleChoice"): "cf1d367603b0fff1",
    ("post", "MegatronBertForTokenClassification"): "f15f37bf52caa725",
    ("post", "MegatronBertForQuestionAnswering"): "e52d8b117f940cf6",
    ("pre-relative_key_query", "MegatronBertModel"): "0a3f3afefd0dd218",
    ("pre-relative_key_query", "MegatronBertForPreTraining"): "945796e4ce5e57fe",
    ("pre-relative_key_query", "MegatronBertForMaskedLM"): "93575d4955b178ff",
    ("pre-relative_key_query", "MegatronBertForCausalLM"): "93575d4955b178ff",
    ("pre-relative_key_query", "MegatronBertForNextSentencePrediction"): "34141e96b2eafa81",
    ("pre-relative_key_query", "MegatronBertForSequenceClassification"): "108ac09de8d34559",
    ("pre-relative_key_query", "MegatronBertForMultipleChoice"): "11e5353cfa363d3f",
    ("pre-relative_key_query", "MegatronBertForTokenClassification"): "5fb8cb8eaf9a062d",
    ("pre-relative_key_query", "MegatronBertForQuestionAnswering"): "d8938af05f2e1168",
    ("post-relative_key", "MegatronBertModel"): "3d001fd54b894caa",
    ("post-relative_key", "MegatronBertForPreTraining"): "f3a9757d25e18805",
    ("post-relative_key", "MegatronBertForMaskedLM"): "b9da5395fae0d5f1",
    ("post-relative_key", "MegatronBertForCausalLM"): "b9da5395fae0d5f1",
    ("post-relative_key", "MegatronBertForNextSentencePrediction"): "85855c16da43d289",
    ("post-relative_key", "MegatronBertForSequenceClassification"): "493e8e245794d20a",
    ("post-relative_key", "MegatronBertForMultipleChoice"): "3dad879a97a8655a",
    ("post-relative_key", "MegatronBertForTokenClassification"): "5360f9277832de67",
    ("post-relative_key", "MegatronBertForQuestionAnswering"): "f81280cf8ee3d5a8",
    ("pre-cross", "MegatronBertModel"): "2807ed5a63b99138",
    ("pre-cross", "MegatronBertForPreTraining"): "3049dff6041d3308",
    ("pre-cross", "MegatronBertForMaskedLM"): "a1c1f3faaeab2015",
    ("pre-cross", "MegatronBertForCausalLM"): "a1c1f3faaeab2015",
    ("pre-cross", "MegatronBertForNextSentencePrediction"): "282c1da37593b6a4",
    ("pre-cross", "MegatronBertForSequenceClassification"): "a9f99a5424594976",
    ("pre-cross", "MegatronBertForMultipleChoice"): "145e72123effa3d3",
    ("pre-cross", "MegatronBertForTokenClassification"): "7cafb2feca80d957",
    ("pre-cross", "MegatronBertForQuestionAnswering"): "12b854e2a7228a3b",
    ("post-cross", "MegatronBertModel"): "da4757bfaaffba75",
    ("post-cross", "MegatronBertForPreTraining"): "b6532e569b62abf3",
    ("post-cross", "MegatronBertForMaskedLM"): "e95cf93a6851d722",
    ("post-cross", "MegatronBertForCausalLM"): "e95cf93a6851d722",
    ("post-cross", "MegatronBertForNextSentencePrediction"): "e26e3d75f937641d",
    ("post-cross", "MegatronBertForSequenceClassification"): "5a6b6309a3d62d13",
    ("post-cross", "MegatronBertForMultipleChoice"): "845c40b8beb01f14",
    ("post-cross", "MegatronBertForTokenClassification"): "7b6e508626e6c66d",
    ("post-cross", "MegatronBertForQuestionAnswering"): "937b866ad631ef52",
    ("pre-pruned", "MegatronBertModel"): "623c5f96d0c21374",
    ("pre-pruned", "MegatronBertForPreTraining"): "21c290fb2e3154ce",
    ("pre-pruned", "MegatronBertForMaskedLM"): "34345f50c3cf3410",
    ("pre-pruned", "MegatronBertForCausalLM"): "34345f50c3cf3410",
    ("pre-pruned", "MegatronBertForNextSentencePrediction"): "48a8c84c7fbf7a77",
    ("pre-pruned", "MegatronBertForSequenceClassification"): "913d6991c38c4348",
    ("pre-pruned", "MegatronBertForMultipleChoice"): "b84f59f79a4cea90",
    ("pre-pruned", "MegatronBertForTokenClassification"): "84b29e0e5ebdbd31",
    ("pre-pruned", "MegatronBertForQuestionAnswering"): "12d2eba3e203f8ec",
}
STATE_DICT_VARIANTS = {
    "pre": {},
    "post": dict(layer_norm_position="post"),
    "pre-relative_key_query": dict(position_embedding_type="relative_key_query"),
    "post-relative_key": dict(layer_norm_position="post", position_embedding_type="relative_key"),
    "pre-cross": dict(is_decoder=True, add_cross_attention=True),
    "post-cross": dict(layer_norm_position="post", is_decoder=True, add_cross_attention=True),
    "pre-pruned": dict(pruned_heads={0: [1], 2: [0, 3]}),
}


def state_dict_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("variant", STATE_DICT_VARIANTS)
def test_state_dicts_are_byte_identical_to_before_the_residual_stream_rewrite(variant):
    """Same seed, same bytes: keys, order, shapes and every initial value (float32 CPU init, torch 2.x RNG)."""
    names = [name for v, name in STATE_DICT_HASHES if v == variant]
    assert len(names) == 9  # the bare model and the eight task models
    for name in names:
        torch.manual_seed(0)
        model = getattr(megabert_edu, name)(tiny_config(num_labels=3, **STATE_DICT_VARIANTS[variant]))
        assert state_dict_hash(model) == STATE_DICT_HASHES[variant, name], name


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


def test_pre_ln_residual_stream_equals_reference_hidden_states():
    """Pre-LN: the residual entering layer i is the reference's hidden_states[i]."""
    ours, ref = make_pair("MegatronBertModel")
    ids, mask = inputs()
    _, cache = ours.run_with_cache(ids, attention_mask=mask, names=["embeddings.hook_out", "*.hook_resid_*"])
    hidden = ref(ids, attention_mask=mask, output_hidden_states=True).hidden_states  # L + 1 tensors
    assert_close(cache["embeddings.hook_out"], hidden[0], "embeddings")
    for i in range(L):
        assert_close(cache[f"encoder.layer.{i}.hook_resid_pre"], hidden[i], f"layer {i} input")
    for i in range(L - 1):  # the residual leaving layer i enters layer i + 1
        assert torch.equal(cache[f"encoder.layer.{i}.hook_resid_post"], cache[f"encoder.layer.{i + 1}.hook_resid_pre"])
    assert torch.equal(cache[f"encoder.layer.{L - 1}.hook_resid_post"], cache["encoder.hook_resid_final"])


@pytest.mark.parametrize("cross", [False, True])
def test_pre_ln_layer_is_a_sum_of_what_each_sublayer_adds(cross):
    """resid_mid = resid_pre + attn_out (+ cross_attn_out), resid_post = resid_mid + mlp_out: bit for bit."""
    model = megabert_edu.MegatronBertModel(tiny_config(is_decoder=cross, add_cross_attention=cross)).eval()
    ids, mask = inputs()
    memory = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1)) if cross else None
    _, c = model.run_with_cache(ids, attention_mask=mask, encoder_hidden_states=memory)
    for i in range(L):
        name = f"encoder.layer.{i}."
        mid = c[name + "hook_resid_pre"] + c[name + "hook_attn_out"]
        mid = mid + c[name + "hook_cross_attn_out"] if cross else mid
        assert torch.equal(c[name + "hook_resid_mid"], mid), i
        assert torch.equal(c[name + "hook_resid_post"], c[name + "hook_resid_mid"] + c[name + "hook_mlp_out"]), i
        assert c[name + "hook_attn_out"].abs().max() > 1e-3 and c[name + "hook_mlp_out"].abs().max() > 1e-3


def test_final_layernorm_of_encoder_pre_ln_equals_last_hidden_state():
    ours, ref = make_pair("MegatronBertModel")
    with torch.no_grad():  # give the final LN a non-trivial gain, so it is not an identity-like map
        ours.encoder.ln.weight.uniform_(0.5, 2.0)
        ref.encoder.ln.weight.copy_(ours.encoder.ln.weight)
    ids, mask = inputs()
    out, cache = ours.run_with_cache(ids, attention_mask=mask, names="encoder.hook_*")
    final = ours.encoder.ln(cache["encoder.hook_resid_final"])
    assert_close(final, out.last_hidden_state)
    assert torch.equal(cache["encoder.hook_ln_final"], out.last_hidden_state)
    assert_close(final, ref(ids, attention_mask=mask).last_hidden_state)
    assert (cache["encoder.hook_resid_final"] - final).abs().max() > 0.1  # the cache really is before the LN


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hook_scale_is_what_each_layernorm_divides_by(layout):
    model = megabert_edu.MegatronBertModel(tiny_config(layer_norm_position=layout)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
    ids, mask = inputs()
    plain = model(ids, attention_mask=mask).last_hidden_state
    out, c = model.run_with_cache(ids, attention_mask=mask, names=["*hook_scale", "*.hook_resid_*", "*_out"])
    assert_close(out.last_hidden_state, plain, "explicit LayerNorm path")  # within float rounding
    scales = [name for name in c if name.endswith("hook_scale")]
    assert len(scales) == 2 * L + 1  # two per layer and the final (pre-LN) or the embedding (post-LN) one
    layer = "encoder.layer.1."
    if layout == "pre":
        x, scale = c[layer + "hook_resid_mid"], c[layer + "ln.hook_scale"]
    else:  # post-LN: the MLP LayerNorm reads resid_mid + mlp_out
        x, scale = c[layer + "hook_resid_mid"] + c[layer + "hook_mlp_out"], c[layer + "output.LayerNorm.hook_scale"]
    assert scale.shape == (2, 7, 1)
    assert_close(scale, (x.var(-1, unbiased=False, keepdim=True) + 1e-12).sqrt())
    last = "encoder.ln.hook_scale" if layout == "pre" else f"encoder.layer.{L - 1}.output.LayerNorm.hook_scale"
    doubled = model.run_with_hooks(ids, attention_mask=mask, fwd_hooks=[(last, lambda s, n: 2 * s)])
    ln = model.encoder.ln if layout == "pre" else model.encoder.layer[L - 1].output.LayerNorm
    assert_close(doubled.last_hidden_state, (plain - ln.bias) / 2 + ln.bias)  # w (x - mean) / (2 scale) + b


def test_post_ln_residual_names_hold_the_normalised_sums():
    """Post-LN (BERT): resid_mid = LN(resid_pre + attn_out), resid_post = LN(resid_mid + mlp_out) = hidden_states."""
    ours, ref = make_pair("MegatronBertModel", layer_norm_position="post")
    ids, mask = inputs()
    _, c = ours.run_with_cache(ids, attention_mask=mask)
    hidden = ref(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert_close(c["embeddings.hook_out"], hidden[0])
    for i, layer in enumerate(ours.encoder.layer):
        name = f"encoder.layer.{i}."
        assert_close(c[name + "hook_resid_post"], hidden[i + 1])
        attention_sum = c[name + "hook_resid_pre"] + c[name + "hook_attn_out"]
        assert_close(layer.attention.output.LayerNorm(attention_sum), c[name + "hook_resid_mid"])
        assert_close(layer.output.LayerNorm(c[name + "hook_resid_mid"] + c[name + "hook_mlp_out"]), hidden[i + 1])
    assert "encoder.hook_ln_final" not in c  # no final LayerNorm in BERT
    assert torch.equal(c["encoder.hook_resid_final"], c[f"encoder.layer.{L - 1}.hook_resid_post"])


def test_run_with_cache_returns_only_requested_names_detached_and_moved():
    model = megabert_edu.MegatronBertModel(tiny_config())
    ids, mask = inputs()
    names = ["*.layer.1.*.hook_q", "embeddings.hook_out"]
    _, cache = model.run_with_cache(ids, attention_mask=mask, names=names)
    assert sorted(cache) == ["embeddings.hook_out", "encoder.layer.1.attention.self.hook_q"]
    assert not any(x.requires_grad for x in cache.values())
    _, cache = model.run_with_cache(ids, names=lambda n: n.endswith("hook_act"), device="meta")
    assert len(cache) == L and all(x.device.type == "meta" for x in cache.values())
    _, cache = model.run_with_cache(ids, names="*.layer.0.hook_resid_post", detach=False)
    assert cache["encoder.layer.0.hook_resid_post"].requires_grad  # for attribution: gradients flow through it
    assert model.active_hooks() == []


def test_chunked_mlp_is_cached_whole():
    model = megabert_edu.MegatronBertModel(tiny_config(layer_norm_position="post")).eval()
    ids, _ = inputs(T=8)
    names = ["*.hook_act", "*.hook_resid_mid", "*.hook_mlp_out", "*.output.LayerNorm.hook_scale"]
    _, whole = model.run_with_cache(ids, names=names)
    model.config.chunk_size_feed_forward = 2
    for layer in model.encoder.layer:
        layer.chunk_size_feed_forward = 2
    _, chunked = model.run_with_cache(ids, names=names)
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
    with pytest.raises(KeyError, match=r"bert\.encoder\.layer\.2\.hook_resid_post"):  # forgot "bert."
        task.resolve_hook_names("encoder.layer.2.hook_resid_post")
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
    out = model.run_with_hooks(ids, bwd_hooks=[("encoder.hook_resid_final", lambda g, name: torch.zeros_like(g))])
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
        model.run_with_hooks(ids, fwd_hooks=[("*.hook_resid_post", lambda x, n: None),
                                             ("*.layer.1.hook_resid_post", fail)])
    assert model.active_hooks() == []
    with pytest.raises(UnknownHookName):  # nothing is attached when any pattern fails
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


# ---------------------------------------------------------------------------------------------------
# The forward path's small named results and the typed KV cache


def test_blocks_return_named_results_and_the_encoder_a_base_model_output():
    model = megabert_edu.MegatronBertModel(tiny_config(is_decoder=True, add_cross_attention=True)).eval()
    ids, _ = inputs()
    memory = torch.randn(2, 5, 32)
    x = model.embeddings(input_ids=ids)
    attn = model.encoder.layer[0].attention(x)
    assert attn.out.shape == (2, 7, 32) and attn.probs is None and attn.kv.key.shape == (2, 4, 7, 8)
    layer = model.encoder.layer[0](x, encoder_hidden_states=memory, output_attentions=True)
    assert layer.hidden.shape == (2, 7, 32) and layer.probs.shape == (2, 4, 7, 7)
    assert layer.cross_probs.shape == (2, 4, 7, 5) and layer.cache.cross_key.shape == (2, 4, 5, 8)
    encoder_only = megabert_edu.MegatronBertModel(tiny_config()).eval()
    out = encoder_only.encoder(encoder_only.embeddings(input_ids=ids), use_cache=True)
    assert isinstance(out, megabert_edu.outputs.BaseModelOutput) and out.pooler_output is None
    assert torch.equal(out.last_hidden_state, encoder_only(ids).last_hidden_state)
    with pytest.raises(TypeError):  # keyword-only: nothing travels by position along the forward path
        model.encoder.layer[0](x, None)


@pytest.mark.parametrize("cross", [False, True])
def test_kv_cache_entries_are_typed_tuples_that_plain_tuples_can_replace(cross):
    """Each layer's entry has .key/.value (and .cross_key/.cross_value) yet is the tuple HF code expects."""
    model = megabert_edu.MegatronBertForCausalLM(tiny_config(is_decoder=True, add_cross_attention=cross)).eval()
    ids, _ = inputs()
    memory = torch.randn(2, 5, 32) if cross else None
    past = model(ids[:, :5], encoder_hidden_states=memory, use_cache=True).past_key_values
    entry = past[0]
    assert isinstance(entry, tuple) and len(entry) == (4 if cross else 2)
    key, value = entry[:2]
    assert entry.key is key and entry.value is value and key.shape == (2, 4, 5, 8)
    if cross:
        assert entry.cross_key.shape == (2, 4, 5, 8) and entry.cross == (entry[2], entry[3])
    typed = model(ids[:, 5:], encoder_hidden_states=memory, past_key_values=past, use_cache=True)
    plain = tuple(tuple(t.clone() for t in layer) for layer in past)  # what HF-style code passes back
    untyped = model(ids[:, 5:], encoder_hidden_states=memory, past_key_values=plain, use_cache=True)
    full = model(ids, encoder_hidden_states=memory).logits[:, 5:]
    assert torch.equal(typed.logits, untyped.logits)
    assert_close(typed.logits, full)


def test_a_malformed_cache_entry_is_named():
    model = megabert_edu.MegatronBertForCausalLM(tiny_config(is_decoder=True)).eval()
    ids, _ = inputs()
    past = list(model(ids[:, :5], use_cache=True).past_key_values)
    past[1] = (past[1][0],)  # the value went missing
    with pytest.raises(ValueError, match=r"past_key_values\[1\] must be .*\(key, value\)"):
        model(ids[:, 5:], past_key_values=tuple(past))
