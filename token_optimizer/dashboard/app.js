/* Token Optimizer dashboard: renders the embedded data; loads nothing. */
(function () {
  "use strict";
  var STATE = { errors: [], views: {}, ready: false };
  window.__dash = STATE;
  window.addEventListener("error", function (e) { STATE.errors.push(String(e.message || e)); });

  var D = JSON.parse(document.getElementById("dash-data").textContent);
  var charts = {};          // view -> [uPlot]
  var rendered = {};        // view -> true
  var current = null;

  // ------------------------------------------------------------ helpers

  function el(tag, attrs, kids) {
    var n = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        if (!Object.prototype.hasOwnProperty.call(attrs, k)) continue;
        var v = attrs[k];
        if (v === null || v === undefined) continue;
        if (k === "text") n.textContent = String(v);
        else if (k === "cls") n.className = v;
        else if (k.slice(0, 2) === "on") n.addEventListener(k.slice(2), v);
        else n.setAttribute(k, String(v));
      }
    }
    (kids || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      n.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return n;
  }
  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  function usd(x) {
    x = +x || 0;
    if (x >= 1000) return "$" + (x / 1000).toFixed(1) + "k";
    if (x >= 1) return "$" + x.toFixed(2);
    if (x > 0) return "$" + x.toFixed(3);
    return "$0";
  }
  function tok(n) {
    n = +n || 0;
    if (n >= 1e9) return (n / 1e9).toFixed(1) + "B";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (n >= 1e3) return (n / 1e3).toFixed(1) + "K";
    return String(Math.round(n));
  }
  function dur(s) {
    s = +s || 0;
    if (s < 60) return Math.round(s) + "s";
    if (s < 3600) return Math.round(s / 60) + "m";
    return (s / 3600).toFixed(1) + "h";
  }
  function pct(x, d) { return (x === null || x === undefined) ? "–" : (+x).toFixed(d === undefined ? 0 : d) + "%"; }
  function dateStr(ms) {
    if (ms === null || ms === undefined) return "–";
    var d = new Date(ms);
    return d.toISOString().slice(0, 16).replace("T", " ");
  }
  function toast(msg) {
    var t = document.getElementById("toast");
    t.textContent = msg; t.classList.add("show");
    setTimeout(function () { t.classList.remove("show"); }, 2000);
  }
  function copy(text) {
    function fallback() {
      var ta = el("textarea", { style: "position:fixed;left:-9999px" });
      ta.value = text; document.body.appendChild(ta); ta.select();
      try { document.execCommand("copy"); toast("Copied"); } catch (e) { toast("Select and copy the text"); }
      document.body.removeChild(ta);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { toast("Copied"); }, fallback);
    } else { fallback(); }
  }
  function card(k, v, q) {
    return el("div", { cls: "card" }, [el("div", { cls: "k", text: k }), el("div", { cls: "v", text: v }),
      q ? el("div", { cls: "q", text: q }) : null]);
  }
  function panel(title, kids) {
    return el("div", { cls: "panel" }, [title ? el("h3", { text: title, style: "margin-top:0" }) : null].concat(kids));
  }
  function empty(msg) { return el("div", { cls: "empty", text: msg }); }
  function scoreCls(s) { return s >= 70 ? "good" : s >= 40 ? "warn" : "bad"; }

  // A table; cols: [{label, num, get(row) -> value, fmt(value) -> text, sort}]
  function table(cols, rows, opts) {
    opts = opts || {};
    var tbody = el("tbody");
    var sortCol = opts.sortCol === undefined ? -1 : opts.sortCol, sortDir = opts.sortDir || -1;
    var ths = cols.map(function (c, i) {
      var th = el("th", { cls: (c.num ? "num " : "") + (opts.sortable ? "sortable" : ""), text: c.label, scope: "col" });
      if (opts.sortable) th.addEventListener("click", function () {
        if (sortCol === i) sortDir = -sortDir; else { sortCol = i; sortDir = c.num ? -1 : 1; }
        draw();
      });
      return th;
    });
    var filter = "";
    function draw() {
      var data = rows;
      if (filter) {
        data = rows.filter(function (r) {
          return cols.some(function (c) { return String(c.get(r)).toLowerCase().indexOf(filter) >= 0; });
        });
      }
      if (sortCol >= 0) {
        var g = cols[sortCol].get;
        data = data.slice().sort(function (a, b) {
          var x = g(a), y = g(b);
          if (x === null || x === undefined) return 1;
          if (y === null || y === undefined) return -1;
          return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
        });
      }
      ths.forEach(function (th, i) {
        th.classList.toggle("sorted-asc", i === sortCol && sortDir > 0);
        th.classList.toggle("sorted-desc", i === sortCol && sortDir < 0);
      });
      var limit = opts.limit || 500;
      var frag = document.createDocumentFragment();
      data.slice(0, limit).forEach(function (r) {
        var tr = el("tr", null, cols.map(function (c) {
          var v = c.get(r);
          return el("td", { cls: c.num ? "num" : null, text: c.fmt ? c.fmt(v, r) : (v === null || v === undefined ? "–" : v),
            title: c.title ? c.title(r) : null });
        }));
        if (opts.onRow) tr.addEventListener("click", function () {
          Array.prototype.forEach.call(tbody.children, function (x) { x.classList.remove("selected"); });
          tr.classList.add("selected"); opts.onRow(r);
        });
        frag.appendChild(tr);
      });
      tbody.textContent = "";
      tbody.appendChild(frag);
      if (opts.onDraw) opts.onDraw(data.length, Math.min(limit, data.length));
    }
    var t = el("table", null, [el("thead", null, [el("tr", null, ths)]), tbody]);
    var wrap = el("div", { cls: "tablewrap" }, [t]);
    wrap.setFilter = function (f) { filter = f.toLowerCase(); draw(); };
    draw();
    return wrap;
  }

  // ------------------------------------------------------------ charts (uPlot)

  function axis(extra) {
    var a = { stroke: css("--muted"), grid: { stroke: css("--grid"), width: 1 }, ticks: { stroke: css("--grid") } };
    for (var k in extra) a[k] = extra[k];
    return a;
  }
  function widthOf(box) { return Math.max(260, Math.floor(box.getBoundingClientRect().width) || 600); }
  function mount(view, box, opts, data) {
    box.textContent = "";
    opts.width = widthOf(box);
    var u = new uPlot(opts, data, box);
    u._box = box;
    (charts[view] = charts[view] || []).push(u);
    return u;
  }
  // time series: xs in ms; series [{label, values, color, scale, fmt, bars}]
  function timeChart(view, box, xs, series, o) {
    o = o || {};
    var pad = series.some(function (s) { return s.bars; }) && xs.length ? 43200 : 0;
    var scales = { x: { time: true, range: pad ? function (u, lo, hi) { return [lo - pad, hi + pad]; } : undefined } };
    var axes = [axis({ space: 80 })];
    var used = {};
    series.forEach(function (s) {
      var sc = s.scale || "y";
      if (!used[sc]) {
        used[sc] = true;
        scales[sc] = s.range ? { range: s.range } : { auto: true };
        axes.push(axis({ scale: sc, side: Object.keys(used).length > 1 ? 1 : 3, size: 60, incrs: s.int ? INT_INCRS : undefined,
          values: function (u, v) { return v.map(function (x) { return s.fmt ? s.fmt(x) : x; }); },
          grid: { show: Object.keys(used).length === 1, stroke: css("--grid") } }));
      }
    });
    var bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 40] }) : null;
    var opts = {
      height: o.height || 240, scales: scales, axes: axes, legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      series: [{ value: function (u, v) { return v === null ? "–" : new Date(v * 1000).toISOString().slice(0, 10); } }].concat(series.map(function (s) {
        return { label: s.label, scale: s.scale || "y", stroke: css(s.color), width: 2,
          fill: s.bars ? css(s.color) + "" : null, paths: s.bars ? bars : undefined,
          points: { show: xs.length < 40 }, spanGaps: true,
          value: function (u, v) { return v === null || v === undefined ? "–" : (s.fmt ? s.fmt(v) : v); } };
      }))
    };
    return mount(view, box, opts, [xs.map(function (x) { return x / 1000; })].concat(series.map(function (s) { return s.values; })));
  }
  // categorical bars: labels[], series [{label, values, color, fmt}]
  function barChart(view, box, labels, series, o) {
    o = o || {};
    var n = labels.length;
    var bars = uPlot.paths.bars({ size: [0.6, 60], align: 0 });
    var longest = labels.reduce(function (m, l) { return Math.max(m, String(l).length); }, 0);
    var rotate = longest * 7 > widthOf(box) / Math.max(1, n) - 8;
    var fmt = series[0].fmt || function (x) { return x; };
    var opts = {
      height: o.height || 260,
      scales: { x: { time: false, range: [-0.5, n - 0.5] }, y: { range: function (u, lo, hi) { return [0, hi > 0 ? hi * 1.1 : 1]; } } },
      axes: [axis({ space: 10, incrs: [1], rotate: rotate ? -35 : 0, size: rotate ? Math.min(120, 20 + longest * 6) : 40,
          grid: { show: false }, values: function (u, v) { return v.map(function (i) { var l = labels[i]; return l === undefined ? "" : String(l).slice(0, 22); }); } }),
        axis({ size: 64, incrs: o.int ? INT_INCRS : undefined, values: function (u, v) { return v.map(fmt); } })],
      legend: { show: series.length > 1 },
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      series: [{ value: function (u, v) { return v === null ? "" : labels[v]; } }].concat(series.map(function (s) {
        return { label: s.label, stroke: css(s.color), fill: css(s.color), width: 0, paths: bars,
          points: { show: false }, value: function (u, v) { return v === null ? "–" : (s.fmt ? s.fmt(v) : v); } };
      }))
    };
    var xs = labels.map(function (_, i) { return i; });
    return mount(view, box, opts, [xs].concat(series.map(function (s) { return s.values; })));
  }
  var INT_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 1e6];
  function chartBox(label) { return el("div", { cls: "chart", role: "img", "aria-label": label }); }

  // ------------------------------------------------------------ views

  var S = D.sessions, SC = {};
  S.cols.forEach(function (c, i) { SC[c] = i; });
  var daily = D.daily.rows;
  function dayMs(d) { return Date.parse(d + "T12:00:00Z"); }
  var realDays = daily.filter(function (r) { return r[0] !== "unknown"; });

  var VIEWS = {};

  VIEWS.overview = function (root) {
    var o = D.overview;
    root.appendChild(el("h2", { text: "Overview" }));
    var priced = o.unpricedTokens ? tok(o.unpricedTokens) + " tokens unpriced" : "every token priced";
    root.appendChild(el("div", { cls: "cards" }, [
      card("Spend", usd(o.costUsd), priced),
      card("Tokens", tok(o.tokens.total), tok(o.tokens.cacheRead) + " cache reads"),
      card("Sessions", String(o.sessions), Object.keys(o.hosts).map(function (h) { return h + " " + o.hosts[h]; }).join(" · ") || "none"),
      card("Active days", String(o.activeDays), D.days ? "last " + D.days + " days" : "all time"),
      card("Quality", o.quality.grade + " " + o.quality.score + "/100", o.quality.band),
      card("Waste found", o.findings ? usd(o.wasteMonthlyUsd) + "/mo" : "none", o.findings + " finding(s)"),
      card("Checkpoints", String(o.checkpoints), o.restores + " restore(s)")
    ]));
    var box = chartBox("Daily spend and sessions");
    root.appendChild(panel("Trend: spend and sessions per day", [box]));
    if (realDays.length) {
      timeChart("overview", box, realDays.map(function (r) { return dayMs(r[0]); }), [
        { label: "Spend", values: realDays.map(function (r) { return r[1]; }), color: "--c1", fmt: usd },
        { label: "Sessions", values: realDays.map(function (r) { return r[3]; }), color: "--c2", scale: "n", int: true, fmt: function (x) { return Math.round(x); } }
      ]);
    } else { box.appendChild(empty("No sessions in this period.")); }
    var top = D.models.slice(0, 5);
    root.appendChild(panel("Top models by spend", [top.length ? table([
      { label: "Model", get: function (m) { return m.model; } },
      { label: "Sessions", num: true, get: function (m) { return m.sessions; } },
      { label: "Tokens", num: true, get: function (m) { return m.tokens; }, fmt: tok },
      { label: "Spend", num: true, get: function (m) { return m.cost; }, fmt: usd }
    ], top) : empty("No model calls recorded.")]));
  };

  VIEWS.waste = function (root) {
    var f = D.waste.findings;
    root.appendChild(el("h2", { text: "Waste" }));
    if (!f.length) {
      root.appendChild(empty("No waste patterns found" + (D.waste.source && D.waste.source.indexOf(".") < 0 ? " (" + D.waste.source + ")." : ".")));
      return;
    }
    var total = f.reduce(function (s, x) { return s + x.monthly_usd; }, 0);
    var measured = f.filter(function (x) { return x.basis === "measured"; }).length;
    root.appendChild(el("div", { cls: "cards" }, [card("Findings", String(f.length), measured + " measured, " + (f.length - measured) + " estimated"),
      card("Potential savings", usd(total) + "/mo", "overlaps may double count")]));
    var by = {};
    f.forEach(function (x) { by[x.detector] = (by[x.detector] || 0) + x.monthly_usd; });
    var names = Object.keys(by).sort(function (a, b) { return by[b] - by[a]; });
    var box = chartBox("Monthly waste by detector");
    root.appendChild(panel("Monthly waste by detector", [box]));
    barChart("waste", box, names, [{ label: "$/month", values: names.map(function (n) { return by[n]; }), color: "--c5", fmt: usd }]);
    f.slice().sort(function (a, b) { return b.monthly_usd - a.monthly_usd; }).forEach(function (x) {
      var kids = [el("div", { cls: "head" }, [el("span", { cls: "sev sev-" + x.severity, text: x.severity }),
        el("strong", { text: x.detector }), el("span", { cls: "tag", text: x.basis }),
        x.group ? el("span", { cls: "tag", text: x.group }) : null,
        x.agent ? el("span", { cls: "tag", text: x.agent }) : null,
        el("span", { cls: "usd", text: x.monthly_usd > 0 ? usd(x.monthly_usd) + "/mo" : "" })])];
      if (x.description) kids.push(el("p", { text: x.description }));
      if (x.recommendation) kids.push(el("p", { cls: "muted", text: x.recommendation }));
      if (x.fix) {
        kids.push(el("pre", { cls: "fix", text: x.fix }));
        kids.push(el("button", { type: "button", text: "Copy fix", onclick: function () { copy(x.fix); } }));
      }
      var ev = x.evidence && typeof x.evidence === "object" ? Object.keys(x.evidence).slice(0, 6).map(function (k) {
        var v = x.evidence[k]; return k + ": " + (typeof v === "object" ? JSON.stringify(v).slice(0, 80) : v);
      }).join(" · ") : "";
      if (ev) kids.push(el("p", { cls: "muted", text: ev }));
      root.appendChild(el("div", { cls: "panel finding" }, kids));
    });
  };

  VIEWS.sessions = function (root) {
    root.appendChild(el("h2", { text: "Sessions" }));
    var info = el("p", { cls: "muted" });
    var search = el("input", { type: "search", placeholder: "Filter by agent, model, id…", "aria-label": "Filter sessions" });
    var detailBox = chartBox("Fill and quality over the selected session");
    var detailTitle = el("h3", { style: "margin-top:0" });
    var detailNote = el("p", { cls: "muted" });
    function showSession(r) {
      var sid = r[SC.session];
      detailTitle.textContent = "Fill and quality over " + sid.slice(0, 24);
      var ser = S.series[sid];
      (charts.sessions || []).forEach(function (u) { u.destroy(); });
      charts.sessions = [];
      if (!ser || !ser.length) {
        detailBox.textContent = "";
        detailNote.textContent = "No checkpoint recorded a fill or quality for this session; its fill is " + pct(r[SC.fill], 1) + " (" + r[SC.fillBasis] + ").";
        return;
      }
      detailNote.textContent = ser.length + " checkpoint(s) recorded fill and quality.";
      timeChart("sessions", detailBox, ser.map(function (p) { return p[0]; }), [
        { label: "Fill %", values: ser.map(function (p) { return p[1]; }), color: "--c1", range: [0, 100], fmt: function (x) { return Math.round(x) + "%"; } },
        { label: "Quality", values: ser.map(function (p) { return p[2]; }), color: "--c3", scale: "q", range: [0, 100], fmt: function (x) { return Math.round(x); } }
      ], { height: 200 });
    }
    var cols = [
      { label: "Started", get: function (r) { return r[SC.started]; }, fmt: dateStr },
      { label: "Host", get: function (r) { return r[SC.host]; } },
      { label: "Agent", get: function (r) { return r[SC.agent]; }, fmt: function (v) { return String(v).slice(0, 20); } },
      { label: "Session", get: function (r) { return r[SC.session]; }, fmt: function (v) { return String(v).slice(0, 12); }, title: function (r) { return r[SC.session]; } },
      { label: "Model", get: function (r) { return r[SC.model]; } },
      { label: "Msgs", num: true, get: function (r) { return r[SC.messages]; } },
      { label: "Tokens", num: true, get: function (r) { return r[SC.tokens]; }, fmt: tok },
      { label: "Cost", num: true, get: function (r) { return r[SC.cost]; }, fmt: function (v, r) { return r[SC.basis] === "unpriced" && !v ? "unpriced" : usd(v); } },
      { label: "Duration", num: true, get: function (r) { return r[SC.duration]; }, fmt: dur },
      { label: "Fill", num: true, get: function (r) { return r[SC.fill]; }, fmt: function (v, r) { return r[SC.fillBasis] === "none" ? "–" : pct(v, 0) + (r[SC.fillBasis] === "checkpoint" ? "" : "*"); } },
      { label: "Quality", num: true, get: function (r) { return r[SC.quality]; }, fmt: function (v, r) { return r[SC.grade] + " (" + v + ")"; } },
      { label: "Compactions", num: true, get: function (r) { return r[SC.compactions]; } },
      { label: "Tool errors", num: true, get: function (r) { return r[SC.toolErrors]; } },
      { label: "Checkpoints", num: true, get: function (r) { return r[SC.checkpoints]; } }
    ];
    var t = table(cols, S.rows, { sortable: true, sortCol: 0, sortDir: -1, limit: 500, onRow: showSession,
      onDraw: function (n, shown) { info.textContent = S.total + " sessions; " + S.rows.length + " newest listed; " + n + " match, " + shown + " shown. Click a column to sort, a row for its fill and quality. * = mean prompt per call (no checkpoint)."; } });
    search.addEventListener("input", function () { t.setFilter(search.value); });
    root.appendChild(el("div", { cls: "toolbar" }, [search]));
    root.appendChild(info);
    root.appendChild(panel(null, [detailTitle, detailBox, detailNote]));
    root.appendChild(el("div", { cls: "panel" }, [t]));
    var first = S.rows.filter(function (r) { return S.series[r[SC.session]]; })[0] || S.rows[0];
    if (first) showSession(first); else { detailTitle.textContent = "No sessions"; }
  };

  VIEWS.models = function (root) {
    var m = D.models;
    root.appendChild(el("h2", { text: "Models" }));
    if (!m.length) { root.appendChild(empty("No model calls recorded.")); return; }
    var top = m.slice(0, 12);
    var b1 = chartBox("Spend by model"), b2 = chartBox("Tokens by model");
    root.appendChild(el("div", { cls: "grid2" }, [panel("Spend by model", [b1]), panel("Tokens by model", [b2])]));
    barChart("models", b1, top.map(function (x) { return x.model; }), [{ label: "Spend", values: top.map(function (x) { return x.cost; }), color: "--c1", fmt: usd }]);
    barChart("models", b2, top.map(function (x) { return x.model; }), [{ label: "Tokens", values: top.map(function (x) { return x.tokens; }), color: "--c4", fmt: tok }]);
    root.appendChild(panel("All models", [table([
      { label: "Model", get: function (x) { return x.model; } },
      { label: "Sessions", num: true, get: function (x) { return x.sessions; } },
      { label: "Calls", num: true, get: function (x) { return x.calls; } },
      { label: "Tokens", num: true, get: function (x) { return x.tokens; }, fmt: tok },
      { label: "Output", num: true, get: function (x) { return x.output; }, fmt: tok },
      { label: "Cache read", num: true, get: function (x) { return x.cacheRead; }, fmt: tok },
      { label: "Spend", num: true, get: function (x) { return x.cost; }, fmt: function (v, x) { return x.unpriced && !v ? "unpriced" : usd(v) + (x.unpriced ? "+" : ""); } },
      { label: "Unpriced", num: true, get: function (x) { return x.unpriced; }, fmt: function (v) { return v ? tok(v) : "–"; } }
    ], m, { sortable: true, sortCol: 6 })]));
  };

  VIEWS.daily = function (root) {
    root.appendChild(el("h2", { text: "Daily" }));
    if (!realDays.length) { root.appendChild(empty("No sessions in this period.")); return; }
    var xs = realDays.map(function (r) { return dayMs(r[0]); });
    var b1 = chartBox("Spend per day"), b2 = chartBox("Tokens per day");
    root.appendChild(panel("Spend per day", [b1]));
    timeChart("daily", b1, xs, [{ label: "Spend", values: realDays.map(function (r) { return r[1]; }), color: "--c1", fmt: usd, bars: true }]);
    root.appendChild(panel("Tokens and cache hit rate per day", [b2]));
    timeChart("daily", b2, xs, [{ label: "Tokens", values: realDays.map(function (r) { return r[2]; }), color: "--c4", fmt: tok },
      { label: "Cache hit", values: realDays.map(function (r) { return r[4] * 100; }), color: "--c3", scale: "p", range: [0, 100], fmt: function (x) { return Math.round(x) + "%"; } }]);
    root.appendChild(panel("Days", [table([
      { label: "Date", get: function (r) { return r[0]; } },
      { label: "Sessions", num: true, get: function (r) { return r[3]; } },
      { label: "Tokens", num: true, get: function (r) { return r[2]; }, fmt: tok },
      { label: "Cache hit", num: true, get: function (r) { return r[4]; }, fmt: function (v) { return pct(v * 100, 0); } },
      { label: "Avg quality", num: true, get: function (r) { return r[5]; } },
      { label: "Spend", num: true, get: function (r) { return r[1]; }, fmt: usd }
    ], daily, { sortable: true, sortCol: 0, sortDir: -1 })]));
  };

  VIEWS.context = function (root) {
    root.appendChild(el("h2", { text: "Context" }));
    if (!D.context.length) { root.appendChild(empty("No OpenClaw or Hermes configuration found.")); return; }
    D.context.forEach(function (a) {
      var name = a.host === "openclaw" ? "OpenClaw" : "Hermes";
      var active = a.skills.filter(function (s) { return !s.isArchived; });
      root.appendChild(el("h3", { text: name + " · " + a.root }));
      root.appendChild(el("div", { cls: "cards" }, [card("Per-message overhead", tok(a.totalOverhead), "tokens, estimated"),
        card("Active skills", String(active.length), tok(active.reduce(function (s, x) { return s + x.tokens; }, 0)) + " tokens"),
        card("MCP servers", String(a.mcpServers.length), a.mcpServers.filter(function (m) { return m.isDisabled; }).length + " disabled"),
        card("Components", String(a.components.length))]));
      var box = chartBox(name + " overhead by component");
      root.appendChild(panel("Overhead by component", [box]));
      barChart("context", box, a.components.map(function (c) { return c.name; }), [{ label: "Tokens", values: a.components.map(function (c) { return c.tokens; }), color: "--c2", fmt: tok }]);
      root.appendChild(panel("Components", [table([
        { label: "Component", get: function (c) { return c.name; } },
        { label: "Tokens", num: true, get: function (c) { return c.tokens; }, fmt: function (v) { return v.toLocaleString("en-US"); } },
        { label: "Kind", get: function (c) { return c.category; } },
        { label: "Note", get: function (c) { return c.detail || (c.isOptimizable ? "" : "fixed"); } }
      ], a.components)]));
      if (a.skills.length) root.appendChild(panel("Skills", [table([
        { label: "Skill", get: function (s) { return s.name; }, title: function (s) { return s.description; } },
        { label: "Listed tokens", num: true, get: function (s) { return s.tokens; } },
        { label: "File tokens", num: true, get: function (s) { return s.fullFileTokens; } },
        { label: "State", get: function (s) { return s.isArchived ? "off" : "active"; } }
      ], a.skills, { sortable: true, sortCol: 1, limit: 200 })]));
      if (a.mcpServers.length) root.appendChild(panel("MCP servers", [table([
        { label: "Server", get: function (m) { return m.name; } },
        { label: "Tools", num: true, get: function (m) { return m.toolsKnown ? m.toolCount : null; } },
        { label: "Tokens", num: true, get: function (m) { return m.tokens; } },
        { label: "State", get: function (m) { return m.isDisabled ? "disabled" : "enabled"; } },
        { label: "Command", get: function (m) { return m.command; } }
      ], a.mcpServers)]));
      root.appendChild(panel("Recommendations", [el("ul", { cls: "recs" }, a.recommendations.map(function (r) { return el("li", { text: r }); })),
        a.notes.length ? el("p", { cls: "muted", text: "Notes: " + a.notes.join("; ") }) : null]));
    });
  };

  VIEWS.quality = function (root) {
    var q = D.quality;
    root.appendChild(el("h2", { text: "Quality" }));
    root.appendChild(el("div", { cls: "cards" }, [
      el("div", { cls: "card" }, [el("div", { cls: "k", text: "Grade" }), el("div", { cls: "grade " + scoreCls(q.score), text: q.grade }),
        el("div", { cls: "q", text: q.score + "/100 · " + q.band })]),
      card("Sessions scored", String(q.sessions)),
      card("Average fill", pct(q.fill.averagePct, 1), Object.keys(q.fill.basis).map(function (k) { return k + " " + q.fill.basis[k]; }).join(" · ")),
      q.distortionBounds ? card("Ceiling", q.distortionBounds.theoreticalMax + "/100", "utilisation " + Math.round(q.distortionBounds.utilization * 100) + "%") : null
    ]));
    var b1 = chartBox("Signal scores"), b2 = chartBox("Average session quality per day");
    root.appendChild(el("div", { cls: "grid2" }, [panel("Signals (0–100)", [b1]), panel("Session quality per day", [b2])]));
    barChart("quality", b1, q.signals.map(function (s) { return s.name; }), [{ label: "Score", values: q.signals.map(function (s) { return s.score; }), color: "--c3" }]);
    if (realDays.length) {
      timeChart("quality", b2, realDays.map(function (r) { return dayMs(r[0]); }), [{ label: "Avg quality", values: realDays.map(function (r) { return r[5]; }), color: "--c3", range: [0, 100] }]);
    } else { b2.appendChild(empty("No sessions in this period.")); }
    root.appendChild(panel("Signals", [table([
      { label: "Signal", get: function (s) { return s.name; } },
      { label: "Weight", num: true, get: function (s) { return s.weight; }, fmt: function (v) { return Math.round(v * 100) + "%"; } },
      { label: "Score", num: true, get: function (s) { return s.score; } },
      { label: "What it saw", get: function (s) { return s.description; } }
    ], q.signals)]));
    var grades = ["S", "A", "B", "C", "D", "F"];
    root.appendChild(panel("Sessions by grade", [table([
      { label: "Grade", get: function (g) { return g; } },
      { label: "Sessions", num: true, get: function (g) { return q.grades[g] || 0; } }
    ], grades)]));
    if (q.recommendations.length) root.appendChild(panel("Recommendations", [el("ul", { cls: "recs" }, q.recommendations.map(function (r) { return el("li", { text: r }); }))]));
  };

  VIEWS.checkpoints = function (root) {
    var c = D.checkpoints;
    root.appendChild(el("h2", { text: "Checkpoints and restores" }));
    var captures = c.sessions.reduce(function (s, x) { return s + x.captures; }, 0);
    var restores = c.sessions.reduce(function (s, x) { return s + x.restores; }, 0);
    var restored = c.sessions.reduce(function (s, x) { return s + x.restoredTokens; }, 0);
    root.appendChild(el("div", { cls: "cards" }, [card("Checkpoints", String(captures), c.sessions.filter(function (x) { return x.captures; }).length + " session(s)"),
      card("Restores", String(restores), tok(restored) + " tokens put back"),
      card("Triggers", String(Object.keys(c.triggers).length))]));
    if (!c.sessions.length) { root.appendChild(empty("The runtime has not captured or restored anything under this state root yet.")); return; }
    var days = c.daily.filter(function (r) { return r[0] !== "unknown"; });
    var box = chartBox("Checkpoints and restores per day");
    root.appendChild(panel("Per day", [box]));
    timeChart("checkpoints", box, days.map(function (r) { return dayMs(r[0]); }), [
      { label: "Checkpoints", values: days.map(function (r) { return r[1]; }), color: "--c1", bars: true, int: true },
      { label: "Restores", values: days.map(function (r) { return r[2]; }), color: "--c3", int: true }]);
    var trig = Object.keys(c.triggers).sort(function (a, b) { return c.triggers[b] - c.triggers[a]; });
    var tbox = chartBox("Checkpoints by trigger");
    root.appendChild(panel("By trigger", [tbox]));
    barChart("checkpoints", tbox, trig, [{ label: "Checkpoints", values: trig.map(function (t) { return c.triggers[t]; }), color: "--c4" }], { int: true });
    root.appendChild(panel("Per session", [table([
      { label: "Session", get: function (x) { return x.session; }, fmt: function (v) { return String(v).slice(0, 24); }, title: function (x) { return x.session; } },
      { label: "Captured", num: true, get: function (x) { return x.captures; } },
      { label: "Triggers", get: function (x) { return Object.keys(x.triggers).map(function (k) { return k + "×" + x.triggers[k]; }).join(", "); } },
      { label: "Last", get: function (x) { return x.last; }, fmt: function (v) { return v ? String(v).slice(0, 16).replace("T", " ") : "–"; } },
      { label: "Last fill", num: true, get: function (x) { return x.lastFill; }, fmt: function (v) { return pct(v, 0); } },
      { label: "Last quality", num: true, get: function (x) { return x.lastQuality; } },
      { label: "Restores", num: true, get: function (x) { return x.restores; } },
      { label: "Tokens restored", num: true, get: function (x) { return x.restoredTokens; }, fmt: tok }
    ], c.sessions, { sortable: true, sortCol: 3, sortDir: -1 })]));
  };

  // ------------------------------------------------------------ router

  function render(name) {
    var root = document.getElementById("view-" + name);
    root.textContent = "";
    (charts[name] || []).forEach(function (u) { u.destroy(); });
    charts[name] = [];
    try { VIEWS[name](root); } catch (e) {
      STATE.errors.push(name + ": " + (e && e.stack || e));
      root.appendChild(empty("This view failed to render: " + e));
    }
    rendered[name] = true;
    STATE.views[name] = { charts: (charts[name] || []).length, canvases: root.querySelectorAll("canvas").length,
      tables: root.querySelectorAll(".tablewrap table").length, rows: root.querySelectorAll(".tablewrap tbody tr").length,
      empty: root.querySelectorAll(".empty").length };
  }
  function show(name) {
    if (!VIEWS[name]) name = "overview";
    current = name;
    Array.prototype.forEach.call(document.querySelectorAll(".view"), function (v) { v.classList.toggle("active", v.id === "view-" + name); });
    Array.prototype.forEach.call(document.querySelectorAll(".nav a"), function (a) { a.classList.toggle("active", a.getAttribute("data-view") === name); });
    if (!rendered[name]) render(name);
    document.getElementById("main").scrollTop = 0;
    document.body.setAttribute("data-view", name);
  }
  function route() { show((location.hash || "#overview").slice(1)); }

  var sub = "Generated " + D.generatedAt.slice(0, 16).replace("T", " ") + " UTC · " + (D.days ? "last " + D.days + " days" : "all time") + " · " + D.timezone;
  document.getElementById("subtitle").textContent = sub;
  document.getElementById("waste-badge").textContent = D.waste.findings.length ? String(D.waste.findings.length) : "";
  window.addEventListener("hashchange", route);
  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      (charts[current] || []).forEach(function (u) { u.setSize({ width: widthOf(u._box), height: u.height }); });
    }, 100);
  });
  if (window.matchMedia) {
    var mq = window.matchMedia("(prefers-color-scheme: dark)");
    var redraw = function () { rendered = {}; if (current) render(current); };
    if (mq.addEventListener) mq.addEventListener("change", redraw);
  }
  STATE.render = function (name) { show(name); return STATE.views[name]; };
  route();
  STATE.ready = true;
  document.body.setAttribute("data-ready", "1");
})();
