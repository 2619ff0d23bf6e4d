// Small DOM and formatting helpers shared by the views. No framework: elements are built with
// h() and replaced wholesale when their data changes (tables of a few hundred rows at most).

export const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
  "OUT_OF_MEMORY"]);
export const ACTIVE = ["PENDING", "ALLOCATED", "RUNNING"];
export const STATES = [...ACTIVE, ...TERMINAL];

/** h("a", {href: "#/jobs", class: "x", onclick: fn}, "text", child, ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "text") {
      el.textContent = value;
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** The id a person uses: 12, or 12_3 for an array element. */
export function jobRef(job) {
  if (job.array_job_id !== null && job.array_job_id !== undefined
      && job.array_task_id !== null && job.array_task_id !== undefined) {
    return `${job.array_job_id}_${job.array_task_id}`;
  }
  return String(job.id);
}

export function badge(state, extra = "") {
  const s = state || "UNKNOWN";
  return h("span", {class: `badge state-${s.toLowerCase()} ${extra}`.trim(), text: s,
    "data-state": s});
}

export function cancellable(job) {
  return !TERMINAL.has(job.state) && !job.cancel_requested;
}

const pad = (n) => String(n).padStart(2, "0");

export function parseTime(iso) {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

/** 13:02:11 today, else 2026-11-23 13:02 (local time). */
export function clock(ms, seconds = true) {
  if (ms === null || ms === undefined) return "";
  const d = new Date(ms);
  const now = new Date();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}` + (seconds ? `:${pad(d.getSeconds())}` : "");
  if (d.toDateString() === now.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

/** A time cell: short local time, the full ISO time in its tooltip. */
export function timeCell(iso) {
  const t = parseTime(iso);
  if (t === null) return h("span", {class: "muted", text: "–"});
  return h("time", {datetime: iso, title: new Date(t).toISOString(), text: clock(t, true)});
}

/** Seconds as squeue prints them: 0:41, 2:13:07, 1-02:03:04. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  let s = Math.max(0, Math.floor(seconds));
  const days = Math.floor(s / 86400); s -= days * 86400;
  const hours = Math.floor(s / 3600); s -= hours * 3600;
  const minutes = Math.floor(s / 60); s -= minutes * 60;
  if (days) return `${days}-${pad(hours)}:${pad(minutes)}:${pad(s)}`;
  if (hours) return `${hours}:${pad(minutes)}:${pad(s)}`;
  return `${minutes}:${pad(s)}`;
}

/** How long a job has run (so far, or in all). */
export function elapsed(job) {
  const start = parseTime(job.started_at);
  if (start === null) return null;
  const end = parseTime(job.finished_at) ?? Date.now();
  return (end - start) / 1000;
}

export function ago(iso) {
  const t = parseTime(iso);
  if (t === null) return "never";
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 0) return `in ${duration(-s)}`;
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

/** Megabytes as people read them: 512M, 2.0G, 1.5T. */
export function mb(n) {
  if (n === null || n === undefined) return "";
  if (n >= 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)}T`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)}G`;
  return `${n}M`;
}

export function kb(n) {
  if (n === null || n === undefined) return "";
  return mb(Math.round(n / 1024));
}

/** A utilisation bar: used / total, coloured by how full it is. */
export function bar(used, total, label) {
  const frac = total > 0 ? Math.min(1, used / total) : 0;
  const level = frac >= 0.9 ? "full" : frac >= 0.6 ? "busy" : "ok";
  const fill = h("span", {class: `bar-fill ${level}`});
  fill.style.width = `${(frac * 100).toFixed(1)}%`;  // CSSOM: allowed by the page's CSP
  return h("div", {class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": total,
    "aria-valuenow": used, "aria-label": label || "utilisation",
    title: `${label ? label + ": " : ""}${used} of ${total} (${Math.round(frac * 100)}%)`},
  h("span", {class: "bar-track"}, fill));
}

/** fn, called at most once per `ms` after the last call. */
export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; fn(...args); }, ms);
  };
  wrapped.cancel = () => { clearTimeout(timer); timer = null; };
  return wrapped;
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, {once: true});
  });
}

/** #/jobs/12?x=1 -> {path: ["jobs", "12"], params: URLSearchParams} */
export function parseHash(hash) {
  const raw = (hash || "").replace(/^#/, "");
  const [path, query] = raw.split("?", 2);
  return {
    path: path.split("/").filter(Boolean).map(decodeURIComponent),
    params: new URLSearchParams(query || ""),
  };
}

export function hashFor(path, params) {
  const q = params ? new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "")).toString() : "";
  return `#/${path}${q ? "?" + q : ""}`;
}
