// <quota-budget workspace="acme" token="..."> : a workspace's budget, limits, models, methods
// and recent calls, live. A custom element with a shadow root: no framework, no inline script
// or style (its styles are a constructed style sheet), text only (no markup from data). Load
// it as a module:
//   <script type="module" src="/api/quota/static/quota-budget.js"></script>
//
// Two layouts, one rendering code path (the gauges, models, methods and recent calls are drawn
// by the same functions in both):
//   - the default, sized for a sidebar;
//   - layout="full": the dashboard page (the server's own page is this element): a header
//     (a slot="title" child, the workspace, an admin's workspace picker, the status and why,
//     the connection), the limits with the policy in force, models, API methods, alerts with
//     their history, spend per day, the month's budget with its projection, recent calls.
// Attributes: workspace, token, layout, base-url (the router's root, when this file is not
// served from <root>api/quota/static/), signin-hint (layout="full": said after "not signed in").
// Events (layout="full"): "workspace-change" (cancelable, detail.workspace) when the picker
// changes; not cancelled, the element shows that workspace.
"use strict";

import { QuotaMonitor } from "./quota-monitor.js";
import {
  DEFAULT_THRESHOLDS, axis, charged, costOf, h, limitsOf, meter, num, svg, usd, why,
} from "./quota-ui.js";

const CSS = `
:host { display: block; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
        color: #1f2328; --ok: #1a7f37; --warn: #b08800; --crit: #cf222e; --muted: #6e7781;
        --line: #d0d7de; --bar: #0969da; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
:host(:not([layout="full"])) { border: 1px solid var(--line); border-radius: 8px;
        padding: 10px; background: #fff; max-width: 360px; }
h3 { font-size: 12px; text-transform: uppercase; color: var(--muted); margin: 10px 0 4px; }
.status { font-weight: 600; margin-bottom: 6px; } .status.warning { color: #9a6700; }
.status.rate_limited, .status.quota_exceeded { color: var(--crit); }
.status.degraded { color: #8250df; }
.muted, .empty { color: var(--muted); }
.gauge .label { display: flex; justify-content: space-between; gap: 8px; }
.gauge .label span:first-child { white-space: nowrap; }
.gauge .label span:last-child { text-align: right; }
.track { position: relative; height: 6px; background: #eaeef2; border-radius: 3px;
         overflow: hidden; margin: 2px 0 6px; }
.fill { height: 100%; width: 0; background: var(--ok); transition: width .3s; }
.fill.warning { background: var(--warn); } .fill.critical { background: var(--crit); }
.mark { position: absolute; top: 0; bottom: 0; width: 2px; background: #57606a; opacity: .6; }
.bars .row { display: grid; grid-template-columns: 1fr auto; gap: 0 8px; align-items: center;
             margin: 4px 0; }
.bars .row .bar { grid-column: 1 / -1; grid-row: 2; }
.bars .bar { height: 6px; background: var(--bar); border-radius: 3px; min-width: 2px; }
.bars .row span:first-child { overflow-wrap: anywhere; }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; padding: 2px 4px; border-bottom: 1px solid #eaeef2; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.wrap { overflow-wrap: anywhere; }
td.time { white-space: nowrap; }
.err { color: var(--crit); }
:host(:not([layout="full"])) .recent .method { display: none; }

:host([layout="full"]) { font-size: 14px; line-height: 1.45; }
.top { display: flex; gap: 12px; align-items: center; padding: 12px 20px; background: #fff;
       border-bottom: 1px solid var(--line); }
.top h1 { font-size: 16px; margin: 0; }
.badge { padding: 2px 10px; border-radius: 999px; font-weight: 600; color: #fff;
         background: var(--muted); }
.badge.normal { background: var(--ok); } .badge.warning { background: var(--warn); }
.badge.rate_limited, .badge.quota_exceeded { background: var(--crit); }
.badge.degraded { background: #8250df; }
#connection { margin-left: auto; font-size: 12px; color: var(--muted); }
#connection.down { color: var(--crit); font-weight: 600; }
#switch { font: inherit; font-weight: 600; max-width: 60vw; }
main { max-width: 1280px; margin: 0 auto; padding: 16px 20px; display: grid; gap: 16px;
       grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px;
          overflow-x: auto; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
     margin: 0 0 10px; }
main .gauge { margin: 8px 0 14px; }
main .gauge .label { font-size: 13px; }
main .track { height: 10px; border-radius: 5px; margin: 0; }
main .bars .row { grid-template-columns: 140px 1fr 110px; margin: 5px 0; font-size: 13px; }
main .bars .row .bar { grid-column: auto; grid-row: auto; height: 12px; }
main table { font-size: 13px; }
main th, main td { padding: 4px 6px; }
main .empty { font-size: 13px; }
.chart svg { display: block; width: 100%; height: 145px; }
#alerts { margin: 0; padding-left: 20px; }
#alerts li { font-size: 13px; } #alerts .warning { color: var(--warn); }
#alerts .critical, #alerts .quota_exceeded, #alerts .rate_limited { color: var(--crit); }
#alerts .projected, #alerts .threshold { color: var(--warn); }
#alerts .policy_changed, #alerts .usage_reset { color: #8250df; }
#alerts.empty { list-style: none; padding-left: 0; }
.axis { display: flex; justify-content: space-between; gap: 8px; font-size: 11px;
        color: var(--muted); }
.note { font-size: 12px; color: var(--muted); margin: 6px 0 0; }
@media (max-width: 600px) {
  .top { flex-wrap: wrap; padding: 10px 12px; gap: 8px; }
  #connection { margin-left: 0; width: 100%; }
  main { padding: 10px; gap: 10px; grid-template-columns: 1fr; }
  section { padding: 10px; }
  main table { font-size: 12px; }
  main .recent .method { display: none; }
  main th, main td { padding: 3px 4px; }
  main .bars .row { grid-template-columns: 1fr 70px; }
  main .bars .row .bar { grid-column: 1 / -1; grid-row: 2; }
}
`;
let sheet = null;  // one constructed style sheet for every element of the page

