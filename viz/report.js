// The run report's script (viz/report.py inlines it): the sample slider, the gradient-flow curve under
// the cursor, and pan, zoom and node details on the unrolled graph. Plain DOM; nothing is fetched.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var SVGNS = "http://www.w3.org/2000/svg";
  var COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

  function el(name, attrs, parent) {
    var e = document.createElementNS(SVGNS, name);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(e); }
    return e;
  }

  function fmt(v, digits) { return v === null || v === undefined ? "-" : Number(v).toPrecision(digits || 4); }

  // A point of a mouse event in the user units of an <svg> (its viewBox).
  function svgPoint(svg, evt) {
    var p = svg.createSVGPoint();
    p.x = evt.clientX;
    p.y = evt.clientY;
    return p.matrixTransform(svg.getScreenCTM().inverse());
  }

  // --- samples ----------------------------------------------------------------------------------
  function setupSamples() {
    var samples = data.samples, slider = document.getElementById("sample-slider");
    if (!slider || !samples.length) { return; }
    var label = document.getElementById("sample-label"), text = document.getElementById("sample-text");
    function show(i) {
      var s = samples[i];
      label.textContent = "step " + s.step + (s.val !== null ? ", validation loss " + fmt(s.val) + " nats/char" : "") +
        "  (" + (i + 1) + " of " + samples.length + ")";
      text.textContent = s.text;
    }
    slider.addEventListener("input", function () { show(Number(slider.value)); });
    show(Number(slider.value));
  }

  // --- gradient flow ------------------------------------------------------------------------------
  function setupGradflow() {
    var probe = data.probe, heat = data.heat;
    if (!probe || !heat) { return; }
    var svg = document.querySelector("#heatmap svg");
    var curve = document.getElementById("flow-curve");
    var slider = document.getElementById("flow-slider");
    var label = document.getElementById("flow-label");
    var n = probe.steps.length, T = probe.window, pinned = n - 1;
    var cursors = heat.panels.map(function (p) {
      return el("line", {y1: p.y0, y2: p.y1, stroke: "#ff2d2d", "stroke-width": 1.5, "pointer-events": "none"}, svg);
    });
    var lo = Infinity, hi = -Infinity;
    probe.norms.forEach(function (e) {
      e.forEach(function (row) {
        row.forEach(function (v) { if (v !== null && v > 0) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
      });
    });
    var top = Math.ceil(Math.log10(hi)), bottom = Math.floor(Math.log10(lo));
    if (top === bottom) { top += 1; }

    function evalAt(evt) {
      var p = svgPoint(svg, evt);
      for (var k = 0; k < heat.panels.length; k++) {
        var g = heat.panels[k];
        if (p.x >= g.x0 && p.x <= g.x1 && p.y >= g.y0 && p.y <= g.y1) {
          var step = g.xlim[0] + (p.x - g.x0) / (g.x1 - g.x0) * (g.xlim[1] - g.xlim[0]);
          var best = 0;
          for (var i = 1; i < n; i++) {
            if (Math.abs(probe.steps[i] - step) < Math.abs(probe.steps[best] - step)) { best = i; }
          }
          return best;
        }
      }
      return -1;
    }

    function drawCurve(i) {
      while (curve.firstChild) { curve.removeChild(curve.firstChild); }
      var W = 900, H = 300, m = {l: 62, r: 250, t: 26, b: 40};
      var x = function (k) { return m.l + (T > 1 ? k / (T - 1) : 0) * (W - m.l - m.r); };
      var y = function (v) { return m.t + (top - Math.log10(v)) / (top - bottom) * (H - m.t - m.b); };
      var decades = Math.max(1, Math.ceil((top - bottom) / 8));  // at most 8 labelled decades
      for (var d = top; d >= bottom; d -= decades) {
        el("line", {x1: m.l, x2: W - m.r, y1: y(Math.pow(10, d)), y2: y(Math.pow(10, d)), "class": "grid"}, curve);
        el("text", {x: m.l - 6, y: y(Math.pow(10, d)) + 4, "text-anchor": "end"}, curve).textContent = "1e" + d;
      }
      var every = Math.max(1, Math.ceil(T / 8 / 8) * 8);
      for (var k = 0; k < T; k += every) {
        el("text", {x: x(k), y: H - m.b + 16, "text-anchor": "middle"}, curve).textContent = String(k);
      }
      el("line", {x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, "class": "axis"}, curve);
      el("line", {x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, "class": "axis"}, curve);
      el("text", {x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle"}, curve).textContent =
        "steps back from the loss";
      el("text", {x: 14, y: (m.t + H - m.b) / 2, "text-anchor": "middle",
        transform: "rotate(-90 14 " + (m.t + H - m.b) / 2 + ")"}, curve).textContent = "|dL/dh_t|";
      if (data.seqLen && data.seqLen < T) {
        el("line", {x1: x(data.seqLen - 1), x2: x(data.seqLen - 1), y1: m.t, y2: H - m.b, stroke: "#999",
          "stroke-dasharray": "4 3"}, curve);
        el("text", {x: x(data.seqLen - 1) + 4, y: m.t + 12}, curve).textContent = "training window";
      }
      function line(norms, colour, dashed) {
        var pts = [];
        for (var k = 0; k < T; k++) {
          var v = norms[T - 1 - k];
          if (v !== null && v > 0) { pts.push(x(k).toFixed(1) + "," + y(v).toFixed(1)); }
        }
        var attrs = {points: pts.join(" "), fill: "none", stroke: colour, "stroke-width": dashed ? 1.2 : 2};
        if (dashed) { attrs["stroke-dasharray"] = "5 4"; attrs.opacity = 0.7; }
        el("polyline", attrs, curve);
      }
      probe.layers.forEach(function (name, l) {
        if (i !== 0) { line(probe.norms[0][l], COLOURS[l % COLOURS.length], true); }
        line(probe.norms[i][l], COLOURS[l % COLOURS.length], false);
        var ly = m.t + 10 + l * 20;
        el("line", {x1: W - m.r + 14, x2: W - m.r + 34, y1: ly - 4, y2: ly - 4, stroke: COLOURS[l % COLOURS.length],
          "stroke-width": 2}, curve);
        var rate = probe.rates[i][l];
        el("text", {x: W - m.r + 40, y: ly}, curve).textContent =
          name + (rate !== null ? ": x" + fmt(rate, 3) + " per step" : "");
      });
      if (i !== 0) {
        el("text", {x: W - m.r + 14, y: m.t + 14 + probe.layers.length * 20, fill: "#777"}, curve).textContent =
          "dashed: step " + probe.steps[0];
      }
      el("text", {x: m.l, y: 16}, curve).textContent = "step " + probe.steps[i] + ": probe loss " +
        fmt(probe.loss[i]) + " nats on the character after " + T + " steps";
    }

    function select(i) {
      heat.panels.forEach(function (g, k) {
        var xs = g.x0 + (probe.steps[i] - g.xlim[0]) / (g.xlim[1] - g.xlim[0]) * (g.x1 - g.x0);
        cursors[k].setAttribute("x1", xs);
        cursors[k].setAttribute("x2", xs);
      });
      slider.value = String(i);
      label.textContent = "step " + probe.steps[i] + "  (" + (i + 1) + " of " + n + ")" + (i === pinned ? ", kept" : "");
      drawCurve(i);
    }

    svg.addEventListener("mousemove", function (evt) { var i = evalAt(evt); if (i >= 0) { select(i); } });
    svg.addEventListener("mouseleave", function () { select(pinned); });
    svg.addEventListener("click", function (evt) {
      var i = evalAt(evt);
      if (i >= 0) { pinned = i; select(i); }
    });
    slider.addEventListener("input", function () { pinned = Number(slider.value); select(pinned); });
    select(pinned);
  }

  // --- the unrolled graph -------------------------------------------------------------------------
  function setupGraphs() {
    var views = Array.prototype.slice.call(document.querySelectorAll(".graph-view"));
    if (!views.length) { return; }
    var panel = document.getElementById("node-details");
    var pinned = null, states = {};

    function describe(key, box) {
      var d = (data.graphs[key] || {})[box];
      if (!d) { return; }
      var rows = [["kind", d.kind]];
      if (d.op) { rows.push(["op", d.op]); }
      if (d.scope) {
        rows.push(["scope", Object.keys(d.scope).map(function (k) { return k + " = " + d.scope[k]; }).join(", ") || "-"]);
      }
      if (d.parts && d.parts.length) { rows.push(["parts", d.parts.join(", ")]); }
      if (d.outputs) { rows.push(["outputs (shape, dtype, gradient norm)", d.outputs.join("\n")]); }
      if (d.inputs) { rows.push(["inputs", d.inputs.join("\n")]); }
      rows.push(["gradient norm", d.grad]);
      rows.push(["box", d.text.join(" | ")]);
      panel.textContent = "";
      var h = document.createElement("h4");
      h.textContent = d.op || d.text[0];
      panel.appendChild(h);
      var dl = document.createElement("dl");
      rows.forEach(function (r) {
        var dt = document.createElement("dt"), dd = document.createElement("dd");
        dt.textContent = r[0];
        dd.textContent = r[1];
        dd.style.whiteSpace = "pre-wrap";
        dl.appendChild(dt);
        dl.appendChild(dd);
      });
      panel.appendChild(dl);
      panel.setAttribute("data-box", box);
    }

    views.forEach(function (view) {
      var key = view.getAttribute("data-graph"), svg = view.querySelector("svg");
      var vb = svg.viewBox.baseVal, fit = {x: vb.x, y: vb.y, width: vb.width, height: vb.height};
      var drag = null;
      states[key] = {svg: svg, fit: fit, shown: false};

      svg.addEventListener("wheel", function (evt) {
        evt.preventDefault();
        zoom(svg, evt.deltaY < 0 ? 0.8 : 1.25, svgPoint(svg, evt));
      }, {passive: false});
      svg.addEventListener("pointerdown", function (evt) {
        if (evt.button !== 0) { return; }
        drag = {x: evt.clientX, y: evt.clientY, vx: vb.x, vy: vb.y, moved: false};
      });
      window.addEventListener("pointermove", function (evt) {
        if (!drag) { return; }
        var dx = evt.clientX - drag.x, dy = evt.clientY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; view.classList.add("dragging"); }
        var scale = Math.max(vb.width / svg.clientWidth, vb.height / svg.clientHeight);
        vb.x = drag.vx - dx * scale;
        vb.y = drag.vy - dy * scale;
      });
      window.addEventListener("pointerup", function () {
        if (drag) { view.dragMoved = drag.moved; }
        drag = null;
        view.classList.remove("dragging");
      });
      Array.prototype.forEach.call(svg.querySelectorAll("g.node[data-box]"), function (node) {
        var box = node.getAttribute("data-box");
        node.addEventListener("mouseenter", function () { describe(key, box); });
        node.addEventListener("mouseleave", function () { if (pinned) { describe(pinned.key, pinned.box); } });
        node.addEventListener("click", function () {
          if (view.dragMoved) { view.dragMoved = false; return; }
          if (pinned) { pinned.node.classList.remove("selected"); }
          pinned = {key: key, box: box, node: node};
          node.classList.add("selected");
          describe(key, box);
        });
      });
    });

    function zoom(svg, factor, at) {
      var vb = svg.viewBox.baseVal;
      if (!at) { at = {x: vb.x + vb.width / 2, y: vb.y + vb.height / 2}; }
      vb.x = at.x - (at.x - vb.x) * factor;
      vb.y = at.y - (at.y - vb.y) * factor;
      vb.width *= factor;
      vb.height *= factor;
    }

    function setView(svg, v) {
      var vb = svg.viewBox.baseVal;
      vb.x = v.x; vb.y = v.y; vb.width = v.width; vb.height = v.height;
    }

    // A long unroll fitted whole is too small to read: open it at a scale where the labels read (at
    // most the scale that fits its height), at the first time step, and let the reader pan (the
    // input projection and the legend lie to the left); "fit" shows it all.
    function firstView(s) {
      var cw = s.svg.clientWidth, ch = s.svg.clientHeight, f = s.fit;
      if (!cw || !ch) { return; }
      s.shown = true;
      if (Math.min(cw / f.width, ch / f.height) >= 0.9) { return; }
      var scale = Math.min(ch / f.height, 1.1);
      var w = cw / scale, h = ch / scale, x = f.x;
      var first = s.svg.querySelector('g.cluster[data-step="0"]');
      if (first) {
        var r = first.getBoundingClientRect(), inv = s.svg.getScreenCTM().inverse();
        var p = s.svg.createSVGPoint();
        p.x = r.left;
        p.y = r.top;
        x = Math.max(f.x, p.matrixTransform(inv).x - 40);
      }
      setView(s.svg, {x: x, y: f.y + (f.height - h) / 2, width: w, height: h});
    }

    function active() {
      var v = document.querySelector(".graph-view.active");
      return v ? states[v.getAttribute("data-graph")] : null;
    }

    Array.prototype.forEach.call(document.querySelectorAll(".graph-tab"), function (tab) {
      tab.addEventListener("click", function () {
        Array.prototype.forEach.call(document.querySelectorAll(".graph-tab, .graph-view"), function (e) {
          e.classList.toggle("active", e.getAttribute("data-graph") === tab.getAttribute("data-graph"));
        });
        var s = active();
        if (s && !s.shown) { firstView(s); }
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll("[data-zoom]"), function (b) {
      b.addEventListener("click", function () {
        var s = active();
        if (!s) { return; }
        var what = b.getAttribute("data-zoom");
        if (what === "fit") {
          setView(s.svg, s.fit);
        } else {
          zoom(s.svg, what === "in" ? 0.8 : 1.25, null);
        }
      });
    });
    var first = active();
    if (first) { firstView(first); }
  }

  setupSamples();
  setupGradflow();
  setupGraphs();
})();
