// The quota-hooks dashboard. Served as a file of its own: the page's Content-Security-Policy
// allows no inline script, no eval, no inline style or handler, and (Trusted Types) no HTML
// sink, so every node below is built with createElement and filled with text, never markup.
"use strict";

(() => {
  // Token: #token=... in the URL (kept in this tab's sessionStorage), for servers with tokens.
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) sessionStorage.setItem("quota-hooks-token", params.get("token"));
  const token = sessionStorage.getItem("quota-hooks-token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  // Every URL is relative to the router's root, wherever it is mounted: this script is served
  // at <root>quota-hooks/static/dashboard.js, so the root is two levels up from it.
  const root = new URL("../../", document.currentScript.src);
  const at = (path) => new URL(path, root);
  // The page is <root> (the workspace picker) or <root>dashboard/<workspace id>.
  const rest = location.pathname.startsWith(root.pathname)
    ? location.pathname.slice(root.pathname.length) : "";
  const match = rest.match(/^dashboard\/(.+?)\/?$/);
  const workspace = match ? decodeURIComponent(match[1]) : null;
  const $ = (id) => document.getElementById(id);
  const segment = encodeURIComponent;  // a workspace id as one path segment
  const num = (v) => Number(v).toLocaleString("en-US");
  const usd = (v) => v === null || v === undefined ? "unpriced"
    : "$" + (v >= 1 || v === 0 ? v.toFixed(2) : v.toFixed(v >= 0.01 ? 4 : 6));
  // What the budget counted for a row: priced cost plus the charge of its unpriced calls.
  const charged = (m) => (m.cost_usd || 0) + (m.unpriced_charge_usd || 0);
  const costOf = (m) => usd(m.cost_usd) + (m.unpriced_count ? ` (+${num(m.unpriced_count)} unpriced)` : "");
  const LIMITS = [["requests_per_minute", "requests / minute", "rpm"],
                  ["requests_per_day", "requests / day", "rpd"],
                  ["tokens_per_minute", "tokens / minute", "tpm"],
                  ["tokens_per_day", "tokens / day", "tpd"],
                  ["monthly_budget_usd", "budget this month", "budget"]];
  let thresholds = { warning: 80, critical: 95 };

  // h("div", { class: "row", dataset: { testid: "x" }, style: { width: "5%" } }, child, "text"):
  // an element whose children are nodes or text (strings become text nodes, never markup).
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "class") el.className = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key === "style") Object.assign(el.style, value);  // CSSOM: allowed by the CSP
      else el.setAttribute(key, String(value));
    }
    el.append(...children.flat().filter((c) => c !== null && c !== undefined));
    return el;
  }

  // The same for SVG elements, whose attributes are all plain values.
  function svg(tag, attributes, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attributes || {})) el.setAttribute(key, String(value));
    el.append(...children);
    return el;
  }

  async function getJSON(path) {
    const response = await fetch(at(path), { headers });
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  function gauge([key, label, id], data) {
    const u = data[key];
    const pct = Math.min(100, u.percentage);
    const level = pct >= thresholds.critical ? "critical" : pct >= thresholds.warning ? "warning" : "";
    const fmt = key === "monthly_budget_usd" ? usd : num;
    const limit = u.limit === null ? "no limit" : fmt(u.limit);
    return h("div", { class: "gauge", dataset: { testid: `gauge-${id}` } },
      h("div", { class: "label" }, h("span", null, label),
        h("span", null, h("b", { dataset: { testid: `current-${id}` } }, fmt(u.current)),
          ` of ${limit} (${u.percentage.toFixed(1)}%)`)),
      h("div", { class: "track" },
        h("div", { class: `fill ${level}`.trim(), style: { width: `${pct}%` } }),
        h("div", { class: "mark", title: "warning", style: { left: `${thresholds.warning}%` } }),
        h("div", { class: "mark", title: "critical", style: { left: `${thresholds.critical}%` } })));
  }

  function renderPolicy(data) {
    const p = data.policy || {};
    const where = p.source === "store"
      ? `stored policy ${p.key === "*" ? "(the default)" : p.key} · version ${p.version}`
      : `the app's own policy ${p.key === "*" ? "(its default)" : p.key || ""}`;
    const marks = (data.alert_thresholds || []).length
      ? ` · alerts at ${data.alert_thresholds.map((t) => t + "%").join(", ")}` : "";
    $("policy").textContent = `In force: ${where}${marks}`;
  }

  // Why the status is what it is, in a few words: the limit at its highest, or the
  // provider's 429 (the latest call that got one).
  function why(data) {
    const used = LIMITS.map(([key, , id]) => [id, data[key]])
      .filter(([, u]) => u && u.limit !== null)
      .sort((a, b) => b[1].percentage - a[1].percentage);
    const top = used.length ? `${used[0][0]} at ${Math.round(used[0][1].percentage)}%` : "";
    const recent = (data.enhanced_tracking || {}).recent_activity || [];
    const limited = recent.find((a) => a.status_code === 429);
    switch (data.status) {
      case "rate_limited":
        return used.length && used[0][1].percentage >= 100 ? top
          : limited ? `provider 429 at ${limited.timestamp.slice(11, 16)}` : "provider 429";
      case "quota_exceeded": return "budget used up";
      case "warning": return top;
      case "degraded": return "tracking failed recently";
      default: return "";
    }
  }

  function renderStatus(data) {
    if (data.thresholds && data.thresholds.warning) thresholds = data.thresholds;
    renderPolicy(data);
    if (data.forecast) renderBudget(data.forecast.budgets.month, data.forecast.method);
    const badge = $("status");
    const reason = why(data);
    badge.textContent = data.status.replace("_", " ") + (reason ? ` — ${reason}` : "");
    badge.className = "badge " + data.status;
    $("gauges").replaceChildren(...LIMITS.map((limit) => gauge(limit, data)));
    const extra = data.enhanced_tracking || { models_breakdown: {}, api_methods_breakdown: {},
                                              recent_activity: [] };
    const models = Object.entries(extra.models_breakdown);
    const top = Math.max(1e-12, ...models.map(([, m]) => charged(m)));
    $("models").replaceChildren(...(models.length ? models.map(([name, m]) =>
      h("div", { class: "row", dataset: { testid: "model-row" } },
        h("span", { title: name }, name),
        h("div", { class: "bar", style: { width: `${(100 * charged(m) / top).toFixed(1)}%` } }),
        h("span", { class: "num" }, `${costOf(m)} · ${num(m.tokens_used)} tok`)))
      : [h("p", { class: "empty" }, "no calls yet")]));
    // Four columns, errors with the requests: the card is a third of the page wide.
    $("methods").replaceChildren(...Object.entries(extra.api_methods_breakdown).map(([name, m]) =>
      h("tr", null, h("td", null, name),
        h("td", { class: "num" },
          h("span", { dataset: { testid: "method-requests" } }, num(m.request_count)),
          m.error_count ? h("span", { class: "err" }, ` · ${num(m.error_count)} err`) : null),
        h("td", { class: "num" }, num(m.tokens_used)),
        h("td", { class: "num", dataset: { testid: "method-cost" } }, costOf(m)))));
    $("recent").replaceChildren(...extra.recent_activity.map((a) =>
      h("tr", { dataset: { testid: "recent-row" } },
        h("td", null, a.timestamp.slice(11, 19)), h("td", null, a.model), h("td", null, a.api_method),
        h("td", { class: "num" }, num(a.tokens_used) + (a.estimated ? "~" : "")),
        h("td", { class: "num" }, a.cost_usd === null ? "?" : usd(a.cost_usd)),
        h("td", { class: a.success ? "" : "err" }, a.success ? "ok" : String(a.status_code || "error")))));
  }

  function axis(left, right) {
    return h("div", { class: "axis" }, h("span", null, left), h("span", null, right));
  }

  function renderChart(history) {
    // Days as the server counts them (the policy's time zone): 30 calendar days from `since`.
    const days = [];
    const first = Date.parse(history.since + "T00:00:00Z");
    for (let i = 0; i < 30; i++) {
      days.push(new Date(first + i * 86400000).toISOString().slice(0, 10));
    }
    const costs = days.map((d) => (history.rows[d] || { charged_usd: 0 }).charged_usd);
    const top = Math.max(1e-12, ...costs);
    const w = 1000 / days.length;
    const bars = costs.map((c, i) => {
      const height = Math.round(130 * c / top);
      return svg("rect", { x: (i * w + 2).toFixed(1), y: 140 - height, width: (w - 4).toFixed(1),
                           height, fill: "#0969da" },
                 svg("title", null, `${days[i]}: ${usd(c)}`));
    });
    // The axis labels are page text, not SVG text: the chart stretches to any width.
    $("chart").replaceChildren(svg("svg", { viewBox: "0 0 1000 145", preserveAspectRatio: "none",
                                            "data-testid": "chart" },
      ...bars,
      svg("line", { x1: 0, y1: 140, x2: 1000, y2: 140, stroke: "#d0d7de" })),
      axis(days[0], `${days[29]} · total ${usd(history.total_cost_usd)}`));
  }

  // The month so far, what it is projected to reach and the budget: spent (solid) up to now,
  // projected (dashed) from now to the month's end, and the budget (a red line).
  let lastBudget = "";
  function renderBudget(month, method) {
    if (!month) return;
    const key = JSON.stringify(month);
    if (key === lastBudget) return;  // unchanged: no redraw on every update
    lastBudget = key;
    const start = Date.parse(month.start), end = Date.parse(month.end);
    const now = Math.min(end, Math.max(start, Date.now()));
    const top = Math.max(1e-9, month.projected_usd, month.spent_usd, month.budget_usd || 0) * 1.1;
    const x = (t) => (1000 * (t - start) / (end - start)).toFixed(1);
    const y = (usdValue) => (140 - 130 * usdValue / top).toFixed(1);
    const parts = [
      svg("line", { x1: 0, y1: 140, x2: 1000, y2: 140, stroke: "#d0d7de" }),
      svg("line", { x1: x(start), y1: y(0), x2: x(now), y2: y(month.spent_usd),
                    stroke: "#0969da", "stroke-width": 3, "data-testid": "spent-line" }),
      svg("line", { x1: x(now), y1: y(month.spent_usd), x2: x(end), y2: y(month.projected_usd),
                    stroke: "#0969da", "stroke-width": 2, "stroke-dasharray": "6 4",
                    "data-testid": "projection-line" },
          svg("title", null, `projected ${usd(month.projected_usd)} by the month's end`)),
    ];
    if (month.budget_usd !== null) {
      parts.push(svg("line", { x1: 0, y1: y(month.budget_usd), x2: 1000, y2: y(month.budget_usd),
                               stroke: "#cf222e", "stroke-width": 1.5, "data-testid": "budget-line" },
                     svg("title", null, `budget ${usd(month.budget_usd)}`)));
    }
    $("budget-chart").replaceChildren(svg("svg", { viewBox: "0 0 1000 145",
                                                   preserveAspectRatio: "none" }, ...parts),
                                      axis(month.start.slice(0, 10), month.end.slice(0, 10)));
    const out = month.projected_exhaustion
      ? ` · runs out ${month.projected_exhaustion.slice(0, 16).replace("T", " ")} UTC` : "";
    $("budget-note").textContent = `spent ${usd(month.spent_usd)} · projected ` +
      `${usd(month.projected_usd)}` + (month.budget_usd !== null
        ? ` of ${usd(month.budget_usd)}${out}` : " (no budget)") +
      ` · at ${usd(month.rate_usd_per_day)} a day (${method})`;
  }

  const shownAlerts = new Set();
  function addAlert(alert, { older = false } = {}) {
    const id = `${alert.dedupe_key}|${alert.at}`;
    if (shownAlerts.has(id)) return;  // kept in the history and pushed live: shown once
    shownAlerts.add(id);
    const list = $("alerts");
    if (list.classList.contains("empty")) { list.classList.remove("empty"); list.replaceChildren(); }
    const item = h("li", { class: alert.kind, dataset: { testid: "alert" } },
                   `${alert.at.slice(0, 10)} ${alert.at.slice(11, 19)} ${alert.kind}: ${alert.message}`);
    if (older) list.append(item); else list.prepend(item);
    while (list.children.length > 20) list.lastChild.remove();
  }

  async function loadAlerts() {
    try {
      const { alerts } = await getJSON(`api/quota/alerts/${segment(workspace)}?n=20`);
      for (const alert of alerts) addAlert(alert, { older: true });  // newest first
    } catch (error) { /* the live alerts still come */ }
  }

  let retry = 500, chartTimer = null, chartShown = false;
  function setConnection(up, text) {
    const el = $("connection");
    el.textContent = text;
    el.className = up ? "" : "down";
    document.body.dataset.connected = up ? "yes" : "no";
  }

  async function loadChart() {
    try {
      renderChart(await getJSON(`api/quota/history/${segment(workspace)}?since=29d&by=day`));
    } catch (error) { $("chart").replaceChildren(h("p", { class: "empty" }, error.message)); }
  }

  function onMessage(event) {
    const message = JSON.parse(event.data);
    if (message.type === "quota_update") {
      setConnection(true, "live");
      renderStatus(message.data);
      // The chart once the socket is let in (no request a refused token would fail), then at
      // most once a second as updates come.
      clearTimeout(chartTimer);
      if (chartShown) chartTimer = setTimeout(loadChart, 1000);
      else { chartShown = true; loadChart(); loadAlerts(); }
    } else if (message.type === "quota_alert") {
      addAlert(message.data);
    } else if (message.type === "quota_error") {
      const el = $("connection");
      el.textContent = "live, but " + message.data;  // a fixed message: the store is down
      el.className = "down";
    }
  }

  function onClose(event) {
    if (event.code === 4401 || event.code === 4403) {
      setConnection(false, event.code === 4401 ? "not signed in (add #token=… to the URL)"
                                               : "this token may not read " + workspace);
      return;
    }
    if (event.code === 4429) {  // over the server's cap of sockets per token or workspace
      const why = /^too many open dashboards for this (token|workspace)$/.test(event.reason)
        ? event.reason : "too many open dashboards";
      setConnection(false, `${why}: close one; retrying in 30 s`);
      setTimeout(connect, 30000);
      return;
    }
    setConnection(false, `disconnected, reconnecting in ${(retry / 1000).toFixed(1)} s`);
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10000);
  }

  function connect() {
    const url = at("api/quota/ws/" + segment(workspace));
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url, token ? ["quota-hooks", "bearer." + token] : ["quota-hooks"]);
    socket.addEventListener("open", () => { retry = 500; setConnection(true, "live"); });
    socket.addEventListener("message", onMessage);
    socket.addEventListener("close", onClose);
  }

  async function pickWorkspace() {
    $("workspace").textContent = "all workspaces";
    $("status").hidden = true;
    for (const el of document.querySelectorAll("main > section:not(#picker)")) el.hidden = true;
    $("picker").hidden = false;
    try {
      const { workspaces } = await getJSON("api/quota/workspaces");
      $("workspaces").replaceChildren(...(workspaces.length ? workspaces.map((w) =>
        h("a", { href: at(`dashboard/${segment(w)}`).href + location.hash }, w))
        : ["no usage recorded yet"]));
      $("workspaces").classList.toggle("empty", !workspaces.length);
      setConnection(true, "");
    } catch (error) { setConnection(false, error.message); }
  }

  // A token that sees several workspaces (an admin's) gets a picker in the header.
  async function offerPicker() {
    try {
      const { workspaces } = await getJSON("api/quota/workspaces");
      if (workspaces.length < 2) return;
      const picker = h("select", { id: "switch", "aria-label": "workspace",
                                   dataset: { testid: "workspace-picker" } },
        ...workspaces.map((w) => {
          const option = h("option", { value: w }, w);
          if (w === workspace) option.selected = true;
          return option;
        }));
      picker.addEventListener("change", () => {
        location.assign(at(`dashboard/${segment(picker.value)}`).href + location.hash);
      });
      $("workspace").replaceChildren(picker);
    } catch (error) { /* a workspace's own token: no list to pick from */ }
  }

  if (workspace === null) {
    pickWorkspace();
  } else {
    $("workspace").textContent = workspace;
    document.title = "quota-hooks · " + workspace;
    connect();
    offerPicker();
  }
})();
