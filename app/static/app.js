// The demo page: a model picker, four tabs, and the page state in the URL so results can be shared.

import { listModels } from "./api.js";
import { arithmeticTab } from "./arithmetic.js";
import { loadThumbnails, modelChip, showAbout } from "./cards.js";
import { drawTab } from "./draw.js";
import { interpolateTab } from "./interpolate.js";
import { sampleTab } from "./sample.js";
import { traverseTab } from "./traverse.js";
import { buildLatentPickers, defaultLatents, randomSeed, runner, syncLatentPickers } from "./ui.js";

const ctx = { model: null, models: [], limits: {} };
const tabButtons = [...document.querySelectorAll("[role=tab]")];
const tabs = {};
let activeTab = "sample";

function setUpTabs() {
  const builders = { sample: sampleTab, interpolate: interpolateTab, traverse: traverseTab, arithmetic: arithmeticTab,
    draw: drawTab };
  for (const [name, build] of Object.entries(builders)) {
    const panel = document.getElementById(`panel-${name}`);
    buildLatentPickers(panel);
    const run = runner(panel);
    const tab = build(panel, ctx, run);
    tabs[name] = { ...tab, panel, run };
    tab.form.addEventListener("submit", (event) => {
      event.preventDefault();
      run(async (signal) => saveUrl(await tab.run(signal)));
    });
  }
}

// -- URL state: the model, the tab and the fields of the tab's form ------------------------------

// `fields`: what a result was made from (the form may have changed while it was on its way).
function saveUrl(fields = Object.fromEntries(new FormData(tabs[activeTab].form))) {
  const params = new URLSearchParams({ model: ctx.model.name, tab: activeTab });
  for (const [key, value] of Object.entries(fields)) if (value !== "" && value !== null) params.set(key, value);
  history.replaceState(null, "", `?${params}`);
  tabs[activeTab].panel.querySelectorAll(".share").forEach((a) => { a.href = location.href; });
}

// Range inputs show their value in the <output for=...> of their label.
function showValue(input) {
  document.querySelectorAll(`output[for="${input.id}"]`).forEach((o) => { o.textContent = input.value; });
}

function restoreForm(form, params) {
  for (const el of form.elements) {
    if (!el.name || !params.has(el.name)) continue;
    const value = params.get(el.name);
    if (el.type === "radio") el.checked = el.value === value;
    if (el.matches("[data-kind]")) el.closest("fieldset.latent").dataset.chosen = "kind";
    else if (el.tagName !== "SELECT" || [...el.options].some((o) => o.value === value)) el.value = value;
    el.dispatchEvent(new Event("input", { bubbles: true })); // so value displays follow
  }
  syncLatentPickers(form, ctx.model.conditional);
}

// -- Model picker ---------------------------------------------------------------------------------

// How the families are spelled in prose; a family not named here shows as the API names it.
const FAMILY_NAMES = { pixelcnn: "PixelCNN", pixelrnn: "PixelRNN", vae: "VAE", dcgan: "DCGAN" };
const about = document.getElementById("about");

function listed(words) {
  return words.length > 1 ? `${words.slice(0, -1).join(", ")} and ${words.at(-1)}` : words.join("");
}

// The introduction's first sentence, from what is served: "PixelCNN and VAE models trained on
// small grayscale and colour pictures (28×28 and 32×32)."
function describeServed(models) {
  const families = [...new Set(models.map((m) => FAMILY_NAMES[m.family] ?? m.family))];
  const kindOf = (m) => (m.image_shape[0] > 1 ? "colour" : "grayscale");
  const kinds = ["grayscale", "colour"].filter((kind) => models.some((m) => kindOf(m) === kind));
  const bySize = [...models].sort((a, b) => a.image_shape[1] * a.image_shape[2] - b.image_shape[1] * b.image_shape[2]);
  const sizes = [...new Set(bySize.map(({ image_shape: [, h, w] }) => `${w}×${h}`))];
  return `${listed(families)} ${models.length > 1 ? "models" : "model"} trained on small ${listed(kinds)} `
    + `pictures (${listed(sizes)}).`;
}

