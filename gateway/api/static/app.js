// ot-gateway operator page: sites -> assets -> points, gaps, coverage, devices.
// Plain JavaScript, no build step, no external assets. Everything comes from /api/v1; states
// and tables are polled, the values of expanded assets also arrive live over SSE.
(function () {
  "use strict";

  var FAST_MS = 2000;     // states, open gaps, devices, expanded assets
  var SLOW_MS = 15000;    // 24 h gaps, 1 h coverage
  var DAILY_MS = 60000;   // 24 h coverage (scans a day of readings in the store: less often)
  var DAY_MS = 86400000;
  var STATES = ["online", "degraded", "offline", "unknown"];
  var CAUSES = [
    ["device_offline", "device offline"], ["timeout", "timeout"], ["bad_quality", "bad quality"],
    ["stale", "stale"], ["subscription_lost", "subscription lost"],
    ["gateway_down", "gateway down"], ["buffer_overflow", "buffer overflow"]
  ];
  var UNITS = { "Cel": "°C", "[degF]": "°F", "m3/h": "m³/h", "m3": "m³", "kW.h": "kWh", "/min": "/min" };
  var SVG_NS = "http://www.w3.org/2000/svg";

  var model = {
    sites: [], assets: [], openGaps: [], gaps24: [], devices: [], sinks: [], unmapped: [],
    cov1h: {}, cov24h: {}, monitoredSince: null, details: {},
    skewMs: 0, fetchedAt: 0, lastOk: 0, failing: false
  };
  var ui = { sites: {}, assets: {}, openPoints: {} };
  var filters = { site: "", state: "", text: "", range: DAY_MS };
  var events = null, eventsKey = "";

  // -- small helpers ---------------------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, children) {
    var node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    if (!attrs) { return; }
    Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) { return; }
      if (k === "text") { node.textContent = String(v); } else { node.setAttribute(k, String(v)); }
    });
  }

  function append(node, children) {
    if (children === null || children === undefined) { return; }
    (Array.isArray(children) ? children : [children]).forEach(function (c) {
      if (c === null || c === undefined || c === false) { return; }
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
  }

  function replaceChildren(node, children) {
    node.textContent = "";
    append(node, children);
  }

  function now() { return Date.now() + model.skewMs; }   // server time estimate [ms]

  function parseTime(text) { return text ? Date.parse(text) : null; }

  function duration(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) { return s + " s"; }
    var m = Math.floor(s / 60);
    if (m < 60) { return m + " min " + (s % 60) + " s"; }
    var h = Math.floor(m / 60);
    if (h < 48) { return h + " h " + (m % 60) + " min"; }
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  function ago(text) {
    var t = parseTime(text);
    return t === null ? "never" : duration(now() - t) + " ago";
  }

  function since(text) {   // compact "last seen" for table cells
    var t = parseTime(text);
    return t === null ? "never" : duration(now() - t);
  }

  function timeTitle(text) {
    if (!text) { return null; }
    return new Date(text).toLocaleString() + " (" + text + ")";
  }

  function stateBadge(state) {
    return el("span", { "class": "badge st-" + state, "data-role": "state", text: state });
  }

  function unit(u) { return u ? (UNITS[u] || u) : ""; }

  function formatValue(v, u) {
    if (v === null || v === undefined) { return "—"; }
    if (typeof v === "boolean") { return v ? "true" : "false"; }
    if (typeof v === "number") {
      var s = Math.abs(v) >= 1e6 || Number.isInteger(v)
        ? String(v) : v.toLocaleString(undefined, { maximumFractionDigits: 3 });
      return u ? s + " " + unit(u) : s;
    }
    return "“" + String(v) + "”";
  }

  function api(path) {
    return fetch(path, { headers: { "Accept": "application/json" }, cache: "no-store" })
      .then(function (r) {
        if (!r.ok) { throw new Error(path + ": HTTP " + r.status); }
        var date = Date.parse(r.headers.get("Date") || "");
        if (!isNaN(date)) { model.skewMs = 0.8 * model.skewMs + 0.2 * (date - Date.now()); }
        return r.json();
      });
  }

  function assetKey(site, asset) { return site + "/" + asset; }

  // -- filters ---------------------------------------------------------------------------

  function readHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    filters.site = params.get("site") || "";
    filters.state = params.get("state") || "";
    filters.text = params.get("q") || "";
    filters.range = (Number(params.get("t")) || 86400) * 1000;
    $("f-range").value = String(filters.range / 1000);
    $("f-site").value = filters.site;
    $("f-state").value = filters.state;
    $("f-text").value = filters.text;
  }

  function writeHash() {
    var params = new URLSearchParams();
    if (filters.site) { params.set("site", filters.site); }
    if (filters.state) { params.set("state", filters.state); }
    if (filters.text) { params.set("q", filters.text); }
    if (filters.range !== DAY_MS) { params.set("t", String(filters.range / 1000)); }
    var text = params.toString();
    history.replaceState(null, "", text ? "#" + text : location.pathname + location.search);
  }

  function onFilter() {
    filters.site = $("f-site").value;
    filters.state = $("f-state").value;
    filters.text = $("f-text").value.trim().toLowerCase();
    filters.range = Number($("f-range").value) * 1000 || DAY_MS;
    writeHash();
    render();
  }

  function stateMatches(state) {
    if (!filters.state) { return true; }
    if (filters.state === "problem") { return state !== "online"; }
    return state === filters.state;
  }

  function textMatches(a) {
    if (!filters.text) { return true; }
    var hay = [a.site, a.id, a.name || "", a.kind || ""].join(" ").toLowerCase();
    if (hay.indexOf(filters.text) >= 0) { return true; }
    var d = model.details[assetKey(a.site, a.id)];
    return !!(d && d.points.some(function (p) {
      return (p.id + " " + (p.name || "")).toLowerCase().indexOf(filters.text) >= 0;
    }));
  }

  // -- summary and legend ----------------------------------------------------------------

  function renderSummary() {
    var counts = { online: 0, degraded: 0, offline: 0, unknown: 0 };
    model.assets.forEach(function (a) { counts[a.state] = (counts[a.state] || 0) + 1; });
    var chips = [el("span", { "class": "chip", text: model.sites.length + " sites · " + model.assets.length + " assets" })];
    STATES.forEach(function (s) {
      var b = stateBadge(s);
      b.textContent = counts[s] + " " + s;
      b.setAttribute("data-count", counts[s]);
      chips.push(b);
    });
    var gapsChip = el("button", { type: "button", "class": "chip", text: model.openGaps.length + " open gaps" });
    gapsChip.addEventListener("click", function () { $("gaps-panel").scrollIntoView({ behavior: "smooth" }); });
    chips.push(gapsChip);
    replaceChildren($("summary"), chips);
  }

  function renderLegend() {
    var items = [
      el("span", null, [legendSwatch("tl-bg"), "data"]),
      el("span", null, [legendSwatch("tl-unmonitored"), "not monitored"])
    ];
    CAUSES.forEach(function (c) {
      items.push(el("span", null, [legendSwatch("tl-gap cause-" + c[0]), "gap: " + c[1]]));
    });
    replaceChildren($("legend"), [el("span", { text: "Timelines:" })].concat(items));
  }

  function legendSwatch(cls) {
    return svg("svg", { viewBox: "0 0 14 10", "aria-hidden": "true" }, svg("rect", { x: 0, y: 0, width: 14, height: 10, "class": cls }));
  }

  // -- sites and assets ------------------------------------------------------------------

  function siteNode(site) {
    var node = ui.sites[site.id];
    if (!node) {
      var total = model.assets.length;
      node = {
        root: el("details", { "class": "site", "data-site": site.id }),
        badge: stateBadge(site.state),
        name: el("span", { "class": "site-name" }),
        meta: el("span", { "class": "asset-meta" }),
        grid: el("div", { "class": "assets" })
      };
      if (total <= 60) { node.root.open = true; }
      node.root.addEventListener("toggle", function () { if (node.root.open) { render(); } });
      var summary = el("summary", null, [node.name, node.badge, node.meta]);
      append(node.root, [summary, node.grid]);
      ui.sites[site.id] = node;
    }
    return node;
  }

  function updateSite(node, site) {
    node.root.setAttribute("data-state", site.state);
    node.badge.className = "badge st-" + site.state;
    node.badge.textContent = site.state;
    node.name.textContent = site.name || site.id;
    var parts = [site.assets_total + " assets", site.points_total + " points"];
    if (site.open_gaps) { parts.push(site.open_gaps + " open gaps"); }
    parts.push("last seen " + ago(site.last_seen));
    node.meta.textContent = parts.join(" · ");
    node.meta.title = timeTitle(site.last_seen) || "";
  }

  function assetNode(a) {
    var key = assetKey(a.site, a.id);
    var node = ui.assets[key];
    if (node) { return node; }
    node = {
      root: el("article", { "class": "asset", "data-site": a.site, "data-asset": a.id, "data-key": key }),
      badge: stateBadge(a.state),
      name: el("span", { "class": "asset-name" }),
      id: el("span", { "class": "muted" }),
      meta: el("div", { "class": "asset-meta" }),
      timeline: el("div", { "class": "timeline" }),
      coverage: el("div", { "class": "coverage" }),
      details: el("details", { "class": "points" }),
      pointsSummary: el("summary"),
      table: el("div", { "class": "table-wrap" })
    };
    append(node.details, [node.pointsSummary, node.table]);
    node.details.addEventListener("toggle", function () {
      if (node.details.open) {
        ui.openPoints[key] = true;
        loadDetail(a.site, a.id);
      } else {
        delete ui.openPoints[key];
      }
      syncEvents();
    });
    append(node.root, [
      el("div", { "class": "asset-head" }, [node.badge, node.name, node.id]),
      node.meta, node.timeline, node.coverage, node.details
    ]);
    if (model.assets.length <= 12) { node.details.open = true; ui.openPoints[key] = true; }
    ui.assets[key] = node;
    return node;
  }

  function updateAsset(node, a) {
    var key = assetKey(a.site, a.id);
    node.root.setAttribute("data-state", a.state);
    node.badge.className = "badge st-" + a.state;
    node.badge.textContent = a.state;
    node.name.textContent = a.name || a.id;
    node.id.textContent = a.id + (a.kind ? " · " + a.kind : "");
    var byState = STATES.filter(function (s) { return a.points_by_state[s]; })
      .map(function (s) { return a.points_by_state[s] + " " + s; }).join(", ");
    var meta = [
      el("span", { text: a.points_total + " points" + (byState ? " (" + byState + ")" : "") }),
      el("span", { title: timeTitle(a.last_seen), text: "last seen " + ago(a.last_seen) }),
      a.since ? el("span", { title: timeTitle(a.since), text: a.state + " for " + duration(now() - parseTime(a.since)) }) : null,
      a.open_gaps ? el("span", { "class": "gap-flag", text: a.open_gaps + " open gap" + (a.open_gaps > 1 ? "s" : "") }) : null
    ];
    replaceChildren(node.meta, meta);
    replaceChildren(node.timeline, timeline(a));
    replaceChildren(node.coverage, coverageBars(key));
    node.pointsSummary.textContent = "Points (" + a.points_total + ")";
    var detail = model.details[key];
    if (node.details.open && detail) { replaceChildren(node.table, pointsTable(detail)); }
  }

  function render() {
    try {
      renderSummary();
      var siteSel = $("f-site");
      if (siteSel.options.length !== model.sites.length + 1) {
        replaceChildren(siteSel, [el("option", { value: "", text: "All sites" })].concat(
          model.sites.map(function (s) { return el("option", { value: s.id, text: s.name || s.id }); })));
        siteSel.value = filters.site;
      }
      var container = $("sites");
      if (container.firstElementChild && container.firstElementChild.tagName === "P") { container.textContent = ""; }
      var shownAssets = 0;
      model.sites.forEach(function (site) {
        var sn = siteNode(site);
        updateSite(sn, site);
        if (sn.root.parentNode !== container) { container.appendChild(sn.root); }
        var visible = 0;
        model.assets.forEach(function (a) {
          if (a.site !== site.id) { return; }
          var an = assetNode(a);
          if (an.root.parentNode !== sn.grid) { sn.grid.appendChild(an.root); }
          var show = (!filters.site || filters.site === a.site) && stateMatches(a.state) && textMatches(a);
          an.root.hidden = !show;
          an.root.setAttribute("data-state", a.state);
          // Draw only what can be seen: a big plant has collapsed sites and filtered assets.
          if (show && sn.root.open) { updateAsset(an, a); }
          if (show) { visible += 1; }
        });
        sn.root.hidden = visible === 0;
        shownAssets += visible;
      });
      $("f-result").textContent = shownAssets + " of " + model.assets.length + " assets shown";
      renderGaps();
      renderDevices();
      renderSinks();
      renderUnmapped();
    } catch (e) {
      setConn(false, "render error: " + e.message);
      if (window.console) { console.error(e); }
    }
  }

  // -- timeline and coverage -------------------------------------------------------------

  function gapsOf(site, asset) {
    var seen = {};
    var out = [];
    model.openGaps.concat(model.gaps24).forEach(function (g) {
      if (g.site !== site || g.asset !== asset || seen[g.id]) { return; }
      seen[g.id] = true;
      out.push(g);
    });
    return out;
  }

  function rangeLabel(ms) {
    return ms >= 3600000 ? Math.round(ms / 3600000) + " h" : Math.round(ms / 60000) + " min";
  }

  function timeline(a) {
    var span = filters.range;
    var end = now();
    var start = end - span;
    var W = 1000;
    function x(t) { return Math.max(0, Math.min(W, (t - start) / span * W)); }
    var parts = [svg("rect", { x: 0, y: 0, width: W, height: 18, "class": "tl-bg" })];
    var mon = parseTime(model.monitoredSince);
    if (a.state === "unknown" && !a.last_seen) { mon = end; }
    if (mon !== null && mon > start) {
      parts.push(svg("rect", { x: 0, y: 0, width: x(mon), height: 18, "class": "tl-unmonitored" },
        svg("title", { text: "not monitored before " + new Date(mon).toLocaleString() })));
    }
    var gaps = gapsOf(a.site, a.id);
    gaps.forEach(function (g) {
      var gs = parseTime(g.start);
      var ge = g.end ? parseTime(g.end) : end;
      if (ge < start || gs > end) { return; }
      var x0 = x(gs), x1 = x(ge);
      var label = g.point + ": " + g.cause.replace(/_/g, " ") + ", " + new Date(gs).toLocaleString() +
        (g.end ? " – " + new Date(ge).toLocaleString() : " – now (open)") + ", " + duration(ge - gs);
      parts.push(svg("rect", {
        x: x0, y: 0, width: Math.max(2, x1 - x0), height: 18,
        "class": "tl-gap cause-" + g.cause + (g.end ? "" : " open")
      }, svg("title", { text: label })));
    });
    var shown = parts.length - 1 - (mon !== null && mon > start ? 1 : 0);
    var label = (shown ? shown + " gap(s)" : "no gaps") + " in the last " + rangeLabel(span);
    return [
      svg("svg", { viewBox: "0 0 1000 18", preserveAspectRatio: "none", role: "img", "aria-label": label,
        "data-gaps": shown }, parts),
      el("div", { "class": "axis", "aria-hidden": "true" }, [
        el("span", { text: "−" + rangeLabel(span) }), el("span", { text: "−" + rangeLabel(span / 2) }), el("span", { text: "now" })
      ])
    ];
  }

  function coverageBars(key) {
    var out = [];
    [["1 h", model.cov1h[key]], ["24 h", model.cov24h[key]]].forEach(function (c) {
      var row = c[1];
      var pct = row && row.coverage !== null && row.expected > 0 ? row.coverage : null;
      var cls = pct === null ? "" : pct >= 0.99 ? "cov-good" : pct >= 0.9 ? "cov-warn" : "cov-bad";
      var bar = svg("svg", { viewBox: "0 0 100 9", preserveAspectRatio: "none", role: "img",
        "aria-label": "coverage " + c[0] + ": " + (pct === null ? "n/a" : (pct * 100).toFixed(1) + " %") }, [
        svg("rect", { x: 0, y: 0, width: 100, height: 9, "class": "cov-track" }),
        pct === null ? null : svg("rect", { x: 0, y: 0, width: Math.max(0, Math.min(100, pct * 100)), height: 9, "class": cls })
      ]);
      var title = row ? row.received + " of " + row.expected + " expected samples" : "no data yet";
      out.push(el("span", { text: "coverage " + c[0] }));
      out.push(el("span", { title: title }, bar));
      out.push(el("span", { "class": "cov-pct", text: pct === null ? "n/a" : (pct * 100).toFixed(1) + " %" }));
    });
    return out;
  }

  // -- tables ----------------------------------------------------------------------------

  function table(headers, rows) {
    return el("table", null, [
      el("thead", null, el("tr", null, headers.map(function (h) {
        return el("th", { "class": h[1] || null, scope: "col", text: h[0] });
      }))),
      el("tbody", null, rows)
    ]);
  }

  function wrapName(name) {   // let CamelCase quality names wrap: BadNo<wbr>Communication
    return name ? name.replace(/([a-z])([A-Z])/g, "$1\u200b$2") : name;
  }

  function pointsTable(detail) {
    var rows = detail.points.map(function (p) {
      var gap = p.open_gap;
      var title = (p.name ? p.name + "\n" : "") + "source: " + p.source +
        (p.expected_interval_s ? "\nexpected every " + p.expected_interval_s + " s" : "");
      return el("tr", { "data-point": p.id, "data-state": p.state }, [
        el("td", { title: title }, [
          el("strong", { text: p.id }),
          gap ? el("div", { "class": "gap-flag pt-gap", "data-role": "gap",
            text: "⚠ " + gap.cause.replace(/_/g, " ") + " · " + duration((gap.duration_s || 0) * 1000) }) : null
        ]),
        el("td", null, stateBadge(p.state)),
        el("td", { "class": "value", "data-role": "value", text: formatValue(p.value, p.unit) }),
        el("td", { "class": p.severity ? "sev-" + p.severity : "muted", "data-role": "quality", text: wrapName(p.quality_name) || "—" }),
        el("td", { "class": "opt2", "data-role": "seen", title: "last good: " + (timeTitle(p.last_good) || "never"), text: since(p.last_seen) })
      ]);
    });
    return table([["Point"], ["State"], ["Value"], ["Quality"], ["Seen", "opt2"]], rows);
  }

  function renderGaps() {
    var sinceFetch = Date.now() - model.fetchedAt;
    var gaps = model.openGaps.filter(function (g) { return !filters.site || g.site === filters.site; });
    $("gaps-count").textContent = "(" + gaps.length + ")";
    if (!gaps.length) {
      replaceChildren($("gaps"), el("p", { "class": "muted", text: "No open gaps." }));
      return;
    }
    var rows = gaps.map(function (g) {
      return el("tr", { "data-gap": g.id, "data-key": g.site + "/" + g.asset + "/" + g.point }, [
        el("td", null, [el("strong", { text: g.asset + " / " + g.point }), el("div", { "class": "muted", text: g.site })]),
        el("td", null, el("span", { "class": "gap-flag", text: g.cause.replace(/_/g, " ") })),
        el("td", { "class": "opt", title: timeTitle(g.start), text: new Date(g.start).toLocaleString() }),
        el("td", { "class": "num", title: "since " + timeTitle(g.start), text: duration((g.duration_s || 0) * 1000 + sinceFetch) }),
        el("td", { "class": "num opt", text: String(g.samples_missed) })
      ]);
    });
    replaceChildren($("gaps"), table([["Point"], ["Cause"], ["Started", "opt"], ["Duration", "num"], ["Samples missed", "opt"]], rows));
  }

  function renderDevices() {
    if (!model.devices.length) {
      replaceChildren($("devices"), el("p", { "class": "muted", text: "No devices configured." }));
      return;
    }
    var rows = model.devices.map(function (d) {
      return el("tr", { "data-device": d.id, "data-state": d.state }, [
        el("td", { title: d.protocol + " " + d.endpoint }, [el("strong", { text: d.id }), el("div", { "class": "muted", text: d.protocol + " " + d.endpoint })]),
        el("td", null, stateBadge(d.state)),
        el("td", { title: timeTitle(d.since), text: (d.link_up ? "up " : "down ") + (d.since ? duration(now() - parseTime(d.since)) : "") }),
        el("td", { "class": "num opt", text: d.poll_latency_s === null ? "—" : (d.poll_latency_s * 1000).toFixed(1) + " ms" }),
        el("td", { "class": "num opt2", text: d.polls + " / " + d.overruns + " / " + d.reconnects }),
        el("td", { "class": "opt", text: d.last_error || "" })
      ]);
    });
    replaceChildren($("devices"), table([["Device"], ["State"], ["Link"], ["Poll latency", "opt"], ["Polls / overruns / reconnects", "opt2"], ["Last error", "opt"]], rows));
  }

  function renderSinks() {
    var panel = $("sinks-panel");
    panel.hidden = !model.sinks.length;
    if (!model.sinks.length) { return; }
    var keys = [];
    model.sinks.forEach(function (s) { Object.keys(s).forEach(function (k) { if (keys.indexOf(k) < 0) { keys.push(k); } }); });
    var rows = model.sinks.map(function (s) {
      return el("tr", null, keys.map(function (k) {
        var v = s[k];
        return el("td", { text: v === null || v === undefined ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v) });
      }));
    });
    replaceChildren($("sinks"), table(keys.map(function (k) { return [k]; }), rows));
  }

  function renderUnmapped() {
    var items = model.unmapped;
    $("unmapped-panel").hidden = !items.length;
    if (!items.length) { return; }
    $("unmapped-count").textContent = "(" + items.length + ")";
    var rows = items.slice(0, 200).map(function (u) {
      var what = u.topic || u.node || u.source || u.id || JSON.stringify(u);
      var details = Object.keys(u).filter(function (k) {
        return ["device", "topic", "node", "source", "last_seen", "messages", "reason"].indexOf(k) < 0;
      }).map(function (k) { return k + ": " + (typeof u[k] === "object" ? JSON.stringify(u[k]) : u[k]); }).join("\n");
      return el("tr", { "data-unmapped": what }, [
        el("td", { title: details || null }, [el("strong", { "class": "src", text: String(what) }),
          el("div", { "class": "muted", text: (u.device || "") + (u.reason ? " · " + String(u.reason).replace(/_/g, " ") : "") })]),
        el("td", { "class": "num opt2", text: u.messages === undefined ? "" : String(u.messages) }),
        el("td", { title: timeTitle(u.last_seen), text: u.last_seen ? ago(u.last_seen) : "" })
      ]);
    });
    replaceChildren($("unmapped"), table([["Source"], ["Messages", "opt2"], ["Last seen"]], rows));
  }

  // -- live values over SSE --------------------------------------------------------------

  function syncEvents() {
    var keys = Object.keys(ui.openPoints).sort();
    var key = keys.join(",");
    if (key === eventsKey) { return; }
    eventsKey = key;
    if (events) { events.close(); events = null; }
    if (!keys.length || typeof EventSource === "undefined") { return; }
    var globs = keys.map(function (k) { return k + "/*"; }).join(",");
    if (globs.length > 4000) { return; }   // too many expanded assets: polling only
    events = new EventSource("api/v1/stream?points=" + encodeURIComponent(globs));
    events.addEventListener("reading", onReading);
  }

  function onReading(ev) {
    var r;
    try { r = JSON.parse(ev.data); } catch (e) { return; }
    var key = assetKey(r.site, r.asset);
    var detail = model.details[key];
    if (detail) {
      detail.points.forEach(function (p) {
        if (p.id === r.point) {
          p.value = r.value; p.quality = r.quality; p.quality_name = r.quality_name;
          p.severity = r.severity; p.last_seen = r.source_time;
          if (r.severity !== "bad") { p.last_good = r.source_time; }
        }
      });
    }
    var node = ui.assets[key];
    if (!node || !node.details.open) { return; }
    var row = node.table.querySelector('tr[data-point="' + CSS.escape(r.point) + '"]');
    if (!row) { return; }
    var value = row.querySelector('[data-role="value"]');
    var quality = row.querySelector('[data-role="quality"]');
    var seen = row.querySelector('[data-role="seen"]');
    if (value) { value.textContent = formatValue(r.value, r.unit); }
    if (quality) { quality.textContent = wrapName(r.quality_name); quality.className = "sev-" + r.severity; }
    if (seen) { seen.textContent = since(r.source_time); }
    row.classList.remove("flash");
    void row.offsetWidth;   // restart the animation
    row.classList.add("flash");
  }

  // -- polling ---------------------------------------------------------------------------

  function setConn(ok, message) {
    var c = $("conn");
    c.setAttribute("data-conn", ok ? "live" : "lost");
    c.textContent = ok ? "live" : "connection lost – retrying";
    c.title = message || "";
    $("updated").textContent = model.lastOk ? "updated " + new Date(model.lastOk).toLocaleTimeString() : "";
  }

  function loadDetail(site, asset) {
    return api("api/v1/assets/" + encodeURIComponent(site) + "/" + encodeURIComponent(asset))
      .then(function (d) {
        model.details[assetKey(site, asset)] = d;
        var node = ui.assets[assetKey(site, asset)];
        if (node && node.details.open) { replaceChildren(node.table, pointsTable(d)); }
      });
  }

  var fastBusy = false;
  function pollFast() {
    if (fastBusy) { return; }
    fastBusy = true;
    Promise.all([api("api/v1/sites"), api("api/v1/assets"), api("api/v1/gaps?open=true"), api("api/v1/devices")])
      .then(function (res) {
        var before = model.openGaps.map(function (g) { return g.id; }).sort().join();
        model.sites = res[0]; model.assets = res[1]; model.openGaps = res[2]; model.devices = res[3];
        model.fetchedAt = Date.now();
        var opened = Object.keys(ui.openPoints).map(function (k) {
          var i = k.indexOf("/");
          return loadDetail(k.slice(0, i), k.slice(i + 1));
        });
        return Promise.all(opened).then(function () {
          model.lastOk = Date.now();
          setConn(true);
          render();
          syncEvents();
          var after = model.openGaps.map(function (g) { return g.id; }).sort().join();
          if (after !== before) { pollSlow(); }
        });
      })
      .catch(function (e) { setConn(false, e.message); })
      .then(function () { fastBusy = false; });
  }

  var slowBusy = false;
  var lastDaily = -Infinity;
  function pollSlow() {
    if (slowBusy) { return; }
    slowBusy = true;
    var since = new Date(now() - DAY_MS).toISOString();
    var daily = Date.now() - lastDaily >= DAILY_MS;
    Promise.all([
      api("api/v1/gaps?since=" + encodeURIComponent(since)),
      api("api/v1/coverage?window=3600&group_by=asset"),
      daily ? api("api/v1/coverage?window=86400&group_by=asset") : null,
      api("api/v1/sinks").catch(function () { return []; }),
      api("api/v1/unmapped").catch(function () { return []; })
    ]).then(function (res) {
      model.gaps24 = res[0];
      model.cov1h = byGroup(res[1].rows);
      model.monitoredSince = res[1].monitored_since;
      if (res[2]) { model.cov24h = byGroup(res[2].rows); lastDaily = Date.now(); }
      if (now() - parseTime(model.monitoredSince) < 3600000) {
        model.cov24h = model.cov1h;   // monitored for less than 1 h: both windows are the same
      }
      model.sinks = res[3];
      model.unmapped = res[4];
      render();
    }).catch(function (e) { setConn(false, e.message); })
      .then(function () { slowBusy = false; });
  }

  function byGroup(rows) {
    var out = {};
    rows.forEach(function (r) { out[r.group] = r; });
    return out;
  }

  function start() {
    renderLegend();
    readHash();
    ["f-site", "f-state", "f-range"].forEach(function (id) { $(id).addEventListener("change", onFilter); });
    $("f-text").addEventListener("input", onFilter);
    window.addEventListener("hashchange", function () { readHash(); render(); });
    pollFast();
    pollSlow();
    setInterval(pollFast, FAST_MS);
    setInterval(pollSlow, SLOW_MS);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) { pollFast(); pollSlow(); }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
