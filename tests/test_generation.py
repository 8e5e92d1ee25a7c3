"""Generation: KV-cached decoding against transformers' generate, fill-mask and MLM sampling."""

from __future__ import annotations

import pytest
import torch
from reference import make_pair, tiny_config

from megabert_edu import MegatronBertForCausalLM
from megabert_edu.generation import StaticCache, fill_mask, generate, sample_mlm, top_k_filter, top_p_filter
from megabert_edu.tokenization import SPECIAL_TOKENS, WordPieceTokenizer

NEW = 12


@pytest.fixture(scope="module")
def pair():
    return make_pair("MegatronBertForCausalLM", is_decoder=True, seed=1)


def left_padded_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # row 0: 4 real tokens
    mask[1, :1] = 0  # row 1: 6 real tokens
    return ids.masked_fill(mask == 0, 0), mask


def reference_generate(ref, ids, **kwargs):
    kwargs.setdefault("do_sample", False)
    return ref.generate(ids, max_new_tokens=NEW, pad_token_id=0, **kwargs)


def test_greedy_matches_reference(pair):
    ours, ref = pair
    ids = torch.randint(5, 99, (2, 6), generator=torch.Generator().manual_seed(3))
    out = generate(ours, ids, max_new_tokens=NEW)
    assert out.shape == (2, 6 + NEW)
    assert torch.equal(out, reference_generate(ref, ids))
    assert torch.equal(ours.generate(ids, max_new_tokens=NEW), out)  # the method delegates here


def test_greedy_left_padded_batch_matches_reference(pair):
    # transformers derives position_ids from the attention mask's running sum, as we do, so
    # left-padded batches are directly comparable.
    ours, ref = pair
    ids, mask = left_padded_batch()
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(out, reference_generate(ref, ids, attention_mask=mask))


def test_left_padding_does_not_change_a_row(pair):
    ours, _ = pair
    ids, mask = left_padded_batch()
    batched = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW)
    for row in range(3):
        alone = generate(ours, ids[row:row + 1, mask[row] == 1], max_new_tokens=NEW)
        assert torch.equal(batched[row, -NEW:], alone[0, -NEW:]), f"row {row} depends on its padding"


def test_kv_cache_equals_recomputing_the_prefix(pair):
    ours, _ = pair
    ids = torch.randint(5, 99, (2, 5), generator=torch.Generator().manual_seed(4))
    slow = ids
    with torch.no_grad():
        for _ in range(NEW):  # no cache: re-run the whole sequence every step
            best = ours(slow, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            slow = torch.cat([slow, best], dim=1)
    assert torch.equal(generate(ours, ids, max_new_tokens=NEW), slow)


@pytest.mark.parametrize("kwargs", [
    dict(top_k=10),
    dict(temperature=0.7, top_p=0.8, top_k=None),
    dict(temperature=1.3, top_k=20, top_p=0.9, repetition_penalty=1.5),
])
def test_sampling_matches_reference_with_the_same_seed(pair, kwargs):
    # Same processors in the same order + the same global RNG draws -> the same tokens.
    ours, ref = pair
    ids, mask = left_padded_batch(1)
    torch.manual_seed(7)
    a = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW, do_sample=True, **kwargs)
    torch.manual_seed(7)
    b = reference_generate(ref, ids, attention_mask=mask, do_sample=True, **kwargs)
    assert torch.equal(a, b)


def test_repetition_penalty_greedy_matches_reference(pair):
    ours, ref = pair
    ids = torch.randint(5, 99, (1, 6), generator=torch.Generator().manual_seed(5))
    out = generate(ours, ids, max_new_tokens=NEW, repetition_penalty=2.0)
    assert torch.equal(out, reference_generate(ref, ids, repetition_penalty=2.0))
    assert not torch.equal(out, generate(ours, ids, max_new_tokens=NEW))


def test_eos_stops_rows_and_pads_them(pair):
    ours, ref = pair
    ids, mask = left_padded_batch()
    free = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW)
    eos = int(free[0, 7 + 2])  # row 0's third new token becomes the end-of-sequence token
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=1)
    ref_out = ref.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, eos_token_id=eos,
                           pad_token_id=1)
    assert torch.equal(out, ref_out)
    first = (out[0, 7:] == eos).nonzero()[0, 0]
    assert first <= 2 and bool((out[0, 7 + first + 1:] == 1).all())


