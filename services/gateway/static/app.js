// SCNS Conductor's dashboard: login, hash routing (#/jobs, #/jobs/12, #/workers, #/schedules),
// error banners, the live event feed, and keeping the current view fresh: a relevant event
// refreshes it promptly (debounced), and a slow poll keeps it right when the feed is down.

import {ApiError, clearToken, get, onUnauthorized, request, setToken, token} from "./api.js";
import {Feed, describe} from "./feed.js";
import {jobView} from "./job.js";
import {jobsView} from "./jobs.js";
import {listSchedules, schedulesView} from "./schedules.js";
import {clear, clock, debounce, h, hashFor, parseHash} from "./util.js";
import {workersView} from "./workers.js";

const FEED_MAX = 200;
const POLL_LIVE_MS = 10000;  // the feed is up: polling only catches what it could miss
const POLL_DOWN_MS = 3000;  // the feed is down: polling is all there is
const SCHEDULES_CHECK_MS = 30000;

const $ = (id) => document.getElementById(id);

const state = {
  view: null,  // {name, key, api: {refresh, update, relevant, unmount}}
  feed: null,
  feedLive: false,
  feedPaused: false,
  feedIds: new Set(),
  lastRefresh: 0,
  refreshing: null,
  again: false,
  timer: null,
  schedulesChecked: 0,
};

// --- banners --------------------------------------------------------------------------------

function banner(key, kind, title, message, code) {
  const box = $("banners");
  let el = box.querySelector(`[data-key="${CSS.escape(key)}"]`);
  const body = [h("strong", {text: title ? `${title}: ` : ""}), message,
    code ? h("code", {class: "code-tag", text: code}) : null];
  if (!el) {
    el = h("div", {class: `banner ${kind}`, role: kind === "error" ? "alert" : "status",
      "data-key": key});
    box.append(el);
  }
  el.className = `banner ${kind}`;
  clear(el).append(h("span", {class: "banner-text"}, body),
    h("button", {type: "button", class: "ghost small close", "aria-label": "Dismiss",
      onclick: () => el.remove()}, "✕"));
  return el;
}

const ctx = {
  error(key, err, title) {
    if (err && err.status === 401) return;  // the login form says it
    banner(key, "error", title, err?.message || String(err), err?.code);
  },
  ok(key) {
    $("banners").querySelector(`[data-key="${CSS.escape(key)}"]`)?.remove();
  },
  notice(message) {
    const el = banner(`notice-${Date.now()}`, "info", "", message);
    setTimeout(() => el.remove(), 5000);
  },
  navigate(path, params) {
    const hash = hashFor(path, params);
    if (window.location.hash !== hash) window.location.hash = hash;
    else route();
  },
  refreshSoon() { refreshSoon(); },
  haveSchedules(yes) { $("nav-schedules").hidden = !yes; },
};

// --- login ----------------------------------------------------------------------------------

function showLogin(message) {
  stopAll();
  clearToken();
  $("shell").hidden = true;
  $("login").hidden = false;
  const msg = $("login-message");
  msg.hidden = !message;
  msg.textContent = message || "";
  const input = $("login-token");
  input.value = "";
  input.focus();
  document.title = "Sign in · SCNS Conductor";
}

async function login(ev) {
  ev.preventDefault();
  const input = $("login-token");
  const value = input.value.trim();
  const msg = $("login-message");
  const button = $("login-submit");
  if (!value) return;
  button.disabled = true;
  try {
    await request("GET", "/api/v1/resources", {tok: value});
  } catch (e) {
    msg.hidden = false;
    msg.textContent = e instanceof ApiError && e.status === 401
      ? `That token was refused: ${e.message}` : e.message;
    button.disabled = false;
    return;
  }
  button.disabled = false;
  setToken(value);
  start();
}

function logout() {
  showLogin("");
  $("login-message").hidden = false;
  $("login-message").textContent = "Logged out.";
}

// --- the shell: router, refresh loop, feed ------------------------------------------------

function start() {
  $("login").hidden = true;
  $("shell").hidden = false;
  clear($("banners"));
  if (!window.location.hash || window.location.hash === "#" || window.location.hash === "#/") {
    window.location.replace("#/jobs");
  }
  route();
  startFeed();
  clearInterval(state.timer);
  state.timer = setInterval(tick, 1000);
  checkSchedules();
}

function stopAll() {
  clearInterval(state.timer);
  state.timer = null;
  state.feed?.stop();
  state.feed = null;
  state.view?.api.unmount();
  state.view = null;
  clear($("view"));
}

