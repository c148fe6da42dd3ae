// Live training-job table: refreshes from the API with the session cookie and rebuilds the rows
// (with their CSRF-protected Cancel forms) when something changed. Every value is set with
// textContent, never innerHTML, so operator- and trainer-supplied text cannot inject markup.
(function () {
  "use strict";
  const REFRESH_MS = 3000;
  const table = document.getElementById("jobs");
  const status = document.getElementById("refresh-status");
  const csrf = table.dataset.csrf;  // empty for roles that may not cancel: no Cancel buttons then
  let shown = null;

  function when(iso) {
    if (!iso) return "never";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined || text === "" ? "—" : String(text);
    if (cls) td.className = cls;
    return td;
  }
  // the same wording as hub/training/report.py (the server-rendered rows and the CLI)
  function duration(s) {
    if (s < 90) return Math.round(s) + " s";
    if (s < 90 * 60) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function progressText(p) {
    if (!p) return "—";
    let text = String(p.phase);
    if (p.total) text += " " + Math.round((100 * p.done) / p.total) + "% (" + p.done + "/" + p.total + ")";
    if (p.eta_s !== null && p.eta_s !== undefined) text += " · ETA " + duration(p.eta_s);
    return text;
  }
  function jobRow(j) {
    const tr = document.createElement("tr");
    tr.dataset.job = j.job_id;
    const id = cell(null);
    const code = document.createElement("code");
    code.textContent = j.job_id.slice(0, 8);
    id.replaceChildren(code);
    id.title = j.job_id;
    tr.appendChild(id);

    const st = cell(null);
    const badge = document.createElement("span");
    badge.className = "state jstate-" + String(j.state).replace(/[^a-z]/g, "");
    badge.textContent = j.state;
    st.replaceChildren(badge);
    if (j.cancel_requested && j.state === "running") {
      const flag = document.createElement("span");
      flag.className = "flag";
      flag.textContent = "cancel requested";
      st.append(" ", flag);
    }
    tr.appendChild(st);

    const model = j.spec.name + " " + j.spec.version;
    const m = cell(model);
    if (j.state === "succeeded") {
      const link = document.createElement("a");
      link.href = "/models#model-" + encodeURIComponent(j.spec.name) + "-" + encodeURIComponent(j.spec.version);
      link.textContent = model;
      m.replaceChildren(link);
    }
    tr.appendChild(m);
    tr.appendChild(cell(j.spec.dataset));
    tr.appendChild(cell(j.spec.mode));

    const prog = cell(null);
    if (j.progress && j.progress.total) {
      const bar = document.createElement("progress");
      bar.max = j.progress.total;
      bar.value = j.progress.done;
      prog.replaceChildren(bar, " " + progressText(j.progress));
    } else {
      prog.textContent = progressText(j.progress);
    }
    tr.appendChild(prog);
    tr.appendChild(cell(j.worker));
    const err = document.createElement("td");
    err.className = "error";
    err.textContent = j.error || "";
    tr.appendChild(err);
    const acc = j.result && j.result.metrics ? j.result.metrics.accuracy : null;
    tr.appendChild(cell(typeof acc === "number" ? String(Number(acc.toPrecision(4))) : acc, "num"));
    tr.appendChild(cell(when(j.created_at), "time"));

    const actions = document.createElement("td");
    if (csrf && (j.state === "queued" || j.state === "running")) {
      const form = document.createElement("form");
      form.method = "post";
      form.action = "/training/" + encodeURIComponent(j.job_id) + "/cancel";
      form.className = "inline";
      const token = document.createElement("input");
      token.type = "hidden";
      token.name = "csrf_token";
      token.value = csrf;
      const button = document.createElement("button");
      button.type = "submit";
      button.className = "cancel";
      button.textContent = "Cancel";
      form.append(token, button);
      actions.appendChild(form);
    }
    tr.appendChild(actions);
    return tr;
  }
  async function refresh() {
    try {
      const resp = await fetch("/api/v1/training-jobs?limit=" + encodeURIComponent(table.dataset.limit),
                               { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (resp.status === 401) { window.location.href = "/login?next=/training"; return; }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const data = await resp.json();
      const snapshot = JSON.stringify(data.items);
      if (snapshot !== shown) {  // rebuilding only on change keeps a Cancel button steady under the pointer
        shown = snapshot;
        const tbody = table.querySelector("tbody");
        if (data.items.length) {
          tbody.replaceChildren(...data.items.map(jobRow));
        } else {
          const tr = document.createElement("tr");
          tr.className = "empty";
          const td = cell(csrf ? "No training jobs yet (queue one above, or leukonet training queue)."
                               : "No training jobs yet.");
          td.colSpan = 11;
          tr.appendChild(td);
          tbody.replaceChildren(tr);
        }
        document.getElementById("jobs-count").textContent = "(" + data.items.length + ")";
      }
      status.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
    } catch (err) {
      status.textContent = "Refresh failed: " + err.message;
    }
  }
  document.querySelectorAll("td.time[data-time]").forEach((td) => { td.textContent = when(td.dataset.time); });
  setInterval(refresh, REFRESH_MS);
})();
