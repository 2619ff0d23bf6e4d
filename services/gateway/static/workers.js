// #/workers: the cluster's capacity (GET /api/v1/resources) and each worker's (GET
// /api/v1/workers): allocated against total CPUs and memory, state, labels, last heartbeat.

import {get} from "./api.js";
import {ago, bar, clear, h, mb} from "./util.js";

export function workersView(root, params, ctx) {
  const summary = h("div", {class: "summary", id: "cluster-summary"});
  const tbody = h("tbody", {id: "workers-body"});
  const count = h("span", {class: "muted small", id: "workers-count"});
  let gone = false;
  root.append(
    h("section", {class: "panel"},
      h("div", {class: "toolbar"}, h("h1", {}, "Cluster")),
      summary),
    h("section", {class: "panel"},
      h("div", {class: "toolbar"}, h("h2", {}, "Workers"),
        count),
      h("div", {class: "table-wrap"},
        h("table", {class: "grid", id: "workers-table"},
          h("thead", {}, h("tr", {},
            h("th", {text: "Worker"}), h("th", {text: "State"}),
            h("th", {class: "col-bar", text: "CPUs"}), h("th", {class: "col-bar", text: "Memory"}),
            h("th", {class: "col-labels", text: "Labels"}), h("th", {class: "col-host", text: "Host"}),
            h("th", {text: "Heartbeat"}))),
          tbody))));

  function meter(label, used, total, fmt) {
    const pct = total > 0 ? Math.round((used / total) * 100) : 0;
    return h("div", {class: "meter", "data-meter": label.toLowerCase()},
      h("div", {class: "meter-head"}, h("span", {class: "meter-label", text: label}),
        h("span", {class: "meter-value"}, h("b", {text: fmt(used)}), ` / ${fmt(total)}`,
          h("span", {class: "muted", text: ` · ${pct}%`}))),
      bar(used, total, label));
  }

  function renderSummary(res, workers) {
    clear(summary);
    const by = {};
    for (const w of workers) by[w.state] = (by[w.state] || 0) + 1;
    summary.append(
      meter("CPUs", res.allocated_cpus, res.total_cpus, String),
      meter("Memory", res.allocated_memory_mb, res.total_memory_mb, mb),
      h("div", {class: "meter counts"},
        h("div", {class: "meter-head"}, h("span", {class: "meter-label", text: "Workers"})),
        h("div", {class: "chips"},
          ["ready", "draining", "down"].filter((s) => by[s]).map((s) =>
            h("span", {class: `chip worker-${s}`}, h("span", {class: "chip-label", text: s}),
              h("b", {text: by[s]}))),
          workers.length ? null : h("span", {class: "muted", text: "none has joined"}))));
  }

  function row(w) {
    const labels = Object.entries(w.labels || {});
    return h("tr", {"data-worker": w.id, "data-state": w.state},
      h("td", {class: "mono"}, w.id),
      h("td", {}, h("span", {class: `badge worker-${w.state}`, text: w.drain && w.state !== "draining"
        ? `${w.state} (drain)` : w.state})),
      h("td", {class: "col-bar"}, h("div", {class: "bar-cell"}, bar(w.allocated_cpus, w.cpus, "CPUs"),
        h("span", {class: "mono small", text: `${w.allocated_cpus}/${w.cpus}`}))),
      h("td", {class: "col-bar"}, h("div", {class: "bar-cell"},
        bar(w.allocated_memory_mb, w.memory_mb, "Memory"),
        h("span", {class: "mono small", text: `${mb(w.allocated_memory_mb)}/${mb(w.memory_mb)}`}))),
      h("td", {class: "col-labels"}, labels.length
        ? labels.map(([k, v]) => h("span", {class: "label", text: `${k}=${v}`}))
        : h("span", {class: "muted", text: "–"})),
      h("td", {class: "col-host muted", text: w.hostname || ""}),
      h("td", {title: w.last_heartbeat || "", text: ago(w.last_heartbeat)}));
  }

  async function refresh() {
    let res;
    let workers;
    try {
      [res, workers] = await Promise.all([get("/api/v1/resources"), get("/api/v1/workers")]);
    } catch (e) {
      if (!gone) ctx.error("workers", e, "Workers");
      return;
    }
    if (gone) return;
    ctx.ok("workers");
    if (workers.degraded) {
      ctx.error("workers-degraded", {code: "degraded",
        message: "PostgreSQL is unavailable: only the workers Redis knows are listed"}, "Workers");
    } else {
      ctx.ok("workers-degraded");
    }
    renderSummary(res, workers.items);
    clear(tbody);
    if (!workers.items.length) {
      tbody.append(h("tr", {class: "empty"}, h("td", {colspan: 7,
        text: "No worker has joined. Start one with `scns run executor`."})));
    }
    for (const w of workers.items) tbody.append(row(w));
    count.textContent =
      `${workers.items.length} worker${workers.items.length === 1 ? "" : "s"}`;
  }

  return {
    refresh,
    update: () => refresh(),
    relevant: (e) => e.type.startsWith("worker-") || ["job-allocated", "job-finished",
      "job-started"].includes(e.type),
    unmount() { gone = true; },
  };
}
