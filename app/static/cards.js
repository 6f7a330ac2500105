// The model picker: one compact chip per model (a sample of it, its name and family), and the chosen
// model's card one click away in a <details>: what it is, its figures in plain words (the technical
// name in a tooltip) and the class shares of its samples as a small bar chart (inline SVG).

import { call } from "./api.js";
import { el } from "./ui.js";

// The figures the card lists first, in this order, where the model has them.
const HEADLINES = ["test_bits_per_dim", "grid_16_seconds", "frechet_distance", "classes_found",
  "class_mean_decodes_to_class", "class_entropy_nats"];
const SVG = "http://www.w3.org/2000/svg";

// Evaluation's figures in plain words; a figure not named here shows under its own name.
const PLAIN = {
  test_bits_per_dim: "Bits per pixel value to encode an unseen image (lower: fits better)",
  standard_prior_test_bits_per_dim: "The same with a plain Gaussian prior",
  test_nll_nats: "Surprise at an unseen image, whole image (nats)",
  test_elbo_nats: "Evidence bound on an unseen image (nats; higher: fits better)",
  test_kl_nats: "Information its code keeps of an image (nats)",
  bound: "How the fit is bounded",
  frechet_distance: "Distance of its samples from real images (lower: more realistic)",
  frechet_distance_1000: "The same from 1,000 samples",
  frechet_distance_test_vs_train: "The same between real test and training images (the floor)",
  frechet_distance_to_train: "Distance of its samples from the training images",
  frechet_distance_train_halves: "The same between two halves of the training images (the floor)",
  frechet_samples: "Samples those distances are measured on",
  frechet_feature_space: "Features those distances are measured in",
  nearest_train_ratio: "Samples' distance to the nearest training image, against real images' (about 1: no copying)",
  classes_found: "Classes that appear among its samples",
  class_entropy_nats: "Spread of its samples over the classes (nats)",
  class_entropy_max_nats: "The most spread there can be (nats)",
  class_mean_decodes_to_class: "Share of class averages drawn as their own class",
  grid_16_seconds: "Seconds to draw 16 images",
  grid_16_threads: "CPU threads for those seconds",
  completion_class_accuracy: "Completions of half-images that keep the image's class",
  completion_posterior_accuracy: "Half-images whose class it guesses",
  completion_setup: "How completions were tested",
  test_accuracy: "Test images it classifies correctly",
};

export function formatMetric(value) {
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? String(value) : value.toPrecision(4).replace(/\.?0+$/, "");
}

// A card's metrics as [key, value] leaves, the headline ones first; a nested metric
// ({"bits_per_dim": {"test": 3.1}}) is the leaf "bits_per_dim.test".
export function metricEntries(metrics) {
  const leaves = (object, prefix) => Object.entries(object).flatMap(([key, value]) =>
    (value && typeof value === "object" && !Array.isArray(value) ? leaves(value, `${prefix}${key}.`)
      : [[`${prefix}${key}`, value]]));
  const entries = leaves(metrics, "");
  const rank = (key) => (HEADLINES.includes(key) ? HEADLINES.indexOf(key) : HEADLINES.length);
  return entries.sort(([a], [b]) => rank(a) - rank(b));
}

export function plainName(key) {
  return PLAIN[key] ?? key.replaceAll("_", " ").replaceAll(".", " · ");
}

function figures(metrics) {
  const list = el("dl", { className: "metrics" });
  for (const [key, value] of metricEntries(metrics)) {
    const term = el("dt", { textContent: plainName(key), title: key });
    term.dataset.metric = key;
    list.append(term, el("dd", { textContent: formatMetric(value) }));
  }
  return list;
}

function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  element.append(...children);
  return element;
}

// One bar per class, as tall as its share of the samples; the dashed line is the uniform share.
export function classSharesChart(shares) {
  const entries = Object.entries(shares);
  const width = 200;
  const height = 56;
  const bar = width / entries.length;
  const top = Math.max(...entries.map(([, share]) => share), 1 / entries.length) || 1;
  const scale = (share) => (share / top) * (height - 4);
  const chart = svg("svg", { class: "shares", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `Class shares of the samples: ${entries.map(([name, share]) =>
      `${name} ${(100 * share).toFixed(1)}%`).join(", ")}` });
  entries.forEach(([name, share], i) => {
    chart.append(svg("rect", { x: (i * bar + 1).toFixed(2), y: (height - scale(share)).toFixed(2),
      width: (bar - 2).toFixed(2), height: scale(share).toFixed(2), "data-class": name, "data-share": share },
    svg("title", {}, `${name}: ${(100 * share).toFixed(1)}%`)));
  });
  const uniform = (height - scale(1 / entries.length)).toFixed(2);
  chart.append(svg("line", { x1: 0, x2: width, y1: uniform, y2: uniform, class: "uniform" }));
  return chart;
}

function size(model) {
  if (!model.parameters) return null;
  const millions = model.parameters / 1e6;
  return millions >= 1 ? `${millions.toFixed(1)} M parameters` : `${Math.round(model.parameters / 1e3)} k parameters`;
}

export function describeModel(model) {
  const [c, h, w] = model.image_shape;
  return [model.dataset, `${w}×${h} ${c > 1 ? "colour" : "grayscale"}`,
    model.latent_dim ? `${model.latent_dim}-d latent` : null, size(model),
    model.checkpoint?.epochs ? `${model.checkpoint.epochs} epochs` : null].filter(Boolean).join(" · ");
}

// A chip of the picker: a radio named by the model's name, a sample of it (loaded later, see
// loadThumbnails) and its family.
export function modelChip(model) {
  const id = `model-${model.name}`;
  const input = el("input", { type: "radio", name: "model", value: model.name });
  input.setAttribute("aria-labelledby", `${id}-name`);
  const thumb = el("span", { className: "thumb" }); // a place for its sample, until that has loaded
  if (model.capabilities.includes("sample")) thumb.dataset.model = model.name;
  return el("label", { className: "model-card", title: `${model.name}: ${model.summary || model.family}` }, input,
    thumb, el("span", { className: "name", id: `${id}-name`, textContent: model.name }),
    el("span", { className: "family", textContent: model.family }));
}

// Each model's first sample (seed 0), one at a time after the page's first result was asked for,
// so that they never hold it up. One that fails leaves its place empty, not a broken image.
export async function loadThumbnails(list) {
  for (const place of list.querySelectorAll(".thumb[data-model]")) {
    try {
      const { images: [sample] } = await call(place.dataset.model, "samples", { n: 1, seed: 0 });
      const img = el("img", { className: "thumb", alt: "", src: `data:image/png;base64,${sample}` });
      await img.decode();
      place.replaceWith(img);
    } catch {
      // the chip keeps its empty place
    }
  }
}

// The chosen model's card in the <details> under the picker; its summary line names the model.
export function showAbout(details, model) {
  details.querySelector("#about-title").replaceChildren(el("strong", { textContent: model.name }),
    ` · ${model.summary || model.family}`);
  const { class_shares: shares, ...metrics } = model.metrics || {};
  const body = [el("p", { className: "meta", textContent: `${model.family} · ${describeModel(model)}` }),
    Object.keys(metrics).length ? figures(metrics)
      : el("p", { className: "muted", textContent: "No figures yet: `python -m models.evaluate` measures them." })];
  if (shares && typeof shares === "object") {
    body.push(el("figure", { className: "shares" }, classSharesChart(shares),
      el("figcaption", { textContent: "Classes of its samples (dashed: an even share)" })));
  }
  details.querySelector("#about-body").replaceChildren(...body);
  details.hidden = false;
}