// ---- What both layouts draw (max: how many rows a sidebar shows) --------------------------

function gauge([key, label, id], data, thresholds) {
  const u = data[key];
  const fmt = key.endsWith("_usd") ? usd : num;
  const limit = u.limit === null ? "no limit" : fmt(u.limit);
  return h("div", { class: "gauge", dataset: { testid: `gauge-${id}` } },
    h("div", { class: "label" }, h("span", null, label),
      h("span", null, h("b", { dataset: { testid: `current-${id}` } }, fmt(u.current)),
        ` of ${limit} (${u.percentage.toFixed(1)}%)`)),
    meter(u.percentage, thresholds));
}

function statusText(data) {
  const reason = why(data);
  return data.status.replace("_", " ") + (reason ? ` — ${reason}` : "");
}

function extraOf(data) {
  return data.enhanced_tracking || { models_breakdown: {}, api_methods_breakdown: {},
                                     recent_activity: [] };
}

function modelRows(data, max = Infinity) {
  const models = Object.entries(extraOf(data).models_breakdown).slice(0, max);
  const top = Math.max(1e-12, ...models.map(([, m]) => charged(m)));
  return models.length ? models.map(([name, m]) =>
    h("div", { class: "row", dataset: { testid: "model-row" } },
      h("span", { title: name }, name),
      h("div", { class: "bar", style: { width: `${(100 * charged(m) / top).toFixed(1)}%` } }),
      h("span", { class: "num" }, `${costOf(m)} · ${num(m.tokens_used)} tok`)))
    : [h("p", { class: "empty" }, "no calls yet")];
}

// Four columns, errors with the requests: the dashboard's card is a third of the page wide.
function methodsTable(data, max = Infinity) {
  const methods = Object.entries(extraOf(data).api_methods_breakdown).slice(0, max);
  return h("table", { class: "methods" },
    h("thead", null, h("tr", null, h("th", null, "method"), h("th", { class: "num" }, "requests"),
                       h("th", { class: "num" }, "tokens"), h("th", { class: "num" }, "cost"))),
    h("tbody", null, methods.map(([name, m]) =>
      h("tr", null, h("td", { class: "wrap" }, name),
        h("td", { class: "num" },
          h("span", { dataset: { testid: "method-requests" } }, num(m.request_count)),
          m.error_count ? h("span", { class: "err" }, ` · ${num(m.error_count)} err`) : null),
        h("td", { class: "num" }, num(m.tokens_used)),
        h("td", { class: "num", dataset: { testid: "method-cost" } }, costOf(m))))));
}

function recentTable(data, max = Infinity) {
  const recent = extraOf(data).recent_activity.slice(0, max);
  return h("table", { class: "recent" },
    h("thead", null, h("tr", null, h("th", null, "time"), h("th", null, "model"),
                       h("th", { class: "method" }, "method"), h("th", { class: "num" }, "tokens"),
                       h("th", { class: "num" }, "cost"), h("th", null, "result"))),
    h("tbody", null, recent.map((a) =>
      h("tr", { dataset: { testid: "recent-row" } },
        h("td", { class: "time" }, a.timestamp.slice(11, 19)),
        h("td", { class: "wrap" }, a.model),
        h("td", { class: "method" }, a.api_method),
        h("td", { class: "num" }, num(a.tokens_used) + (a.estimated ? "~" : "")),
        h("td", { class: "num" }, a.cost_usd === null ? "?" : usd(a.cost_usd)),
        h("td", { class: a.success ? null : "err" },
          a.success ? "ok" : String(a.status_code || "error"))))));
}

