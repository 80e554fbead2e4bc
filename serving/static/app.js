// bookcounter page: send a photo to POST /count, draw the masks it answers, show the count;
// several photos at once: a table of thumbnails and counts, a running total and a CSV download.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { result: null, labels: null, modelVersion: null };

// --- the model badge and the "no champion yet" notice --------------------------------------
async function refreshModel() {
  try {
    const res = await fetch("/model");
    const body = await res.json();
    if (res.ok) {
      state.modelVersion = body.model_version;
      $("model-version").textContent = `model v${body.model_version}` +
        (body.dataset_version ? ` \u00b7 data ${body.dataset_version}` : "");
      $("notice").hidden = true;
    } else {
      state.modelVersion = null;
      $("model-version").textContent = "no model";
      $("notice").textContent = body.detail;
      $("notice").hidden = false;
    }
  } catch (e) {
    $("model-version").textContent = "server unreachable";
  }
}

// --- COCO compressed RLE (pycocotools' string format), column-major ------------------------
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// labels[y * w + x] = 1 + index of the best-scoring instance covering that pixel (0 = none)
function labelMap(instances, w, h) {
  const labels = new Int32Array(w * h);
  for (let i = instances.length - 1; i >= 0; i--) {   // best score last, so it wins overlaps
    const counts = rleCounts(instances[i].mask.counts);
    let pos = 0;
    for (let j = 0; j < counts.length; j++) {
      if (j % 2 === 1) {
        for (let q = pos; q < pos + counts[j]; q++) labels[(q % h) * w + Math.floor(q / h)] = i + 1;
      }
      pos += counts[j];
    }
  }
  return labels;
}

function color(i) {   // same hues as serving/overlay.py
  const h = (0.08 + i * 0.618034) % 1, s = 0.85, v = 1;
  const f = (n) => { const k = (n + h * 6) % 6; return Math.round(255 * (v - v * s * Math.max(0, Math.min(k, 4 - k, 1)))); };
  return [f(5), f(3), f(1)];
}

// --- drawing --------------------------------------------------------------------------------
function drawResult(bitmap, result) {
  const w = result.width, h = result.height;
  const photo = $("photo"), masks = $("masks");
  photo.width = masks.width = w;
  photo.height = masks.height = h;
  photo.getContext("2d").drawImage(bitmap, 0, 0, w, h);

  const labels = labelMap(result.instances, w, h);
  const ctx = masks.getContext("2d");
  const img = ctx.createImageData(w, h);
  const colors = result.instances.map((_, i) => color(i));
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const p = y * w + x, l = labels[p];
      if (!l) continue;
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        labels[p - 1] !== l || labels[p + 1] !== l || labels[p - w] !== l || labels[p + w] !== l;
      const [r, g, b] = colors[l - 1];
      img.data.set([r, g, b, edge ? 255 : 115], 4 * p);
    }
  }
  ctx.putImageData(img, 0, 0);

  const fontPx = Math.max(12, Math.round(Math.min(w, h) / 30));
  ctx.font = `bold ${fontPx}px system-ui, sans-serif`;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.lineWidth = Math.max(2, fontPx / 6);
  ctx.strokeStyle = "black";
  ctx.fillStyle = "white";
  result.instances.forEach((inst, i) => {
    const [bx, by, bw, bh] = inst.bbox;
    ctx.strokeText(String(i + 1), bx + bw / 2, by + bh / 2);
    ctx.fillText(String(i + 1), bx + bw / 2, by + bh / 2);
  });
  state.labels = labels;
  state.result = result;
}

function showTooltip(ev) {
  const r = state.result, canvas = $("masks");
  if (!r || !state.labels) return;
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor((ev.clientX - rect.left) * r.width / rect.width);
  const y = Math.floor((ev.clientY - rect.top) * r.height / rect.height);
  const tip = $("tooltip");
  const l = x >= 0 && y >= 0 && x < r.width && y < r.height ? state.labels[y * r.width + x] : 0;
  if (!l) { tip.hidden = true; return; }
  tip.textContent = `book ${l}: ${Math.round(r.instances[l - 1].score * 100)}% confident`;
  tip.style.left = `${ev.clientX - rect.left}px`;
  tip.style.top = `${ev.clientY - rect.top}px`;
  tip.hidden = false;
}

