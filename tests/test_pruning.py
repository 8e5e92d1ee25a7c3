"""Head importance, iterative pruning, physical pruning and head ablation, checked against the reference."""

from __future__ import annotations

import math

import pytest
import torch
from reference import assert_close, make_pair, tiny_config

import megabert_edu
from megabert_edu.analysis import live_heads, row_entropy
from megabert_edu.pruning import (
    ablate_heads,
    gated_heads,
    head_importance,
    head_means,
    iterative_pruning,
    keep_mask,
    least_important,
    normalize_importance,
    prune_and_report,
    prune_masked_heads,
)

L, H, HS = 3, 4, 8  # tiny_config: layers, heads, head size


def inputs(B: int = 3, T: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 99, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -2:] = 0
    return ids, mask


def classification_batches(n: int = 2, B: int = 3, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed + 100)
    batches = []
    for k in range(n):
        ids, mask = inputs(B, seed=seed + k)
        labels = torch.randint(0, 3, (B,), generator=g)
        batches.append(dict(input_ids=ids, attention_mask=mask, labels=labels))
    return batches


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 2), (2, 3)])
def test_zero_ablation_by_hook_equals_head_mask(layer, head):
    ours, ref = make_pair("MegatronBertModel")
    ids, mask = inputs()
    head_mask = torch.ones(L, H)
    head_mask[layer, head] = 0
    with ablate_heads(ours, {layer: [head]}):
        ablated = ours(ids, attention_mask=mask).last_hidden_state
    assert ours.active_hooks() == []
    assert_close(ablated, ours(ids, attention_mask=mask, head_mask=head_mask).last_hidden_state)
    assert_close(ablated, ref(ids, attention_mask=mask, head_mask=head_mask).last_hidden_state)
    assert (ablated - ours(ids, attention_mask=mask).last_hidden_state).abs().max() > 1e-4


@pytest.mark.parametrize("layout", ["pre", "post"])
def test_physical_pruning_equals_reference_prune_heads(layout):
    ours, ref = make_pair("MegatronBertModel", layer_norm_position=layout)
    ids, mask = inputs()
    first = {0: [1], 2: [0, 3]}
    with gated_heads(ours, keep_mask(ours, first)):
        masked = ours(ids, attention_mask=mask)
    assert prune_masked_heads(ours, keep_mask(ours, first)) == first
    ref.prune_heads(first)
    pruned = ours(ids, attention_mask=mask)
    assert_close(pruned.last_hidden_state, ref(ids, attention_mask=mask).last_hidden_state)
    assert_close(pruned.pooler_output, ref(ids, attention_mask=mask).pooler_output)
    assert_close(pruned.last_hidden_state, masked.last_hidden_state)  # masking predicts pruning exactly
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())

    # A second round, still numbered as in the original model: head 2 of layer 0, and 1 already gone.
    second = keep_mask(ours, {0: [1, 2]})
    assert prune_masked_heads(ours, second) == {0: [2]}
    ref.prune_heads({0: [2]})
    pruned = ours(ids, attention_mask=mask).last_hidden_state
    assert_close(pruned, ref(ids, attention_mask=mask).last_hidden_state)
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())
    assert live_heads(ours) == [[0, 3], [0, 1, 2, 3], [1, 2]]


def brute_force_importance(ref, batches, mask: torch.Tensor) -> torch.Tensor:
    """mean over examples of |dloss/dhead_mask|, one example at a time, through the reference's head_mask."""
    grads = []
    for batch in batches:
        for b in range(batch["input_ids"].shape[0]):
            head_mask = mask.clone().requires_grad_(True)
            one = {k: v[b:b + 1] for k, v in batch.items()}
            loss = ref(**one, head_mask=head_mask).loss
            grads.append(torch.autograd.grad(loss, head_mask)[0].abs())
    return torch.stack(grads).mean(0)


def test_importance_equals_per_example_gradients_of_the_reference_head_mask():
    ours, ref = make_pair("MegatronBertForSequenceClassification", num_labels=3)
    batches = classification_batches()
    imp = head_importance(ours, batches, normalize_layers=False)
    expected = brute_force_importance(ref, batches, torch.ones(L, H))
    assert_close(imp.raw, expected, "raw importance", atol=1e-7)
    assert_close(imp.importance, expected, "importance without normalisation", atol=1e-7)
    # The batched trick is not the same as |gradient of the batch loss|: the test can tell them apart.
    batch_level = []
    for batch in batches:
        head_mask = torch.ones(L, H, requires_grad=True)
        batch_level.append(torch.autograd.grad(ref(**batch, head_mask=head_mask).loss, head_mask)[0].abs())
    assert (torch.stack(batch_level).mean(0) - expected).abs().max() > 1e-5


