// The search page: drop or pick an image (or type a stored id), see the query beside a grid of
// hits; clicking a hit searches by it. Talks only to /api/* and /thumbnails/*; every text from
// the server goes in with textContent, never as HTML.
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
  if (!response.ok) {
    throw new Error(body.error || response.status + " " + response.statusText);
  }
  return body;
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
    const tile = document.createElement("figure");
    tile.className = "hit";
    tile.tabIndex = 0;
    tile.dataset.id = hit.id;
    tile.title = "search by this picture (id " + hit.id + ")";
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = hit.label || "hit " + hit.rank;
    img.addEventListener("error", () => {  // its picture is not on this machine
      const missing = document.createElement("div");
      missing.className = "missing";
      missing.textContent = "(no picture here)";
      img.replaceWith(missing);
    });
    const caption = document.createElement("figcaption");
    const title = document.createElement("div");
    title.textContent = hit.rank + ". " + (hit.label || "(no label)");
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = hit.name || "id " + hit.id;
    const distance = document.createElement("div");
    distance.className = "distance";
    distance.textContent = "distance " + Number(hit.distance).toPrecision(4);
    caption.append(title, name, distance);
    tile.append(img, caption);
    tile.addEventListener("click", () => searchId(hit.id));
    tile.addEventListener("keydown", (e) => { if (e.key === "Enter") searchId(hit.id); });
    hits.append(tile);
  }
  $("results").style.display = "flex";
  const shown = answer.hits.length + " hit" + (answer.hits.length === 1 ? "" : "s") +
                " in " + answer.collection;
  setStatus(answer.message ? answer.message : shown);
  if (answer.random_weights) showWeightsWarning();
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
  $("by-id").addEventListener("submit", (e) => {
    e.preventDefault();
    if ($("item-id").value !== "") searchId($("item-id").value);
  });
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
}

start();
