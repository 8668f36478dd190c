// QuotaMonitor: a workspace's status over REST and the WebSocket, for any page. An ES module
// with no dependency and no build step, served by the router at
// <root>api/quota/static/quota-monitor.js. The token goes in the Authorization header and
// the WebSocket subprotocol, never in a URL.
//
//   import { QuotaMonitor } from "/api/quota/static/quota-monitor.js";
//   const monitor = new QuotaMonitor({ workspaceId: "acme", token });
//   monitor.addEventListener("update", (e) => render(e.detail));   // the status JSON
//   monitor.addEventListener("alert", (e) => notify(e.detail));    // an Alert
//   monitor.addEventListener("error", (e) => show(e.detail));      // an Error
//   monitor.addEventListener("connection", (e) => e.detail.state); // live, down, busy, refused
//   monitor.start();   // ... monitor.stop();
//   await monitor.history({ since: "29d", by: "day" });  await monitor.alerts({ n: 20 });
//   await monitor.workspaces();  // the ids this token may read
"use strict";

const ROOT = new URL("../../../", import.meta.url);  // this file is <root>api/quota/static/
// A token the WebSocket subprotocol can carry (RFC 6455: an HTTP token). Another token (a
// base64 one, say) is sent in the Authorization header only: the monitor then polls.
const SUBPROTOCOL_SAFE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const segment = encodeURIComponent;

function refusal(status, workspaceId) {
  if (status === 401) return "not signed in: a valid token is required";
  if (status === 403) return `this token may not read workspace ${workspaceId}`;
  return `the status could not be read: HTTP ${status}`;
}

export class QuotaMonitor extends EventTarget {
  constructor({ workspaceId, token = null, baseUrl = ROOT, enableWebSocket = true,
                autoRefresh = true, refreshInterval = 30000, initialRefresh = true } = {}) {
    super();
    if (typeof workspaceId !== "string" || !workspaceId) {
      throw new TypeError("QuotaMonitor needs a workspaceId");
    }
    if (workspaceId === "." || workspaceId === "..") {  // a URL cannot hold it as a segment
      throw new TypeError(`a workspace id of ${JSON.stringify(workspaceId)} cannot be read `
                          + "from a browser (a URL folds it away)");
    }
    this.workspaceId = workspaceId;
    this.token = token;
    const root = new URL(baseUrl, location.href);
    if (!root.pathname.endsWith("/")) root.pathname += "/";
    this.root = root;
    this.enableWebSocket = enableWebSocket;
    this.autoRefresh = autoRefresh;
    // false: no REST read at start() when the WebSocket is used (its first update is the
    // status); one still comes if the socket closes before it delivered anything.
    this.initialRefresh = initialRefresh;
    this.refreshInterval = Math.max(1000, Number(refreshInterval) || 30000);
    this.status = null;
    this.connected = false;
    this._socket = null;
    this._timer = null;     // the poll while the socket is down
    this._again = null;     // the next connection attempt
    this._retry = 500;
    this._stopped = true;
    this._run = 0;          // each start() is a run: what an older run began is ignored
  }

  start() {
    if (!this._stopped) return this;
    this._stopped = false;
    this._run += 1;
    const socketable = !this.token || SUBPROTOCOL_SAFE.test(this.token);
    const socket = this.enableWebSocket && socketable;
    if (this.initialRefresh || !socket) this.refresh();
    if (socket) this._connect();
    else {
      if (this.enableWebSocket) {
        this._emit("error", new Error("this token cannot travel in a WebSocket subprotocol; "
                                      + "refreshing every refreshInterval instead"));
      }
      this._poll();
    }
    return this;
  }

  stop() {
    this._stopped = true;
    this._run += 1;
    clearTimeout(this._timer);
    clearTimeout(this._again);
    this._timer = this._again = null;
    if (this._socket) this._socket.close(1000);
    this._socket = null;
  }

