// The mgvr web page: search by text, image or "more like this", filters, result cards with
// their frames, a player that starts at the best moment, and the index's status.
// Plain JavaScript, no dependencies; the URL holds the query and filters (bookmarkable).

const $ = (id) => document.getElementById(id);
const PAGE = 20; // results per page
const GROUPED_FETCH = 5; // with "group by video", fetch this many clips per shown video
const CLIPS_PER_GROUP = 4; // a video's best clip and up to 3 more

const state = {
  hits: [], // the last answer's hits
  limit: PAGE,
  image: null, // {file, url} when the query is an image
  cards: [], // card elements in keyboard order
  player: null, // {hit, start, end}
};

// ---------------------------------------------------------------- helpers

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function clock(seconds) {
  const s = Math.max(0, seconds);
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const rest = (s % 60).toFixed(1).padStart(4, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${rest}` : `${minutes}:${rest}`;
}

function splitPath(path) {
  const cut = path.lastIndexOf("/");
  return { folder: cut > 0 ? path.slice(0, cut) : "/", name: path.slice(cut + 1) };
}

// The end of a long folder is what tells videos apart: "…/holiday/2024" rather than
// "/home/me/vid…".
function shortFolder(folder, room = 30) {
  if (folder.length <= room) return folder;
  const parts = folder.split("/");
  let tail = parts.pop();
  while (parts.length && tail.length + parts[parts.length - 1].length + 1 <= room - 2) tail = `${parts.pop()}/${tail}`;
  return `…/${tail}`;
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

// A clip's frames are one image: square tiles side by side, in sample order.
function spriteUrl(clipId) {
  return `/clips/${clipId}/frames`;
}

function showMessage(text, kind = "") {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind}`;
}

async function answerOf(response) {
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const why = payload && payload.error ? payload.error : `HTTP ${response.status}`;
    throw new Error(why);
  }
  return payload;
}

// A bar of the given height (0..1); set through the style object, which the page's content
// security policy allows (style attributes it does not).
function bar(fraction) {
  const node = el("span");
  node.style.height = `${Math.round(fraction * 100)}%`;
  return node;
}

// Frame `frame` of a clip: a square window onto its sprite (the image is as tall as the
// window, so tile j starts j window-widths in). Where there is no sprite, a placeholder says
// so instead of a broken image.
function thumbnail(clipId, frame, alt, className) {
  const img = el("img", { src: spriteUrl(clipId), alt, draggable: "false" });
  img.style.left = `${-frame * 100}%`;
  const box = el("div", { class: `tile ${className}` }, img);
  img.addEventListener("error", () => {
    box.replaceWith(el("div", { class: `${className} no-thumb`, text: "no preview", title: alt }));
  });
  return box;
}

// ---------------------------------------------------------------- URL <-> form

const FILTERS = ["under", "name", "after", "before"];

function readUrl() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) { // the server set it as a cookie: keep it out of history
    params.delete("token");
    history.replaceState(null, "", params.toString() ? `/?${params}` : "/");
  }
  $("q").value = params.get("q") || "";
  for (const key of FILTERS) $(key).value = params.get(key) || "";
  $("group").checked = params.get("group") === "1";
  return params;
}

function writeUrl(query, push = true) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) if (value !== "" && value != null) params.set(key, value);
  for (const key of FILTERS) if ($(key).value.trim()) params.set(key, $(key).value.trim());
  if ($("group").checked) params.set("group", "1");
  const url = params.toString() ? `/?${params}` : "/";
  if (url !== location.pathname + location.search) {
    if (push) history.pushState(null, "", url);
    else history.replaceState(null, "", url);
  }
}

function filterFields() {
  const fields = {};
  const under = $("under").value.trim();
  const name = $("name").value.trim();
  if (under) fields.under = under;
  if (name) fields.name = name;
  if ($("after").value) fields.modified_after = $("after").value;
  if ($("before").value) fields.modified_before = $("before").value;
  return fields;
}

function fetchLimit() {
  return $("group").checked ? state.limit * GROUPED_FETCH : state.limit;
}

// ---------------------------------------------------------------- searching

