// #/jobs/{ref}: one job, every field, its attempts, its script, and its output followed live
// (GET /api/v1/jobs/{ref}/log?follow=1 read as a stream; the gateway ends it when the job ends).

import {get, request} from "./api.js";
import {TERMINAL, badge, cancellable, clear, duration, elapsed, h, jobRef, kb, mb,
  sleep, timeCell} from "./util.js";

const MAX_LOG_CHARS = 2_000_000;

// the fields shown first, in this order; any other field the API adds follows them
const FIELDS = [
  ["state", "State"], ["reason", "Reason"], ["name", "Name"], ["user", "User"],
  ["partition", "Partition"], ["priority", "Priority"], ["cpus", "CPUs"],
  ["memory_mb", "Memory"], ["time_limit", "Time limit"], ["worker_id", "Worker"],
  ["attempt", "Attempt"], ["exit_code", "Exit code"], ["signal", "Signal"],
  ["submitted_at", "Submitted"], ["begin_at", "Begin at"], ["allocated_at", "Allocated"],
  ["started_at", "Started"], ["finished_at", "Finished"], ["elapsed", "Elapsed"],
  ["cpu_s", "CPU time"], ["peak_rss_kb", "Peak RSS"], ["dependency", "Dependency"],
  ["array_job_id", "Array job"], ["array_task_id", "Array index"],
  ["array_throttle", "Array throttle"], ["retries", "Retries"],
  ["retries_used", "Retries used"], ["retry_delay_s", "Retry delay"], ["requeue", "Requeue"],
  ["cancel_requested", "Cancel requested"], ["requeue_requested", "Requeue requested"],
  ["schedule_id", "Schedule"], ["submit_dir", "Submit dir"], ["workdir", "Workdir"],
  ["output", "Output file"], ["error", "Error file"], ["id", "Id"],
];
const HIDDEN = new Set(["script", "env", "array"]);