def test_importance_under_a_mask_scores_only_the_remaining_heads():
    ours, ref = make_pair("MegatronBertForSequenceClassification", num_labels=3)
    batches = classification_batches()
    mask = keep_mask(ours, {0: [0, 3], 2: [1]})
    imp = head_importance(ours, batches, mask=mask, normalize_layers=False)
    expected = brute_force_importance(ref, batches, mask)
    assert torch.isnan(imp.raw[mask == 0]).all()
    assert_close(imp.raw[mask == 1], expected[mask == 1], atol=1e-7)


def test_importance_is_a_true_derivative_finite_differences():
    ours, _ = make_pair("MegatronBertForSequenceClassification", num_labels=3)
    ours = ours.double()
    batch = {k: v[:1] for k, v in classification_batches(1)[0].items()}
    raw = head_importance(ours, [batch], normalize_layers=False, entropy=False).raw
    eps = 1e-5
    for layer, head in [(0, 1), (2, 3)]:
        step = torch.zeros(L, H, dtype=torch.float64)
        step[layer, head] = eps
        with torch.no_grad():
            up = ours(**batch, head_mask=1 + step).loss
            down = ours(**batch, head_mask=1 - step).loss
        assert math.isclose(abs(float(up - down) / (2 * eps)), float(raw[layer, head]), rel_tol=1e-5)


def test_importance_normalisation_and_entropy():
    ours, ref = make_pair("MegatronBertForSequenceClassification", num_labels=3)
    batches = classification_batches()
    imp = head_importance(ours, batches)
    assert_close(imp.importance.norm(dim=1), torch.ones(L), "per-layer L2 norm")
    assert_close(imp.importance, imp.raw / imp.raw.norm(dim=1, keepdim=True))
    scaled = normalize_importance(imp.raw, global_minmax=True)
    assert float(scaled.min()) == 0.0 and float(scaled.max()) == pytest.approx(1.0)
    # Entropy: mean over real query tokens of the reference's attention maps.
    total, tokens = torch.zeros(L, H), 0.0
    for batch in batches:
        with torch.no_grad():
            maps = ref(**batch, output_attentions=True).attentions
        real = batch["attention_mask"].float()
        total += torch.stack([(row_entropy(p) * real[:, None]).sum((0, 2)) for p in maps])
        tokens += float(real.sum())
    assert_close(imp.entropy, total / tokens, "entropy")


def test_least_important_takes_ten_percent_never_a_whole_layer_and_breaks_ties_in_order():
    importance = torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.0, 0.5, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2]])
    mask = torch.ones(3, 4)
    assert least_important(importance, mask, 0.1) == [(1, 0)]  # round(1.2) = 1 head
    assert least_important(importance, mask, 0.25) == [(1, 0), (0, 0), (0, 1)]
    mask[2, :3] = 0  # layer 2 has one head left: it is never chosen, however unimportant
    assert (2, 3) not in least_important(importance * 0, mask, 1.0)


def test_iterative_pruning_is_deterministic_and_stops_at_the_threshold():
    ours, _ = make_pair("MegatronBertForSequenceClassification", num_labels=3)
    batches = classification_batches(2, B=4)
    evaluation = classification_batches(2, B=4, seed=7)

    def metric(model) -> float:  # higher is better and positive: exp(-loss)
        return math.exp(-sum(float(model(**b).loss) for b in evaluation) / len(evaluation))

    full = iterative_pruning(ours, batches, metric, threshold=0.0)
    assert full.rejected is None and full.mask.sum(1).tolist() == [1, 1, 1]  # every layer keeps one head
    left = [s.heads_left for s in full.steps]
    assert left[:3] == [12, 11, 10]  # round(10% of what remains), at least 1
    again = iterative_pruning(ours, batches, metric, threshold=0.0)
    assert [s.mask.tolist() for s in again.steps] == [s.mask.tolist() for s in full.steps]
    assert [s.metric for s in again.steps] == [s.metric for s in full.steps]

    metrics = [s.metric for s in full.steps]
    k = next(i for i, m in enumerate(metrics) if m < metrics[0])  # the first step that hurt
    threshold = metrics[k] / metrics[0] + 1e-9
    run = iterative_pruning(ours, batches, metric, threshold=threshold)
    assert len(run.steps) == k and run.rejected is not None
    assert run.rejected.metric == pytest.approx(metrics[k])
    assert all(s.metric >= threshold * run.base_metric for s in run.steps)
    assert torch.equal(run.mask, full.steps[k - 1].mask)