def test_eos_in_every_row_stops_early(pair):
    ours, _ = pair
    ids = torch.randint(5, 99, (1, 4), generator=torch.Generator().manual_seed(6))
    first = int(generate(ours, ids, max_new_tokens=1)[0, -1])
    assert generate(ours, ids, max_new_tokens=NEW, eos_token_id=first).shape == (1, 5)


def test_generator_seeds_sampling(pair):
    ours, _ = pair
    ids = torch.randint(5, 99, (2, 4), generator=torch.Generator().manual_seed(8))

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(ours, ids, max_new_tokens=NEW, do_sample=True, generator=g)

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))


def test_generate_restores_training_mode(pair):
    ours, _ = pair
    ours.train()
    try:
        generate(ours, torch.tensor([[5, 6]]), max_new_tokens=2)
        assert ours.training
    finally:
        ours.eval()


def test_bad_generate_arguments_raise(pair):
    ours, _ = pair
    ids = torch.tensor([[5, 6, 7]])
    encoder, _ = make_pair("MegatronBertForCausalLM")  # is_decoder=False
    with pytest.raises(ValueError, match="is_decoder=True"):
        generate(encoder, ids)
    with pytest.raises(ValueError, match="LEFT"):
        generate(ours, ids, attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(ours, ids, max_new_tokens=100)
    with pytest.raises(ValueError, match="temperature"):
        generate(ours, ids, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(ours, ids, do_sample=True, top_p=1.5)


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[False, True, False, True]]
    probs = logits.softmax(-1)[0]  # 0.64, 0.09, 0.24, 0.03
    assert probs[0] < 0.7 < probs[0] + probs[2]
    assert torch.isinf(top_p_filter(logits, 0.7)).tolist() == [[False, True, False, True]]
    assert torch.isinf(top_p_filter(logits, 0.5)).tolist() == [[False, True, True, True]]
    assert torch.isinf(top_p_filter(logits, 1e-9)).tolist() == [[False, True, True, True]]  # top-1 survives


# ---------------------------------------------------------------------------------------------------
# Masked LM


@pytest.fixture(scope="module")
def mlm_pair():
    return make_pair("MegatronBertForMaskedLM", seed=2)


@pytest.fixture(scope="module")
def tokenizer():
    words = [f"w{i}" for i in range(99 - len(SPECIAL_TOKENS))]
    return WordPieceTokenizer({t: i for i, t in enumerate([*SPECIAL_TOKENS, *words])})


def test_fill_mask_matches_reference_logits(mlm_pair, tokenizer):
    ours, ref = mlm_pair
    text = "w1 w2 [MASK] w4 [MASK] w6"
    guesses = fill_mask(ours, tokenizer, text, top_k=3)
    assert len(guesses) == 2 and all(len(g) == 3 for g in guesses)
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        probs = ref(ids).logits[0, ids[0] == tokenizer.mask_token_id].softmax(-1)
    for row, p in zip(guesses, probs, strict=True):
        top = p.topk(3)
        assert [g["token_id"] for g in row] == top.indices.tolist()
        assert [g["score"] for g in row] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert row[0]["token"] == tokenizer.convert_ids_to_tokens(row[0]["token_id"])


def test_fill_mask_needs_a_mask(mlm_pair, tokenizer):
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        fill_mask(mlm_pair[0], tokenizer, "w1 w2")


@pytest.mark.parametrize("method", ["mask_predict", "gibbs"])
def test_sample_mlm_is_seeded_and_writes_only_the_blanks(mlm_pair, tokenizer, method):
    ours, _ = mlm_pair
    m = tokenizer.mask_token_id
    ids = torch.tensor([[2, 10, m, m, m, 11, m, 3], [2, m, m, 12, 13, m, m, 3]])
    specials = tuple(range(len(SPECIAL_TOKENS)))

    def run(seed):
        return sample_mlm(ours, ids, m, method=method, steps=3, special_ids=specials,
                          generator=torch.Generator().manual_seed(seed))

    out = run(0)
    blanks = ids == m
    assert torch.equal(out[~blanks], ids[~blanks])
    assert bool((out[blanks] >= len(SPECIAL_TOKENS)).all())  # no [MASK]/[CLS]/... left in the blanks
    assert torch.equal(out, run(0))
    assert not torch.equal(out, run(1))


def test_sample_mlm_greedy_one_step_is_argmax(mlm_pair):
    ours, ref = mlm_pair
    ids = torch.tensor([[2, 10, 4, 4, 11, 3]])
    out = sample_mlm(ours, ids, 4, steps=1, temperature=0, special_ids=(4,))
    with torch.no_grad():
        logits = ref(ids).logits
    logits[..., 4] = float("-inf")
    assert torch.equal(out[0, 2:4], logits[0, 2:4].argmax(-1))


# ---------------------------------------------------------------------------------------------------
# The shipped megabert-tiny models (megabert_edu/assets, trained by scripts/pretrain_tiny.py)


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_shipped_causal_model_greedy_matches_reference():
    import transformers

    from megabert_edu import MegatronBertForCausalLM
    from megabert_edu.assets import TINY_CAUSAL

    tokenizer = WordPieceTokenizer.from_pretrained(TINY_CAUSAL)
    ours = MegatronBertForCausalLM.from_pretrained(TINY_CAUSAL).eval()
    ref = transformers.MegatronBertForCausalLM.from_pretrained(TINY_CAUSAL).eval()
    prompts = ["dog, domestic dog:", "to run quickly", "a musical instrument played with a bow"]
    ids, mask = left_pad([tokenizer.encode(p)[:-1] for p in prompts])  # no final [SEP]: the text goes on
    sep = tokenizer.sep_token_id
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=16, eos_token_id=sep)
    expected = ref.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=sep,
                            pad_token_id=0)
    assert torch.equal(out, expected)
    assert len(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)) > 5