function value(key, job) {
  const v = key === "elapsed" ? elapsed(job) : job[key];
  if (v === null || v === undefined || v === "") return h("span", {class: "muted", text: "–"});
  if (key === "state") return badge(v);
  if (key.endsWith("_at")) return timeCell(v);
  if (key === "memory_mb") return mb(v);
  if (key === "peak_rss_kb") return kb(v);
  if (key === "time_limit" || key === "elapsed" || key === "retry_delay_s") return duration(v);
  if (key === "cpu_s") return `${Number(v).toFixed(1)} s`;
  if (key === "schedule_id") return h("a", {href: "#/schedules", text: `#${v}`});
  if (key === "array_job_id") return h("a", {href: `#/jobs?array=${v}`, class: "mono", text: v});
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/** Follows one attempt's stdout or stderr into a <pre>. */
class LogFollower {
  constructor(pre, status, ref, onEnd) {
    this.pre = pre;
    this.status = status;
    this.ref = ref;
    this.onEnd = onEnd;
    this.controller = null;
    this.stream = "stdout";
    this.attempt = null;
    this.running = false;
  }

  start(stream, attempt) {
    this.stop();
    this.stream = stream;
    this.attempt = attempt;
    clear(this.pre);
    this.pre.dataset.stream = stream;
    this.pre.dataset.attempt = String(attempt);
    delete this.pre.dataset.ended;
    this.run();
  }

  stop() {
    this.controller?.abort();
    this.controller = null;
    this.running = false;
  }

  append(text) {
    if (!text) return;
    const pre = this.pre;
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 24;
    pre.append(document.createTextNode(text));
    if (pre.textContent.length > MAX_LOG_CHARS) {
      const kept = pre.textContent.slice(-MAX_LOG_CHARS / 2);
      pre.textContent = `[… earlier output not shown; all of it: scns logs ${this.ref}]\n` + kept;
    }
    pre.classList.remove("empty");
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  async run() {
    const controller = new AbortController();
    this.controller = controller;
    this.running = true;
    this.status.textContent = `following ${this.stream} of attempt ${this.attempt}…`;
    this.status.dataset.state = "following";
    this.pre.classList.add("empty");
    let ended = "ended";
    try {
      const resp = await request("GET", `/api/v1/jobs/${encodeURIComponent(this.ref)}/log`, {
        query: {stream: this.stream, attempt: this.attempt, follow: 1},
        headers: {Accept: "text/plain"}, signal: controller.signal});
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const {value: chunk, done} = await reader.read();
        if (done) break;
        this.append(chunk);
      }
    } catch (e) {
      if (e.name === "AbortError" || controller.signal.aborted) return;
      ended = `stopped: ${e.message}`;
    } finally {
      if (this.controller === controller) this.running = false;
    }
    if (this.controller !== controller) return;
    this.status.textContent = ended === "ended" ? `end of ${this.stream}` : ended;
    this.status.dataset.state = "ended";
    this.pre.dataset.ended = "1";
    this.onEnd(ended);
  }
}

export function jobView(root, ref, ctx) {
  let job = null;
  let stream = "stdout";
  let stopped = false;
  const title = h("h1", {}, "Job ", h("span", {id: "job-ref", class: "mono", text: ref}));
  const name = h("span", {id: "job-name", class: "job-name"});
  const state = h("span", {id: "job-state"});
  const actions = h("div", {class: "actions", id: "job-actions"});
  const fields = h("dl", {id: "job-fields", class: "fields"});
  const attempts = h("tbody", {id: "job-attempts"});
  const script = h("pre", {id: "job-script", class: "code"});
  const envBody = h("tbody", {id: "job-env"});
  const pre = h("pre", {id: "job-log", class: "log empty", tabindex: 0, "aria-live": "off"});
  const logStatus = h("span", {id: "log-status", class: "muted small"});
  const toggles = ["stdout", "stderr"].map((s) => h("button", {type: "button", class: "seg",
    id: `log-${s}`, "data-stream": s, "aria-pressed": String(s === stream),
    onclick: () => switchStream(s)}, s));
  const follower = new LogFollower(pre, logStatus, ref, () => followerEnded());
  const missing = h("section", {class: "panel missing", id: "job-missing", hidden: true});

  root.append(
    h("div", {class: "detail-head"},
      h("a", {href: "#/jobs", class: "back", text: "← Jobs"}),
      title, name, state, h("span", {class: "spacer"}), actions),
    missing,
    h("div", {class: "detail-grid", id: "job-detail", hidden: true},
      h("div", {class: "detail-main"},
        h("section", {class: "panel log-panel"},
          h("div", {class: "panel-head"}, h("h2", {}, "Output"),
            h("div", {class: "segmented", role: "group", "aria-label": "Stream"}, toggles),
            h("span", {class: "spacer"}), logStatus),
          pre),
        h("section", {class: "panel"}, h("h2", {class: "panel-title"}, "Attempts"),
          h("div", {class: "table-wrap"}, h("table", {class: "grid"},
            h("thead", {}, h("tr", {}, ["#", "State", "Worker", "Started", "Elapsed", "Exit",
              "Reason", "Peak RSS", "CPU s"].map((t) => h("th", {text: t})))),
            attempts))),
        h("section", {class: "panel"}, h("h2", {class: "panel-title"}, "Script"), script,
          h("h3", {}, "Environment"),
          h("table", {class: "grid kv"}, envBody))),
      h("section", {class: "panel fields-panel"}, h("h2", {class: "panel-title"}, "Details"),
        fields),
    ));

  function switchStream(s) {
    if (s === stream) return;
    stream = s;
    for (const b of toggles) b.setAttribute("aria-pressed", String(b.dataset.stream === s));
    if (job) follower.start(stream, job.attempt);
  }

  async function followerEnded() {
    // the gateway ends a follow when the job ends or moves to a new attempt
    await sleep(500);
    if (stopped) return;
    await refresh();
    if (stopped || !job) return;
    if (!TERMINAL.has(job.state) && !follower.running) {
      await sleep(1500);
      if (!stopped && !follower.running) follower.start(stream, job.attempt);
    }
  }

  async function control(verb, label) {
    const r = jobRef(job);
    if ((verb === "cancel" || verb === "requeue")
        && !window.confirm(`${label} job ${r}${job.name ? ` (${job.name})` : ""}?`)) return;
    try {
      const resp = verb === "cancel"
        ? await request("DELETE", `/api/v1/jobs/${encodeURIComponent(r)}`)
        : await request("POST", `/api/v1/jobs/${encodeURIComponent(r)}/${verb}`);
      const answer = await resp.json();
      ctx.ok("control");
      ctx.notice(resp.status === 202
        ? `${label}: job ${r} is being stopped (it was ${answer.state})`
        : `${label}: job ${r} is now ${answer.state}${answer.reason ? ` (${answer.reason})` : ""}`);
    } catch (e) {
      ctx.error("control", e, `${label} job ${r}`);
    }
    ctx.refreshSoon();
  }

  function renderActions() {
    clear(actions);
    const add = (verb, label, cls) => actions.append(h("button", {type: "button",
      class: `${cls} small`, id: `job-${verb}`, onclick: () => control(verb, label)}, label));
    if (job.state === "PENDING" && job.reason !== "Held") add("hold", "Hold", "ghost");
    if (job.state === "PENDING" && job.reason === "Held") add("release", "Release", "ghost");
    if (TERMINAL.has(job.state) || job.state === "RUNNING") add("requeue", "Requeue", "ghost");
    if (cancellable(job)) add("cancel", "Cancel", "danger");
    else if (job.cancel_requested && !TERMINAL.has(job.state)) {
      actions.append(h("span", {class: "muted small", text: "stopping…"}));
    }
  }

  function render() {
    const r = jobRef(job);
    title.querySelector("#job-ref").textContent = r;
    name.textContent = job.name || "";
    clear(state).append(badge(job.state));
    state.dataset.state = job.state;
    document.title = `Job ${r} · ${job.state} · SCNS Conductor`;
    renderActions();
    clear(fields);
    const keys = [...FIELDS.map(([k]) => k),
      ...Object.keys(job).filter((k) => !HIDDEN.has(k) && !FIELDS.some(([f]) => f === k))];
    const labels = Object.fromEntries(FIELDS);
    for (const k of keys) {
      if (!(k in job) && k !== "elapsed") continue;
      fields.append(h("div", {class: "field-row", "data-field": k},
        h("dt", {text: labels[k] || k}), h("dd", {}, value(k, job))));
    }
    if (job.array) {
      const states = Object.entries(job.array.states || {}).map(([s, n]) => `${s} ${n}`).join(", ");
      fields.append(h("div", {class: "field-row", "data-field": "array"}, h("dt", {text: "Array"}),
        h("dd", {}, `${job.array.spec} (${job.array.count} elements${job.array.throttle ? `, %${job.array.throttle}` : ""}) ${states}`)));
    }
    script.textContent = job.script ?? "";
    clear(envBody);
    const env = Object.entries(job.env || {});
    if (env.length === 0) envBody.append(h("tr", {}, h("td", {class: "muted", text: "(none)"})));
    for (const [k, v] of env) envBody.append(h("tr", {}, h("td", {class: "mono", text: k}),
      h("td", {class: "mono", text: v})));
  }

  async function loadAttempts() {
    let items;
    try {
      items = (await get(`/api/v1/jobs/${encodeURIComponent(ref)}/attempts`)).items;
    } catch (e) {
      if (!stopped) ctx.error("attempts", e, "Attempts");
      return;
    }
    if (stopped) return;
    ctx.ok("attempts");
    clear(attempts);
    if (!items.length) {
      attempts.append(h("tr", {class: "empty"}, h("td", {colspan: 9, text: "Not started yet."})));
    }
    for (const a of items) {
      attempts.append(h("tr", {},
        h("td", {text: a.attempt}), h("td", {}, badge(a.state)),
        h("td", {class: "mono", text: a.worker_id || ""}), h("td", {}, timeCell(a.started_at)),
        h("td", {class: "num mono", text: a.elapsed_s === null ? "" : duration(a.elapsed_s)}),
        h("td", {class: "num", text: a.exit_code ?? (a.signal ? `sig ${a.signal}` : "")}),
        h("td", {class: "muted", text: a.reason || ""}),
        h("td", {class: "num", text: kb(a.peak_rss_kb)}),
        h("td", {class: "num", text: a.cpu_s === null || a.cpu_s === undefined ? "" : Number(a.cpu_s).toFixed(1)})));
    }
  }

  async function refresh() {
    let shown;
    try {
      shown = await get(`/api/v1/jobs/${encodeURIComponent(ref)}`);
    } catch (e) {
      if (stopped) return;
      ctx.error("job", e, `Job ${ref}`);
      if (e.status === 404 && job === null) {
        missing.hidden = false;
        missing.textContent = `There is no job ${ref} that you can see.`;
        follower.stop();
      }
      return;
    }
    if (stopped) return;
    ctx.ok("job");
    missing.hidden = true;
    root.querySelector("#job-detail").hidden = false;
    const first = job === null;
    const newAttempt = job !== null && shown.attempt !== job.attempt;
    job = shown;
    render();
    if (first || newAttempt) follower.start(stream, job.attempt);
    loadAttempts();
  }

  return {
    refresh,
    relevant: (e) => job !== null && e.job_id !== undefined
      && (e.job_id === job.id || e.job_id === job.array_job_id),
    update() { return refresh(); },
    unmount() { stopped = true; follower.stop(); },
  };
}
