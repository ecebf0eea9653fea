// The rater page: one video at a time, every click saved at once (in order, retried until the server has it).
"use strict";

const $ = (id) => document.getElementById(id);
let S = null;          // the state from /api/state: criteria, items (video, phase, instruction, scores, comment)
let index = 0;         // the video shown
let active = 0;        // the criterion the number keys rate
const queue = [];      // writes not yet confirmed, sent one at a time in order
let sending = false;
let commentTimer = null;
let commentDirty = false;  // typed into since the last save (only typing saves a comment)

function requestId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function message(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function saveState() {
  const el = $("save-state");
  if (queue.length === 0) { el.textContent = "All answers saved"; el.className = "save ok"; }
  else if (sending && queue[0].failures > 0) { el.textContent = "Not saved yet, retrying\u2026"; el.className = "save warn"; }
  else { el.textContent = "Saving\u2026"; el.className = "save busy"; }
}

function enqueue(url, body) {
  queue.push({ url, body: { request: requestId(), ...body }, failures: 0 });
  saveState();
  pump();
}

async function pump() {
  if (sending) return;
  sending = true;
  while (queue.length) {
    const job = queue[0];
    let response = null;
    try {
      response = await fetch(job.url, {
        method: "POST", credentials: "same-origin", cache: "no-store",
        headers: { "content-type": "application/json", "x-ophora-csrf": S.csrf },
        body: JSON.stringify(job.body),
      });
    } catch (e) { response = null; }
    if (response && (response.ok || response.status === 409)) {   // 409: the server already has this request
      queue.shift();
    } else if (response && response.status === 401) {
      fatal("You are signed out. Open your personal link again; your saved answers are kept.");
      sending = false;
      return;
    } else if (response && response.status < 500) {
      const reason = await response.json().then((d) => d.error).catch(() => response.statusText);
      message("Not saved: " + reason);
      queue.shift();
    } else {
      job.failures += 1;
      saveState();
      await new Promise((r) => setTimeout(r, Math.min(10000, 500 * 2 ** job.failures)));
    }
    saveState();
  }
  sending = false;
  saveState();
}

function fatal(text) {
  $("app").hidden = true;
  message(text);
}

function item() { return S.items[index]; }

function complete(it) { return S.criteria.every((c) => it.scores[c.key] !== undefined); }

function setScore(ci, value) {
  const it = item(), c = S.criteria[ci];
  it.scores[c.key] = value;
  enqueue("/api/score", { video: it.video, criterion: c.key, score: value });
  active = Math.min(ci + 1, S.criteria.length - 1);
  render();
}

function saveComment() {
  clearTimeout(commentTimer);
  commentTimer = null;
  if (!commentDirty) return;
  commentDirty = false;
  const it = item(), text = $("comment").value;
  if (text === it.comment) return;
  it.comment = text;
  enqueue("/api/comment", { video: it.video, comment: text });
}

function go(to) {
  if (to < 0 || to >= S.items.length) return;
  saveComment();
  index = to;
  const it = item();
  const first = S.criteria.findIndex((c) => it.scores[c.key] === undefined);
  active = first < 0 ? 0 : first;
  history.replaceState(null, "", "#" + (index + 1));
  render();
}

function buildCriteria() {
  const list = $("criteria");
  list.textContent = "";
  S.criteria.forEach((c, ci) => {
    const li = document.createElement("li");
    li.className = "criterion";
    li.dataset.key = c.key;
    const head = document.createElement("div");
    head.className = "criterion-head";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = c.label;
    head.appendChild(label);
    if (c.help) {
      const help = document.createElement("span");
      help.className = "help";
      help.textContent = c.help;
      head.appendChild(help);
    }
    li.appendChild(head);
    const buttons = document.createElement("div");
    buttons.className = "scores";
    buttons.setAttribute("role", "group");
    buttons.setAttribute("aria-label", c.label);
    for (let v = S.scale[0]; v <= S.scale[1]; v++) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "score";
      b.textContent = String(v);
      b.dataset.score = String(v);
      b.setAttribute("aria-pressed", "false");
      b.addEventListener("click", () => { active = ci; setScore(ci, v); });
      buttons.appendChild(b);
    }
    li.addEventListener("click", (e) => { if (!e.target.closest("button")) { active = ci; render(); } });
    li.appendChild(buttons);
    list.appendChild(li);
  });
}

