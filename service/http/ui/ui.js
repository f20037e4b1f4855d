// tta-serve's browser page: predict, evaluate and the served models, over the HTTP API.
// Plain JavaScript, no build step and nothing fetched from elsewhere (the server may be offline).
// API paths are relative to this page (served at /ui/), so the page works behind a path prefix.
"use strict";

const api = (path) => new URL("../" + path, document.baseURI).toString();
const $ = (id) => document.getElementById(id);
let models = [];  // GET /models -> models, default first

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

const pct = (x) => (x === null || x === undefined || Number.isNaN(Number(x)))
  ? "n/a" : (100 * Number(x)).toFixed(1) + "%";

// The server's bearer token, when it checks tokens (401 without one): kept in sessionStorage,
// so it lives as long as this tab and is sent only to this page's own server (same origin).
const TOKEN_KEY = "tta-serve-token";

function withToken(options) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return options;
  const headers = new Headers((options && options.headers) || {});
  headers.set("Authorization", "Bearer " + token);
  return Object.assign({}, options, {headers});
}

function setUpToken() {
  const input = $("token");
  input.value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("token-status").textContent = input.value ? "token in use (this tab)" : "";
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
    $("token-status").textContent = token ? "token in use (this tab)" : "no token";
    $("models-status").classList.remove("error");
    loadModels();
  });
}

// fetch + JSON; a non-2xx answer throws the server's own message ({"error": ...}).
async function call(path, options) {
  let response;
  try {
    response = await fetch(api(path), withToken(options));
  } catch (e) {
    throw new Error("the server did not answer (" + e.message + ")");
  }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    let message = body && (body.error || body.detail) ? (body.error || JSON.stringify(body.detail))
      : response.statusText;
    if (response.status === 401) {
      message += " (enter an access token at the top of the page)";
      $("token-status").textContent = "this server asks for an access token";
    }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function errorText(e) {
  return (e.status ? "Error " + e.status + ": " : "Error: ") + e.message;
}

// ---- tabs (WAI-ARIA tabs pattern: arrow keys move between tabs)

function selectTab(tab) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const selected = t === tab;
    t.setAttribute("aria-selected", String(selected));
    t.tabIndex = selected ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !selected;
  }
  if (tab.id === "tab-models") loadModels();
}

function setUpTabs() {
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => {
      const step = {ArrowRight: 1, ArrowLeft: -1}[e.key];
      if (!step) return;
      const next = tabs[(i + step + tabs.length) % tabs.length];
      selectTab(next);
      next.focus();
      e.preventDefault();
    });
  });
  if (location.hash === "#evaluate") selectTab($("tab-evaluate"));
  if (location.hash === "#models") selectTab($("tab-models"));
}

// ---- models

let modelLoads = 0;  // requests in flight; data-models-loading on <body> while any is

async function loadModels() {
  const status = $("models-status");
  status.textContent = "Loading models…";
  document.body.dataset.modelsLoading = String(++modelLoads);
  try {
    const body = await call("models");
    models = body.models;
    status.textContent = "";
    renderModels(body);
    fillModelSelects();
  } catch (e) {
    status.textContent = errorText(e);
    status.classList.add("error");
  } finally {
    if (--modelLoads === 0) delete document.body.dataset.modelsLoading;
  }
}

function fillModelSelects() {
  for (const select of document.querySelectorAll(".model-select")) {
    const chosen = select.value;
    select.innerHTML = models.map((m) => '<option value="' + escapeHtml(m.name) + '">' +
      escapeHtml(m.name) + " v" + m.version + (m.is_default ? " (default)" : "") +
      "</option>").join("");
    if (chosen && models.some((m) => m.name === chosen)) select.value = chosen;
  }
}

function metricRow(name, value) {
  return "<tr><th scope=\"row\">" + escapeHtml(name) + "</th><td>" + value + "</td></tr>";
}

