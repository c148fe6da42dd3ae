// Refreshes the dashboard tables from the API with the session cookie. Every value is set with
// textContent, never innerHTML, so agent-supplied strings cannot inject markup.
(function () {
  "use strict";
  const REFRESH_MS = 5000;
  const status = document.getElementById("refresh-status");
  const agentsTable = document.getElementById("agents");
  // outbox depth above which the fleet table flags a backlog (set by the page, index.html)
  const BACKLOG_ROWS = agentsTable ? Number(agentsTable.dataset.backlogRows) || 1000 : 1000;

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined || text === "" ? "—" : String(text);
    if (cls) td.className = cls;
    return td;
  }
  function when(iso) {
    if (!iso) return "never";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  function replaceRows(tbody, rows, empty, cols) {
    tbody.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = cell(empty);
      td.colSpan = cols;
      tr.appendChild(td);
      tbody.appendChild(tr);
      return;
    }
    rows.forEach((tr) => tbody.appendChild(tr));
  }
  function backlogCell(a) {
    const depth = a.vitals ? a.vitals.outbox_depth : null;
    const known = typeof depth === "number";
    const td = cell(known ? depth.toLocaleString("en-US") : null, "num backlog");
    if (known && depth > BACKLOG_ROWS) {
      const flag = document.createElement("span");
      flag.className = "flag";
      flag.textContent = "backlog";
      td.append(" ", flag);
    }
    return td;
  }
  function agentRow(a) {
    const tr = document.createElement("tr");
    const id = cell(null);
    const link = document.createElement("a");
    link.href = "/agents/" + encodeURIComponent(a.agent_id);
    link.textContent = a.agent_id;
    id.replaceChildren(link);
    tr.appendChild(id);
    tr.appendChild(cell(a.lab));
    const st = cell(null);
    const badge = document.createElement("span");
    badge.className = "state state-" + String(a.state).replace(/[^a-z]/g, "");
    badge.textContent = a.state;
    st.replaceChildren(badge);
    tr.appendChild(st);
    tr.appendChild(cell(a.model_name ? a.model_name + " " + (a.model_version || "") : ""));
    tr.appendChild(cell(a.desired_model_name ? a.desired_model_name + " " + a.desired_model_version : ""));
    tr.appendChild(cell(a.device));
    tr.appendChild(backlogCell(a));
    tr.appendChild(cell(when(a.last_seen), "time"));
    return tr;
  }
  // a field's cells per label, e.g. "ALL 3 · normal 41" (as index.html renders it)
  function cellCounts(r) {
    if (r.input_kind !== "field" || !r.cell_counts) return null;
    const counts = Object.entries(r.cell_counts || {});
    if (!counts.reduce((total, [, n]) => total + n, 0)) return "no cells";
    return counts.map(([label, n]) => label + " " + n).join(" · ");
  }
  function resultRow(r) {
    const tr = document.createElement("tr");
    if (r.low_confidence) tr.className = "low";
    tr.appendChild(cell(when(r.captured_at), "time"));
    tr.appendChild(cell(r.agent_id));
    const image = cell(null);
    const link = document.createElement("a");
    link.href = "/results/" + encodeURIComponent(r.result_id);
    link.className = "result-link";
    link.textContent = r.image_name;
    image.replaceChildren(link);
    tr.appendChild(image);
    const lab = cell(null);
    const span = document.createElement("span");
    span.className = "label label-" + String(r.label).toLowerCase().replace(/[^a-z0-9_-]/g, "");
    span.textContent = r.label;
    lab.replaceChildren(span);
    if (r.unfamiliar) {
      const badge = document.createElement("span");
      badge.className = "badge unfamiliar";
      badge.title = "unlike the images the model was trained on";
      badge.textContent = "unfamiliar";
      lab.append(" ", badge);
    }
    tr.appendChild(lab);
    const conf = cell((r.confidence * 100).toFixed(1) + "%");
    if (r.low_confidence) {
      const flag = document.createElement("span");
      flag.className = "flag";
      flag.textContent = "low confidence";
      conf.append(" ", flag);
    }
    tr.appendChild(conf);
    tr.appendChild(cell(cellCounts(r), "cells-count"));
    tr.appendChild(cell(r.model_version));
    return tr;
  }
  async function getJson(url) {
    const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (resp.status === 401) { window.location.href = "/login?next=/"; throw new Error("signed out"); }
    if (!resp.ok) throw new Error(url + " -> " + resp.status);
    return resp.json();
  }
  async function refresh() {
    try {
      const [agents, results] = await Promise.all([
        getJson("/api/v1/agents"),
        getJson("/api/v1/classifications?per_page=50&count=false"),
      ]);
      replaceRows(document.querySelector("#agents tbody"), agents.items.map(agentRow),
                  "No agents have reported yet.", 8);
      document.getElementById("agents-count").textContent = "(" + agents.items.length + ")";
      replaceRows(document.querySelector("#results tbody"), results.items.map(resultRow),
                  "No classifications yet.", 7);
      status.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
    } catch (err) {
      status.textContent = "Refresh failed: " + err.message;
    }
  }
  document.querySelectorAll(".time[data-time]").forEach((el) => { el.textContent = when(el.dataset.time); });
  // the fleet page refreshes its tables; other pages only use the time formatting above
  if (document.getElementById("agents") && document.getElementById("results")) setInterval(refresh, REFRESH_MS);
})();