let searchSerial = 0;

async function runSearch(request, label) {
  const serial = ++searchSerial;
  $("results").setAttribute("aria-busy", "true");
  showView("results");
  showMessage("Searching…", "busy");
  const started = performance.now();
  try {
    const answer = await answerOf(await request());
    if (serial !== searchSerial) return; // a newer search is on its way
    state.hits = answer.hits;
    render(answer, performance.now() - started, label);
  } catch (error) {
    if (serial !== searchSerial) return;
    state.hits = [];
    render(null);
    showMessage(error.message, "error");
  }
  $("results").setAttribute("aria-busy", "false");
  document.body.dataset.answered = serial; // which search the page shows (tests wait on it)
}

function searchText(push = true) {
  const query = $("q").value.trim();
  if (!query) {
    $("q").focus();
    return;
  }
  clearImage();
  writeUrl({ q: query }, push);
  const params = new URLSearchParams({ q: query, limit: fetchLimit() });
  for (const [key, value] of Object.entries(filterFields())) params.set(key, value);
  setBanner(null);
  runSearch(() => fetch(`/search?${params}`), `“${query}”`);
}

function searchLike(clipId, at, push = true) {
  clearImage();
  writeUrl({ like: clipId, at: at.toFixed(2) }, push);
  const params = new URLSearchParams({ like: clipId, at, limit: fetchLimit() });
  for (const [key, value] of Object.entries(filterFields())) params.set(key, value);
  const banner = el("span", {}, "More like this frame of clip ", el("b", { text: String(clipId) }),
    ` at ${clock(at)}`);
  setBanner(banner, thumbnailAt(clipId, at));
  runSearch(() => fetch(`/search?${params}`), "this frame");
}

function thumbnailAt(clipId, at) {
  const hit = state.hits.find((h) => h.clip_id === clipId);
  if (!hit || !hit.frame_times.length) return null;
  let best = 0;
  hit.frame_times.forEach((t, j) => { if (Math.abs(t - at) < Math.abs(hit.frame_times[best] - at)) best = j; });
  return thumbnail(clipId, best, "query frame", "banner-thumb");
}

function searchImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    showMessage(`${file ? file.name : "That"} is not an image file`, "error");
    return;
  }
  if (state.image) URL.revokeObjectURL(state.image.url);
  state.image = { file, url: URL.createObjectURL(file) };
  $("q").value = "";
  writeUrl({});
  setBanner(el("span", {}, "Searching by image ", el("b", { text: file.name || "pasted image" })),
    el("img", { src: state.image.url, alt: "query image", class: "banner-thumb" }));
  const form = new FormData();
  form.append("image", file, file.name || "pasted.png");
  form.append("limit", fetchLimit());
  for (const [key, value] of Object.entries(filterFields())) form.append(key, value);
  runSearch(() => fetch("/search", { method: "POST", body: form }), file.name || "the image");
}

function clearImage() {
  if (state.image) URL.revokeObjectURL(state.image.url);
  state.image = null;
}

function rerun() {
  if (state.image) searchImage(state.image.file);
  else if (new URLSearchParams(location.search).has("like")) {
    const params = new URLSearchParams(location.search);
    searchLike(Number(params.get("like")), Number(params.get("at") || 0));
  } else if ($("q").value.trim()) searchText();
}

function setBanner(content, picture = null) {
  const banner = $("query-banner");
  banner.replaceChildren();
  if (!content) {
    banner.hidden = true;
    return;
  }
  if (picture) banner.append(picture);
  banner.append(content, el("button", {
    type: "button", class: "link", text: "clear",
    onclick: () => { clearImage(); setBanner(null); $("results").replaceChildren(); showMessage(""); writeUrl({}); $("q").focus(); },
  }));
  banner.hidden = false;
}

// ---------------------------------------------------------------- results

