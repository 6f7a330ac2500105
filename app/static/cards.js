// The model cards of the picker: family, size and a few headline figures; the other figures folded
// away in a <details>, the class shares of the samples as a small bar chart (inline SVG).

import { el } from "./ui.js";

// The figures a card shows first, in this order, where the model has them (at most four).
const HEADLINES = ["test_bits_per_dim", "grid_16_seconds", "frechet_distance", "classes_found",
  "class_mean_decodes_to_class", "class_entropy_nats"];
const MAX_HEADLINES = 4;
const SVG = "http://www.w3.org/2000/svg";

function formatMetric(value) {
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? String(value) : value.toPrecision(4).replace(/\.?0+$/, "");
}

// Metrics may nest one level ({"bits_per_dim": {"test": 3.1}}); each leaf gets its own row.
function metricRows(metrics, prefix = "") {
  return Object.entries(metrics).flatMap(([key, value]) => {
    const label = `${prefix}${key.replaceAll("_", " ")}`;
    return value && typeof value === "object" && !Array.isArray(value)
      ? metricRows(value, `${label} · `) : [[label, formatMetric(value)]];
  });
}

function list(rows) {
  return el("dl", { className: "metrics" },
    ...rows.flatMap(([key, value]) => [el("dt", { textContent: key }), el("dd", { textContent: value })]));
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

export function modelCard(model) {
  const id = `model-${model.name}`;
  // The radio is named by the model's name alone; the rest of the card describes it.
  const input = el("input", { type: "radio", name: "model", value: model.name });
  input.setAttribute("aria-labelledby", `${id}-name`);
  input.setAttribute("aria-describedby", `${id}-about`);
  const [c, h, w] = model.image_shape;
  const meta = [model.dataset, `${w}×${h} ${c > 1 ? "colour" : "grayscale"}`,
    model.latent_dim ? `${model.latent_dim}-d latent` : "autoregressive", size(model),
    model.checkpoint?.epochs ? `${model.checkpoint.epochs} epochs` : null].filter(Boolean).join(" · ");
  const { class_shares: shares, ...metrics } = model.metrics || {};
  const headlineKeys = HEADLINES.filter((key) => typeof metrics[key] === "number").slice(0, MAX_HEADLINES);
  const headline = headlineKeys.map((key) => [key.replaceAll("_", " "), formatMetric(metrics[key])]);
  const rest = metricRows(Object.fromEntries(Object.entries(metrics).filter(([key]) => !headlineKeys.includes(key))));
  const about = el("div", { id: `${id}-about` },
    el("p", { className: "note", textContent: model.summary || "" }),
    el("div", { className: "meta", textContent: meta }),
    headline.length ? list(headline) : el("p", { className: "muted", textContent: "no metrics yet" }));
  if (shares && typeof shares === "object") {
    about.append(el("figure", { className: "shares" }, classSharesChart(shares),
      el("figcaption", { textContent: "classes of the samples" })));
  }
  if (rest.length) about.append(el("details", {}, el("summary", { textContent: "all figures" }), list(rest)));
  return el("label", { className: "model-card" }, input,
    el("div", { className: "name" }, el("span", { id: `${id}-name`, textContent: model.name }),
      el("span", { className: "badge", textContent: model.family })),
    about);
}