function route() {
  if (!token()) return;
  const {path, params} = parseHash(window.location.hash);
  let name = path[0] || "jobs";
  let key = name;
  let make;
  if (name === "jobs" && path[1]) {
    name = "job";
    key = `job:${path[1]}`;
    make = (root) => jobView(root, path[1], ctx);
  } else if (name === "jobs") {
    make = (root) => jobsView(root, params, ctx);
  } else if (name === "workers") {
    make = (root) => workersView(root, params, ctx);
  } else if (name === "schedules") {
    make = (root) => schedulesView(root, params, ctx);
  } else {
    window.location.replace("#/jobs");
    return;
  }
  for (const a of document.querySelectorAll(".nav a")) {
    a.classList.toggle("active", a.dataset.view === (name === "job" ? "jobs" : name));
  }
  if (state.view && state.view.key === key) {
    state.view.api.update(params);
    state.lastRefresh = Date.now();
    return;
  }
  state.view?.api.unmount();
  for (const el of $("banners").querySelectorAll(".banner.info")) el.remove();
  for (const k of ["jobs", "job", "stats", "workers", "schedules", "attempts", "control",
    "cancel"]) ctx.ok(k);
  const root = clear($("view"));
  root.dataset.view = name;
  const api = make(root);
  state.view = {name, key, api};
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · SCNS Conductor`;
  state.lastRefresh = Date.now();
  if (name === "jobs") api.update(params);
  else api.refresh();
}

/** Refresh the current view now (coalescing: one at a time, one more if asked meanwhile). */
async function refreshNow() {
  if (!state.view) return;
  if (state.refreshing) { state.again = true; return; }
  const view = state.view;
  state.lastRefresh = Date.now();
  state.refreshing = view.api.refresh().catch(() => {});
  await state.refreshing;
  state.refreshing = null;
  if (state.again && state.view === view) {
    state.again = false;
    refreshNow();
  }
}

const refreshSoon = debounce(refreshNow, 250);

function tick() {
  const every = state.feedLive ? POLL_LIVE_MS : POLL_DOWN_MS;
  if (document.visibilityState !== "hidden" && Date.now() - state.lastRefresh >= every) {
    refreshNow();
  }
  if (Date.now() - state.schedulesChecked >= SCHEDULES_CHECK_MS) checkSchedules();
  updateFeedStatusText();
}

async function checkSchedules() {
  state.schedulesChecked = Date.now();
  try {
    const items = await listSchedules();
    ctx.haveSchedules(items.length > 0);
  } catch { /* the schedules view shows its own errors */ }
}

// --- the feed panel -------------------------------------------------------------------------

function startFeed() {
  state.feedIds.clear();
  clear($("feed-list"));
  state.feed = new Feed({onEvent: feedEvent, onStatus: feedStatus});
  state.feed.start();
}

let feedDetail = null;

function feedStatus(s, detail) {
  state.feedLive = s === "live";
  feedDetail = detail;
  const el = $("feed-status");
  el.dataset.state = s;
  const notice = $("feed-notice");
  if (s === "live") {
    notice.hidden = true;
    refreshSoon();  // whatever happened while it was down
  }
  updateFeedStatusText();
}

function updateFeedStatusText() {
  const el = $("feed-status");
  const s = el.dataset.state;
  const text = el.querySelector(".text");
  const notice = $("feed-notice");
  if (s === "live") {
    text.textContent = "live";
    el.title = "Live event feed: connected";
  } else if (s === "connecting") {
    text.textContent = "connecting…";
  } else if (s === "down" && feedDetail) {
    const left = Math.max(0, Math.ceil((feedDetail.retryAt - Date.now()) / 1000));
    text.textContent = "disconnected";
    el.title = `Event feed disconnected: ${feedDetail.why}`;
    notice.hidden = false;
    notice.textContent = `Event feed disconnected (${feedDetail.why}); retrying in ${left} s. `
      + "The page refreshes every few seconds meanwhile.";
  } else {
    text.textContent = "off";
  }
}

function feedEvent(e) {
  if (state.view && state.view.api.relevant(e)) refreshSoon();
  if (e.type === "schedule-fired" || e.type === "schedule-disabled") ctx.haveSchedules(true);
  const id = e.id || e.sse_id;
  if (id && state.feedIds.has(id)) return;  // a duplicate (at-least-once delivery)
  if (state.feedPaused) return;
  if (id) state.feedIds.add(id);
  const list = $("feed-list");
  list.prepend(feedItem(e));
  while (list.children.length > FEED_MAX) {
    const last = list.lastElementChild;
    state.feedIds.delete(last.dataset.id);
    last.remove();
  }
  $("feed-count").textContent = `${list.children.length}`;
}

function feedItem(e) {
  const [subject, detail] = describe(e);
  const ref = e.job?.ref ?? (e.job_id !== undefined && e.job_id !== null ? String(e.job_id) : null);
  const at = typeof e.at === "number" ? e.at * 1000 : Date.now();
  const subjectEl = ref && e.type.startsWith("job-")
    ? h("a", {href: `#/jobs/${ref}`, class: "mono subject", text: subject})
    : h("span", {class: "mono subject", text: subject});
  return h("li", {class: `event ev-${e.type}${e.state ? ` ev-state-${e.state.toLowerCase()}` : ""}`,
    "data-id": e.id || e.sse_id || "", "data-type": e.type, "data-job": ref || "",
    "data-worker": e.worker_id || "", title: e.stream_id ? `stream id ${e.stream_id}` : ""},
  h("time", {class: "ev-time", datetime: new Date(at).toISOString(), text: clock(at)}),
  h("span", {class: "ev-type", text: e.type}),
  h("span", {class: "ev-body"}, subjectEl, h("span", {class: "ev-detail", text: detail})));
}

// --- start-up -------------------------------------------------------------------------------

function init() {
  onUnauthorized((err) => {
    if (!$("shell").hidden || token()) showLogin(`Your token was refused: ${err.message}`);
  });
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("feed-pause").addEventListener("click", () => {
    state.feedPaused = !state.feedPaused;
    $("feed-pause").setAttribute("aria-pressed", String(state.feedPaused));
    $("feed-pause").textContent = state.feedPaused ? "Resume" : "Pause";
  });
  $("feed-clear").addEventListener("click", () => {
    clear($("feed-list"));
    state.feedIds.clear();
    $("feed-count").textContent = "";
  });
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") refreshSoon();
  });
  if (token()) {
    // a token kept in this tab: check it still works before showing anything
    get("/api/v1/resources").then(start, (e) => {
      if (e.status !== 401) { start(); ctx.error("start", e, "Gateway"); }
    });
  } else {
    showLogin("");
  }
}

init();