function render(answer, elapsed = 0, label = "") {
  const results = $("results");
  results.replaceChildren();
  state.cards = [];
  $("more-wrap").hidden = true;
  if (!answer) return;
  const hits = answer.hits;
  const filtered = Object.keys(answer.filter || {}).length > 0;
  if (!hits.length) {
    showMessage(filtered ? "No clip matches these filters." : "Nothing indexed yet: run `mgvr index FOLDER`.");
    return;
  }
  const timings = Object.entries(answer.timings_ms || {}).map(([k, v]) => `${k.replace("_", " ")} ${v.toFixed(1)}`).join(", ");
  if ($("group").checked) {
    const groups = new Map();
    for (const hit of hits) {
      if (!groups.has(hit.path)) groups.set(hit.path, []);
      groups.get(hit.path).push(hit);
    }
    const shown = [...groups.values()].slice(0, state.limit);
    for (const clips of shown) results.append(videoCard(clips));
    showMessage(`${plural(shown.length, "video")} for ${label} in ${elapsed.toFixed(0)} ms${filtered ? " (filtered)" : ""} · ${timings} ms`);
    $("more-wrap").hidden = groups.size < state.limit;
  } else {
    for (const hit of hits) results.append(card(hit));
    showMessage(`${plural(hits.length, "clip")} for ${label} in ${elapsed.toFixed(0)} ms${filtered ? " (filtered)" : ""} · ${timings} ms`);
    $("more-wrap").hidden = hits.length < state.limit;
  }
}

// One card per video: its best clip, and its next best clips listed under it.
function videoCard(clips) {
  const node = card(clips[0]);
  node.classList.add("video-card");
  const others = clips.slice(1, CLIPS_PER_GROUP);
  if (others.length) {
    const list = el("div", { class: "others" },
      el("div", { class: "others-head", text: `${clips.length - 1} more clip${clips.length > 2 ? "s" : ""} in this video` }));
    for (const hit of others) {
      list.append(el("button", {
        type: "button", class: "other", title: `Play from ${clock(hit.best_moment_s)}`,
        onclick: (e) => { e.stopPropagation(); openPlayer(hit); },
      }, thumbnail(hit.clip_id, hit.best_frame, `clip at ${clock(hit.start_s)}`, "other-img"),
      el("span", { text: `${clock(hit.start_s)}–${clock(hit.end_s)}` }),
      el("span", { class: "score", text: hit.score.toFixed(3) })));
    }
    node.insertBefore(list, node.querySelector(".actions"));
  }
  return node;
}

function card(hit) {
  const { folder, name } = splitPath(hit.path);
  const gone = hit.video === "gone";
  const image = el("div", { class: "thumb" },
    thumbnail(hit.clip_id, hit.best_frame, `${name} at ${clock(hit.best_moment_s)}`, "thumb-img"),
    el("span", { class: "moment", text: clock(hit.best_moment_s) }),
    gone ? el("span", { class: "badge", text: "video gone" }) : null);
  // The clip's frames, each with a bar as tall as its gate weight (relative to the largest).
  const strip = el("div", { class: "strip", title: "The clip's frames; the bars show how much each matched the query" });
  const heaviest = Math.max(...hit.frame_weights, 1e-9);
  hit.frame_times.forEach((time, j) => {
    const weight = hit.frame_weights[j] ?? 0;
    strip.append(el("div", { class: `frame${j === hit.best_frame ? " best" : ""}`, title: `${clock(time)} · gate weight ${weight.toFixed(3)}` },
      thumbnail(hit.clip_id, j, `frame at ${clock(time)}`, "frame-img"),
      el("span", { class: "weight" }, bar(weight / heaviest))));
  });
  const node = el("article", {
    class: `card${gone ? " gone" : ""}`, tabindex: "0", "data-clip": hit.clip_id,
    "data-path": hit.path, "data-moment": hit.best_moment_s,
    "aria-label": `${name}, ${clock(hit.start_s)} to ${clock(hit.end_s)}, score ${hit.score.toFixed(3)}`,
  }, image,
  el("div", { class: "meta" },
    el("div", { class: "name", title: hit.path, text: name }),
    el("div", { class: "folder", title: folder, text: shortFolder(folder) }),
    el("div", { class: "line" }, el("span", { text: `${clock(hit.start_s)}–${clock(hit.end_s)}` }),
      el("span", { class: "score", text: `score ${hit.score.toFixed(3)}` }))),
  hit.frame_times.length ? strip : null,
  el("div", { class: "actions" },
    el("button", { type: "button", class: "link", text: "More like this", title: "Search with this clip's best frame",
      onclick: (e) => { e.stopPropagation(); searchLike(hit.clip_id, hit.best_moment_s); } }),
    el("button", { type: "button", class: "link", text: "Only this folder", title: folder,
      onclick: (e) => { e.stopPropagation(); $("under").value = folder; rerun(); } })));
  node.addEventListener("click", () => openPlayer(hit));
  node.addEventListener("keydown", (e) => {
    if ((e.key === "Enter" || e.key === " ") && e.target === node) {
      e.preventDefault();
      openPlayer(hit);
    }
  });
  state.cards.push(node);
  return node;
}

