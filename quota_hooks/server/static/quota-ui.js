// What <quota-budget> (both its layouts) and the dashboard page draw with: formatters and
// node builders. An ES module with no dependency. Every node is built with createElement and
// filled with text, never markup (the dashboard's CSP has Trusted Types: no HTML sink), and
// styled through the CSSOM (.style.x =), which a CSP without 'unsafe-inline' allows.
"use strict";

export const num = (v) => Number(v).toLocaleString("en-US");
export const usd = (v) => v === null || v === undefined ? "unpriced"
  : "$" + (v >= 1 || v === 0 ? v.toFixed(2) : v.toFixed(v >= 0.01 ? 4 : 6));
// What the budget counted for a row: priced cost plus the charge of its unpriced calls.
export const charged = (m) => (m.cost_usd || 0) + (m.unpriced_charge_usd || 0);
export const costOf = (m) => usd(m.cost_usd)
  + (m.unpriced_count ? ` (+${num(m.unpriced_count)} unpriced)` : "");

// The status's limits: its key, a label, and the short id of the gauge's test ids. A status
// leaves out the day and week budgets its policy does not set: those gauges are not drawn.
export const LIMITS = [["requests_per_minute", "requests / minute", "rpm"],
                       ["requests_per_day", "requests / day", "rpd"],
                       ["tokens_per_minute", "tokens / minute", "tpm"],
                       ["tokens_per_day", "tokens / day", "tpd"],
                       ["daily_budget_usd", "budget today", "budget-day"],
                       ["weekly_budget_usd", "budget this week", "budget-week"],
                       ["monthly_budget_usd", "budget this month", "budget"]];
export const limitsOf = (data) => LIMITS.filter(([key]) => data[key]);
export const DEFAULT_THRESHOLDS = { warning: 80, critical: 95 };

// h("div", { class: "row", dataset: { testid: "x" }, style: { width: "5%" } }, child, "text"):
// an element whose children are nodes or text (strings become text nodes, never markup).
export function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") Object.assign(node.style, value);  // CSSOM: allowed by the CSP
    else node.setAttribute(key, String(value));
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

// The same for SVG elements, whose attributes are all plain values.
export function svg(tag, attributes, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, String(value));
  node.append(...children);
  return node;
}

export function level(percentage, thresholds = DEFAULT_THRESHOLDS) {
  return percentage >= thresholds.critical ? "critical"
    : percentage >= thresholds.warning ? "warning" : "";
}

// A bar filled to `percentage` (coloured by the thresholds), with a mark at each threshold.
export function meter(percentage, thresholds = DEFAULT_THRESHOLDS) {
  const pct = Math.min(100, Math.max(0, percentage));
  return h("div", { class: "track" },
    h("div", { class: `fill ${level(pct, thresholds)}`.trim(), style: { width: `${pct}%` } }),
    h("div", { class: "mark", title: "warning", style: { left: `${thresholds.warning}%` } }),
    h("div", { class: "mark", title: "critical", style: { left: `${thresholds.critical}%` } }));
}

// A line of two ends under a chart (page text, not SVG text: the chart stretches).
export function axis(left, right) {
  return h("div", { class: "axis" }, h("span", null, left), h("span", null, right));
}

// Why the status is what it is, in a few words: the limit at its highest, or the provider's
// 429 (the latest call that got one).
export function why(data) {
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