def test_prune_and_report_prunes_the_final_mask_and_leaves_the_original_alone():
    ours, _ = make_pair("MegatronBertForSequenceClassification", num_labels=3)
    batches = classification_batches(2, B=4)
    ids, mask = inputs()
    before = ours(ids, attention_mask=mask).logits

    def metric(model) -> float:
        return math.exp(-sum(float(model(**b).loss) for b in batches) / len(batches))

    pruned, report = prune_and_report(ours, batches, metric, threshold=0.0, max_steps=3, seed=1)
    removed = report.heads_before - report.heads_after
    assert report.heads_before == 12 and removed == 3  # three steps of one head each
    assert sum(len(h) for h in report.pruned_heads.values()) == removed
    per_head = 3 * (32 * HS + HS) + HS * 32  # Q, K, V rows (+ bias) and the output projection's columns
    assert report.params_before - report.params_after == removed * per_head
    assert report.metric_after == pytest.approx(report.metric_masked, rel=1e-5)
    assert report.examples_per_s_before > 0 and report.examples_per_s_after > 0
    assert "examples/s" in str(report)
    assert_close(ours(ids, attention_mask=mask).logits, before)  # the original still has all its heads
    assert pruned.config.pruned_heads == report.pruned_heads


def test_mean_ablation_replaces_head_output_with_its_data_mean():
    model = megabert_edu.MegatronBertModel(tiny_config()).eval()
    batches = [dict(input_ids=i, attention_mask=m) for i, m in (inputs(seed=0), inputs(seed=1))]
    means = head_means(model, batches)
    # The mean over real tokens of the cached head outputs, computed independently.
    sums, count = torch.zeros(L, H, HS), 0.0
    for b in batches:
        _, cache = model.run_with_cache(**b, names="*.hook_z")
        real = b["attention_mask"].float()
        sums += torch.stack([(cache[f"encoder.layer.{i}.attention.self.hook_z"] * real[:, None, :, None])
                             .sum((0, 2)) for i in range(L)])
        count += float(real.sum())
    assert_close(means, sums / count, atol=1e-6)

    ids, mask = inputs(seed=2)
    with ablate_heads(model, {1: [3]}, method="mean", means=means):
        _, cache = model.run_with_cache(ids, attention_mask=mask, names="*.layer.1.*.hook_z")
        out = model(ids, attention_mask=mask).last_hidden_state
    z = cache["encoder.layer.1.attention.self.hook_z"]
    assert_close(z[:, 3], means[1, 3].expand_as(z[:, 3]))
    assert (out - model(ids, attention_mask=mask).last_hidden_state).abs().max() > 1e-5
    with ablate_heads(model, {1: [3]}, method="mean", means=torch.zeros(L, H, HS)):
        zero_mean = model(ids, attention_mask=mask).last_hidden_state
    with ablate_heads(model, {1: [3]}, method="zero"):
        assert_close(zero_mean, model(ids, attention_mask=mask).last_hidden_state)


def test_uniform_ablation_equals_a_head_whose_queries_are_zero():
    """q = 0 makes every score 0, so softmax spreads the head's attention evenly over the unmasked keys."""
    model = megabert_edu.MegatronBertModel(tiny_config()).eval()
    ids, mask = inputs()
    layer, head = 2, 1
    with ablate_heads(model, {layer: [head]}, method="uniform"):
        _, cache = model.run_with_cache(ids, attention_mask=mask, names=f"*.layer.{layer}.*.hook_probs")
        uniform = model(ids, attention_mask=mask).last_hidden_state
    probs = cache[f"encoder.layer.{layer}.attention.self.hook_probs"][:, head]  # (B, T, T)
    expected = (mask[:, None, :].float() / mask.sum(1)[:, None, None]).expand_as(probs)
    assert_close(probs, expected)
    with torch.no_grad():
        rows = slice(head * HS, (head + 1) * HS)
        model.encoder.layer[layer].attention.self.query.weight[rows] = 0
        model.encoder.layer[layer].attention.self.query.bias[rows] = 0
    assert_close(uniform, model(ids, attention_mask=mask).last_hidden_state)


def test_ablation_on_a_pruned_model_uses_original_head_numbers():
    model = megabert_edu.MegatronBertModel(tiny_config()).eval()
    twin = megabert_edu.MegatronBertModel(tiny_config()).eval()
    twin.load_state_dict(model.state_dict())
    ids, mask = inputs()
    model.prune_heads({1: [0]})
    twin.prune_heads({1: [0, 2]})
    with ablate_heads(model, {1: [2]}):
        assert_close(model(ids, attention_mask=mask).last_hidden_state,
                     twin(ids, attention_mask=mask).last_hidden_state)
    with pytest.raises(ValueError, match="unknown ablation method"):
        with ablate_heads(model, {1: [2]}, method="random"):
            pass
    assert model.active_hooks() == []