// ---- What the full layout draws besides ---------------------------------------------------

function policyNote(data) {
  const p = data.policy || {};
  const where = p.source === "store"
    ? `stored policy ${p.key === "*" ? "(the default)" : p.key} · version ${p.version}`
    : `the app's own policy ${p.key === "*" ? "(its default)" : p.key || ""}`;
  const marks = (data.alert_thresholds || []).length
    ? ` · alerts at ${data.alert_thresholds.map((t) => t + "%").join(", ")}` : "";
  return `In force: ${where}${marks}`;
}

// Days as the server counts them (the policy's time zone): 30 calendar days from `since`.
function spendChart(history) {
  const days = [];
  const first = Date.parse(history.since + "T00:00:00Z");
  for (let i = 0; i < 30; i++) days.push(new Date(first + i * 86400000).toISOString().slice(0, 10));
  const costs = days.map((d) => (history.rows[d] || { charged_usd: 0 }).charged_usd);
  const top = Math.max(1e-12, ...costs);
  const w = 1000 / days.length;
  const bars = costs.map((c, i) => {
    const height = Math.round(130 * c / top);
    return svg("rect", { x: (i * w + 2).toFixed(1), y: 140 - height, width: (w - 4).toFixed(1),
                         height, fill: "#0969da" },
               svg("title", null, `${days[i]}: ${usd(c)}`));
  });
  return [svg("svg", { viewBox: "0 0 1000 145", preserveAspectRatio: "none", "data-testid": "chart" },
              ...bars, svg("line", { x1: 0, y1: 140, x2: 1000, y2: 140, stroke: "#d0d7de" })),
          axis(days[0], `${days[29]} · total ${usd(history.total_cost_usd)}`)];
}

// The month so far, what it is projected to reach and the budget: spent (solid) up to now,
// projected (dashed) from now to the month's end, and the budget (a red line).
function budgetChart(month) {
  const start = Date.parse(month.start), end = Date.parse(month.end);
  const now = Math.min(end, Math.max(start, Date.now()));
  const top = Math.max(1e-9, month.projected_usd, month.spent_usd, month.budget_usd || 0) * 1.1;
  const x = (t) => (1000 * (t - start) / (end - start)).toFixed(1);
  const y = (value) => (140 - 130 * value / top).toFixed(1);
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
  return [svg("svg", { viewBox: "0 0 1000 145", preserveAspectRatio: "none" }, ...parts),
          axis(month.start.slice(0, 10), month.end.slice(0, 10))];
}

function budgetNote(month, method) {
  const out = month.projected_exhaustion
    ? ` · runs out ${month.projected_exhaustion.slice(0, 16).replace("T", " ")} UTC` : "";
  return `spent ${usd(month.spent_usd)} · projected ${usd(month.projected_usd)}` +
    (month.budget_usd !== null ? ` of ${usd(month.budget_usd)}${out}` : " (no budget)") +
    ` · at ${usd(month.rate_usd_per_day)} a day (${method})`;
}

function section(title, wide, ...children) {
  return h("section", { class: wide ? "wide" : null }, h("h2", null, title), ...children);
}

class QuotaBudget extends HTMLElement {
  static get observedAttributes() {
    return ["workspace", "token", "layout", "base-url", "signin-hint"];
  }

  connectedCallback() {
    if (!this.shadowRoot) {
      const root = this.attachShadow({ mode: "open" });
      if (!sheet) {
        sheet = new CSSStyleSheet();
        sheet.replaceSync(CSS);
      }
      root.adoptedStyleSheets = [sheet];
      root.append(h("div", { class: "muted" }, "loading…"));
    }
    this._schedule();
  }

  disconnectedCallback() { this._stop(); }

  attributeChangedCallback() { if (this.isConnected) this._schedule(); }

  get full() { return this.getAttribute("layout") === "full"; }

  // Attribute changes and the connection come in bursts (an upgrade sets each attribute):
  // one start for all of them.
  _schedule() {
    if (this._scheduled) return;
    this._scheduled = true;
    queueMicrotask(() => {
      this._scheduled = false;
      if (this.isConnected) this._start();
    });
  }