function renderModels(body) {
  const html = body.models.map((m) => {
    const metrics = m.metrics || {};
    const classes = m.classes.length > 40
      ? m.classes.slice(0, 40).map(escapeHtml).join(", ") + ", … (" + m.classes.length + " in all)"
      : m.classes.map(escapeHtml).join(", ");
    let rows = metricRow("Served version", "v" + m.version +
      (m.variant ? " (" + escapeHtml(m.variant) + " variant)" : "")) +
      metricRow("Versions in the repository", m.repository_versions.map((v) => "v" + v).join(", ")) +
      metricRow("Provider", escapeHtml(m.provider.name) + " (" + escapeHtml(m.provider.device) +
                ", asked for " + escapeHtml(m.provider.requested) + ")") +
      metricRow("Validation accuracy", pct(metrics.accuracy)) +
      metricRow("Validation accuracy with TTA", pct(metrics.tta_accuracy)) +
      (metrics.n_valid ? metricRow("Validation images", escapeHtml(metrics.n_valid)) : "") +
      metricRow("Input", m.input_size + " × " + m.input_size + " px") +
      metricRow("TTA views", m.tta_views.map(escapeHtml).join(", ") + " (" +
                escapeHtml(m.tta_combine) + (m.tta_beta !== null ? ", β " + m.tta_beta : "") + ")") +
      calibrationRows(m) +
      metricRow("Classes (" + m.classes.length + ")", classes) +
      (m.created_at ? metricRow("Exported", escapeHtml(m.created_at)) : "");
    const variants = Object.entries(m.variants || {});
    let variantTable = "";
    if (variants.length) {
      variantTable = '<table class="metrics"><caption>Reduced-precision variants (measured at ' +
        "export)</caption><thead><tr><th scope=\"col\">variant</th><th scope=\"col\">accuracy</th>" +
        "<th scope=\"col\">top-1 agreement with fp32</th><th scope=\"col\">size</th></tr></thead><tbody>" +
        variants.map(([kind, v]) => "<tr><th scope=\"row\">" + escapeHtml(kind) + "</th><td>" +
          pct(v.accuracy) + "</td><td>" + pct(v.top1_agreement_vs_fp32) + "</td><td>" +
          (v.bytes ? (v.bytes / 1e6).toFixed(2) + " MB" : "n/a") + "</td></tr>").join("") +
        "</tbody></table>";
    }
    return '<article class="model"><h2>' + escapeHtml(m.name) +
      (m.is_default ? ' <span class="badge">default</span>' : "") + "</h2>" +
      '<table class="facts"><tbody>' + rows + "</tbody></table>" + variantTable + "</article>";
  }).join("");
  $("models-list").innerHTML = html || "<p>No models are served.</p>";
}

// ---- predict

function showChosen(input, target) {
  const n = input.files.length;
  target.textContent = n === 0 ? "" : n === 1 ? input.files[0].name : n + " images chosen";
}

function setUpDrop(label, input, onChange) {
  label.addEventListener("dragover", (e) => { e.preventDefault(); label.classList.add("over"); });
  label.addEventListener("dragleave", () => label.classList.remove("over"));
  label.addEventListener("drop", (e) => {
    e.preventDefault();
    label.classList.remove("over");
    input.files = e.dataTransfer.files;
    onChange();
  });
  input.addEventListener("change", onChange);
}

function answerPath(p) {
  const how = p.path === "tta" ? "TTA, " + p.tta_views + " views" : "plain view";
  return p.tta_mode === "auto" ? "auto: " + how : how;
}

function calibrationRows(m) {
  const c = m.calibration || {};
  if (!c.calibrated) {
    return metricRow("Calibration", "none (exported before calibration: temperature 1, " +
                     "TTA off by default, never \"not sure\")");
  }
  const ece = c.ece || {};
  const change = (e) => e ? pct(e.before) + " → " + pct(e.after) : "n/a";
  return metricRow("Calibration", "temperature " + c.temperature.plain.toFixed(3) +
                   " plain, " + c.temperature.tta.toFixed(3) + " TTA") +
    metricRow("ECE (held-out)", "plain " + change(ece.plain) + ", TTA " + change(ece.tta)) +
    metricRow("Default TTA mode", escapeHtml(c.default_tta) +
              (c.auto_threshold !== null && c.auto_threshold !== undefined
                ? " (views added below " + pct(c.auto_threshold) + ")" : "")) +
    metricRow("\"Not sure\" below", c.min_confidence ? pct(c.min_confidence) : "never");
}

function bars(classes) {
  return '<ol class="bars">' + classes.map((c) =>
    '<li><span class="name">' + escapeHtml(c.label) + "</span>" +
    '<meter min="0" max="1" value="' + c.probability + '" aria-label="' + escapeHtml(c.label) +
    '"></meter><span class="pct">' + pct(c.probability) + "</span></li>").join("") + "</ol>";
}