// Arrow keys move between cards: left/right in reading order, up/down to the card above or
// below (the nearest one horizontally in the previous or next row).
function moveFocus(key) {
  const cards = state.cards.filter((c) => c.isConnected);
  if (!cards.length) return false;
  const current = cards.indexOf(document.activeElement);
  if (current < 0) {
    cards[0].focus();
    return true;
  }
  let target = current;
  if (key === "ArrowRight") target = Math.min(cards.length - 1, current + 1);
  else if (key === "ArrowLeft") target = Math.max(0, current - 1);
  else {
    const here = cards[current].getBoundingClientRect();
    const down = key === "ArrowDown";
    let best = null;
    for (const [i, c] of cards.entries()) {
      const box = c.getBoundingClientRect();
      const vertical = down ? box.top - here.bottom : here.top - box.bottom;
      if (vertical < -1) continue;
      const score = vertical * 1000 + Math.abs(box.left - here.left);
      if (best === null || score < best.score) best = { i, score };
    }
    if (best) target = best.i;
  }
  cards[target].focus();
  cards[target].scrollIntoView({ block: "nearest" });
  return true;
}

// ---------------------------------------------------------------- player

function openPlayer(hit) {
  const { folder, name } = splitPath(hit.path);
  const video = $("video");
  state.player = { hit };
  $("player-title").textContent = name;
  $("player-sub").textContent = `${folder} · clip ${clock(hit.start_s)}–${clock(hit.end_s)} · best moment ${clock(hit.best_moment_s)}`;
  $("player-message").hidden = true;
  video.hidden = false;
  $("timeline").hidden = false;
  const frames = $("player-frames");
  frames.replaceChildren();
  hit.frame_times.forEach((time, j) => {
    frames.append(el("button", {
      type: "button", class: `player-frame${j === hit.best_frame ? " best" : ""}`, title: `Play from ${clock(time)}`,
      onclick: () => { if (!video.hidden) { video.currentTime = time; video.play().catch(() => {}); } },
    }, thumbnail(hit.clip_id, j, `frame at ${clock(time)}`, "player-frame-img"),
    el("span", { text: `${clock(time)} · ${(hit.frame_weights[j] ?? 0).toFixed(2)}` })));
  });
  $("player").hidden = false;
  document.body.classList.add("modal-open");
  video.dataset.clip = hit.clip_id;
  video.src = `/clips/${hit.clip_id}/video`;
  video.addEventListener("loadedmetadata", () => {
    video.currentTime = Math.min(hit.best_moment_s, Math.max(0, video.duration - 0.05));
    drawTimeline();
    video.play().catch(() => {}); // autoplay may be refused; the controls are there
  }, { once: true });
  $("player-close").focus();
}

async function explainVideoError() {
  const video = $("video");
  const hit = state.player && state.player.hit;
  if (!hit || String(hit.clip_id) !== video.dataset.clip) return;
  let text;
  try {
    const response = await fetch(`/clips/${hit.clip_id}/video`, { headers: { Range: "bytes=0-0" } });
    if (response.ok) {
      const { name } = splitPath(hit.path);
      const kind = name.includes(".") ? name.split(".").pop().toUpperCase() : "this";
      text = `This browser cannot play ${kind} files (its container or codec). The clip's indexed frames are below; the file is ${hit.path}`;
    } else {
      text = (await response.json()).error;
    }
  } catch (error) {
    text = error.message;
  }
  video.removeAttribute("src");
  video.load();
  video.hidden = true;
  $("timeline").hidden = true;
  $("timeline-labels").replaceChildren();
  const box = $("player-message");
  box.textContent = text;
  box.hidden = false;
}