function render() {
  const it = item(), n = S.items.length;
  const done = S.items.filter(complete).length;
  $("position").textContent = `Video ${index + 1} of ${n}`;
  $("done").textContent = `${done} of ${n} fully rated`;
  $("meter-fill").style.width = `${(100 * done) / Math.max(n, 1)}%`;
  const video = $("video"), src = "/api/video/" + it.video;
  if (video.getAttribute("src") !== src) { video.setAttribute("src", src); video.load(); }
  $("phase").textContent = it.phase || "\u2014";
  $("instruction").textContent = it.instruction || "\u2014";
  document.querySelectorAll("#criteria .criterion").forEach((li, ci) => {
    const key = S.criteria[ci].key;
    li.classList.toggle("active", ci === active);
    li.classList.toggle("rated", it.scores[key] !== undefined);
    li.querySelectorAll("button.score").forEach((b) => {
      const on = Number(b.dataset.score) === it.scores[key];
      b.classList.toggle("selected", on);
      b.setAttribute("aria-pressed", on ? "true" : "false");
    });
  });
  if (document.activeElement !== $("comment")) $("comment").value = it.comment || "";
  $("prev").disabled = index === 0;
  $("next").disabled = index === n - 1;
}

function onKey(e) {
  if (!S || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.target === $("comment")) {
    if (e.key === "Escape") { saveComment(); $("comment").blur(); e.preventDefault(); }
    return;
  }
  const digit = /^[1-9]$/.test(e.key) ? Number(e.key) : null;
  if (digit !== null && digit >= S.scale[0] && digit <= S.scale[1]) { setScore(active, digit); }
  else if (e.key === "ArrowDown") { active = Math.min(active + 1, S.criteria.length - 1); render(); }
  else if (e.key === "ArrowUp") { active = Math.max(active - 1, 0); render(); }
  else if (e.key === "ArrowRight" || e.key === "Enter") { go(index + 1); }
  else if (e.key === "ArrowLeft") { go(index - 1); }
  else if (e.key === "c" || e.key === "C") { $("comment").focus(); }
  else return;
  e.preventDefault();
}

async function start() {
  const m = location.hash.match(/^#t=([A-Za-z0-9_-]+)$/);
  if (m) {
    history.replaceState(null, "", location.pathname);   // the token leaves the address bar and the history
    const r = await fetch("/api/session", {
      method: "POST", credentials: "same-origin", headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: m[1] }),
    }).catch(() => null);
    if (!r || !r.ok) { fatal("This link is not valid. Ask the study organiser for your personal link."); return; }
  }
  const r = await fetch("/api/state", { credentials: "same-origin", cache: "no-store" }).catch(() => null);
  if (!r || r.status === 401) { fatal("Open your personal link (from the study organiser) to start rating."); return; }
  if (!r.ok) { fatal("The server could not be reached; reload the page to try again."); return; }
  S = await r.json();
  if (!S.items.length) { fatal("No videos are assigned to you yet."); return; }
  $("comment").maxLength = S.max_comment;
  buildCriteria();
  const wanted = Number((location.hash.match(/^#(\d+)$/) || [])[1]);
  const firstOpen = S.items.findIndex((it) => !complete(it));
  index = wanted >= 1 && wanted <= S.items.length ? wanted - 1 : Math.max(firstOpen, 0);
  $("app").hidden = false;
  go(index);
  saveState();
}

window.addEventListener("keydown", onKey, true);
window.addEventListener("beforeunload", (e) => {
  if (S && commentDirty) saveComment();
  if (queue.length) { e.preventDefault(); e.returnValue = ""; }
});
document.addEventListener("DOMContentLoaded", () => {
  $("prev").addEventListener("click", () => go(index - 1));
  $("next").addEventListener("click", () => go(index + 1));
  $("comment").addEventListener("input", () => { commentDirty = true; clearTimeout(commentTimer); commentTimer = setTimeout(saveComment, 800); });
  $("comment").addEventListener("blur", saveComment);
  start();
});