async function predictOne(file, options, item) {
  const form = new FormData();
  form.append("image", file, file.name);
  if (options.tta) form.append("tta", "true");  // unchecked: the model's default mode
  form.append("top_k", String(options.topK));
  if (options.model) form.append("model", options.model);
  const started = performance.now();
  try {
    const p = await call("predict", {method: "POST", body: form});
    const ms = performance.now() - started;
    item.classList.add("ok");
    if (p.unsure) item.classList.add("unsure");
    item.querySelector(".answer").innerHTML =
      '<p class="label">' + escapeHtml(p.label) + ' <span class="prob">' +
      pct(p.classes[0].probability) + "</span>" +
      (p.unsure ? ' <span class="unsure" title="below the model\'s confidence threshold (' +
                  pct(p.min_confidence) + ')">not sure</span>' : "") + "</p>" +
      bars(p.classes) + '<p class="meta">' + escapeHtml(p.model) + " v" + p.model_version +
      " · " + answerPath(p) + " · " +
      (p.calibrated ? "calibrated confidence" : "uncalibrated (temperature 1)") + " · " +
      ms.toFixed(0) + " ms</p>";
  } catch (e) {
    item.classList.add("error");
    item.querySelector(".answer").innerHTML = '<p class="message">' + escapeHtml(errorText(e)) + "</p>";
  }
}

async function predict(event) {
  event.preventDefault();
  const files = Array.from($("predict-files").files);
  const status = $("predict-status");
  if (!files.length) {
    status.textContent = "Choose one or more images first.";
    return;
  }
  const options = {tta: $("predict-tta").checked, topK: Number($("predict-topk").value) || 5,
                   model: $("predict-model").value};
  const list = $("predict-results");
  list.innerHTML = "";
  $("predict-submit").disabled = true;
  status.textContent = "Classifying " + files.length + (files.length === 1 ? " image…" : " images…");
  const started = performance.now();
  const items = files.map((file) => {
    const item = document.createElement("li");
    item.className = "result";
    const img = document.createElement("img");
    img.src = URL.createObjectURL(file);
    img.alt = "";
    img.onload = () => URL.revokeObjectURL(img.src);
    const name = document.createElement("p");
    name.className = "file";
    name.textContent = file.name;
    const answer = document.createElement("div");
    answer.className = "answer";
    answer.textContent = "…";
    item.append(img, name, answer);
    list.append(item);
    return item;
  });
  // Four requests at a time: the server batches concurrent requests together.
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const i = next++;
      await predictOne(files[i], options, items[i]);
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  const failed = list.querySelectorAll(".result.error").length;
  status.textContent = "Done: " + (files.length - failed) + " of " + files.length + " classified" +
    (failed ? ", " + failed + " failed" : "") + " in " + ((performance.now() - started) / 1000).toFixed(2) + " s.";
  $("predict-submit").disabled = false;
}

// ---- evaluate

function evaluateSource() {
  return document.querySelector('input[name="evaluate-source"]:checked').value;
}

function guessLabel(filename) {
  // "7_0003.png" or "seven-1.jpg" -> a class of the default model when the prefix is one
  const prefix = filename.split(/[_\-. ]/)[0];
  const classes = models.length ? models[0].classes : [];
  return classes.includes(prefix) ? prefix : "";
}

function showLabelInputs() {
  const body = $("evaluate-labels").tBodies[0];
  body.innerHTML = "";
  Array.from($("evaluate-files").files).forEach((file, i) => {
    const row = body.insertRow();
    const id = "evaluate-label-" + i;
    row.innerHTML = '<td><label for="' + id + '">' + escapeHtml(file.name) + "</label></td>" +
      '<td><input type="text" id="' + id + '" class="label-input" required value="' +
      escapeHtml(guessLabel(file.name)) + '"></td>';
  });
}

function reportHtml(r, pngSrc) {
  const rows = r.per_class.map((m) => "<tr><th scope=\"row\">" + escapeHtml(m.name) + "</th><td>" +
    m.precision.toFixed(3) + "</td><td>" + m.recall.toFixed(3) + "</td><td>" + m.f1.toFixed(3) +
    "</td><td>" + m.support + "</td></tr>").join("");
  const avg = (name, a) => "<tr><th scope=\"row\">" + name + "</th><td>" + a.precision.toFixed(3) +
    "</td><td>" + a.recall.toFixed(3) + "</td><td>" + a.f1.toFixed(3) + "</td><td>" + r.n + "</td></tr>";
  const confused = r.most_confused.length
    ? "<ul>" + r.most_confused.slice(0, 20).map((p) => "<li>actual <strong>" + escapeHtml(p.actual) +
        "</strong> predicted as <strong>" + escapeHtml(p.predicted) + "</strong>: " + p.count +
        (p.count === 1 ? " time" : " times") + "</li>").join("") + "</ul>"
    : "<p>No mistakes.</p>";
  return '<h2>Evaluation of ' + escapeHtml(r.model) + " v" + r.model_version +
    (r.tta ? " with TTA" : " without TTA") + "</h2>" +
    '<p class="accuracy">Accuracy <strong id="evaluate-accuracy">' + pct(r.accuracy) + "</strong> on " +
    r.n + " images</p>" +
    '<table class="metrics" id="evaluate-per-class"><caption>Per class</caption><thead><tr>' +
    '<th scope="col">class</th><th scope="col">precision</th><th scope="col">recall</th>' +
    '<th scope="col">F1</th><th scope="col">support</th></tr></thead><tbody>' + rows + "</tbody>" +
    "<tfoot>" + avg("macro avg", r.macro_avg) + avg("weighted avg", r.weighted_avg) + "</tfoot></table>" +
    '<figure><img id="evaluate-confusion" src="' + pngSrc + '" alt="Confusion matrix of ' +
    escapeHtml(r.model) + ": rows are the actual classes, columns the predicted ones\">" +
    "<figcaption>Confusion matrix (rows: actual, columns: predicted)</figcaption></figure>" +
    "<h3>Most confused</h3>" + confused;
}

