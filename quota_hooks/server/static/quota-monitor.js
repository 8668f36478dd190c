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
//   monitor.start();   // ... monitor.stop();
"use strict";

const ROOT = new URL("../../../", import.meta.url);  // this file is <root>api/quota/static/

export class QuotaMonitor extends EventTarget {
  constructor({ workspaceId, token = null, baseUrl = ROOT, enableWebSocket = true,
                autoRefresh = true, refreshInterval = 30000 } = {}) {
    super();
    if (typeof workspaceId !== "string" || !workspaceId) {
      throw new TypeError("QuotaMonitor needs a workspaceId");
    }
    this.workspaceId = workspaceId;
    this.token = token;
    this.root = new URL(baseUrl, location.href);
    this.enableWebSocket = enableWebSocket;
    this.autoRefresh = autoRefresh;
    this.refreshInterval = Math.max(1000, Number(refreshInterval) || 30000);
    this.status = null;
    this.connected = false;
    this._socket = null;
    this._timer = null;
    this._retry = 500;
    this._stopped = true;
  }

  start() {
    if (!this._stopped) return this;
    this._stopped = false;
    this.refresh();
    if (this.enableWebSocket) this._connect();
    else this._poll();
    return this;
  }

  stop() {
    this._stopped = true;
    clearTimeout(this._timer);
    if (this._socket) this._socket.close(1000);
    this._socket = null;
  }

  async refresh() {
    const path = `api/quota/status/${encodeURIComponent(this.workspaceId)}?enhanced=true`;
    try {
      const response = await fetch(new URL(path, this.root), {
        headers: this.token ? { Authorization: "Bearer " + this.token } : {} });
      if (!response.ok) throw new Error(`status: HTTP ${response.status}`);
      this._update(await response.json());
    } catch (error) {
      this._emit("error", error);
    }
  }

  _update(status) {
    this.status = status;
    this._emit("update", status);
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _poll() {  // while there is no socket: refreshInterval, if autoRefresh
    clearTimeout(this._timer);
    if (this._stopped || !this.autoRefresh) return;
    this._timer = setTimeout(() => { this.refresh(); this._poll(); }, this.refreshInterval);
  }

  _connect() {
    if (this._stopped) return;
    const url = new URL(`api/quota/ws/${encodeURIComponent(this.workspaceId)}`, this.root);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url, this.token ? ["quota-hooks", "bearer." + this.token]
                                                  : ["quota-hooks"]);
    this._socket = socket;
    socket.addEventListener("open", () => {
      this._retry = 500;
      this.connected = true;
      clearTimeout(this._timer);
    });
    socket.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (error) { return; }
      if (message.type === "quota_update") this._update(message.data);
      else if (message.type === "quota_alert") this._emit("alert", message.data);
      else if (message.type === "quota_error") this._emit("error", new Error(message.data));
    });
    socket.addEventListener("close", (event) => {
      this.connected = false;
      if (this._stopped || this._socket !== socket) return;
      if (event.code === 4401 || event.code === 4403) {  // refused: retrying will not help
        this._emit("error", new Error(event.reason || `refused (${event.code})`));
        return;
      }
      this._poll();  // the socket is down: refresh on a timer meanwhile
      const wait = this._retry;
      this._retry = Math.min(this._retry * 2, 10000);
      setTimeout(() => this._connect(), wait);
    });
  }
}