// --- sending a photo ------------------------------------------------------------------------
function setBusy(busy) {
  document.querySelectorAll(".button").forEach((b) => { b.disabled = busy; });
  $("drop-zone").setAttribute("aria-busy", busy ? "true" : "false");
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function countPhoto(file) {
  if (!file) return;
  $("batch").hidden = true;
  $("error").hidden = true;
  setBusy(true);
  $("details").textContent = "counting...";
  try {
    const form = new FormData();
    form.append("image", file, file.name || "photo.jpg");
    const res = await fetch("/count", { method: "POST", body: form });
    const body = await res.json().catch(() => ({ detail: `HTTP ${res.status}` }));
    if (!res.ok) {
      showError(body.detail || `HTTP ${res.status}`);
      if (res.status === 503) refreshModel();
      return;
    }
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    drawResult(bitmap, body);
    $("count").textContent = body.count;
    $("count-label").textContent = body.count === 1 ? "book" : "books";
    $("details").textContent = `model v${body.model_version} \u00b7 score threshold ${body.threshold.toFixed(2)}` +
      ` \u00b7 ${Math.round(body.elapsed_ms)} ms \u00b7 ${body.width}\u00d7${body.height} px`;
    $("result").hidden = false;
    $("result").dataset.modelVersion = body.model_version;
    if (body.model_version !== state.modelVersion) refreshModel();
  } catch (e) {
    showError(`could not count this photo: ${e.message || e}`);
  } finally {
    setBusy(false);
  }
}

// --- many photos at once ----------------------------------------------------------------------
function handleFiles(files) {
  const list = Array.from(files || []);
  if (list.length === 1) {
    $("batch").hidden = true;
    countPhoto(list[0]);
  } else if (list.length > 1) {
    countMany(list);
  }
}

function cell(tr, className, content) {
  const td = document.createElement("td");
  td.className = className;
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  tr.appendChild(td);
  return td;
}

async function countMany(files) {
  $("error").hidden = true;
  $("result").hidden = true;
  setBusy(true);
  $("batch").dataset.done = "false";
  const body = $("batch-table").tBodies[0];
  body.replaceChildren();
  const rows = files.map((file, i) => {
    const row = { file, name: file.name || `photo-${i + 1}`, count: null, error: "", model_version: "", width: "", height: "" };
    row.tr = document.createElement("tr");
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = row.name;
    img.src = URL.createObjectURL(file);
    img.addEventListener("error", () => { img.hidden = true; });
    cell(row.tr, "thumb-cell", img);
    cell(row.tr, "name", row.name);
    row.books = cell(row.tr, "books", "...");
    row.note = cell(row.tr, "note", "");
    body.appendChild(row.tr);
    return row;
  });
  state.batch = rows;
  $("batch-photos").textContent = rows.length;
  $("batch").hidden = false;
  updateTotal(rows);
  let next = 0;
  const worker = async () => {   // two photos in flight, so the server's cores stay busy
    while (next < rows.length) {
      const row = rows[next++];
      await countRow(row);
      updateTotal(rows);
    }
  };
  await Promise.all([worker(), worker()]);
  setBusy(false);
  $("download-csv").disabled = false;
  $("batch").dataset.done = "true";
}

async function countRow(row) {
  try {
    const form = new FormData();
    form.append("image", row.file, row.name);
    const res = await fetch("/count", { method: "POST", body: form });
    const body = await res.json().catch(() => ({ detail: `HTTP ${res.status}` }));
    if (res.ok) {
      Object.assign(row, { count: body.count, model_version: body.model_version, width: body.width, height: body.height });
    } else {
      row.error = body.detail || `HTTP ${res.status}`;
      if (res.status === 503) refreshModel();
    }
  } catch (e) {
    row.error = `could not count this photo: ${e.message || e}`;
  }
  row.books.textContent = row.error ? "-" : row.count;
  row.note.textContent = row.error || `model v${row.model_version} \u00b7 ${row.width}\u00d7${row.height} px`;
  row.tr.classList.toggle("failed", Boolean(row.error));
}

function updateTotal(rows) {
  const finished = rows.filter((r) => r.count !== null || r.error);
  const failed = rows.filter((r) => r.error).length;
  $("batch-total").textContent = rows.reduce((n, r) => n + (r.count || 0), 0);
  $("batch-done").textContent = finished.length;
  $("batch-details").textContent = failed ? `${failed} photo${failed === 1 ? "" : "s"} could not be counted` : "";
}

function csvField(value) {
  const s = String(value ?? "");
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function downloadCsv() {
  const lines = [["photo", "count", "model_version", "width", "height", "error"].join(",")];
  for (const r of state.batch || []) {
    lines.push([r.name, r.count ?? "", r.model_version, r.width, r.height, r.error].map(csvField).join(","));
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
  link.download = "counts.csv";
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
}

// --- camera on laptops (getUserMedia needs https or localhost; phones use <input capture>) ---
let stream = null;
async function openWebcam() {
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    $("webcam-video").srcObject = stream;
    $("webcam").hidden = false;
  } catch (e) {
    showError(`camera not available: ${e.message || e}`);
  }
}
function closeWebcam() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  $("webcam").hidden = true;
}
function snap() {
  const video = $("webcam-video");
  const c = document.createElement("canvas");
  c.width = video.videoWidth;
  c.height = video.videoHeight;
  c.getContext("2d").drawImage(video, 0, 0);
  c.toBlob((blob) => countPhoto(new File([blob], "camera.jpg", { type: "image/jpeg" })), "image/jpeg", 0.92);
}

// --- wiring ---------------------------------------------------------------------------------
$("file-input").addEventListener("change", (e) => handleFiles(e.target.files));
$("download-csv").addEventListener("click", downloadCsv);
$("camera-input").addEventListener("change", (e) => countPhoto(e.target.files[0]));
if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
  $("webcam-button").hidden = false;
  $("webcam-button").addEventListener("click", openWebcam);
  $("snap-button").addEventListener("click", snap);
  $("webcam-close").addEventListener("click", closeWebcam);
}
const zone = $("drop-zone");
["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.add("dragging"); }));
["dragleave", "drop"].forEach((t) => zone.addEventListener(t, () => zone.classList.remove("dragging")));
zone.addEventListener("drop", (e) => { e.preventDefault(); handleFiles(e.dataTransfer.files); });
$("masks").addEventListener("mousemove", showTooltip);
$("masks").addEventListener("click", showTooltip);
$("masks").addEventListener("mouseleave", () => { $("tooltip").hidden = true; });

refreshModel();
setInterval(refreshModel, 10000);
