// The quota-hooks dashboard page: <quota-budget layout="full"> (quota-budget.js draws all of
// it) and what is the page's own: the workspace and token from the URL, the workspace list
// of the root page, and the picker's navigation. An ES module served as a file of its own: the
// page's Content-Security-Policy allows no inline script, no eval, no inline style or handler,
// and (Trusted Types) no HTML sink, so every node is built with createElement, never markup.
import "./quota-budget.js";
import { h } from "./quota-ui.js";

// Token: #token=... in the URL (kept in this tab's sessionStorage), for servers with tokens.
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("token")) sessionStorage.setItem("quota-hooks-token", params.get("token"));
const token = sessionStorage.getItem("quota-hooks-token");
// Every URL is relative to the router's root, wherever it is mounted: this script is served
// at <root>quota-hooks/static/dashboard.js, so the root is two levels up from it.
const root = new URL("../../", import.meta.url);
const at = (path) => new URL(path, root);
const segment = encodeURIComponent;  // a workspace id as one path segment
// The page is <root> (the workspace picker) or <root>dashboard/<workspace id>.
const rest = location.pathname.startsWith(root.pathname)
  ? location.pathname.slice(root.pathname.length) : "";
const match = rest.match(/^dashboard\/(.+?)\/?$/);
const workspace = match ? decodeURIComponent(match[1]) : null;
const budget = document.getElementById("budget");
const dashboard = (w) => at(`dashboard/${segment(w)}`).href + location.hash;

// The element reads the API below the router's root, not below where this file is served.
budget.setAttribute("base-url", root.href);
if (token) budget.setAttribute("token", token);
// The picker (an admin's) moves to the workspace's own page: a URL to share or reload.
budget.addEventListener("workspace-change", (event) => {
  event.preventDefault();
  location.assign(dashboard(event.detail.workspace));
});

async function pickWorkspace() {
  const list = document.getElementById("workspaces");
  document.getElementById("picker").hidden = false;
  try {
    const response = await fetch(at("api/quota/workspaces"),
                                 { headers: token ? { Authorization: "Bearer " + token } : {} });
    if (!response.ok) throw new Error("api/quota/workspaces: HTTP " + response.status);
    const { workspaces } = await response.json();
    list.replaceChildren(...(workspaces.length
      ? workspaces.map((w) => h("a", { href: dashboard(w) }, w)) : ["no usage recorded yet"]));
    list.classList.toggle("empty", !workspaces.length);
  } catch (error) {
    list.replaceChildren(error.message);
    list.classList.add("err");
  }
}

if (workspace === null) {
  pickWorkspace();
} else {
  document.title = "quota-hooks · " + workspace;
  budget.setAttribute("workspace", workspace);
}