  _stop() {
    if (this.monitor) this.monitor.stop();
    this.monitor = null;
    clearTimeout(this._chartTimer);
  }

  _start() {
    this._stop();
    const workspace = this.getAttribute("workspace");
    this._thresholds = DEFAULT_THRESHOLDS;
    this._chartShown = false;
    this._lastBudget = "";
    this._shownAlerts = new Set();
    this._state = "connecting";
    if (this.full) this._skeleton(workspace);
    if (!workspace) return;
    const options = { workspaceId: workspace, token: this.getAttribute("token") || null };
    if (this.getAttribute("base-url")) options.baseUrl = this.getAttribute("base-url");
    // The dashboard reads nothing before the socket lets its token in: a refused token makes
    // no failed request (the socket's close says why), and the socket's first update is the
    // status anyway.
    if (this.full) options.initialRefresh = false;
    const monitor = this.monitor = new QuotaMonitor(options);
    monitor.addEventListener("update", (event) => this.render(event.detail));
    monitor.addEventListener("error", (event) => this._error(String(event.detail.message)));
    if (this.full) {
      monitor.addEventListener("connection", (event) => this._connection(event.detail));
      monitor.addEventListener("alert", (event) => this._addAlert(event.detail));
    }
    monitor.start();
    if (this.full) this._offerPicker(monitor, workspace);
  }

  render(data) {
    if (data.thresholds && data.thresholds.warning) this._thresholds = data.thresholds;
    if (this.full) this._renderFull(data);
    else this._renderCompact(data);
  }

  _renderCompact(data) {
    const limits = limitsOf(data);
    const budget = limits.pop();  // the month's, first: what a sidebar is for
    const box = h("div", { dataset: { testid: "quota-budget",
                                      rpm: String(data.requests_per_minute.current) } },
      h("div", { class: `status ${data.status}`, dataset: { testid: "status" } }, statusText(data)),
      gauge(budget, data, this._thresholds),
      h("h3", null, "limits"), limits.map((limit) => gauge(limit, data, this._thresholds)),
      data.enhanced_tracking ? [
        h("h3", null, "models"), h("div", { class: "bars" }, modelRows(data, 5)),
        h("h3", null, "methods"), methodsTable(data, 5),
        h("h3", null, "recent"), recentTable(data, 5),
      ] : null);
    this.shadowRoot.replaceChildren(box);
  }

  // ---- layout="full" ----------------------------------------------------------------------

  _skeleton(workspace) {
    const n = this._nodes = {
      workspace: h("span", { id: "workspace" }, workspace || "all workspaces"),
      status: h("span", { id: "status", class: "badge", dataset: { testid: "status" } }, "…"),
      connection: h("span", { id: "connection", dataset: { testid: "connection" } },
                    workspace ? "connecting…" : ""),
      gauges: h("div", { id: "gauges", dataset: { testid: "gauges" } }),
      policy: h("p", { class: "note", dataset: { testid: "policy" } }),
      models: h("div", { id: "models", class: "bars" }),
      methods: h("div", { id: "methods" }),
      alerts: h("ul", { id: "alerts", class: "empty" }, h("li", null, "none yet")),
      chart: h("div", { id: "chart", class: "chart" }),
      budget: h("div", { id: "budget-chart", class: "chart", dataset: { testid: "budget-chart" } }),
      budgetNote: h("p", { class: "note", dataset: { testid: "budget-note" } }),
      recent: h("div", { id: "recent" }),
    };
    n.status.hidden = !workspace;
    const top = h("header", { class: "top", part: "header" },
      h("h1", null, h("slot", { name: "title" }), n.workspace), n.status, n.connection);
    const main = workspace ? h("main", { part: "main" },
      section("Limits", false, n.gauges, n.policy),
      section("Models this month", false, n.models),
      section("API methods this month", false, n.methods),
      section("Alerts", false, n.alerts),
      section("Spend per day (30 days)", true, n.chart),
      section("Budget this month", true, n.budget, n.budgetNote),
      section("Recent activity", true, n.recent)) : null;
    this.shadowRoot.replaceChildren(...[top, main].filter(Boolean));
  }

