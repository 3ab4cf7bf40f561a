// bnserve's page: every BN layer's stored statistics, a prediction, and the drift monitor.
// Plain browser JavaScript, no build step; Chart.js (vendored, pinned) draws the charts.
"use strict";

const API = new URL(".", window.location.href); // the service root: the page is its /ui
const DRIFT_EVERY_MS = 4000;
const OUT_OF_RANGE_Z = 3;
const state = { model: null, samples: [], sampleIndex: 0, driftTimer: null, driftOk: null };

function api(path) {
  return new URL(path, API).toString();
}

async function getJSON(path, options) {
  const response = await fetch(api(path), options);
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body.detail || body.error || `${response.status} ${response.statusText}`);
  }
  return body;
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function format(x, digits = 3) {
  if (x === null || x === undefined) return "none";
  if (typeof x !== "number") return String(x);
  if (x !== 0 && (Math.abs(x) >= 1e4 || Math.abs(x) < 1e-3)) return x.toExponential(2);
  return x.toFixed(digits);
}

// ------------------------------------------------------------------ BN layers

function channelLabels(layer) {
  return layer.feature_names || layer.running_mean.map((_, i) => `channel ${i}`);
}

function drawLayer(layer) {
  const card = element("article", { class: "layer", "data-layer": layer.name });
  card.append(element("h3", {}, `${layer.name} (${layer.type}, ${layer.num_features} channels)`));
  const facts = element("dl");
  const folded = layer.fold ? `${layer.fold} into ${layer.folded_into}` : "not folded (reference graph)";
  for (const [term, value] of [
    ["placement", layer.placement], ["folded", folded], ["num_batches_tracked", layer.num_batches_tracked],
    ["eps", layer.eps], ["momentum", layer.momentum === null ? "cumulative average" : layer.momentum],
  ]) {
    facts.append(element("dt", {}, term), element("dd", {}, String(value)));
  }
  card.append(facts);

  const labels = channelLabels(layer);
  const sd = layer.running_var.map((v) => Math.sqrt(v + layer.eps));
  const statsBox = element("div", { class: "chart-box" });
  const statsCanvas = element("canvas", { "aria-label": `${layer.name}: running mean plus or minus one SD per channel`,
                                          "data-chart": "stats", "data-layer": layer.name });
  statsBox.append(statsCanvas);
  const affineBox = element("div", { class: "chart-box" });
  const affineCanvas = element("canvas", { "aria-label": `${layer.name}: gamma and beta per channel`,
                                           "data-chart": "affine", "data-layer": layer.name });
  affineBox.append(affineCanvas);
  const scaleBox = element("div", { class: "chart-box" });
  const scaleCanvas = element("canvas", { "aria-label": `${layer.name}: the scale each channel gets, gamma / sqrt(running_var + eps)`,
                                          "data-chart": "scale", "data-layer": layer.name });
  scaleBox.append(scaleCanvas);
  card.append(statsBox, affineBox, scaleBox);
  document.getElementById("layers").append(card);

  const horizontal = Boolean(layer.feature_names); // long feature names read better on the y axis
  const axis = horizontal ? "y" : "x";
  new Chart(statsCanvas, {
    data: {
      labels,
      datasets: [
        { type: "bar", label: "running mean ± 1 SD", data: layer.running_mean.map((m, i) => [m - sd[i], m + sd[i]]),
          backgroundColor: "rgba(47, 111, 222, 0.25)", borderColor: "rgba(47, 111, 222, 0.6)", borderWidth: 1 },
        { type: "line", label: "running mean", data: layer.running_mean, showLine: false, pointRadius: 2.5,
          pointBackgroundColor: "#1d2430" },
      ],
    },
    options: { indexAxis: axis, maintainAspectRatio: false, animation: false,
               scales: { [axis]: { ticks: { autoSkip: true, font: { size: 9 } } } },
               plugins: { legend: { labels: { boxWidth: 12 } } } },
  });
  new Chart(affineCanvas, {
    type: "bar",
    data: {
      labels,
      datasets: [
        { label: "gamma (scale)", data: layer.gamma, backgroundColor: "rgba(22, 163, 74, 0.7)" },
        { label: "beta (shift)", data: layer.beta, backgroundColor: "rgba(194, 65, 12, 0.7)" },
      ],
    },
    options: { indexAxis: axis, maintainAspectRatio: false, animation: false,
               scales: { [axis]: { ticks: { autoSkip: true, font: { size: 9 } } } },
               plugins: { legend: { labels: { boxWidth: 12 } } } },
  });
  drawScale(scaleCanvas, layer, labels, axis);
}

