/* megabert_edu attention views: plain JavaScript, no libraries, nothing loaded from a network.
 *
 * mbvRender(root, data) draws into the element `root`:
 *   data.tokens  every token of the sequence (sentence A then sentence B)
 *   data.split   index where sentence B starts, or null
 *   data.layers  per layer {label, heads: [original head numbers], attn: [head][query][key]}
 *   data.num_heads, data.layer (index into layers), data.head (original number or "all"), data.mode
 * Head view: queries on the left, keys on the right, one line per (query, key) whose opacity is the weight.
 * Model view: one thumbnail per (layer, live head); clicking one opens it in the head view below.
 */
function mbvRender(root, data) {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var T = data.tokens.length;
  var state = {layer: data.layer, head: data.head, filter: "all", focus: null};
  var ROW = 20, TOP = 24;
  var maxChars = Math.max.apply(null, data.tokens.map(function (t) { return t.length; }).concat([3]));
  var TEXT_W = Math.min(180, 8 * maxChars + 12), GAP = 160;

  function el(tag, attrs, parent) {
    var node = tag.indexOf("svg:") === 0 ? document.createElementNS(SVGNS, tag.slice(4)) : document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function colour(head) { return "hsl(" + Math.round(head * 330 / Math.max(1, data.num_heads)) + ",75%,42%)"; }
  function inSide(i, side) {  // side "A" or "B"
    if (data.split === null) { return true; }
    return side === "A" ? i < data.split : i >= data.split;
  }
  function visible(q, k) {
    if (state.filter === "all") { return true; }
    return inSide(q, state.filter.charAt(0)) && inSide(k, state.filter.charAt(2));
  }
  function matrix(layer, head) { var L = data.layers[layer]; return L.attn[L.heads.indexOf(head)]; }

  /* ---- controls ---- */
  var controls = el("div", {"class": "mbv-controls"}, root);
  var layerLabel = el("label", {text: "Layer "}, controls);
  var layerSel = el("select", {"class": "mbv-layer", "aria-label": "layer"}, layerLabel);
  data.layers.forEach(function (L, i) { el("option", {value: String(i), text: L.label}, layerSel); });
  var headLabel = el("label", {text: "Head "}, controls);
  var headSel = el("select", {"class": "mbv-head", "aria-label": "head"}, headLabel);
  var filterSel = null;
  if (data.split !== null) {
    var filterLabel = el("label", {text: "Sentences "}, controls);
    filterSel = el("select", {"class": "mbv-filter", "aria-label": "sentences"}, filterLabel);
    [["all", "all"], ["A>A", "A \u2192 A"], ["A>B", "A \u2192 B"], ["B>A", "B \u2192 A"], ["B>B", "B \u2192 B"]]
      .forEach(function (o) { el("option", {value: o[0], text: o[1]}, filterSel); });
    filterSel.onchange = function () { state.filter = filterSel.value; draw(); };
  }
  var legend = el("span", {"class": "mbv-legend"}, controls);

  function fillHeads() {
    headSel.innerHTML = "";
    legend.innerHTML = "";
    el("option", {value: "all", text: "all (colours)"}, headSel);
    data.layers[state.layer].heads.forEach(function (h) {
      el("option", {value: String(h), text: String(h)}, headSel);
      var sw = el("span", {"class": "mbv-swatch", title: "head " + h, style: "background:" + colour(h)}, legend);
      sw.setAttribute("data-head", String(h));
      sw.onclick = function () { state.head = (state.head === h) ? "all" : h; sync(); draw(); };
    });
    if (state.head !== "all" && data.layers[state.layer].heads.indexOf(state.head) < 0) { state.head = "all"; }
  }
  function sync() {
    layerSel.value = String(state.layer);
    headSel.value = String(state.head);
    Array.prototype.forEach.call(legend.children, function (sw) {
      var on = state.head === "all" || sw.getAttribute("data-head") === String(state.head);
      sw.className = "mbv-swatch" + (on ? " mbv-active" : "");
    });
  }
  layerSel.onchange = function () { state.layer = Number(layerSel.value); fillHeads(); sync(); draw(); };
  headSel.onchange = function () {
    state.head = headSel.value === "all" ? "all" : Number(headSel.value); sync(); draw();
  };

  /* ---- head view ---- */
  var panel = el("div", {"class": "mbv-headview"}, root);
  var caption = el("div", {"class": "mbv-caption"}, panel);
  var width = 2 * TEXT_W + GAP, height = TOP + T * ROW + 4;
  var svg = el("svg:svg", {width: width, height: height, "class": "mbv-svg", role: "img",
                           "aria-label": "attention lines from query tokens (left) to key tokens (right)"}, panel);
  el("svg:text", {x: TEXT_W - 4, y: 14, "text-anchor": "end", text: "query", fill: "#888"}, svg);
  el("svg:text", {x: TEXT_W + GAP + 4, y: 14, text: "key", fill: "#888"}, svg);
  var bars = el("svg:g", {"class": "mbv-bars"}, svg);  // the hovered token's weights, behind the other column
  var lines = el("svg:g", {"class": "mbv-lines"}, svg);
  var texts = {left: [], right: []};
  function y(i) { return TOP + i * ROW + ROW / 2; }
  data.tokens.forEach(function (tok, i) {
    ["left", "right"].forEach(function (side) {
      var t = el("svg:text", {x: side === "left" ? TEXT_W - 4 : TEXT_W + GAP + 4, y: y(i) + 4,
                              "text-anchor": side === "left" ? "end" : "start",
                              "class": "mbv-tok mbv-tok-" + side, "data-index": String(i), text: tok}, svg);
      t.onmouseenter = function () { state.focus = {side: side, i: i}; draw(); };
      t.onmouseleave = function () { state.focus = null; draw(); };
      texts[side].push(t);
    });
  });
  function shown(q, k) {
    if (!visible(q, k)) { return false; }
    if (state.focus === null) { return true; }
    return state.focus.side === "left" ? q === state.focus.i : k === state.focus.i;
  }
  function drawBars(heads) {
    while (bars.firstChild) { bars.removeChild(bars.firstChild); }
    if (state.focus === null || heads.length !== 1) { return; }
    var A = matrix(state.layer, heads[0]), left = state.focus.side === "left";
    for (var j = 0; j < T; j++) {
      var w = left ? A[state.focus.i][j] : A[j][state.focus.i];
      var x = left ? TEXT_W + GAP : TEXT_W - w * TEXT_W;
      el("svg:rect", {x: x, y: y(j) - ROW / 2 + 2, width: w * TEXT_W, height: ROW - 4, fill: colour(heads[0]),
                      "fill-opacity": 0.3, "class": "mbv-bar"}, bars).appendChild(
        el("svg:title", {text: (left ? "attention to " : "attention from ") + data.tokens[j] + ": " + w.toFixed(3)}));
    }
  }
  function draw() {
    while (lines.firstChild) { lines.removeChild(lines.firstChild); }
    var heads = state.head === "all" ? data.layers[state.layer].heads : [state.head];
    drawBars(heads);
    heads.forEach(function (h) {
      var A = matrix(state.layer, h);
      for (var q = 0; q < T; q++) {
        for (var k = 0; k < T; k++) {
          var w = A[q][k];
          if (w < 0.01 || !shown(q, k)) { continue; }
          el("svg:line", {x1: TEXT_W, y1: y(q), x2: TEXT_W + GAP, y2: y(k), stroke: colour(h),
                          "stroke-width": 3, "stroke-opacity": heads.length > 1 ? w * 0.8 : w,
                          "class": "mbv-line"}, lines);
        }
      }
    });
    ["left", "right"].forEach(function (side) {
      texts[side].forEach(function (t, i) {
        var focus = state.focus !== null && state.focus.side === side && state.focus.i === i;
        var dim = state.filter !== "all" && !inSide(i, state.filter.charAt(side === "left" ? 0 : 2));
        t.setAttribute("class", "mbv-tok mbv-tok-" + side + (focus ? " mbv-focus" : ""));
        t.setAttribute("fill-opacity", dim ? 0.3 : 1);
      });
    });
    var L = data.layers[state.layer];
    caption.textContent = L.label + ", " + (state.head === "all" ? "all " + L.heads.length + " heads"
      : "head " + state.head) + (state.focus ? " \u2014 only the hovered token's attention" : "");
  }

  /* ---- model view ---- */
  if (data.mode === "model") {
    var table = el("table", {"class": "mbv-grid"});
    root.insertBefore(table, controls);
    var head = el("tr", {}, el("thead", {}, table));
    el("th", {}, head);
    for (var h = 0; h < data.num_heads; h++) { el("th", {text: "head " + h}, head); }
    var body = el("tbody", {}, table);
    data.layers.forEach(function (L, li) {
      var tr = el("tr", {}, body);
      el("th", {text: L.label}, tr);
      for (var h = 0; h < data.num_heads; h++) {
        var td = el("td", {}, tr);
        if (L.heads.indexOf(h) < 0) { el("div", {"class": "mbv-pruned", text: "pruned"}, td); continue; }
        thumb(td, li, h);
      }
    });
    panel.style.display = "none";
    controls.style.display = "none";
    el("div", {"class": "mbv-caption mbv-hint", text: "Click a thumbnail to open that head."}, root);
  }
  function thumb(td, layer, h) {
    var S = 60, pad = 6, A = matrix(layer, h);
    var s = el("svg:svg", {width: S, height: S, "class": "mbv-thumb", role: "button",
                           "data-layer": String(layer), "data-head": String(h),
                           "aria-label": data.layers[layer].label + " head " + h}, td);
    var step = (S - 2 * pad) / Math.max(1, T - 1);
    for (var q = 0; q < T; q++) {
      for (var k = 0; k < T; k++) {
        if (A[q][k] < 0.02) { continue; }
        el("svg:line", {x1: pad, y1: pad + q * step, x2: S - pad, y2: pad + k * step, stroke: colour(h),
                        "stroke-width": 1.5, "stroke-opacity": A[q][k]}, s);
      }
    }
    s.onclick = function () {
      Array.prototype.forEach.call(root.querySelectorAll(".mbv-thumb.mbv-active"), function (n) {
        n.setAttribute("class", "mbv-thumb");
      });
      s.setAttribute("class", "mbv-thumb mbv-active");
      state.layer = layer; state.head = h; state.focus = null;
      panel.style.display = ""; controls.style.display = "";
      fillHeads(); sync(); draw();
    };
  }

  fillHeads(); sync(); draw();
}