  _renderFull(data) {
    const n = this._nodes;
    if (this.monitor && this.monitor.connected) this._setConnection(true, "live");
    n.policy.textContent = policyNote(data);
    if (data.forecast && data.forecast.budgets.month) {
      const month = data.forecast.budgets.month;
      const key = JSON.stringify(month);
      if (key !== this._lastBudget) {  // unchanged: no redraw on every update
        this._lastBudget = key;
        n.budget.replaceChildren(...budgetChart(month));
        n.budgetNote.textContent = budgetNote(month, data.forecast.method);
      }
    }
    n.status.textContent = statusText(data);
    n.status.className = "badge " + data.status;
    n.gauges.replaceChildren(...limitsOf(data).map((limit) =>
      gauge(limit, data, this._thresholds)));
    n.models.replaceChildren(...modelRows(data));
    n.methods.replaceChildren(methodsTable(data));
    n.recent.replaceChildren(recentTable(data));
    // The chart and the alert history once the status could be read (no request a refused
    // token would fail), then the chart at most once a second as updates come.
    clearTimeout(this._chartTimer);
    if (this._chartShown) this._chartTimer = setTimeout(() => this._loadChart(), 1000);
    else { this._chartShown = true; this._loadChart(); this._loadAlerts(); }
  }

  async _loadChart() {
    const monitor = this.monitor;
    if (!monitor) return;
    try {
      const history = await monitor.history({ since: "29d", by: "day" });
      if (monitor === this.monitor) this._nodes.chart.replaceChildren(...spendChart(history));
    } catch (error) {
      if (monitor === this.monitor) {
        this._nodes.chart.replaceChildren(h("p", { class: "empty" }, String(error.message)));
      }
    }
  }

  async _loadAlerts() {
    const monitor = this.monitor;
    try {
      const { alerts } = await monitor.alerts({ n: 20 });
      if (monitor !== this.monitor) return;
      for (const alert of alerts) this._addAlert(alert, { older: true });  // newest first
    } catch (error) { /* the live alerts still come */ }
  }

  _addAlert(alert, { older = false } = {}) {
    const id = `${alert.dedupe_key}|${alert.at}`;
    if (this._shownAlerts.has(id)) return;  // kept in the history and pushed live: shown once
    this._shownAlerts.add(id);
    const list = this._nodes.alerts;
    if (list.classList.contains("empty")) { list.classList.remove("empty"); list.replaceChildren(); }
    const item = h("li", { class: alert.kind, dataset: { testid: "alert" } },
                   `${alert.at.slice(0, 10)} ${alert.at.slice(11, 19)} ${alert.kind}: ${alert.message}`);
    if (older) list.append(item); else list.prepend(item);
    while (list.children.length > 20) list.lastChild.remove();
  }

  _setConnection(up, text) {
    const node = this._nodes.connection;
    node.textContent = text;
    node.className = up ? "" : "down";
    node.dataset.connected = up ? "yes" : "no";
  }

  _connection({ state, code, reason, retryIn }) {
    this._state = state;
    const workspace = this.getAttribute("workspace");
    if (state === "live") this._setConnection(true, "live");
    else if (state === "refused") {
      const hint = this.getAttribute("signin-hint");
      this._setConnection(false, code === 4403 ? `this token may not read ${workspace}`
        : hint ? `not signed in (${hint})` : "not signed in: a valid token is required");
    } else if (state === "busy") this._setConnection(false, `${reason}: close one; retrying in 30 s`);
    else this._setConnection(false, `disconnected, reconnecting in ${(retryIn / 1000).toFixed(1)} s`);
  }

  _error(message) {
    if (!this.full) {
      this.shadowRoot.replaceChildren(h("div", { class: "muted" }, message));
      return;
    }
    if (this.monitor && this.monitor.connected) {  // the server's quota_error: the store is down
      const node = this._nodes.connection;
      node.textContent = "live, but " + message;
      node.className = "down";
    } else if (this._state === "connecting") {  // before the socket said anything
      this._setConnection(false, message);
    }
  }

  // A token that sees several workspaces (an admin's) gets a picker in the header.
  async _offerPicker(monitor, workspace) {
    let workspaces;
    try { workspaces = await monitor.workspaces(); } catch (error) { return; }  // its own token
    if (monitor !== this.monitor || workspaces.length < 2) return;
    const picker = h("select", { id: "switch", "aria-label": "workspace",
                                 dataset: { testid: "workspace-picker" } },
      workspaces.map((w) => {
        const option = h("option", { value: w }, w);
        if (w === workspace) option.selected = true;
        return option;
      }));
    picker.addEventListener("change", () => {
      const event = new CustomEvent("workspace-change", {
        detail: { workspace: picker.value }, cancelable: true, bubbles: true, composed: true });
      if (this.dispatchEvent(event)) this.setAttribute("workspace", picker.value);
    });
    this._nodes.workspace.replaceChildren(picker);
  }
}

if (!customElements.get("quota-budget")) customElements.define("quota-budget", QuotaBudget);
export { QuotaBudget };
