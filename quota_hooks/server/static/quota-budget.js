// <quota-budget workspace="acme" token="..."> : a workspace's budget, limits, models, methods
// and recent calls, live, sized for a sidebar. A custom element with a shadow root: no
// framework, no inline script or style (its styles are a constructed style sheet), text
// only (no markup from data). Load it as a module:
//   <script type="module" src="/api/quota/static/quota-budget.js"></script>
"use strict";

import { QuotaMonitor } from "./quota-monitor.js";

const CSS = `
:host { display: block; font: 13px/1.4 system-ui, sans-serif; color: #1f2328;
        border: 1px solid #d0d7de; border-radius: 8px; padding: 10px; background: #fff;
        max-width: 360px; }
h3 { font-size: 12px; text-transform: uppercase; color: #6e7781; margin: 10px 0 4px; }
.status { font-weight: 600; } .status.warning { color: #9a6700; }
.status.rate_limited, .status.quota_exceeded { color: #cf222e; }
.row { display: flex; justify-content: space-between; gap: 8px; }
.row span:first-child { overflow-wrap: anywhere; }
.track { height: 6px; background: #eaeef2; border-radius: 3px; overflow: hidden; margin: 2px 0 6px; }
.fill { height: 100%; background: #1a7f37; } .fill.high { background: #cf222e; }
.muted { color: #6e7781; }
`;
const LIMITS = [["requests_per_minute", "requests / min"], ["requests_per_day", "requests / day"],
                ["tokens_per_minute", "tokens / min"], ["tokens_per_day", "tokens / day"]];
const usd = (v) => v === null || v === undefined ? "unpriced"
  : "$" + (v >= 1 || v === 0 ? v.toFixed(2) : v.toFixed(v >= 0.01 ? 4 : 6));
const num = (v) => Number(v).toLocaleString("en-US");

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function bar(percentage) {
  const fill = el("div", percentage >= 80 ? "fill high" : "fill");
  fill.style.width = `${Math.min(100, percentage)}%`;  // CSSOM: allowed by a strict CSP
  return el("div", "track", fill);
}

class QuotaBudget extends HTMLElement {
  static get observedAttributes() { return ["workspace", "token"]; }

  connectedCallback() {
    if (!this.shadowRoot) {
      const root = this.attachShadow({ mode: "open" });
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      root.adoptedStyleSheets = [sheet];
      root.append(el("div", "muted", "loading…"));
    }
    this._schedule();
  }

  disconnectedCallback() { this._stop(); }

  attributeChangedCallback() { if (this.isConnected) this._schedule(); }

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

  _stop() { if (this.monitor) this.monitor.stop(); this.monitor = null; }

  _start() {
    this._stop();
    const workspace = this.getAttribute("workspace");
    if (!workspace) return;
    this.monitor = new QuotaMonitor({ workspaceId: workspace,
                                      token: this.getAttribute("token") || null });
    this.monitor.addEventListener("update", (event) => this.render(event.detail));
    this.monitor.addEventListener("error", (event) => {
      this.shadowRoot.replaceChildren(el("div", "muted", String(event.detail.message)));
    });
    this.monitor.start();
  }

  render(data) {
    const budget = data.monthly_budget_usd;
    const parts = [
      el("div", `status ${data.status}`, data.status.replace("_", " ")),
      el("h3", null, "budget this month"),
      el("div", "row", el("span", null, usd(budget.current)),
         el("span", "muted", budget.limit === null ? "no limit" : `of ${usd(budget.limit)}`)),
      bar(budget.percentage),
      el("h3", null, "limits"),
    ];
    for (const [key, label] of LIMITS) {
      const u = data[key];
      parts.push(el("div", "row", el("span", null, label),
                    el("span", null, `${num(u.current)}${u.limit === null ? "" : " / " + num(u.limit)}`)),
                 bar(u.percentage));
    }
    const extra = data.enhanced_tracking;
    if (extra) {
      const models = Object.entries(extra.models_breakdown).slice(0, 5);
      parts.push(el("h3", null, "models"), ...models.map(([name, m]) =>
        el("div", "row", el("span", null, name), el("span", null, usd(m.cost_usd)))));
      const methods = Object.entries(extra.api_methods_breakdown).slice(0, 5);
      parts.push(el("h3", null, "methods"), ...methods.map(([name, m]) =>
        el("div", "row", el("span", null, name), el("span", null, num(m.request_count)))));
      parts.push(el("h3", null, "recent"), ...extra.recent_activity.slice(0, 5).map((a) =>
        el("div", "row", el("span", null, `${a.timestamp.slice(11, 19)} ${a.model}`),
           el("span", a.success ? null : "muted", a.success ? usd(a.cost_usd) : "error"))));
    }
    const box = el("div", null, ...parts);
    box.dataset.testid = "quota-budget";
    box.dataset.rpm = String(data.requests_per_minute.current);
    this.shadowRoot.replaceChildren(box);
  }
}

if (!customElements.get("quota-budget")) customElements.define("quota-budget", QuotaBudget);
export { QuotaBudget };
