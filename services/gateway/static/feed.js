// The live event feed: GET /api/v1/events (Server-Sent Events) read with fetch, because
// EventSource cannot send the Authorization header. A small parser turns the byte stream into
// events; on a dropped connection the feed reconnects with backoff and `Last-Event-ID`, so the
// gateway resumes right after the last event received.

import {request} from "./api.js";
import {sleep} from "./util.js";

/** The text/event-stream format (the HTML standard's parsing rules, without `retry`). */
export class SSEParser {
  constructor(onEvent, onComment = () => {}) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.buffer = "";
    this.data = [];
    this.type = "";
    this.lastEventId = "";  // the id field last read (the spec's "last event ID buffer")
    this.dispatchedId = "";  // as of the last dispatch: where a reconnect resumes
    this.retry = null;
  }

  push(text) {
    const buf = this.buffer + text;
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const c = buf[i];
      if (c !== "\n" && c !== "\r") continue;
      if (c === "\r" && i + 1 === buf.length) break;  // a \r\n may be split across chunks
      const line = buf.slice(start, i);
      if (c === "\r" && buf[i + 1] === "\n") i++;
      start = i + 1;
      this.line(line);
    }
    this.buffer = buf.slice(start);
  }

  line(line) {
    if (line === "") { this.dispatch(); return; }
    if (line.startsWith(":")) { this.onComment(line.slice(1).trim()); return; }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  dispatch() {
    const data = this.data;
    const type = this.type || "message";
    this.data = [];
    this.type = "";
    // the resume point moves at every dispatch, an `id:` alone included (the gateway sends
    // where a stream starts that way, so a drop before the first event loses nothing)
    this.dispatchedId = this.lastEventId;
    if (data.length === 0) return;
    this.onEvent({id: this.lastEventId, type, data: data.join("\n")});
  }
}

const FIRST = "-100";  // the first connection shows the last 100 events
const STALL_MS = 45000;  // keep-alives come every ~15 s: nothing for 45 s is a dead connection
const MAX_BACKOFF_MS = 30000;

/**
 * new Feed({onEvent(event), onStatus(state, detail)}).start()
 * state: "connecting" | "live" | "down" (detail: why, and when it retries) | "stopped"
 */
export class Feed {
  constructor({onEvent, onStatus}) {
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.lastEventId = "";
    this.stopped = true;
    this.controller = null;
    this.state = "stopped";
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.stopSignal = new AbortController();
    this.run();
  }

  stop() {
    this.stopped = true;
    this.stopSignal?.abort();
    this.controller?.abort();
    this.status("stopped");
  }

  status(state, detail = "") {
    this.state = state;
    this.onStatus(state, detail);
  }

  async run() {
    let backoff = 1000;
    while (!this.stopped) {
      let why = "";
      try {
        this.status("connecting");
        await this.connect(() => { backoff = 1000; });
        why = "the stream ended";
      } catch (e) {
        if (this.stopped) return;
        if (e.status === 401) { this.stop(); return; }  // the page returns to its login
        why = e.name === "AbortError" ? "no data for 45 s" : e.message;
      }
      if (this.stopped) return;
      const wait = Math.min(backoff, MAX_BACKOFF_MS) * (0.8 + Math.random() * 0.4);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      this.status("down", {why, retryAt: Date.now() + wait});
      await sleep(wait, this.stopSignal.signal);
    }
  }

  async connect(connected) {
    const controller = new AbortController();
    this.controller = controller;
    const headers = {Accept: "text/event-stream"};
    const query = {};
    if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
    else query.from = FIRST;
    const resp = await request("GET", "/api/v1/events", {query, headers,
      signal: controller.signal});
    const type = resp.headers.get("Content-Type") || "";
    if (!type.startsWith("text/event-stream")) {
      throw new Error(`the gateway answered ${type || "no content type"}, not an event stream`);
    }
    connected();
    this.status("live");
    let stall = setTimeout(() => controller.abort(), STALL_MS);
    const parser = new SSEParser((ev) => {
      if (this.stopped || this.controller !== controller) return;
      this.lastEventId = ev.id || this.lastEventId;
      let body;
      try { body = JSON.parse(ev.data); } catch { return; }
      this.onEvent({...body, type: body.type || ev.type, sse_id: ev.id});
    });
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        clearTimeout(stall);
        stall = setTimeout(() => controller.abort(), STALL_MS);
        parser.push(value);
        if (parser.dispatchedId) this.lastEventId = parser.dispatchedId;
      }
    } finally {
      clearTimeout(stall);
      reader.cancel().catch(() => {});
    }
  }
}

/** One line of the feed: [subject, detail] for an event body. */
export function describe(e) {
  const ref = e.job?.ref ?? (e.job_id !== undefined && e.job_id !== null ? String(e.job_id) : "");
  const exit = e.exit_code !== null && e.exit_code !== undefined ? ` exit=${e.exit_code}` : "";
  const why = e.reason ? ` (${e.reason})` : "";
  switch (e.type) {
    case "worker-joined":
      return [e.worker_id, `joined, ${e.cpus ?? "?"} CPUs`];
    case "worker-left":
      return [e.worker_id, `left${why}`];
    case "job-submitted":
      return [ref, `${e.array_size ? `array of ${e.array_size}, ` : ""}${e.cpus} CPU${e.cpus === 1 ? "" : "s"}${e.job?.user ? " · " + e.job.user : ""}`];
    case "job-allocated":
      return [ref, `→ ${e.worker_id}${e.attempt > 1 ? ` (attempt ${e.attempt})` : ""}`];
    case "job-started":
      return [ref, `running on ${e.worker_id}`];
    case "job-finished":
      return [ref, `${e.state}${exit}${why}${e.next_attempt ? ` → attempt ${e.next_attempt}` : ""}`];
    case "job-requeued":
      return [ref, `requeued → attempt ${e.attempt}${why}`];
    case "job-updated":
      return [ref, `${e.change}${e.array ? ` (${e.count} elements)` : ""}${why}`];
    case "schedule-fired":
      return [e.name, e.skipped ? `skipped: ${e.skipped}` : `fired → job ${e.job_id}`];
    case "schedule-disabled":
      return [e.name, `disabled: ${e.reason}`];
    default:
      return [ref || e.worker_id || "", ""];
  }
}
