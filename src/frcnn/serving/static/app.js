// The page: send an image to /api/predict once (at a low threshold: every detection the model
// keeps), then draw and re-filter its boxes in the browser as the slider and the class filter move.
// Boxes are drawn on a canvas at the image's own resolution, so the API's pixel boxes are drawn as
// they are (CSS only scales the canvas to the window).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, bitmap: null, response: null, hidden: new Set(), jsonUrl: null };

async function loadInfo() {
  const response = await fetch("/api/info");
  state.info = await response.json();
  const info = state.info;
  $("model-info").textContent = `${info.model} · ${info.runtime} on ${info.device} · ${info.class_names.length} classes`;
  const classes = $("classes");
  for (const name of info.class_names) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.dataset.class = name;
    box.addEventListener("change", () => {
      if (box.checked) state.hidden.delete(name); else state.hidden.add(name);
      draw();
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = info.colours[name];
    label.append(box, swatch, document.createTextNode(name));
    classes.append(label);
  }
  for (const url of info.examples) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = url.split("/").pop();
    img.addEventListener("click", async () => {
      const blob = await (await fetch(url)).blob();
      await predict(blob, img.alt);
    });
    $("examples").append(img);
  }
}

function threshold() {
  return Number($("score").value);
}

function visibleDetections() {
  if (!state.response) return [];
  const min = threshold();
  return state.response.detections.filter((d) => d.score >= min && !state.hidden.has(d.class_name));
}

function draw() {
  $("score-value").textContent = threshold().toFixed(2);
  if (!state.bitmap || !state.response) return;
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  ctx.drawImage(state.bitmap, 0, 0);
  const width = Math.max(1, Math.round(Math.min(canvas.width, canvas.height) / 250));
  const font = Math.max(10, Math.round(Math.min(canvas.width, canvas.height) / 40));
  ctx.font = `${font}px sans-serif`;
  ctx.textBaseline = "top";
  const shown = visibleDetections();
  for (const det of shown) {
    const [x1, y1, x2, y2] = det.box;
    const colour = state.info.colours[det.class_name];
    ctx.lineWidth = width;
    ctx.strokeStyle = colour;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const caption = `${det.class_name} ${det.score.toFixed(2)}`;
    const textWidth = ctx.measureText(caption).width + 4;
    const top = y1 - font - 2 >= 0 ? y1 - font - 2 : y1;
    ctx.fillStyle = colour;
    ctx.fillRect(x1, top, textWidth, font + 2);
    ctx.fillStyle = "#fff";
    ctx.fillText(caption, x1 + 2, top + 1);
  }
  $("shown").textContent = String(shown.length);
  $("total").textContent = String(state.response.detections.length);
}

function showJson(body) {
  const text = JSON.stringify(body, null, 2);
  $("json").textContent = text;
  if (state.jsonUrl) URL.revokeObjectURL(state.jsonUrl);
  state.jsonUrl = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const link = $("download");
  link.href = state.jsonUrl;
  link.hidden = false;
}

function setStatus(text, error = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", error);
}

async function predict(blob, name) {
  document.body.dataset.state = "busy";
  setStatus(`Detecting on ${name}…`);
  const form = new FormData();
  form.append("image", blob, name);
  const started = performance.now();
  let response, body;
  try {
    response = await fetch("/api/predict", { method: "POST", body: form });
    body = await response.json();
  } catch (error) {
    setStatus(`The server did not answer: ${error}`, true);
    document.body.dataset.state = "error";
    return;
  }
  const roundtrip = performance.now() - started;
  if (!response.ok) {
    setStatus(`Refused (${response.status}): ${body.detail}`, true);
    showJson(body);
    document.body.dataset.state = "error";
    return;
  }
  // The server decoded the image with its EXIF orientation; the browser does the same here.
  const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
  if (bitmap.width !== body.image.width || bitmap.height !== body.image.height) {
    setStatus(`The browser decoded ${bitmap.width} x ${bitmap.height}, the server ${body.image.width} x ${body.image.height}`, true);
  } else {
    setStatus(`${name}: ${body.image.width} x ${body.image.height}`);
  }
  state.bitmap = bitmap;
  state.response = body;
  const canvas = $("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.hidden = false;
  $("drop").hidden = true;
  $("inference").textContent = `${body.inference_ms.toFixed(1)} ms (batch of ${body.batch_size})`;
  $("roundtrip").textContent = `${roundtrip.toFixed(0)} ms`;
  showJson(body);
  draw();
  document.body.dataset.state = "done";
}

function setUpInput() {
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) predict(file, file.name);
  });
  $("score").addEventListener("input", draw);
  const stage = $("stage");
  stage.addEventListener("dragover", (event) => { event.preventDefault(); stage.classList.add("dragging"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
  stage.addEventListener("drop", (event) => {
    event.preventDefault();
    stage.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) predict(file, file.name);
  });
}

setUpInput();
loadInfo().catch((error) => setStatus(`Cannot reach the server: ${error}`, true));