function drawScale(canvas, layer, labels, axis) {
  // what the layer multiplies each channel by once folded: the features it rescales most stand out
  const scale = layer.gamma.map((g, i) => Math.abs(g) / Math.sqrt(layer.running_var[i] + layer.eps));
  new Chart(canvas, {
    type: "bar",
    data: { labels, datasets: [{ label: "|gamma| / sqrt(running_var + eps): the scale applied", data: scale,
                                 backgroundColor: "rgba(109, 40, 217, 0.7)" }] },
    options: { indexAxis: axis, maintainAspectRatio: false, animation: false,
               scales: { [axis]: { ticks: { autoSkip: true, font: { size: 9 } } },
                         [axis === "x" ? "y" : "x"]: { type: "logarithmic" } },
               plugins: { legend: { labels: { boxWidth: 12 } } } },
  });
}

// ------------------------------------------------------------------ prediction

function buildForm(featureNames) {
  const grid = document.getElementById("feature-grid");
  grid.replaceChildren();
  featureNames.forEach((name, i) => {
    const row = element("div", { class: "feature", "data-feature": name });
    const id = `feature-${i}`;
    const label = element("label", { for: id }, name);
    const input = element("input", { id, name, type: "number", step: "any", required: "", inputmode: "decimal" });
    const z = element("span", { class: "z", "aria-label": `z-score of ${name}` }, "");
    row.append(label, input, z);
    grid.append(row);
  });
}

function fillForm(sample) {
  const inputs = document.querySelectorAll("#feature-grid input");
  sample.features.forEach((value, i) => {
    inputs[i].value = String(Number(value.toPrecision(7))); // the dataset's spelling, not float32's
  });
  const total = state.samples.length;
  const truth = sample.true_label ? `, true label ${sample.true_label}` : "";
  document.getElementById("sample-source").textContent =
    `test sample ${state.sampleIndex + 1} of ${total} from the model card${truth}`;
  for (const row of document.querySelectorAll(".feature")) {
    row.classList.remove("out-of-range");
    row.querySelector(".z").textContent = "";
  }
}

function readForm() {
  const features = {};
  for (const input of document.querySelectorAll("#feature-grid input")) {
    if (input.value.trim() === "" || !Number.isFinite(Number(input.value))) {
      throw new Error(`${input.name}: expected a number, got "${input.value}"`);
    }
    features[input.name] = Number(input.value);
  }
  return features;
}

let probabilitiesChart = null;

function showPrediction(answer) {
  document.getElementById("prediction").hidden = false;
  document.getElementById("predicted-label").textContent = answer.label;
  const drift = answer.drift;
  document.getElementById("drift-verdict").textContent = drift
    ? `drift score ${format(drift.score)}, p-value ${format(drift.p_value)}: ${drift.flagged ? "unlike the training data" : "like the training data"}`
    : "";
  const names = Object.keys(answer.probabilities);
  const values = names.map((n) => answer.probabilities[n]);
  const list = document.getElementById("probabilities-list");
  list.replaceChildren(...names.map((n, i) => {
    const item = element("li", { "data-class": n });
    item.append(element("span", { class: "class-name" }, n), document.createTextNode(": "),
                element("span", { class: "probability", "data-value": String(values[i]) }, values[i].toFixed(6)));
    return item;
  }));
  if (probabilitiesChart) probabilitiesChart.destroy();
  probabilitiesChart = new Chart(document.getElementById("probabilities-chart"), {
    type: "bar",
    data: { labels: names, datasets: [{ label: "probability", data: values, backgroundColor: "rgba(47, 111, 222, 0.7)" }] },
    options: { indexAxis: "y", maintainAspectRatio: false, animation: false, scales: { x: { min: 0, max: 1 } },
               plugins: { legend: { display: false } } },
  });
  if (!drift) return;
  const z = Object.fromEntries(drift.top_features.map((f) => [f.name, f.z]));
  for (const row of document.querySelectorAll(".feature")) {
    const value = z[row.dataset.feature];
    row.querySelector(".z").textContent = value === undefined ? "" : `z ${value.toFixed(2)}`;
    row.classList.toggle("out-of-range", value !== undefined && Math.abs(value) > OUT_OF_RANGE_Z);
  }
}