def test_shipped_models_are_trained_and_small():
    from megabert_edu import MegatronBertForMaskedLM
    from megabert_edu.assets import ASSETS, TINY

    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"assets are {size / 2**20:.1f} MB"
    tokenizer = WordPieceTokenizer.from_pretrained(TINY)
    model = MegatronBertForMaskedLM.from_pretrained(TINY).eval()  # the MLM head of the pre-training model
    guesses = fill_mask(model, tokenizer, "a young [MASK] that is kept as a pet", top_k=5)[0]
    assert all(g["token"] not in SPECIAL_TOKENS for g in guesses)
    # A random model spreads its guesses over all 8000 tokens; the trained one does not.
    assert guesses[0]["score"] > 10 / tokenizer.vocab_size


# ---------------------------------------------------------------------------------------------------
# Static and fixed-shape KV caches: the same tokens as the dynamic cache and the reference


@pytest.mark.parametrize("cache", ["static", "fixed"])
def test_static_caches_match_dynamic_and_reference(pair, cache):
    ours, ref = pair
    ids = torch.randint(5, 99, (2, 6), generator=torch.Generator().manual_seed(3))
    dynamic = generate(ours, ids, max_new_tokens=NEW)
    assert torch.equal(generate(ours, ids, max_new_tokens=NEW, cache=cache), dynamic)
    assert torch.equal(dynamic, reference_generate(ref, ids))


@pytest.mark.parametrize("cache", ["static", "fixed"])
def test_static_caches_left_padded_with_eos_match_reference(pair, cache):
    ours, ref = pair
    ids, mask = left_padded_batch()
    free = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW)
    eos = int(free[0, 7 + 2])
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=1, cache=cache)
    expected = ref.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, eos_token_id=eos,
                            pad_token_id=1)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("cache", ["static", "fixed"])
def test_static_caches_sample_like_the_dynamic_one(pair, cache):
    ours, _ = pair
    ids, mask = left_padded_batch(1)
    torch.manual_seed(7)
    a = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW, do_sample=True, top_p=0.8)
    torch.manual_seed(7)
    b = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW, do_sample=True, top_p=0.8, cache=cache)
    assert torch.equal(a, b)


