// The OCPS jobs web view: long polls that keep the page current, and the Abort button.
// The pages read without it; everything here talks to this service only.
"use strict";

const RETRY_MS = 5000;

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
    if (count) count.textContent = count.textContent.replace(/^\d+ jobs?/, `${change.total} job${change.total === 1 ? "" : "s"}`);
    return withParameter(base, "since", change.fingerprint);
  });
}

function followJob(live) {
  const base = live.dataset.poll;
  if (!base) return; // a finished job does not change
  follow(withParameter(base, "phase", live.dataset.phase), (change) => {
    live.innerHTML = change.html;
    live.dataset.phase = change.phase;
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