function closePlayer() {
  const video = $("video");
  video.pause();
  video.removeAttribute("src");
  video.load();
  $("player").hidden = true;
  document.body.classList.remove("modal-open");
  const clip = state.player && state.player.hit.clip_id;
  state.player = null;
  const card = state.cards.find((c) => c.dataset.clip === String(clip) && c.isConnected);
  if (card) card.focus();
}

function drawTimeline() {
  const video = $("video");
  const hit = state.player && state.player.hit;
  if (!hit || !Number.isFinite(video.duration) || video.duration <= 0) return;
  const d = video.duration;
  const pct = (t) => `${Math.max(0, Math.min(100, (t / d) * 100))}%`;
  $("timeline-clip").style.left = pct(hit.start_s);
  $("timeline-clip").style.width = `calc(${pct(hit.end_s)} - ${pct(hit.start_s)})`;
  $("timeline-best").style.left = pct(hit.best_moment_s);
  $("timeline-head").style.left = pct(video.currentTime);
  $("timeline-labels").replaceChildren(el("span", { text: "0:00.0" }),
    el("span", { class: "clip-label", text: `clip ${clock(hit.start_s)}–${clock(hit.end_s)}` }),
    el("span", { text: clock(d) }));
}

// ---------------------------------------------------------------- status page

async function showStatus(push = true) {
  if (push) history.pushState(null, "", "/?view=status");
  showView("status");
  const view = $("status-view");
  view.replaceChildren(el("p", { text: "Loading…" }));
  try {
    const s = await answerOf(await fetch("/status"));
    const facts = [
      ["Index", s.index], ["Model", s.model], ["Files indexed", s.files_indexed],
      ["Clips", s.clips], ["Failed files", s.files_failed],
      ["Size on disk", `${(s.disk_bytes / 1e6).toFixed(1)} MB`], ["Generation", s.generation],
      ["Missing files", `${s.files_missing} (kept until the next runs remove them)`],
      ["Coarse index", `${s.coarse.clips} clips in ${s.coarse.segments.length} segment${s.coarse.segments.length === 1 ? "" : "s"}: ` +
        s.coarse.segments.map((g) => `${g.kind} ${g.clips}${g.dead ? ` (${g.dead} removed)` : ""}${g.nlist ? `, nlist ${g.nlist}, nprobe ${g.nprobe}` : ""}, ${g.backend}`).join("; ")],
      ["Frames per clip", `${s.frames_per_clip}, clips of at most ${s.clip_seconds} s`],
      ["Device", s.device], ["Queries served", s.queries_served], ["Up for", clock(s.uptime_s)],
    ];
    const list = el("dl", { class: "facts" });
    for (const [key, value] of facts) list.append(el("dt", { text: key }), el("dd", { text: String(value) }));
    const failed = table(["File", "Reason", "Detail"], s.failed.map((f) => [f.path, f.reason, f.detail]));
    const runs = table(["Started", "Took", "Folder", "Indexed", "Unchanged", "Moved", "Removed", "Failed"],
      s.runs.map((r) => [new Date(r.started_at * 1000).toLocaleString(),
        r.finished_at ? `${(r.finished_at - r.started_at).toFixed(1)} s` : "did not finish",
        r.root, r.indexed, r.unchanged, r.moved, r.removed, r.failed]));
    const missing = table(["File", "Missing since"], s.missing.map((m) => [m.path, new Date(m.since * 1000).toLocaleString()]));
    view.replaceChildren(el("h2", { text: "Index status" }), list,
      el("h3", { text: `Failed files (${s.failed.length})` }), s.failed.length ? failed : el("p", { text: "None." }),
      ...(s.missing.length ? [el("h3", { text: `Missing files (${s.missing.length})` }), missing] : []),
      el("h3", { text: "Recent runs" }), s.runs.length ? runs : el("p", { text: "No runs recorded." }));
  } catch (error) {
    view.replaceChildren(el("p", { class: "error", text: error.message }));
  }
}