def test_static_cache_writes_in_place():
    torch.manual_seed(0)
    model = MegatronBertForCausalLM(tiny_config(is_decoder=True)).eval()
    cache = StaticCache(model, batch=2, max_len=10)
    buffers = [k.data_ptr() for k, _ in cache.buffers]
    ids = torch.randint(5, 99, (2, 4))
    with torch.no_grad():
        out = model(ids, past_key_values=cache.filled(0), use_cache=True)
        dynamic = model(ids, use_cache=True)
    for (k, v), (k_dyn, v_dyn), ptr in zip(out.past_key_values, dynamic.past_key_values, buffers, strict=True):
        assert k.data_ptr() == ptr and k.shape[2] == 4  # a view of the preallocated buffer
        assert torch.equal(k, k_dyn) and torch.equal(v, v_dyn)
    assert [b.shape for b, _ in cache.buffers] == [(2, 4, 10, 8)] * 3


def test_static_cache_sizes_on_the_meta_device():
    """A cache for a model built on the meta device (sizing without memory): meta buffers of the right shape."""
    with torch.device("meta"):
        model = MegatronBertForCausalLM(tiny_config(is_decoder=True))
    cache = StaticCache(model, batch=2, max_len=10)
    assert all(k.is_meta and k.shape == (2, 4, 10, 8) and k.dtype == torch.float32 for k, _ in cache.buffers)


def test_static_cache_on_a_pruned_model_matches_dynamic():
    torch.manual_seed(0)
    model = MegatronBertForCausalLM(tiny_config(is_decoder=True)).eval()
    model.prune_heads({0: [1], 2: [0, 3]})
    ids = torch.randint(5, 99, (2, 5), generator=torch.Generator().manual_seed(1))
    dynamic = generate(model, ids, max_new_tokens=NEW)
    assert torch.equal(generate(model, ids, max_new_tokens=NEW, cache="static"), dynamic)
    assert torch.equal(generate(model, ids, max_new_tokens=NEW, cache="fixed"), dynamic)


def test_relative_positions_refuse_the_fixed_cache():
    torch.manual_seed(0)
    model = MegatronBertForCausalLM(tiny_config(is_decoder=True, position_embedding_type="relative_key")).eval()
    ids = torch.randint(5, 99, (1, 4))
    assert torch.equal(generate(model, ids, max_new_tokens=4, cache="static"), generate(model, ids, max_new_tokens=4))
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        generate(model, ids, max_new_tokens=4, cache="fixed")


# ---------------------------------------------------------------------------------------------------
# The compiled decode step (generate(compile=True)): one graph, captured once, the same tokens


def test_the_fixed_decode_step_traces_as_one_graph_without_recompiling(pair, monkeypatch):
    """What CUDA-graph capture needs, checked on a CPU: torch.compile traces the whole fixed-shape step (no
    graph break: fullgraph=True would raise) and every later step reuses that one graph (no recompile)."""
    from megabert_edu import generation

    ours, _ = pair
    graphs = []

    def count_graphs(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward  # run the traced graph as it is

    torch._dynamo.reset()
    monkeypatch.setattr(generation, "compiled_decode_step",
                        lambda mode: torch.compile(generation.decode_step, backend=count_graphs, fullgraph=True))
    ids, mask = left_padded_batch(2)
    out = generate(ours, ids, attention_mask=mask, max_new_tokens=NEW, compile=True)
    assert torch.equal(out, generate(ours, ids, attention_mask=mask, max_new_tokens=NEW))
    assert len(graphs) == 1, f"{len(graphs)} graphs for {NEW - 1} decode steps"
    torch._dynamo.reset()


def test_generate_compiled_with_inductor_matches_the_readable_loop():
    """The real torch.compile path (inductor, a C++ compiler on a CPU; about 10 s cold for this tiny model)."""
    import shutil

    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("torch.compile's CPU backend needs a C++ compiler (g++); none on PATH")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MegatronBertForCausalLM(tiny_config(is_decoder=True)).eval()
    ids = torch.randint(5, 99, (2, 5), generator=torch.Generator().manual_seed(4))
    dynamic = generate(model, ids, max_new_tokens=NEW)
    assert torch.equal(generate(model, ids, max_new_tokens=NEW, compile=True), dynamic)
    torch._dynamo.reset()