async function predict(event) {
  event.preventDefault();
  const error = document.getElementById("predict-error");
  error.hidden = true;
  try {
    const features = readForm();
    const answer = await getJSON("predict?drift=true", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ features }),
    });
    showPrediction(answer);
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  }
}

// ------------------------------------------------------------------ drift

let driftChart = null;

function renderDrift(report) {
  document.getElementById("drift-count").textContent = String(report.window.count);
  document.getElementById("drift-start").textContent = report.window.start;
  const layers = report.layers;
  const body = document.querySelector("#drift-layers tbody");
  body.replaceChildren(...layers.map((l) => {
    const row = element("tr", { "data-layer": l.name });
    row.append(element("td", {}, l.name), element("td", { class: "num" }, format(l.mean_shift)),
               element("td", { class: "num" }, format(l.variance_ratio)), element("td", { class: "num" }, format(l.score)));
    return row;
  }));
  const features = document.querySelector("#drift-features tbody");
  features.replaceChildren(...report.top_features.map((f) => {
    const row = element("tr", { "data-feature": f.name });
    row.append(element("td", {}, f.name), element("td", { class: "num" }, format(f.mean_shift)),
               element("td", { class: "num" }, format(f.variance_ratio)));
    return row;
  }));
  const data = {
    labels: layers.map((l) => l.name),
    datasets: [
      { label: "mean shift (SD)", data: layers.map((l) => l.mean_shift), backgroundColor: "rgba(194, 65, 12, 0.7)" },
      { label: "variance ratio", data: layers.map((l) => l.variance_ratio), backgroundColor: "rgba(47, 111, 222, 0.7)" },
    ],
  };
  if (driftChart) {
    driftChart.data = data;
    driftChart.update();
  } else {
    driftChart = new Chart(document.getElementById("drift-chart"), {
      type: "bar", data, options: { maintainAspectRatio: false, animation: false },
    });
  }
  document.body.dataset.driftUpdates = String(Number(document.body.dataset.driftUpdates || 0) + 1);
}

async function refreshDrift() {
  const error = document.getElementById("drift-error");
  try {
    renderDrift(await getJSON("drift?top=8"));
    error.hidden = true;
  } catch (e) {
    error.textContent = `drift monitor: ${e.message}`;
    error.hidden = false;
  }
}

// ------------------------------------------------------------------ start

async function start() {
  try {
    const [model, stats] = await Promise.all([getJSON("model"), getJSON("bn-stats")]);
    state.model = model;
    document.getElementById("model-line").textContent =
      `${model.name}, version ${model.model_version}: ${model.card.description || ""}`;
    stats.layers.forEach(drawLayer);
    buildForm(model.feature_names);
    state.samples = model.card.samples || model.card.examples || [];
    if (state.samples.length) fillForm(state.samples[0]);
    document.body.dataset.ready = "true";
  } catch (e) {
    document.getElementById("model-line").textContent = `cannot load the model: ${e.message}`;
    return;
  }
  document.getElementById("predict-form").addEventListener("submit", predict);
  document.getElementById("another-sample").addEventListener("click", () => {
    if (!state.samples.length) return;
    state.sampleIndex = (state.sampleIndex + 1) % state.samples.length;
    fillForm(state.samples[state.sampleIndex]);
  });
  document.getElementById("drift-refresh").addEventListener("click", refreshDrift);
  await refreshDrift();
  state.driftTimer = setInterval(refreshDrift, DRIFT_EVERY_MS);
}

document.addEventListener("DOMContentLoaded", start);
