"""Test helpers: build our model and the reference (transformers 4.57.6) with the same weights, compare outputs."""

from __future__ import annotations

import torch
import transformers

import megabert_edu

ATOL = 1e-5


def tiny_config(**overrides) -> megabert_edu.MegatronBertConfig:
    fields = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    fields.update(overrides)
    return megabert_edu.MegatronBertConfig(**fields)


def reference_config(config: megabert_edu.MegatronBertConfig):
    d = config.to_dict()  # JSON-shaped: id2label keys are strings, as in a config.json
    post = d.pop("layer_norm_position") == "post"
    d.pop("model_type")
    d["pruned_heads"] = dict(config.pruned_heads)  # layer numbers as ints, as transformers' model expects
    ref_cls = transformers.BertConfig if post else transformers.MegatronBertConfig
    return ref_cls(**d)


def reference_class(name: str, config: megabert_edu.MegatronBertConfig):
    if config.layer_norm_position == "post":
        name = "BertLMHeadModel" if name == "MegatronBertForCausalLM" else name.replace("MegatronBert", "Bert")
    return getattr(transformers, name)


def make_pair(name: str, config=None, seed: int = 0, **overrides):
    """(ours, reference), both in eval mode, holding identical random weights."""
    config = config or tiny_config(**overrides)
    torch.manual_seed(seed)
    ours = getattr(megabert_edu, name)(config).eval()
    ref = reference_class(name, config)(reference_config(config)).eval()
    state = ours.state_dict()
    missing, unexpected = ref.load_state_dict(state, strict=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    assert not missing and not unexpected, (missing, unexpected)
    return ours, ref


def legacy(past):
    if past is None or isinstance(past, tuple):
        return past
    return past.to_legacy_cache()


def assert_close(ours, ref, name="output", atol=ATOL):
    if ours is None:
        assert ref is None, f"{name}: ours is None, reference is not"
        return
    if isinstance(ours, (tuple, list)):
        ref = legacy(ref)
        assert isinstance(ref, (tuple, list)) and len(ours) == len(ref), f"{name}: lengths differ"
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            assert_close(a, b, f"{name}[{i}]", atol)
        return
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    diff = (ours.detach().float() - ref.detach().float()).abs().max().item() if ours.numel() else 0.0
    assert diff <= atol, f"{name}: max abs diff {diff:.3g} > {atol}"


def assert_outputs_match(ours, ref, atol=ATOL):
    """Every field we computed equals the reference's field of the same name."""
    assert ours.keys(), "our output is empty"
    for key in ours.keys():
        assert_close(ours[key], getattr(ref, key), key, atol)
