// #/schedules: the distributed cron (GET /api/v1/schedules): next and last run, the last job,
// run and failure counts, and why a schedule disabled itself.

import {get} from "./api.js";
import {clear, h, timeCell} from "./util.js";

export async function listSchedules() {
  const items = [];
  let cursor = "";
  for (let i = 0; i < 20; i++) {  // at most 2,000 schedules shown
    const page = await get("/api/v1/schedules", {limit: 100, cursor});
    items.push(...page.items);
    if (!page.next_cursor) break;
    cursor = page.next_cursor;
  }
  return items;
}

export function schedulesView(root, params, ctx) {
  const tbody = h("tbody", {id: "schedules-body"});
  const count = h("span", {class: "muted small", id: "schedules-count"});
  let gone = false;
  root.append(h("section", {class: "panel"},
    h("div", {class: "toolbar"}, h("h1", {}, "Schedules"),
      count),
    h("div", {class: "table-wrap"},
      h("table", {class: "grid", id: "schedules-table"},
        h("thead", {}, h("tr", {}, ["Id", "Name", "User", "Cron", "Timezone", "Next run",
          "Last run", "Last job", "Runs", "Failures", "State"].map((t) => h("th", {text: t})))),
        tbody))));

  function row(s) {
    const state = s.enabled
      ? h("span", {class: "badge sched-enabled", text: "enabled"})
      : h("span", {class: "badge sched-disabled", text: "disabled",
        title: s.disabled_reason || ""});
    return h("tr", {"data-schedule": s.id},
      h("td", {class: "mono", text: s.id}),
      h("td", {}, h("a", {href: `#/jobs?schedule=${s.id}`, text: s.name,
        title: "This schedule's jobs"})),
      h("td", {text: s.user}),
      h("td", {class: "mono", text: s.cron}),
      h("td", {class: "muted", text: s.timezone}),
      h("td", {}, timeCell(s.next_run_at)),
      h("td", {}, timeCell(s.last_run_at)),
      h("td", {class: "mono"}, s.last_job_id
        ? h("a", {href: `#/jobs/${s.last_job_id}`, text: s.last_job_id}) : ""),
      h("td", {class: "num", text: s.run_count}),
      h("td", {class: "num", text: s.consecutive_failures
        ? `${s.failure_count} (${s.consecutive_failures} in a row)` : s.failure_count}),
      h("td", {}, state, s.disabled_reason
        ? h("div", {class: "muted small", text: s.disabled_reason}) : null));
  }

  async function refresh() {
    let items;
    try {
      items = await listSchedules();
    } catch (e) {
      if (!gone) ctx.error("schedules", e, "Schedules");
      return;
    }
    if (gone) return;
    ctx.ok("schedules");
    ctx.haveSchedules(items.length > 0);
    clear(tbody);
    if (!items.length) {
      tbody.append(h("tr", {class: "empty"}, h("td", {colspan: 11,
        text: "No schedules. Add one with `scns schedule add NAME --cron '*/5 * * * *' script.sh`."})));
    }
    for (const s of items) tbody.append(row(s));
    count.textContent =
      `${items.length} schedule${items.length === 1 ? "" : "s"}`;
  }

  return {
    refresh,
    update: () => refresh(),
    relevant: (e) => e.type.startsWith("schedule-") || e.type === "job-finished",
    unmount() { gone = true; },
  };
}