function downloadLinks(r) {
  const png = "data:image/png;base64," + r.confusion_png_base64;
  const css = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem}" +
    "table{border-collapse:collapse}td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:right}" +
    "th[scope=row],caption{text-align:left}img{max-width:100%}";
  const doc = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Evaluation of " +
    escapeHtml(r.model) + " v" + r.model_version + "</title><style>" + css + "</style></head><body>" +
    reportHtml(r, png) + "</body></html>";
  const name = "evaluation-" + r.model + "-v" + r.model_version + (r.tta ? "-tta" : "");
  const html = URL.createObjectURL(new Blob([doc], {type: "text/html"}));
  const json = URL.createObjectURL(new Blob([JSON.stringify(r, null, 2)], {type: "application/json"}));
  return '<p class="downloads"><a id="evaluate-download" href="' + html + '" download="' +
    escapeHtml(name) + '.html">Download the report (HTML)</a> · <a href="' + json + '" download="' +
    escapeHtml(name) + '.json">JSON</a> · <a href="' + png + '" download="' + escapeHtml(name) +
    '.png">confusion matrix (PNG)</a></p>';
}

async function evaluate(event) {
  event.preventDefault();
  const status = $("evaluate-status");
  const form = new FormData();
  if (evaluateSource() === "zip") {
    const zip = $("evaluate-zip").files[0];
    if (!zip) { status.textContent = "Choose a zip of class folders first."; return; }
    form.append("archive", zip, zip.name);
  } else {
    const files = Array.from($("evaluate-files").files);
    if (!files.length) { status.textContent = "Choose images and give each a label first."; return; }
    const labels = Array.from(document.querySelectorAll(".label-input")).map((i) => i.value.trim());
    files.forEach((file) => form.append("images", file, file.name));
    form.append("labels", JSON.stringify(labels));
  }
  form.append("tta", String($("evaluate-tta").checked));
  const model = $("evaluate-model").value;
  if (model) form.append("model", model);
  $("evaluate-submit").disabled = true;
  $("evaluate-report").innerHTML = "";
  status.classList.remove("error");
  status.textContent = "Evaluating…";
  const started = performance.now();
  try {
    const r = await call("evaluate", {method: "POST", body: form});
    status.textContent = "Evaluated " + r.n + " images in " +
      ((performance.now() - started) / 1000).toFixed(2) + " s.";
    $("evaluate-report").innerHTML = downloadLinks(r) +
      reportHtml(r, "data:image/png;base64," + r.confusion_png_base64);
  } catch (e) {
    status.classList.add("error");
    status.textContent = errorText(e);
  } finally {
    $("evaluate-submit").disabled = false;
  }
}

// ---- start

document.addEventListener("DOMContentLoaded", () => {
  setUpTabs();
  setUpToken();
  const files = $("predict-files");
  setUpDrop($("predict-drop"), files, () => showChosen(files, $("predict-chosen")));
  $("predict-form").addEventListener("submit", predict);
  for (const radio of document.querySelectorAll('input[name="evaluate-source"]')) {
    radio.addEventListener("change", () => {
      $("evaluate-zip-box").hidden = evaluateSource() !== "zip";
      $("evaluate-files-box").hidden = evaluateSource() !== "files";
    });
  }
  $("evaluate-files").addEventListener("change", showLabelInputs);
  $("evaluate-form").addEventListener("submit", evaluate);
  loadModels().then(() => document.body.setAttribute("data-ready", "true"));
});