// Show, hide and bound the controls that depend on the model.
function applyModel(model) {
  ctx.model = model;
  // Images keep the model's proportions in CSS before they load (and the pad always).
  const [, height, width] = model.image_shape;
  document.documentElement.style.setProperty("--image-aspect", `${width} / ${height}`);
  const maxN = model.max_n ?? ctx.limits.max_n ?? 64;
  const has = (caps) => caps.split(" ").some((cap) => model.capabilities.includes(cap));
  const toggle = (el, on) => {
    el.hidden = !on;
    if (el.matches("fieldset, button")) el.disabled = !on;
    else el.querySelectorAll("input, select, button").forEach((field) => { field.disabled = !on; });
  };
  document.querySelectorAll(".panel [data-conditional]").forEach((el) => toggle(el, model.conditional));
  document.querySelectorAll(".panel [data-cap]").forEach((el) => toggle(el, has(el.dataset.cap)));
  for (const select of document.querySelectorAll("select[data-classes]")) {
    const keep = select.value;
    const options = (select.dataset.any ? [["", select.dataset.any]] : []).concat(model.classes.map((c) => [c, c]));
    select.replaceChildren(...options.map(([value, text]) => new Option(text, value)));
    if (model.classes.includes(keep)) select.value = keep;
    else if (select.matches("[data-class]")) select.selectedIndex = -1; // a latent picker's: its default follows
  }
  // A sampler that takes a number of steps: its default, and its most.
  const steps = document.getElementById("sample-steps");
  const [defaultSteps, mostSteps] = model.sampling_steps ?? [];
  toggle(steps.closest("[data-sampling-steps]"), Boolean(model.sampling_steps));
  Object.assign(steps, { value: defaultSteps ?? "", max: mostSteps ?? "" });
  document.getElementById("sample-n").max = maxN;
  for (const input of document.querySelectorAll("#complete-n, #arithmetic-n")) input.max = Math.min(16, maxN);
  for (const input of document.querySelectorAll("input[type=number][max]")) {
    if (Number(input.value) > Number(input.max)) input.value = input.max;
  }
  document.getElementById("interpolate-steps").max = ctx.limits.max_steps ?? 32;
  // Results of the previous model no longer apply.
  showAbout(about, model);
  for (const tab of Object.values(tabs)) {
    defaultLatents(tab.panel, model);
    tab.run.cancel();
    tab.reset();
    tab.panel.querySelector(".output").classList.remove("failed");
    tab.panel.querySelector(".output .error").hidden = true;
  }
  tabButtons.forEach((button) => {
    const on = has(button.dataset.cap);
    button.disabled = !on;
    button.title = on ? "" : `${model.name} cannot do this (it can: ${model.capabilities.join(", ")})`;
  });
  if (!has(document.getElementById(`tab-${activeTab}`).dataset.cap)) selectTab("sample");
}

// -- Tabs (WAI-ARIA tabs pattern: arrow keys move between the enabled tabs) ------------------------

function selectTab(name, focus = false) {
  activeTab = name;
  for (const button of tabButtons) {
    const on = button.dataset.tab === name;
    button.setAttribute("aria-selected", String(on));
    button.tabIndex = on ? 0 : -1;
    document.getElementById(button.getAttribute("aria-controls")).hidden = !on;
    if (on && focus) button.focus();
  }
}

function onTabKey(event) {
  const enabled = tabButtons.filter((b) => !b.disabled);
  const i = enabled.indexOf(event.currentTarget);
  const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: enabled.length - 1 }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  activate(enabled[(next + enabled.length) % enabled.length].dataset.tab, true);
}

// What a user sees first after choosing a model or tab: a fresh result, in the tabs that need no
// input (the draw tab has no hasResult, so it waits for a drawing).
function activate(tab, focus = false) {
  selectTab(tab, focus);
  saveUrl();
  const { panel, form, hasResult } = tabs[activeTab];
  if (hasResult && !hasResult() && !panel.querySelector(".output").matches(".failed, [aria-busy=true]")) {
    form.requestSubmit();
  }
}

// -- Start ----------------------------------------------------------------------------------------

async function start() {
  setUpTabs();
  tabButtons.forEach((button) => {
    button.addEventListener("click", () => activate(button.dataset.tab));
    button.addEventListener("keydown", onTabKey);
  });

  document.querySelectorAll("input[type=range]").forEach(showValue);
  document.addEventListener("input", (event) => { if (event.target.type === "range") showValue(event.target); });
  document.addEventListener("change", (event) => {
    if (!event.target.matches("[data-kind]")) return;
    event.target.closest("fieldset.latent").dataset.chosen = "kind"; // the user's, kept across models
    syncLatentPickers(event.target.form, ctx.model.conditional);
  });
  // "New seed" rolls a seed and runs at once: one click, one new picture.
  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-new-seed]");
    if (!button) return;
    document.getElementById(button.dataset.newSeed).value = randomSeed();
    button.form.requestSubmit();
  });

  const list = document.getElementById("models");
  let answer;
  try {
    answer = await listModels();
  } catch (err) {
    const error = document.getElementById("models-error");
    error.textContent = `Could not load the models: ${err.message}`;
    error.hidden = false;
    list.replaceChildren();
    return;
  }
  ctx.models = answer.models;
  ctx.limits = answer.limits || {};
  list.replaceChildren(...ctx.models.map(modelChip));
  list.setAttribute("aria-busy", "false");
  if (!ctx.models.length) {
    list.textContent = "The service has no models loaded.";
    return;
  }
  document.getElementById("served").textContent = describeServed(ctx.models);

  const params = new URLSearchParams(location.search);
  // A shared link names its model; otherwise the first that samples in one pass (not pixel by
  // pixel, "stream"), the quickest to show something.
  const model = ctx.models.find((m) => m.name === params.get("model"))
    || ctx.models.find((m) => !m.capabilities.includes("stream")) || ctx.models[0];
  const chosen = list.querySelector(`input[value="${CSS.escape(model.name)}"]`);
  chosen.checked = true;
  chosen.closest("label").scrollIntoView({ block: "nearest", inline: "nearest" }); // where the picker scrolls
  applyModel(model);
  const tab = tabButtons.find((b) => b.dataset.tab === params.get("tab") && !b.disabled)?.dataset.tab || "sample";
  selectTab(tab);
  restoreForm(tabs[tab].form, params);
  activate(tab);
  loadThumbnails(list);

  list.addEventListener("change", (event) => {
    applyModel(ctx.models.find((m) => m.name === event.target.value));
    activate(activeTab);
  });
}

start();