function table(headings, rows) {
  const head = el("tr", {}, ...headings.map((h) => el("th", { text: h })));
  const body = rows.map((row) => el("tr", {}, ...row.map((cell) => el("td", { text: String(cell ?? "") }))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function showView(view) {
  const status = view === "status";
  $("status-view").hidden = !status;
  for (const id of ["results", "filters", "message"]) $(id).hidden = status;
  if (status) {
    $("query-banner").hidden = true;
    $("more-wrap").hidden = true;
  }
  $("status-link").classList.toggle("active", status);
}

// ---------------------------------------------------------------- wiring

function fromUrl(push = false) {
  const params = readUrl();
  state.limit = PAGE;
  if (params.get("view") === "status") showStatus(false);
  else if (params.has("like")) searchLike(Number(params.get("like")), Number(params.get("at") || 0), push);
  else if (params.get("q")) searchText(push);
  else {
    showView("results");
    $("results").replaceChildren();
    setBanner(null);
    showMessage("Type what you are looking for, or drop an image on the page.");
  }
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.limit = PAGE;
  searchText();
});
$("image-input").addEventListener("change", (e) => {
  state.limit = PAGE;
  if (e.target.files[0]) searchImage(e.target.files[0]);
  e.target.value = "";
});
for (const id of FILTERS) {
  $(id).addEventListener("change", () => { state.limit = PAGE; rerun(); });
}
for (const id of ["under", "name"]) {
  $(id).addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); state.limit = PAGE; rerun(); } });
}
$("group").addEventListener("change", () => { state.limit = PAGE; rerun(); });
$("clear-filters").addEventListener("click", () => {
  for (const id of FILTERS) $(id).value = "";
  state.limit = PAGE;
  rerun();
});
$("more").addEventListener("click", () => { state.limit += PAGE; rerun(); });
$("status-link").addEventListener("click", (e) => { e.preventDefault(); showStatus(); });
$("player-close").addEventListener("click", closePlayer);
$("player").addEventListener("click", (e) => { if (e.target === $("player")) closePlayer(); });
$("video").addEventListener("error", explainVideoError);
$("video").addEventListener("timeupdate", drawTimeline);
$("timeline").addEventListener("click", (e) => {
  const video = $("video");
  const box = $("timeline").getBoundingClientRect();
  if (Number.isFinite(video.duration)) video.currentTime = ((e.clientX - box.left) / box.width) * video.duration;
});
window.addEventListener("popstate", () => fromUrl(false));
window.addEventListener("resize", drawTimeline);

document.addEventListener("keydown", (e) => {
  if (!$("player").hidden) {
    if (e.key === "Escape") {
      e.preventDefault();
      closePlayer();
    }
    return;
  }
  const typing = e.target.matches("input, textarea, select");
  if (e.key === "/" && !typing) {
    e.preventDefault();
    $("q").focus();
  } else if (e.key.startsWith("Arrow") && (!typing || e.key === "ArrowDown" && e.target === $("q"))) {
    if (moveFocus(e.key)) e.preventDefault();
  } else if (e.key === "Escape" && typing) {
    e.target.blur();
  }
});

// Images: drop anywhere on the page, or paste one.
let dragDepth = 0;
document.addEventListener("dragenter", (e) => {
  if ([...e.dataTransfer.types].includes("Files")) { dragDepth += 1; $("drop-overlay").hidden = false; }
});
document.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) $("drop-overlay").hidden = true; });
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  $("drop-overlay").hidden = true;
  const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/")) || e.dataTransfer.files[0];
  state.limit = PAGE;
  if (file) searchImage(file);
});
document.addEventListener("paste", (e) => {
  const item = [...e.clipboardData.items].find((i) => i.kind === "file" && i.type.startsWith("image/"));
  if (item) {
    e.preventDefault();
    state.limit = PAGE;
    searchImage(item.getAsFile());
  }
});

fromUrl(false);
