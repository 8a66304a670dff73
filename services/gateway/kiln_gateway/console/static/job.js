// A job's page: follows /console/jobs/{id}/events (Server-Sent Events) and updates the status,
// progress, queue position and timeline in place; when the job ends, it reloads the page once
// to show the result. EventSource reconnects by itself and resumes after the last timeline
// entry it got (its event id).
"use strict";

(function () {
  const root = document.getElementById("job");
  if (!root || root.dataset.terminal === "true" || typeof EventSource === "undefined") return;
  const statusBadge = document.getElementById("job-status");
  const progress = document.getElementById("job-progress");
  const progressText = document.getElementById("job-progress-text");
  const queue = document.getElementById("job-queue");
  const eta = document.getElementById("job-eta");
  const cost = document.getElementById("job-cost");
  const error = document.getElementById("job-error");
  const timeline = document.getElementById("timeline");
  const live = document.getElementById("timeline-live");
  const cancel = document.getElementById("cancel-form");

  function when(iso) {
    return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC") : "—";
  }

  function badge(status) {
    const span = document.createElement("span");
    span.className = "badge badge-" + status;
    span.textContent = status;
    return span;
  }

  const source = new EventSource(root.dataset.events);

  source.addEventListener("timeline", (event) => {
    const entry = JSON.parse(event.data);
    if (timeline.querySelector(`[data-seq="${entry.seq}"]`)) return;
    const item = document.createElement("li");
    item.dataset.seq = entry.seq;
    const time = document.createElement("time");
    time.dateTime = entry.occurred_at;
    time.textContent = when(entry.occurred_at);
    const type = document.createElement("code");
    type.textContent = entry.type;
    item.append(time, " ", type, " ", badge(entry.status || ""));
    if (entry.queue_position) {
      const position = document.createElement("span");
      position.className = "muted";
      position.textContent = " position " + entry.queue_position;
      item.append(position);
    }
    timeline.append(item);
  });

  source.addEventListener("job", (event) => {
    const job = JSON.parse(event.data);
    statusBadge.className = "badge badge-" + job.status;
    statusBadge.textContent = job.status;
    progress.value = job.progress;
    progressText.textContent = Math.round(job.progress * 100) + "%";
    queue.textContent = job.queue_position ? `${job.queue_position} (${job.queue_reason || "waiting"})` : "—";
    eta.textContent = job.estimated_start_at ? when(job.estimated_start_at) : "—";
    cost.textContent = (job.cost || "—") + " credits";
    if (job.error) {
      error.hidden = false;
      error.textContent = `${job.error.code}: ${job.error.message}`;
    }
    if (job.terminal) {
      source.close();
      root.dataset.terminal = "true";
      if (cancel) cancel.hidden = true;
      live.textContent = "The job has ended.";
      document.getElementById("job-finished").hidden = false;
      // The result section is rendered by the server: show it.
      window.setTimeout(() => window.location.reload(), 1500);
    }
  });
})();
