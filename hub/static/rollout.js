// Live progress of one rollout: refreshes the state, reason, stage table and failures from the API
// with the session cookie. Every value is set with textContent, never innerHTML.
(function () {
  "use strict";
  const REFRESH_MS = 3000;
  const root = document.getElementById("rollout");
  const status = document.getElementById("refresh-status");
  const id = root.dataset.rollout;

  function when(iso) {
    if (!iso) return "never";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined || text === "" ? "—" : String(text);
    return td;
  }
  function agentCell(agentId) {
    const td = document.createElement("td");
    const a = document.createElement("a");
    a.href = "/agents/" + encodeURIComponent(agentId);
    a.textContent = agentId;
    td.appendChild(a);
    return td;
  }
  function groupRow(g, current) {
    const tr = document.createElement("tr");
    if (g.stage === current) tr.className = "current";
    [g.stage, g.percent + "%", g.size].forEach((v) => tr.appendChild(cell(v)));
    const td = document.createElement("td");
    const bar = document.createElement("progress");
    bar.max = g.size || 1;
    bar.value = g.succeeded;
    td.appendChild(bar);
    tr.appendChild(td);
    [g.succeeded, g.in_progress, g.failed, g.pending, g.rolled_back].forEach((v) => tr.appendChild(cell(v)));
    return tr;
  }
  function failureRow(f) {
    const tr = document.createElement("tr");
    tr.appendChild(agentCell(f.agent_id));
    [f.stage, f.state, f.detail].forEach((v) => tr.appendChild(cell(v)));
    return tr;
  }
  async function refresh() {
    try {
      const resp = await fetch("/api/v1/rollouts/" + encodeURIComponent(id),
                               { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (resp.status === 401) { window.location.href = "/login?next=" + encodeURIComponent(location.pathname); return; }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const r = await resp.json();
      const state = document.getElementById("rollout-state");
      state.textContent = r.state;
      state.className = "state rstate-" + String(r.state).replace(/[^a-z_]/g, "");
      document.getElementById("rollout-reason").textContent = r.reason;
      document.querySelector("#groups tbody").replaceChildren(...r.groups.map((g) => groupRow(g, r.current_stage)));
      const failures = document.querySelector("#failures tbody");
      if (r.failures.length) {
        failures.replaceChildren(...r.failures.map(failureRow));
      } else {
        const tr = document.createElement("tr");
        tr.className = "empty";
        const td = cell("No failures.");
        td.colSpan = 4;
        tr.appendChild(td);
        failures.replaceChildren(tr);
      }
      document.getElementById("failures-count").textContent = "(" + r.failures.length + ")";
      status.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
    } catch (err) {
      status.textContent = "Refresh failed: " + err.message;
    }
  }
  document.querySelectorAll("td.time[data-time]").forEach((td) => { td.textContent = when(td.dataset.time); });
  setInterval(refresh, REFRESH_MS);
})();
