// useQuotaMonitor: the seed guide's React hook, over QuotaMonitor. It takes React from the
// page (the `React` option, else the global `React` of a UMD build): no bundler.
//
//   import { useQuotaMonitor } from "/api/quota/static/use-quota-monitor.js";
//   const { quotaStatus, isLoading, error } = useQuotaMonitor({ workspaceId: "acme", token,
//     enableWebSocket: true, showNotifications: true, autoRefresh: true, refreshInterval: 30000 });
"use strict";

import { QuotaMonitor } from "./quota-monitor.js";

export function useQuotaMonitor({ workspaceId, token = null, enableWebSocket = true,
                                  showNotifications = false, autoRefresh = true,
                                  refreshInterval = 30000, React = globalThis.React } = {}) {
  if (!React) throw new Error("useQuotaMonitor needs React: pass { React } or load it first");
  const [quotaStatus, setStatus] = React.useState(null);
  const [isLoading, setLoading] = React.useState(true);
  const [error, setError] = React.useState(null);
  React.useEffect(() => {
    setStatus(null);  // another workspace (or token): nothing of the last one is shown
    setLoading(true);
    setError(null);
    const monitor = new QuotaMonitor({ workspaceId, token, enableWebSocket, autoRefresh,
                                       refreshInterval });
    monitor.addEventListener("update", (event) => {
      setStatus(event.detail);
      setLoading(false);
      setError(null);
    });
    monitor.addEventListener("error", (event) => { setError(event.detail); setLoading(false); });
    monitor.addEventListener("alert", (event) => {
      const alert = event.detail;
      if (showNotifications && typeof Notification !== "undefined"
          && Notification.permission === "granted") {
        new Notification(`quota-hooks: ${alert.kind}`, { body: alert.message });
      }
    });
    monitor.start();
    return () => monitor.stop();
  }, [workspaceId, token, enableWebSocket, showNotifications, autoRefresh, refreshInterval]);
  return { quotaStatus, isLoading, error };
}
