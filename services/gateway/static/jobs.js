// #/jobs: the queue, newest first, filtered by state and user (GET /api/v1/jobs?state=&user=),
// paged with the API's cursor (next_cursor: the last id of a page; older jobs follow it).

import {get, request} from "./api.js";
import {ACTIVE, STATES, TERMINAL, badge, cancellable, duration, elapsed, h, clear, jobRef,
  mb, timeCell} from "./util.js";

const PAGE = 50;
const STATE_CHOICES = [
  ["", "All states"],
  [ACTIVE.join(","), "Active"],
  [[...TERMINAL].join(","), "Finished"],
  ...STATES.map((s) => [s, s]),
];

export function jobsView(root, params, ctx) {
  let filters = {state: "", user: "", array: "", schedule: "", cursor: ""};
  const history = [];  // cursors of the newer pages, for "Newer"
  let gone = false;

  const stateSelect = h("select", {id: "filter-state", "aria-label": "State",
    onchange: () => go({state: stateSelect.value, cursor: ""}, true)},
  STATE_CHOICES.map(([value, label]) => h("option", {value, text: label})));
  const userInput = h("input", {id: "filter-user", type: "search", placeholder: "any user",
    "aria-label": "User", spellcheck: "false", size: 12,
    onchange: () => go({user: userInput.value.trim(), cursor: ""}, true)});
  const stats = h("div", {class: "chips", id: "job-stats",
    "aria-label": "Jobs by state, cluster-wide: active and finished in the last 24 hours"});
  const scopeChip = h("button", {type: "button", class: "chip filter-chip", id: "filter-scope",
    hidden: true, title: "Show every job",
    onclick: () => go({array: "", schedule: "", cursor: ""}, true)});
  const tbody = h("tbody", {id: "jobs-body"});
  const prev = h("button", {id: "jobs-prev", type: "button", class: "ghost",
    onclick: () => go({cursor: history.pop() ?? ""})}, "← Newer");
  const next = h("button", {id: "jobs-next", type: "button", class: "ghost",
    onclick: () => { history.push(filters.cursor); go({cursor: next.dataset.cursor}); }},
  "Older →");
  const pageInfo = h("span", {id: "jobs-page", class: "muted small"});

  root.append(h("section", {class: "panel"},
    h("div", {class: "toolbar"},
      h("h1", {}, "Jobs"),
      stats,
      h("span", {class: "spacer"}),
      scopeChip,
      h("label", {class: "field"}, h("span", {}, "State"), stateSelect),
      h("label", {class: "field"}, h("span", {}, "User"), userInput),
    ),
    h("div", {class: "table-wrap"},
      h("table", {class: "grid", id: "jobs-table"},
        h("thead", {}, h("tr", {},
          h("th", {text: "Job"}), h("th", {text: "Name"}), h("th", {class: "col-user", text: "User"}),
          h("th", {text: "State"}), h("th", {class: "col-reason", text: "Reason"}),
          h("th", {class: "num", text: "CPUs"}), h("th", {class: "num col-mem", text: "Mem"}),
          h("th", {class: "col-worker", text: "Worker"}),
          h("th", {class: "col-time", text: "Submitted"}), h("th", {class: "num", text: "Time"}),
          h("th", {class: "actions", "aria-label": "Actions"}))),
        tbody)),
    h("div", {class: "pager"}, prev, pageInfo, next),
  ));

  function go(change, resetHistory = false) {
    if (resetHistory) history.length = 0;
    const merged = {...filters, ...change};
    ctx.navigate("jobs", {state: merged.state, user: merged.user, array: merged.array,
      schedule: merged.schedule, cursor: merged.cursor});
  }

  function update(p) {
    filters = {state: p.get("state") || "", user: p.get("user") || "",
      array: p.get("array") || "", schedule: p.get("schedule") || "",
      cursor: p.get("cursor") || ""};
    scopeChip.hidden = !filters.array && !filters.schedule;
    scopeChip.textContent = filters.array ? `array ${filters.array} ✕`
      : filters.schedule ? `schedule ${filters.schedule} ✕` : "";
    if (!filters.cursor) history.length = 0;
    if (![...stateSelect.options].some((o) => o.value === filters.state)) {
      stateSelect.append(h("option", {value: filters.state, text: filters.state}));
    }
    stateSelect.value = filters.state;
    userInput.value = filters.user;
    return refresh();
  }

  async function cancel(job) {
    const ref = jobRef(job);
    if (!window.confirm(`Cancel job ${ref}${job.name ? ` (${job.name})` : ""}?`)) return;
    try {
      const resp = await request("DELETE", `/api/v1/jobs/${encodeURIComponent(ref)}`);
      ctx.ok("cancel");
      ctx.notice(resp.status === 202 ? `Job ${ref} is being stopped` : `Job ${ref} cancelled`);
    } catch (e) {
      ctx.error("cancel", e, `Cancel job ${ref}`);
    }
    ctx.refreshSoon();
  }

  function row(job) {
    const ref = jobRef(job);
    const time = elapsed(job);
    const action = cancellable(job)
      ? h("button", {type: "button", class: "danger small cancel", "data-job": ref,
        title: `Cancel job ${ref}`, onclick: () => cancel(job)}, "Cancel")
      : job.cancel_requested && !TERMINAL.has(job.state)
        ? h("span", {class: "muted small", text: "stopping…"}) : null;
    return h("tr", {"data-job": ref, "data-state": job.state},
      h("td", {class: "mono"}, h("a", {href: `#/jobs/${ref}`, class: "job-link", text: ref})),
      h("td", {class: "name", title: job.name || "", text: job.name || ""}),
      h("td", {class: "col-user", text: job.user}),
      h("td", {class: "state"}, badge(job.state)),
      h("td", {class: "col-reason muted", text: job.reason || ""}),
      h("td", {class: "num", text: job.cpus}),
      h("td", {class: "num col-mem", text: mb(job.memory_mb)}),
      h("td", {class: "col-worker mono", text: job.worker_id || ""}),
      h("td", {class: "col-time"}, timeCell(job.submitted_at)),
      h("td", {class: "num mono", text: time === null ? "" : duration(time)}),
      h("td", {class: "actions"}, action));
  }

  async function loadStats() {
    try {
      const s = await get("/api/v1/queues/stats");
      clear(stats);
      for (const st of STATES) {
        const n = s.states?.[st];
        if (!n) continue;
        stats.append(h("a", {class: `chip state-${st.toLowerCase()}`, href: `#/jobs?state=${st}`,
          title: `${n} ${st} (cluster-wide: active jobs and those finished in the last 24 h)`},
        h("span", {class: "chip-label", text: st}), h("b", {text: n})));
      }
    } catch (e) {
      if (!gone) ctx.error("stats", e, "Queue statistics");
      return;
    }
    if (!gone) ctx.ok("stats");
  }

  async function refresh() {
    const query = {limit: PAGE, state: filters.state, user: filters.user,
      array_job_id: filters.array, schedule_id: filters.schedule, cursor: filters.cursor};
    loadStats();
    let page;
    try {
      page = await get("/api/v1/jobs", query);
    } catch (e) {
      if (!gone) ctx.error("jobs", e, "Jobs");
      return;
    }
    if (gone) return;
    ctx.ok("jobs");
    clear(tbody);
    if (page.items.length === 0) {
      const filtered = filters.state || filters.user || filters.array || filters.schedule
        || filters.cursor;
      tbody.append(h("tr", {class: "empty"}, h("td", {colspan: 11,
        text: filtered ? "No jobs match these filters." : "No jobs yet. Submit one with `scns submit script.sh`."})));
    }
    for (const job of page.items) tbody.append(row(job));
    next.disabled = !page.next_cursor;
    next.dataset.cursor = page.next_cursor || "";
    prev.disabled = !filters.cursor;
    const pageNo = history.length + 1;
    pageInfo.textContent = page.items.length
      ? `page ${filters.cursor ? pageNo : 1} · ${page.items.length} job${page.items.length === 1 ? "" : "s"}`
      : "";
  }

  return {
    update,
    refresh,
    relevant: (e) => e.type.startsWith("job-") || e.type === "schedule-fired",
    unmount() { gone = true; },
  };
}
