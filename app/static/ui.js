// Small helpers shared by the tabs: images, the busy/error state of a panel, latent pickers.

import { ReadableError } from "./api.js";

export function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0] >>> 1;
}

// Images are decoded before they are shown, so a bad payload becomes a message, not a broken image.
// A request cancelled meanwhile (a newer one, another model) stops here, before it shows anything.
export async function pngImages(images, altOf, signal) {
  const elements = images.map((b64, i) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    img.alt = altOf(i);
    return img;
  });
  try {
    await Promise.all(elements.map((img) => img.decode()));
  } catch {
    throw new ReadableError("The service sent an image the browser cannot show");
  }
  signal.throwIfAborted();
  return elements;
}

// A new element: el("p", { className: "note", textContent: "..." }, ...children).
export function el(tag, props = {}, ...children) {
  const element = Object.assign(document.createElement(tag), props);
  element.append(...children);
  return element;
}

export function figure(img, caption) {
  return el("figure", {}, img, el("figcaption", { textContent: caption }));
}

// Runs one request at a time per panel: a new one cancels the old, the progress indicator and
// the error message follow it, and a result stays hidden while its request failed.
export function runner(panel) {
  const output = panel.querySelector(".output");
  const error = output.querySelector(".error");
  const elapsed = output.querySelector(".elapsed");
  let current = null;
  async function run(work) {
    current?.abort();
    const mine = (current = new AbortController());
    const started = performance.now();
    const tick = () => { elapsed.textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`; };
    tick();
    const timer = setInterval(tick, 100);
    output.setAttribute("aria-busy", "true");
    error.hidden = true;
    try {
      await work(mine.signal);
      output.classList.remove("failed");
    } catch (err) {
      if (err.name === "AbortError") return;
      error.textContent = err instanceof ReadableError ? err.message : `Something went wrong: ${err.message}`;
      error.hidden = false;
      output.classList.add("failed");
    } finally {
      clearInterval(timer);
      if (current === mine) {
        output.setAttribute("aria-busy", "false");
        current = null;
      }
    }
  }
  run.cancel = () => current?.abort();
  return run;
}

// A latent picker ("seed 3" or "class Sneaker") in a <fieldset class="latent" data-latent=NAME>.
// Its fields are NAME (seed|class), NAME_seed and NAME_class; the unused one is disabled, so it
// neither validates nor lands in the form data or the URL.
export function buildLatentPickers(root) {
  const template = document.getElementById("latent-template");
  for (const fieldset of root.querySelectorAll("fieldset.latent")) {
    const name = fieldset.dataset.latent;
    const label = fieldset.querySelector("legend").textContent;
    fieldset.append(template.content.cloneNode(true));
    for (const radio of fieldset.querySelectorAll("[data-kind]")) radio.name = name;
    const seed = fieldset.querySelector("[data-seed]");
    seed.name = `${name}_seed`;
    seed.id = `${root.id}-${name}-seed`;
    seed.value = fieldset.dataset.seed;
    seed.setAttribute("aria-label", `${label}: seed`);
    fieldset.querySelector("[data-new-seed]").dataset.newSeed = seed.id;
    const select = fieldset.querySelector("[data-class]");
    select.name = `${name}_class`;
    select.setAttribute("aria-label", `${label}: class`);
  }
}

export function syncLatentPickers(root, conditional) {
  for (const fieldset of root.querySelectorAll("fieldset.latent")) {
    const [bySeed, byClass] = fieldset.querySelectorAll("[data-kind]");
    fieldset.querySelector(".segmented").hidden = !conditional; // seeds are all there is
    byClass.disabled = !conditional;
    if (!conditional) bySeed.checked = true;
    const useClass = byClass.checked;
    fieldset.querySelector(".kind-seed").hidden = useClass;
    fieldset.querySelectorAll(".kind-seed input, .kind-seed button").forEach((el) => { el.disabled = useClass; });
    const select = fieldset.querySelector(".kind-class");
    select.hidden = select.disabled = !useClass;
  }
}

// The pickers' starting points for `model`. Each keeps a class the model has, else takes its default
// (data-class-index, wrapped into the model's classes and apart from the other pickers' classes, so
// that A − B + C names three classes where the model has three). A picker marked
// data-prefer="class" starts on a class wherever the model takes them, unless the user chose.
export function defaultLatents(root, model) {
  const count = model.classes.length;
  const pickers = [...root.querySelectorAll("fieldset.latent")];
  const taken = new Set(pickers.map((f) => f.querySelector("[data-class]").value)
    .filter((name) => model.classes.includes(name)));
  for (const fieldset of pickers) {
    const select = fieldset.querySelector("[data-class]");
    if (!count || model.classes.includes(select.value)) continue;
    let index = Number(fieldset.dataset.classIndex) % count;
    for (let tries = 0; tries < count && taken.has(model.classes[index]); tries++) index = (index + 1) % count;
    select.value = model.classes[index];
    taken.add(select.value);
  }
  for (const fieldset of pickers) {
    if (fieldset.dataset.prefer === "class" && model.conditional && fieldset.dataset.chosen !== "kind") {
      fieldset.querySelector("[data-kind][value=class]").checked = true;
    }
  }
  syncLatentPickers(root, model.conditional);
}

// The latent spec of picker NAME in the API's terms, and a short description of it.
export function latentOf(data, name) {
  return data[name] === "class" ? { class: data[`${name}_class`] } : { seed: Number(data[`${name}_seed`]) };
}

export function describeLatent(spec) {
  return "class" in spec ? spec.class : `seed ${spec.seed}`;
}

// The cells of a PNG grid (2 px padding, `cols` a row) as base64 PNGs, cut out with a canvas.
export async function gridCells(b64, n, cols, height, width) {
  const grid = new Image();
  grid.src = `data:image/png;base64,${b64}`;
  await grid.decode();
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const cells = [];
  for (let i = 0; i < n; i++) {
    const top = 2 + Math.floor(i / cols) * (height + 2);
    const left = 2 + (i % cols) * (width + 2);
    context.clearRect(0, 0, width, height);
    context.drawImage(grid, left, top, width, height, 0, 0, width, height);
    cells.push(canvas.toDataURL("image/png").split(",")[1]);
  }
  return cells;
}