  async refresh() {
    const run = this._run;
    try {
      const status = await this._get(`api/quota/status/${segment(this.workspaceId)}`,
                                     { enhanced: "true" }, run);
      if (run === this._run) this._update(status);
    } catch (error) {
      if (run === this._run) this._emit("error", error);
    }
  }

  // The workspace's usage over time (GET .../history: { since, until, by }), and the alerts
  // it raised, newest first (GET .../alerts: { n }). They reject with an Error.
  history(query = {}) {
    return this._get(`api/quota/history/${segment(this.workspaceId)}`, query);
  }

  alerts(query = {}) {
    return this._get(`api/quota/alerts/${segment(this.workspaceId)}`, query);
  }

  // The workspaces this token may read (GET /api/quota/workspaces: an admin's, all of them).
  async workspaces() {
    return (await this._get("api/quota/workspaces", {})).workspaces;
  }

  async _get(path, query, run = this._run) {
    const url = new URL(path, this.root);
    for (const [key, value] of Object.entries(query)) url.searchParams.set(key, String(value));
    const response = await fetch(url, {
      headers: this.token ? { Authorization: "Bearer " + this.token } : {} });
    if (run !== this._run) throw new Error("stopped");  // or started again, meanwhile
    if (!response.ok) throw new Error(refusal(response.status, this.workspaceId));
    return response.json();
  }

  _update(status) {
    this.status = status;
    this._emit("update", status);
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _poll() {  // while there is no socket: every refreshInterval, if autoRefresh
    if (this._stopped || !this.autoRefresh || this._timer !== null) return;
    this._timer = setTimeout(() => {
      this._timer = null;
      if (this.connected) return;
      this.refresh();
      this._poll();
    }, this.refreshInterval);
  }

  _connect() {
    this._again = null;
    if (this._stopped) return;
    const run = this._run;
    const url = new URL(`api/quota/ws/${segment(this.workspaceId)}`, this.root);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    let socket;
    try {
      socket = new WebSocket(url, this.token ? ["quota-hooks", "bearer." + this.token]
                                             : ["quota-hooks"]);
    } catch (error) {  // never the error's own text: it would show the token
      this._emit("error", new Error("the WebSocket could not be opened; refreshing instead"));
      this._poll();
      return;
    }
    this._socket = socket;
    socket.addEventListener("message", (event) => {
      if (run !== this._run) return;
      let message;
      try { message = JSON.parse(event.data); } catch (error) { return; }
      if (message.type === "quota_update") {
        if (!this.connected) this._emit("connection", { state: "live" });
        this.connected = true;
        this._retry = 500;  // a socket that delivers, not one merely opened, resets it
        this._update(message.data);
      } else if (message.type === "quota_alert") this._emit("alert", message.data);
      else if (message.type === "quota_error") this._emit("error", new Error(message.data));
    });
    socket.addEventListener("close", (event) => {
      if (this._socket === socket) { this._socket = null; this.connected = false; }
      if (run !== this._run || this._stopped) return;
      if (event.code === 4401 || event.code === 4403) {  // refused: retrying will not help
        this._emit("connection", { state: "refused", code: event.code });
        this._emit("error", new Error(refusal(event.code - 4000, this.workspaceId)));
        return;
      }
      if (this.status === null) this.refresh();  // nothing yet (initialRefresh false): now
      this._poll();  // the socket is down: refresh on a timer meanwhile
      // Over the server's cap of sockets (4429): wait 30 s. Its reason is one of the
      // server's fixed sentences (checked: nothing else of the close frame is shown).
      const busy = event.code === 4429;
      const wait = busy ? 30000 : this._retry;
      this._retry = Math.min(this._retry * 2, 10000);
      const reason = busy && /^too many open dashboards for this (token|workspace)$/
        .test(event.reason) ? event.reason : busy ? "too many open dashboards" : "";
      this._emit("connection", { state: busy ? "busy" : "down", code: event.code, reason,
                                 retryIn: wait });
      clearTimeout(this._again);
      this._again = setTimeout(() => this._connect(), wait);
    });
  }
}
