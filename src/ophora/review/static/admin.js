// The admin's progress view: per rater, how far they are (never their scores).
"use strict";

const $ = (id) => document.getElementById(id);

function message(text) { $("message").textContent = text; $("message").hidden = !text; }

async function refresh() {
  const r = await fetch("/api/admin/progress", { credentials: "same-origin", cache: "no-store" }).catch(() => null);
  if (!r || r.status === 401) { message("Open the admin link (printed by 'ophora review create') to see progress."); return; }
  const data = await r.json();
  const body = $("progress").querySelector("tbody");
  body.textContent = "";
  for (const rater of data.raters) {
    const tr = document.createElement("tr");
    const last = rater.last ? new Date(rater.last * 1000).toLocaleString() : "\u2014";
    for (const value of [rater.name, rater.done, rater.started, rater.assigned, last]) {
      const td = document.createElement("td");
      td.textContent = String(value);
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  const videos = Object.values(data.videos).reduce((a, b) => a + b, 0);
  $("totals").textContent = `${videos} videos, ${data.criteria} criteria, ${data.answers} answers`;
  $("progress").hidden = false;
  message(data.raters.length ? "" : "No raters yet: add them with 'ophora review add-rater'.");
}

async function start() {
  const m = location.hash.match(/^#t=([A-Za-z0-9_-]+)$/);
  if (m) {
    history.replaceState(null, "", location.pathname);
    const r = await fetch("/api/admin/session", {
      method: "POST", credentials: "same-origin", headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: m[1] }),
    }).catch(() => null);
    if (!r || !r.ok) { message("This admin link is not valid."); return; }
  }
  await refresh();
  setInterval(refresh, 10000);
}

document.addEventListener("DOMContentLoaded", start);
