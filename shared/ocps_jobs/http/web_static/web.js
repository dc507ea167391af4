// The OCPS jobs web view: long polls that keep the page current, a running job's log
// followed live, and the Abort button. The pages read without it; everything here talks to
// this service only.
"use strict";

const RETRY_MS = 5000;
const FOLLOW_GAP_MS = 1000; // a log follow that ended is asked again at most once a second

function pause(ms) {
  return new Promise((done) => setTimeout(done, ms));
}

// Ask `url` (a long poll) again and again; each 200 answer goes to `apply`, which returns
// the next URL to ask. 204 means nothing changed in the poll's time: ask again.
async function follow(url, apply) {
  while (url) {
    let response;
    const asked = Date.now();
    try {
      response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    } catch (error) {
      await new Promise((done) => setTimeout(done, RETRY_MS));
      continue;
    }
    if (response.status === 204) {
      // Nothing changed in the poll's time; never ask faster than once a second.
      await new Promise((done) => setTimeout(done, Math.max(0, 1000 - (Date.now() - asked))));
      continue;
    }
    if (!response.ok) {
      await new Promise((done) => setTimeout(done, RETRY_MS));
      continue;
    }
    url = apply(await response.json());
  }
}

function withParameter(url, name, value) {
  const next = new URL(url, window.location.href);
  next.searchParams.set(name, value);
  return next.pathname + next.search;
}

function followJobs(body) {
  // The rows come rendered (and escaped) by the server, as on the first load.
  const base = body.dataset.poll;
  const count = document.getElementById("job-count");
  follow(withParameter(base, "since", body.dataset.fingerprint), (change) => {
    body.innerHTML = change.html;
    body.dataset.fingerprint = change.fingerprint;
    if (count) count.textContent = count.textContent.replace(/^\d+ jobs?/, `${change.count} job${change.count === 1 ? "" : "s"}`);
    return withParameter(base, "since", change.fingerprint);
  });
}

// A running job's log, read from the API's log endpoint with follow=true and appended as
// text (never markup: the log is the job's own output). A follow ends when the job does or
// the service's wait cap passes; it is then asked again from where it left off (skip=,
// lines per replica) until stop(). The element keeps the last `data-keep` characters.
class LogFollower {
  constructor(pre) {
    this.pre = pre;
    this.base = pre.dataset.follow;
    this.keep = Number(pre.dataset.keep) || 65536;
    this.text = document.createTextNode(pre.textContent);
    this.counts = null; // lines received per replica; null before the first answer
    this.marked = false; // several replicas: each line starts "[index] "
    this.stopped = false;
    this.controller = null;
  }

  start() {
    this.run();
    return this;
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  url() {
    if (this.counts === null) return this.base; // the tail, then new lines
    const next = new URL(this.base, window.location.href);
    next.searchParams.delete("tail");
    const skip = Array.from(this.counts, (count) => count || 0);
    if (skip.some((count) => count > 0)) next.searchParams.set("skip", skip.join(","));
    return next.pathname + next.search;
  }

  async run() {
    while (!this.stopped) {
      const asked = Date.now();
      let wait = FOLLOW_GAP_MS;
      try {
        wait = await this.readOnce();
      } catch (error) {
        wait = RETRY_MS; // the connection dropped: what was not whole is asked again
      }
      if (wait === null) return;
      await pause(Math.max(0, wait - (Date.now() - asked)));
    }
  }

  // One follow: resolves to how long to wait before the next, or null to stop following.
  async readOnce() {
    this.controller = new AbortController();
    const response = await fetch(this.url(), {
      credentials: "same-origin",
      headers: { Accept: "text/plain" },
      signal: this.controller.signal,
    });
    if (response.status >= 400 && response.status < 500) return null; // gone, or not ours
    if (!response.ok || !response.body) return RETRY_MS;
    if (this.counts === null) {
      // The first answer starts at the tail: it replaces what the page was served with.
      const skipped = response.headers.get("X-OCPS-Log-Skipped");
      this.counts = skipped ? skipped.split(",").map(Number) : [];
      this.marked = response.headers.has("X-OCPS-Log-Replicas");
      this.text.data = "";
      this.pre.replaceChildren(this.text);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let partial = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (this.stopped) return null;
      if (done) break;
      partial = this.appendLines(partial + decoder.decode(value, { stream: true }));
    }
    // A whole answer's last line may lack its newline (the log's very end).
    this.appendLines(partial + decoder.decode(), true);
    return FOLLOW_GAP_MS;
  }

  // Shows and counts the whole lines of `text`; returns the unfinished rest (unless `last`).
  appendLines(text, last = false) {
    const end = last ? text.length : text.lastIndexOf("\n") + 1;
    const whole = text.slice(0, end);
    if (whole) {
      const lines = whole.split("\n");
      if (lines[lines.length - 1] === "") lines.pop();
      for (const line of lines) {
        const found = this.marked ? /^\[(\d+)\] /.exec(line) : null;
        const stream = found ? Number(found[1]) : 0;
        this.counts[stream] = (this.counts[stream] || 0) + 1;
      }
      const atBottom = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 4;
      this.text.appendData(whole);
      if (this.text.length > this.keep) {
        const from = this.text.data.indexOf("\n", this.text.length - this.keep);
        this.text.deleteData(0, from < 0 ? this.text.length - this.keep : from + 1);
      }
      if (atBottom) this.pre.scrollTop = this.pre.scrollHeight;
    }
    return text.slice(end);
  }
}

function followLog(pre) {
  return pre && pre.dataset.follow ? new LogFollower(pre).start() : null;
}

function followJob(live) {
  const base = live.dataset.poll;
  let log = followLog(document.getElementById("log"));
  if (!base) return; // a finished job does not change
  follow(withParameter(base, "phase", live.dataset.phase), (change) => {
    live.innerHTML = change.html;
    live.dataset.phase = change.phase;
    if (change.waiting && log) {
      // Still running: the followed log stays, with what it has shown so far.
      document.getElementById("log").replaceWith(log.pre);
    } else if (log) {
      log.stop(); // ended: the page now shows the stored log, as a reload would
      log = null;
    }
    if (change.waiting && !log) log = followLog(document.getElementById("log"));
    bindAbort();
    return change.waiting ? withParameter(base, "phase", change.phase) : null;
  });
}

function bindAbort() {
  const button = document.getElementById("abort");
  if (!button || button.dataset.bound) return;
  button.dataset.bound = "1";
  button.addEventListener("click", async () => {
    if (!window.confirm(`Abort job ${button.dataset.runId}?`)) return;
    const status = document.getElementById("abort-status");
    button.disabled = true;
    status.textContent = "Aborting…";
    const response = await fetch(button.dataset.abort, {
      method: "POST",
      credentials: "same-origin",
      headers: { [button.dataset.header]: "abort" },
    });
    let answer = {};
    try { answer = await response.json(); } catch (error) { /* not JSON */ }
    if (response.ok) {
      status.textContent = `Abort sent: the job is ${answer.phase}.`;
    } else {
      button.disabled = false;
      status.textContent = `Abort refused: ${answer.message || response.status}`;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const rows = document.getElementById("job-rows");
  if (rows) followJobs(rows);
  const live = document.getElementById("job-live");
  if (live) followJob(live);
  bindAbort();
});
