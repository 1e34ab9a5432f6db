// The search page: drop or pick an image (or type a stored id), see the query beside a grid of
// hits; clicking a hit searches by it. Its duplicates view (#duplicates) lists the collection's
// near-duplicate groups as rows of thumbnails. Talks only to /api/* and /thumbnails/*; every
// text from the server goes in with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let queryUrl = null;

function showError(message) {
  $("error").textContent = message;
  $("error").style.display = message ? "block" : "none";
}

function setStatus(message) {
  $("status").textContent = message;
}

async function call(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error("the search page's server cannot be reached (" + err.message + ")");
  }
  const body = await response.json().catch(() => ({}));
  if (response.status === 401 && body.token_required) askForToken();
  if (!response.ok) {
    throw new Error(body.error || response.status + " " + response.statusText);
  }
  return body;
}

// The page token is asked for once: the server answers it with a session cookie (HttpOnly,
// so this script never holds it) that every later call and thumbnail carries.
function askForToken() {
  $("token-form").hidden = false;
  $("token").focus();
}

async function sendToken(event) {
  event.preventDefault();
  try {
    await call("/api/session", {
      method: "POST", body: JSON.stringify({ token: $("token").value }),
      headers: { "Content-Type": "application/json" },
    });
  } catch (err) {
    showError(err.message);
    return;
  } finally {
    $("token").value = "";  // never kept in the page; typed again after a wrong one
  }
  $("token-form").hidden = true;
  showError("");
  if (!info) await loadInfo();
}

function searchParams() {
  const params = new URLSearchParams();
  params.set("collection", $("collection").value || (info && info.collection) || "");
  params.set("top_k", $("top-k").value || "20");
  for (const label of $("labels").value.split(",")) {
    if (label.trim()) params.append("label", label.trim());
  }
  return params;
}

async function searchImage(file) {
  showError("");
  if (info && !info.image_types.includes(file.type)) {
    showError((file.type || "this file") + " is not a picture the page takes (" +
              info.image_types.join(", ") + ")");
    return;
  }
  if (info && file.size > info.max_upload_bytes) {
    showError("the picture is " + (file.size / 1e6).toFixed(1) + " MB; the page takes up to " +
              (info.max_upload_bytes / 1e6).toFixed(1) + " MB");
    return;
  }
  if (queryUrl) URL.revokeObjectURL(queryUrl);
  queryUrl = URL.createObjectURL(file);
  await run("/api/search?" + searchParams(), {
    method: "POST", body: file, headers: { "Content-Type": file.type },
  }, queryUrl, file.name);
}

async function searchId(id) {
  showError("");
  const params = searchParams();
  params.set("id", id);
  $("item-id").value = id;
  const thumbnail = "/thumbnails/" + encodeURIComponent(params.get("collection")) + "/" + id;
  await run("/api/search?" + params, { method: "GET" }, thumbnail, "stored item " + id);
}

async function run(url, options, queryImage, queryCaption) {
  setStatus("searching …");
  document.body.setAttribute("aria-busy", "true");
  try {
    const answer = await call(url, options);
    render(answer, queryImage, queryCaption);
  } catch (err) {
    setStatus("");
    showError(err.message);
  } finally {
    document.body.removeAttribute("aria-busy");
  }
}

function render(answer, queryImage, queryCaption) {
  $("query-image").src = queryImage;
  $("query-caption").textContent = queryCaption;
  const hits = $("hits");
  hits.replaceChildren();
  for (const hit of answer.hits) {
    hits.append(tileOf(hit, hit.rank + ". " + (hit.label || "(no label)"),
                       "distance " + Number(hit.distance).toPrecision(4)));
  }
  $("results").style.display = "flex";
  const shown = answer.hits.length + " hit" + (answer.hits.length === 1 ? "" : "s") +
                " in " + answer.collection;
  setStatus(answer.message ? answer.message : shown);
  if (answer.random_weights) showWeightsWarning();
}

// One stored item as a tile: thumbnail, title, file name, distance; clicking it searches by it.
function tileOf(item, titleText, distanceText) {
  const tile = document.createElement("figure");
  tile.className = "hit";
  tile.tabIndex = 0;
  tile.dataset.id = item.id;
  tile.title = "search by this picture (id " + item.id + ")";
  const img = document.createElement("img");
  img.src = item.thumbnail;
  img.alt = item.label || "item " + item.id;
  img.addEventListener("error", () => {  // its picture is not on this machine
    const missing = document.createElement("div");
    missing.className = "missing";
    missing.textContent = "(no picture here)";
    img.replaceWith(missing);
  });
  const caption = document.createElement("figcaption");
  const title = document.createElement("div");
  title.textContent = titleText;
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = item.name || "id " + item.id;
  const distance = document.createElement("div");
  distance.className = "distance";
  distance.textContent = distanceText;
  caption.append(title, name, distance);
  tile.append(img, caption);
  const open = () => { location.hash = ""; searchId(item.id); };
  tile.addEventListener("click", open);
  tile.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  return tile;
}

