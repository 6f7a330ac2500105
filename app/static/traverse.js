// Traverse tab: decodings along one or two axes through a center (a latent dimension, or toward a
// class), the 2-D manifold of a model with a 2-d latent, and for a model whose card maps its
// latents, a scatter of test images' latents where a click decodes the point under it.

import { call, getJson } from "./api.js";
import { offerDownloads } from "./download.js";
import { describeLatent, latentOf, pngImages } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
// Ten colours that stay apart on the dark background (Tableau 10).
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
  "#9c755f", "#bab0ac"];
const MAP_SIZE = 320;

function svg(tag, attributes = {}) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

export function traverseTab(panel, ctx, run) {
  const form = panel.querySelector("form");
  const grid = panel.querySelector("#traverse-result");
  const caption = panel.querySelector(".caption");
  const manifold = panel.querySelector("#traverse-manifold");
  const map = panel.querySelector("#latent-map");
  const plot = panel.querySelector("#latent-map-plot");
  const pick = panel.querySelector(".map-pick");
  let mapOf = null; // the model whose map is drawn
  let manifoldAsked = false;

  // Each axis shows the field of its kind; the others are disabled so that they do not validate.
  function syncAxes() {
    for (const fieldset of form.querySelectorAll("fieldset.axis")) {
      const axis = fieldset.dataset.axis;
      const kind = form.elements[`axis${axis}`].value;
      const dim = form.elements[`axis${axis}_dim`];
      const cls = form.elements[`axis${axis}_class`];
      dim.hidden = dim.disabled = kind !== "dim";
      cls.hidden = cls.disabled = kind !== "toward";
      if (ctx.model?.latent_dim) dim.max = ctx.model.latent_dim - 1;
    }
  }
  form.addEventListener("change", syncAxes);

  function axisOf(data, axis) {
    const kind = data[`axis${axis}`];
    if (kind === "dim") return { dim: Number(data[`axis${axis}_dim`]) };
    if (kind === "toward") return { toward: { class: data[`axis${axis}_class`] } };
    return null;
  }

  function describeAxis(axis) {
    return "dim" in axis ? `dimension ${axis.dim}` : `toward ${axis.toward.class}`;
  }

  async function show(body, label, signal) {
    const answer = await call(ctx.model.name, "traverse", body, { signal });
    const images = await pngImages(answer.images, (i) => {
      const [r, c] = body.axes.length === 2 ? [Math.floor(i / body.steps), i % body.steps] : [i, null];
      return `${label}: step ${r + 1}${c === null ? "" : `, ${c + 1}`} of ${body.steps}`;
    }, signal);
    // Laid out as a sample grid of as many images is, and so drawn at its size: one axis wraps
    // into rows (read left to right, top to bottom), two axes are their steps x steps grid.
    const oneAxis = body.axes.length === 1;
    grid.style.setProperty("--cols", oneAxis ? Math.ceil(Math.sqrt(images.length)) : body.steps);
    grid.classList.toggle("dense", !oneAxis && body.steps > 10);
    grid.replaceChildren(...images);
    caption.querySelector(".caption-extra").textContent = label;
    offerDownloads(caption.querySelector(".downloads"), { model: ctx.model.name, op: "traverse", body,
      name: `${ctx.model.name}-traverse` }, oneAxis ? ["png", "gif"] : ["png"]);
    caption.hidden = false;
  }

  async function traverse(signal) {
    const data = Object.fromEntries(new FormData(form));
    const center = latentOf(data, "center");
    const axes = [axisOf(data, 0), axisOf(data, 1)].filter(Boolean);
    const body = { center, axes, steps: Number(data.steps), extent: Number(data.extent), spacing: data.spacing };
    await show(body, `${axes.map(describeAxis).join(" × ")} through ${describeLatent(center)}, ${body.spacing}`,
      signal);
    return data;
  }

  // Kingma & Welling's figure: the decodings of a grid of normal quantiles over both dimensions.
  async function drawManifold(signal) {
    const body = { center: { vector: [0, 0] }, axes: [{ dim: 0 }, { dim: 1 }], steps: 16, spacing: "gaussian" };
    await show(body, "the learned 2-D manifold: dimensions 0 × 1 at the normal quantiles", signal);
    return { manifold: "1" };
  }

  manifold.addEventListener("click", () => {
    manifoldAsked = true;
    form.requestSubmit();
  });

  async function loadMap(signal) {
    if (!ctx.model.latent_map) {
      map.hidden = true;
      return;
    }
    if (mapOf === ctx.model.name) return;
    const data = await getJson(`/v1/models/${encodeURIComponent(ctx.model.name)}/latent-map`, { signal });
    drawMap(data);
    mapOf = ctx.model.name;
  }

  function drawMap(data) {
    const xs = data.points.map((p) => p[0]);
    const ys = data.points.map((p) => p[1]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const margin = 0.05 * Math.max(x1 - x0, y1 - y0);
    const box = [x0 - margin, y0 - margin, x1 - x0 + 2 * margin, y1 - y0 + 2 * margin];
    plot.setAttribute("viewBox", box.map((v) => v.toFixed(3)).join(" "));
    plot.setAttribute("width", MAP_SIZE);
    plot.setAttribute("height", Math.round((MAP_SIZE * box[3]) / box[2]));
    const radius = (0.006 * Math.max(box[2], box[3])).toFixed(4);
    // y grows downwards in SVG: the plot flips it, so that up is +y as in any chart.
    const points = svg("g", { transform: `translate(0 ${(2 * box[1] + box[3]).toFixed(3)}) scale(1 -1)` });
    for (const [x, y, label] of data.points) {
      points.append(svg("circle", { cx: x, cy: y, r: radius, fill: PALETTE[label % PALETTE.length],
        "data-x": x, "data-y": y, "data-label": label }));
    }
    plot.replaceChildren(points);
    plot.dataset.model = data.model;
    plot.mean = data.mean;
    plot.components = data.components;
    plot.classes = data.classes;
    panel.querySelector("#latent-map-legend").replaceChildren(...data.classes.map((name, i) => {
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = PALETTE[i % PALETTE.length];
      const item = document.createElement("span");
      item.append(swatch, name);
      return item;
    }));
    pick.hidden = true;
    map.hidden = false;
  }

  // A click decodes the point of the plane under it: mean + x * components[0] + y * components[1].
  plot.addEventListener("click", (event) => {
    const dot = event.target.closest("circle");
    let x;
    let y;
    if (dot) {
      [x, y] = [Number(dot.dataset.x), Number(dot.dataset.y)];
    } else {
      const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(
        plot.querySelector("g").getScreenCTM().inverse());
      [x, y] = [point.x, point.y];
    }
    const vector = plot.mean.map((m, i) => m + x * plot.components[0][i] + y * plot.components[1][i]);
    const of = dot ? `, a test image of class ${plot.classes[Number(dot.dataset.label)]}` : "";
    const body = { terms: [{ latent: { vector }, weight: 1 }], n: 1, show_terms: false };
    run(async (signal) => {
      const answer = await call(ctx.model.name, "arithmetic", body, { signal });
      const [img] = await pngImages(answer.images, () => `decoded point (${x.toFixed(2)}, ${y.toFixed(2)})${of}`,
        signal);
      const shown = panel.querySelector("#latent-map-image");
      shown.src = img.src;
      shown.alt = img.alt;
      panel.querySelector("#latent-map-caption").textContent = `(${x.toFixed(2)}, ${y.toFixed(2)})${of}`;
      offerDownloads(pick.querySelector(".downloads"), { model: ctx.model.name, op: "arithmetic", body,
        name: `${ctx.model.name}-map-point` });
      pick.hidden = false;
    });
  });

  async function runTab(signal) {
    const asked = manifoldAsked;
    manifoldAsked = false;
    const [fields] = await Promise.all([asked ? drawManifold(signal) : traverse(signal), loadMap(signal)]);
    return fields;
  }

  const reset = () => {
    grid.replaceChildren();
    caption.hidden = true;
    manifold.hidden = ctx.model?.latent_dim !== 2;
    if (mapOf !== ctx.model?.name) map.hidden = true;
    syncAxes();
  };
  const hasResult = () => !caption.hidden;

  return { form, run: runTab, reset, hasResult };
}
