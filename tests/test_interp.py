"""megabert_edu.interp: the identities that make logit lens, direct logit attribution and patching trustworthy.

- logit lens row l is what a model cut after layer l predicts (checked against a truncated copy);
- the direct-logit-attribution parts add up to the model's own logit (difference);
- patching every position of resid_pre at layer 0 reproduces the clean run, patching a position where the two
  inputs agree reproduces the corrupted run.
Each for pre-LN and post-LN, absolute and relative positions, and a physically pruned model.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from reference import assert_close, tiny_config

import megabert_edu
from megabert_edu.hooks import UnknownHookName
from megabert_edu.interp import activation_patching, direct_logit_attribution, logit_lens

L, NH = 3, 4
VARIANTS = {
    "pre": {},
    "post": dict(layer_norm_position="post"),
    "pre-relative": dict(position_embedding_type="relative_key_query"),
    "post-relative": dict(layer_norm_position="post", position_embedding_type="relative_key"),
    "pruned": dict(pruned_heads={0: [1], 2: [0, 3]}),
}


def trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial LayerNorm gains and biases (at init they are 1 and 0, which would hide mistakes)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.5)
    return model.eval()


def build(name: str = "MegatronBertForMaskedLM", **overrides):
    torch.manual_seed(0)
    return trained_looking(getattr(megabert_edu, name)(tiny_config(**overrides)))


def pair(B: int = 2, T: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """A clean batch and a corrupted copy that differs at position 2 only."""
    clean = torch.randint(5, 99, (B, T), generator=torch.Generator().manual_seed(0))
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 17) % 94 + 5
    return clean, corrupted


# ---------------------------------------------------------------------------------------------------
# Logit lens


@pytest.mark.parametrize("variant", VARIANTS)
def test_logit_lens_row_l_is_what_the_model_cut_after_layer_l_predicts(variant):
    model = build(**VARIANTS[variant])
    ids, _ = pair()
    mask = torch.ones_like(ids)
    mask[1, -1] = 0
    position = torch.tensor([3, 5])
    lens = logit_lens(model, ids, position=position, target=torch.tensor([11, 12]), k=4, attention_mask=mask)
    assert lens.labels == ["embeddings", "layer 0", "layer 1", "layer 2"] and lens.logits.shape == (L + 1, 2, 99)
    for keep in range(L + 1):  # keep the first `keep` layers: the model then ends where row `keep` reads
        cut = copy.deepcopy(model)
        cut.bert.encoder.layer = cut.bert.encoder.layer[:keep]
        with torch.no_grad():
            expected = cut(ids, attention_mask=mask).logits[torch.arange(2), position]
        assert_close(lens.logits[keep], expected, f"row {keep}")
    rank_by_sort = (lens.logits.argsort(-1, descending=True) == torch.tensor([11, 12])[:, None]).float().argmax(-1)
    assert torch.equal(lens.target_rank, rank_by_sort)
    assert torch.equal(lens.top_ids[..., 0], lens.logits.argmax(-1))
    assert_close(lens.target_prob, lens.logits.softmax(-1)[..., [11, 12]].diagonal(dim1=-2, dim2=-1))
    assert (lens.top_probs.diff(dim=-1) <= 0).all()


def test_logit_lens_on_a_causal_lm_and_its_top_tokens():
    model = build("MegatronBertForCausalLM", is_decoder=True)
    ids, _ = pair(B=1)
    lens = logit_lens(model, ids, position=-1, k=3)
    with torch.no_grad():
        assert_close(lens.logits[-1], model(ids).logits[:, -1])
    vocab = [f"tok{i}" for i in range(99)]

    class Tokenizer:
        def convert_ids_to_tokens(self, ids):
            return [vocab[i] for i in ids]

    assert lens.top_tokens(Tokenizer())[-1] == [vocab[i] for i in lens.top_ids[-1, 0].tolist()]
    assert lens.target_rank is None and lens.target_prob is None


# ---------------------------------------------------------------------------------------------------
# Direct logit attribution


@pytest.mark.parametrize("variant", VARIANTS)
def test_dla_parts_add_up_to_the_models_logit_difference(variant):
    model = build(**VARIANTS[variant])
    ids, _ = pair()
    position, target, contrast = torch.tensor([3, 6]), torch.tensor([7, 8]), 9
    dla = direct_logit_attribution(model, ids, position=position, target=target, contrast=contrast)
    with torch.no_grad():
        logits = model(ids).logits[torch.arange(2), position]  # (B, V)
    expected = logits[torch.arange(2), target] - logits[:, contrast]
    assert_close(dla.total, expected, "total")
    assert_close(dla.parts_sum(), dla.total, "parts", atol=1e-4)
    assert dla.heads.shape == (2, L, NH) and dla.attn.shape == dla.mlp.shape == (2, L)
    pruned = VARIANTS[variant].get("pruned_heads", {})
    for layer in range(L):
        for head in range(NH):
            assert dla.heads[:, layer, head].isnan().all() == (head in pruned.get(layer, []))
    bias = dla.attn - dla.heads.nansum(-1)  # each layer's output-projection bias: the same for both examples
    assert dla.mlp.abs().min() > 0 and dla.heads.nan_to_num().abs().max() > 1e-3
    assert (dla.cross_attn == 0).all() and bias.shape == (2, L)
    assert dla.by_layer(1).shape == (L, 2)


@pytest.mark.parametrize("layout", ["pre", "post"])
def test_dla_of_a_single_logit_and_of_a_decoder_with_cross_attention(layout):
    model = build("MegatronBertForCausalLM", is_decoder=True, add_cross_attention=True, layer_norm_position=layout)
    ids, _ = pair()
    memory = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3))
    dla = direct_logit_attribution(model, ids, position=4, target=10, encoder_hidden_states=memory)
    with torch.no_grad():
        expected = model(ids, encoder_hidden_states=memory).logits[:, 4, 10]
    assert_close(dla.total, expected)
    assert_close(dla.parts_sum(), expected, atol=1e-4)
    assert dla.cross_attn.abs().min() > 0


def test_dla_of_the_embedding_alone_in_a_model_without_layers():
    """With no layer, the logit is the embedding term plus constants; nothing is left for attention or MLPs."""
    model = build()
    model.bert.encoder.layer = model.bert.encoder.layer[:0]  # the config would refuse num_hidden_layers=0
    ids, _ = pair()
    dla = direct_logit_attribution(model, ids, position=2, target=5)
    assert dla.attn.shape == (2, 0) and dla.heads.shape == (2, 0, NH)
    assert_close(dla.embed + dla.bias, dla.total, atol=1e-4)
    assert dla.embed.abs().min() > 0


# ---------------------------------------------------------------------------------------------------
# Activation patching


def logit_metric(out) -> torch.Tensor:
    return out.logits[:, 4, 13].mean() - out.logits[:, 4, 14].mean()


@pytest.mark.parametrize("variant", VARIANTS)
def test_patching_resid_pre_of_layer_0_reproduces_the_clean_run_and_agreeing_positions_the_corrupted(variant):
    model = build(**VARIANTS[variant])
    clean, corrupted = pair()
    with torch.no_grad():
        clean_metric, corrupted_metric = float(logit_metric(model(clean))), float(logit_metric(model(corrupted)))
    whole = activation_patching(model, clean, corrupted, logit_metric, point="hook_resid_pre", per="layer")
    assert whole.clean == clean_metric and whole.corrupted == corrupted_metric
    assert whole.raw.shape == (L,) and whole.raw[0] == pytest.approx(clean_metric, abs=1e-5)
    assert_close(whole.values, torch.ones(L))  # the whole residual stream carries everything, at every layer
    by_position = activation_patching(model, clean, corrupted, logit_metric, point="hook_resid_pre")
    assert by_position.values.shape == (L, 7)
    same = [p for p in range(7) if p != 2]  # the inputs agree here: the embeddings too, so nothing changes
    assert torch.equal(by_position.raw[0, same], torch.full((6,), corrupted_metric))
    assert by_position.values[0, 2] == pytest.approx(1.0, abs=1e-4)  # the only position that differs


@pytest.mark.parametrize("variant", ["pre", "post", "pruned"])
def test_patching_per_head_covers_the_remaining_heads(variant):
    model = build(**VARIANTS[variant])
    clean, corrupted = pair()
    run = activation_patching(model, clean, corrupted, logit_metric, point="attention.self.hook_z", per="head")
    assert run.values.shape == (L, NH)
    pruned = VARIANTS[variant].get("pruned_heads", {})
    expected_nan = torch.tensor([[h in pruned.get(layer, []) for h in range(NH)] for layer in range(L)])
    assert torch.equal(run.values.isnan(), expected_nan)
    assert (run.values[~expected_nan] != 0).any()
    # Patching one head by hand gives the same number.
    layer, head = 1, 2
    _, cache = model.run_with_cache(clean, names=f"bert.encoder.layer.{layer}.attention.self.hook_z")
    clean_z = cache[f"bert.encoder.layer.{layer}.attention.self.hook_z"]

    def patch(z, name):
        z = z.clone()
        z[:, head] = clean_z[:, head]
        return z

    with torch.no_grad():
        by_hand = float(logit_metric(model.run_with_hooks(corrupted, fwd_hooks=[(
            f"bert.encoder.layer.{layer}.attention.self.hook_z", patch)])))
    assert run.raw[layer, head] == pytest.approx(by_hand, abs=1e-6)


def test_patching_a_per_head_point_by_position_and_a_subset_of_layers():
    model = build()
    clean, corrupted = pair()
    run = activation_patching(model, clean, corrupted, logit_metric, point="attention.self.hook_v", layers=[0, 2])
    assert run.raw.shape == (2, 7)
    assert torch.equal(run.raw[0, [0, 1, 3, 4, 5, 6]], torch.full((6,), run.corrupted))  # values at layer 0: per token


def test_interp_functions_leave_no_hooks_and_restore_training_mode():
    model = build()
    model.train()
    clean, corrupted = pair()
    logit_lens(model, clean, position=0)
    direct_logit_attribution(model, clean, position=0, target=3)
    activation_patching(model, clean, corrupted, logit_metric, per="layer")
    assert model.training and model.active_hooks() == []


# ---------------------------------------------------------------------------------------------------
# Bad input: the library's own errors, naming the argument


def test_bad_input_is_named():
    mlm, bare = build(), megabert_edu.MegatronBertModel(tiny_config())
    clean, corrupted = pair()
    with pytest.raises(TypeError, match="logit_lens reads logits through an LM head.*MegatronBertModel has none"):
        logit_lens(bare, clean, position=0)
    with pytest.raises(TypeError, match="needs a megabert_edu model; got Linear"):
        direct_logit_attribution(torch.nn.Linear(2, 2), clean, position=0, target=1)
    with pytest.raises(ValueError, match=r"position \[9, 9\] out of range: must lie in \[-7, 7\)"):
        logit_lens(mlm, clean, position=9)
    with pytest.raises(ValueError, match=r"target must be an int or a \(2,\) integer tensor .* torch.float32"):
        direct_logit_attribution(mlm, clean, position=0, target=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"contrast \[99, 99\] out of range"):
        direct_logit_attribution(mlm, clean, position=0, target=1, contrast=99)
    with pytest.raises(ValueError, match="k must be an int in"):
        logit_lens(mlm, clean, position=0, k=0)
    with pytest.raises(ValueError, match="must have the same shape .* minimal pair"):
        activation_patching(mlm, clean, corrupted[:, :5], logit_metric)
    with pytest.raises(UnknownHookName, match="hook_resid_pre"):
        activation_patching(mlm, clean, corrupted, logit_metric, point="hook_resid_pr")
    with pytest.raises(ValueError, match="per='head' needs a per-head hook point"):
        activation_patching(mlm, clean, corrupted, logit_metric, point="hook_attn_out", per="head")
    with pytest.raises(ValueError, match="per must be 'layer', 'position' or 'head'"):
        activation_patching(mlm, clean, corrupted, logit_metric, per="token")
    with pytest.raises(ValueError, match=r"metric must return one number .* got \(2,\)"):
        activation_patching(mlm, clean, corrupted, lambda out: out.logits[:, 0, 0])
    with pytest.raises(ValueError, match="the same on both the clean and the corrupted input|on both the clean"):
        activation_patching(mlm, clean, clean, logit_metric)
    with pytest.raises(ValueError, match=r"layers \[3\] out of range"):
        activation_patching(mlm, clean, corrupted, logit_metric, layers=[3])
    assert mlm.active_hooks() == []


def test_interp_imports_alone_in_a_fresh_interpreter():
    """No import cycle: interp imports models, analysis and hooks; none of them imports interp."""
    subprocess.run([sys.executable, "-c", "import megabert_edu.interp"], check=True, timeout=120)
