"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const NS = "http://www.w3.org/2000/svg";
  const STATUS = { healthy: "healthy", cooling_down: "cooling down", needs_login: "needs login",
    invalid: "invalid", disabled: "disabled" };
  let snap = null;
  let skew = 0;
  let frozen = false;

  // Every text from the pool goes in through text nodes, never as markup.
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    }
    for (const c of kids) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
    return e;
  }
  function svg(tag, attrs, title) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (title) { const t = document.createElementNS(NS, "title"); t.textContent = title; e.append(t); }
    return e;
  }
  function now() { return frozen ? Date.parse(snap.now) : Date.now() + skew; }
  function dur(s) {
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60), x = s % 60;
    if (d) return d + "d " + h + "h " + m + "m";
    if (h) return h + "h " + m + "m " + x + "s";
    if (m) return m + "m " + x + "s";
    return x + "s";
  }
  function ago(t) {
    if (!t) return "—";
    const s = (now() - Date.parse(t)) / 1000;
    return s < 5 ? "just now" : dur(s) + " ago";
  }
  function clock(t) { return t ? new Date(Date.parse(t)).toLocaleString() : "—"; }
  function name(slot) {
    if (slot == null) return "";
    const a = snap.accounts.find((x) => x.slot === slot);
    return a && a.label ? slot + " (" + a.label + ")" : String(slot);
  }
  function card(k, v, id) { return el("div", { class: "card", id: id }, el("div", { class: "k" }, k), el("div", { class: "v" }, v)); }

  function cards() {
    const c = $("cards");
    c.replaceChildren(
      card("Live account", snap.live == null ? "none" : name(snap.live), "card-live"),
      card("Usable now", snap.usable + " of " + snap.total, "card-usable"),
      card("Switches", snap.switches_total, "card-switches"),
      card("First return", snap.usable === 0 && snap.earliest_return ? "" : "—", "card-return"),
      card("Pool", snap.pool + ", " + snap.strategy, "card-pool"));
    const r = $("card-return").querySelector(".v");
    if (snap.usable === 0 && snap.earliest_return) { r.classList.add("countdown"); r.dataset.until = snap.earliest_return; }
  }

  function accounts() {
    const rows = snap.accounts.map((a) => {
      const cd = el("td", { class: "cooldown num" }, "—");
      if (a.cooldown_until) { cd.classList.add("countdown"); cd.dataset.until = a.cooldown_until; }
      const r = a.remaining, parts = [], resets = [];
      if (r && r.requests != null) parts.push(r.requests + " req");
      if (r && r.tokens != null) parts.push(r.tokens + " tok");
      if (r && r.requests_reset) resets.push("requests reset " + clock(r.requests_reset));
      if (r && r.tokens_reset) resets.push("tokens reset " + clock(r.tokens_reset));
      if (r && r.seen) resets.push("seen " + clock(r.seen));
      const rem = parts.length ? parts.join(" · ") : "—";
      return el("tr", { "data-slot": a.slot, "data-status": a.status, "data-live": a.live, class: a.live ? "live" : "" },
        el("td", { title: a.live ? "live" : "" }, a.live ? "●" : ""),
        el("td", { class: "num" }, a.slot),
        el("td", {}, a.label || "—"),
        el("td", {}, a.kind === "api_key" ? "API key" : a.kind === "oauth" ? "OAuth" : a.kind || "?"),
        el("td", { class: "status" }, el("span", { class: "badge " + a.status }, STATUS[a.status] || a.status)),
        cd,
        el("td", { class: "remaining num", title: resets.join(", ") }, rem),
        el("td", { class: "num" }, a.switches),
        el("td", { class: "num" }, a.hits.quota + "/" + a.hits.throttle + "/" + a.hits.auth),
        el("td", { class: "num" }, a.runs),
        el("td", { class: "ago", "data-time": a.last_used || "" }, ago(a.last_used)),
        el("td", { class: "reason" }, a.problem || a.last_reason || ""));
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 12, class: "empty" }, "No accounts yet.")));
    $("accounts").tBodies[0].replaceChildren(...rows);
  }

  function timeline() {
    const box = $("timeline");
    const marks = snap.timeline;
    const slots = snap.accounts.map((a) => a.slot);
    if (!slots.length) { box.replaceChildren(el("div", { class: "empty" }, "No accounts yet.")); return; }
    const end = Date.parse(snap.now);
    const first = marks.length ? Date.parse(marks[0].time) : end - 3600e3;
    const start = Math.min(first, end - 3600e3);
    const W = 900, L = 120, R = 16, row = 26, top = 10, H = top + row * slots.length + 24;
    const x = (t) => L + ((t - start) / Math.max(1, end - start)) * (W - L - R);
    const y = (slot) => top + row * slots.indexOf(slot) + row / 2;
    const s = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "timeline" });
    for (const n of slots) {
      s.append(svg("line", { x1: L, x2: W - R, y1: y(n), y2: y(n), class: "grid" }));
      const t = svg("text", { x: 4, y: y(n) + 4 }); t.textContent = "account " + name(n); s.append(t);
    }
    // Switches first, so a hit at the same moment stays visible on top.
    const behind = (e) => e.event === "account_switch" || e.event === "exhausted";
    for (const e of [...marks.filter(behind), ...marks.filter((e) => !behind(e))]) {
      const t = Date.parse(e.time);
      if (isNaN(t)) continue;
      const what = clock(e.time) + ": " + e.event.replace(/_/g, " ") + (e.slot != null ? " on account " + name(e.slot) : "") +
        (e.from != null ? " from " + name(e.from) : "") + (e.to != null ? " to " + name(e.to) : "") + (e.reason ? " (" + e.reason + ")" : "");
      if (e.event === "account_switch" && slots.includes(e.to)) {
        if (slots.includes(e.from)) s.append(svg("line", { x1: x(t), x2: x(t), y1: y(e.from), y2: y(e.to), class: "switch", "stroke-width": 1 }));
        s.append(svg("path", { d: "M" + (x(t) - 5) + " " + (y(e.to) - 6) + " l10 6 l-10 6 z", class: "switch mark", "data-event": e.event }, what));
      } else if (e.event === "exhausted") {
        s.append(svg("line", { x1: x(t), x2: x(t), y1: top, y2: top + row * slots.length, class: "exhausted mark", "data-event": e.event }, what));
      } else if (slots.includes(e.slot)) {
        const cls = e.event === "needs_login" ? "auth" : e.class || "quota";
        s.append(svg("circle", { cx: x(t), cy: y(e.slot), r: 5, class: cls + " mark", "data-event": e.event }, what));
      }
    }
    const a = svg("text", { x: L, y: H - 6 }); a.textContent = clock(new Date(start).toISOString());
    const b = svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }); b.textContent = clock(snap.now);
    s.append(a, b);
    box.replaceChildren(s);
  }

  function charts() {
    const box = $("charts");
    if (!snap.accounts.length) { box.replaceChildren(el("div", { class: "empty" }, "No accounts yet.")); return; }
    // The last 14 calendar days (UTC) up to the snapshot's day, empty days included.
    const end = Date.parse(snap.now), byDate = {};
    for (const d of snap.days) byDate[d.date] = d;
    const days = [];
    for (let i = 13; i >= 0; i--) days.push(new Date(end - i * 86400e3).toISOString().slice(0, 10));
    const figs = snap.accounts.map((a) => {
      const per = days.map((d) => Object.assign({ runs: 0, hits: 0, requests: 0, tokens: 0 }, byDate[d] && byDate[d].accounts[String(a.slot)]));
      const max = Math.max(1, ...per.map((p) => Math.max(p.runs, p.hits, p.requests)));
      const W = 280, H = 110, B = 16, T = 14, slot = (W - 8) / days.length, bw = slot / 3 - 1;
      const s = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "runs and hits of account " + a.slot, "data-slot": a.slot });
      s.append(svg("line", { x1: 4, x2: W - 4, y1: H - B, y2: H - B, class: "grid" }));
      const top = svg("text", { x: W - 4, y: 10, "text-anchor": "end" }); top.textContent = "max " + max; s.append(top);
      per.forEach((p, i) => {
        const x0 = 4 + i * slot;
        const h = (v) => ((H - B - T) * v) / max;
        s.append(svg("rect", { x: x0 + 1, y: H - B - h(p.runs), width: bw, height: h(p.runs), class: "runs" }, days[i] + ": " + p.runs + " runs"));
        s.append(svg("rect", { x: x0 + 1 + bw, y: H - B - h(p.hits), width: bw, height: h(p.hits), class: "quota" }, days[i] + ": " + p.hits + " hits"));
        s.append(svg("rect", { x: x0 + 1 + 2 * bw, y: H - B - h(p.requests), width: bw, height: h(p.requests), class: "requests" }, days[i] + ": " + p.requests + " requests"));
      });
      // Tokens (in + out) per day, on their own scale.
      const tmax = Math.max(1, ...per.map((p) => p.tokens)), TH = 60;
      const t = svg("svg", { viewBox: "0 0 " + W + " " + TH, role: "img", "aria-label": "tokens of account " + a.slot, "data-slot": a.slot, class: "tokens-chart" });
      t.append(svg("line", { x1: 4, x2: W - 4, y1: TH - 4, y2: TH - 4, class: "grid" }));
      const ttop = svg("text", { x: W - 4, y: 10, "text-anchor": "end" }); ttop.textContent = "tokens, max " + tmax; t.append(ttop);
      per.forEach((p, i) => {
        const ht = ((TH - 18) * p.tokens) / tmax;
        t.append(svg("rect", { x: 4 + i * slot + 1, y: TH - 4 - ht, width: slot - 2, height: ht, class: "tokens" }, days[i] + ": " + p.tokens + " tokens"));
      });
      const d0 = svg("text", { x: 4, y: H - 3 }); d0.textContent = days[0];
      const d1 = svg("text", { x: W - 4, y: H - 3, "text-anchor": "end" }); d1.textContent = days[days.length - 1];
      s.append(d0, d1);
      return el("figure", {}, el("figcaption", {}, "Account " + name(a.slot)), s, t);
    });
    box.replaceChildren(...figs);
  }

  function events() {
    const rows = snap.events.map((e) => {
      const who = e.from != null || e.to != null ? (e.from != null ? name(e.from) : "?") + " → " + (e.to != null ? name(e.to) : "?") : name(e.slot);
      const details = [e.reason, e.until ? "until " + clock(e.until) : null,
        e.code != null ? "exit " + e.code + (e.attempts ? ", " + e.attempts + " attempt" + (e.attempts === 1 ? "" : "s") : "") +
          (e.duration_ms != null ? ", " + (e.duration_ms / 1000).toFixed(1) + "s" : "") : null].filter(Boolean).join("; ");
      return el("tr", { "data-event": e.event, class: e.level === "WARN" ? "warn" : "" },
        el("td", { class: "num" }, clock(e.time)), el("td", {}, e.event.replace(/_/g, " ")),
        el("td", {}, who), el("td", {}, e.class || ""), el("td", { class: "reason" }, details));
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No events yet.")));
    $("events").tBodies[0].replaceChildren(...rows);
  }

  function tick() {
    if (!snap) return;
    for (const c of document.querySelectorAll(".countdown")) {
      const left = (Date.parse(c.dataset.until) - now()) / 1000;
      c.textContent = left > 0 ? dur(left) : "over (next run)";
    }
    for (const c of document.querySelectorAll("td.ago")) c.textContent = ago(c.dataset.time);
  }

  function render(s) {
    snap = s;
    skew = Date.parse(s.now) - Date.now();
    cards(); accounts(); timeline(); charts(); events(); tick();
    document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
    document.body.dataset.live = s.live == null ? "" : String(s.live);
  }

  function conn(state, text) { const c = $("conn"); c.dataset.state = state; c.textContent = text; }

  const inlined = JSON.parse($("pool-data").textContent);
  if (inlined) {
    frozen = true;
    document.body.dataset.mode = "report";
    conn("report", "snapshot");
    render(inlined);
    $("stamp").textContent = "taken " + clock(inlined.now);
    return;
  }
  const es = new EventSource("events" + location.search);
  es.addEventListener("pool", (e) => {
    render(JSON.parse(e.data));
    conn("live", "live");
    $("stamp").textContent = "updated " + new Date().toLocaleTimeString();
  });
  es.onerror = () => conn("lost", "reconnecting…");
  setInterval(tick, 1000);
})();