async function findDuplicates() {
  showError("");
  const params = new URLSearchParams();
  params.set("collection", $("collection").value || (info && info.collection) || "");
  if ($("max-distance").value.trim()) params.set("max_distance", $("max-distance").value.trim());
  params.set("limit", $("group-limit").value || "100");
  $("duplicates-status").textContent = "looking for near-duplicates in " +
    params.get("collection") + " … (a large collection takes minutes)";
  $("groups").replaceChildren();
  document.body.setAttribute("aria-busy", "true");
  try {
    const answer = await call("/api/duplicates?" + params);
    renderGroups(answer);
  } catch (err) {
    $("duplicates-status").textContent = "";
    showError(err.message);
  } finally {
    document.body.removeAttribute("aria-busy");
  }
}

function renderGroups(answer) {
  const distance = Number(answer.max_distance).toPrecision(4);
  const rows = answer.groups.map((group, n) => {
    const row = document.createElement("section");
    row.className = "group";
    const heading = document.createElement("h2");
    heading.textContent = "group " + (n + 1) + ": " + group.members.length + " pictures";
    const members = document.createElement("div");
    members.className = "members";
    group.members.forEach((member, i) => {
      members.append(tileOf(member, member.label || "(no label)", i === 0
        ? "first of the group" : "distance " + Number(member.distance).toPrecision(4)));
    });
    row.append(heading, members);
    return row;
  });
  $("groups").replaceChildren(...rows);
  const items = answer.groups.reduce((sum, group) => sum + group.members.length, 0);
  $("duplicates-status").textContent = answer.groups.length
    ? answer.groups.length + (answer.groups.length === 1 ? " group (" : " groups (") + items +
      " pictures) in " + answer.collection +
      ", every member within " + distance + " of every other" +
      (answer.vector ? " by their " + answer.vector + " vectors" : "") +
      (answer.suggested ? " (the embedder's suggested distance)" : "") +
      (answer.groups.length === answer.limit ? "; the largest " + answer.limit + " shown" : "")
    : "no near-duplicates within " + distance + " in " + answer.collection;
}

function showView() {
  const duplicates = location.hash === "#duplicates";
  document.body.classList.toggle("duplicates", duplicates);
  for (const [link, current] of [["duplicates-link", duplicates], ["search-link", !duplicates]]) {
    if (current) $(link).setAttribute("aria-current", "page");
    else $(link).removeAttribute("aria-current");
  }
  if (duplicates && info && !$("groups").children.length) findDuplicates();
}

function showWeightsWarning() {
  $("weights").textContent = "The embedder runs on RANDOM weights: these results say nothing " +
    "about image content (give it ImageNet weights for real results).";
  $("weights").style.display = "block";
}

async function start() {
  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter") $("file").click(); });
  $("file").addEventListener("change", () => {
    if ($("file").files.length) searchImage($("file").files[0]);
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) searchImage(e.dataTransfer.files[0]);
  });
  $("duplicates-form").addEventListener("submit", (e) => {
    e.preventDefault();
    findDuplicates();
  });
  window.addEventListener("hashchange", showView);
  $("collection").addEventListener("change", () => {
    if (location.hash === "#duplicates") findDuplicates();
  });
  $("token-form").addEventListener("submit", sendToken);
  $("by-id").addEventListener("submit", (e) => {
    e.preventDefault();
    if ($("item-id").value !== "") searchId($("item-id").value);
  });
  await loadInfo();
}

async function loadInfo() {
  try {
    info = await call("/api/info");
  } catch (err) {
    showError(err.message);
    return;
  }
  const select = $("collection");
  const wanted = new URLSearchParams(location.search).get("collection");
  if (wanted) info.collection = wanted;  // e.g. the address `imgsearch demo` prints
  const names = info.collections.includes(info.collection)
    ? info.collections : [info.collection, ...info.collections];
  for (const name of names) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    select.append(option);
  }
  select.value = info.collection;
  $("top-k").value = info.default_top_k;
  $("top-k").max = info.max_top_k;
  if (info.random_weights) showWeightsWarning();
  setStatus(info.model + " (" + info.head + " head) · drop a picture to search " +
            info.collection);
  document.body.dataset.ready = "true";
  showView();
}

start();
