// actindex report: draws a layer page's unit cards from window.ACTINDEX_LAYER (the layer's data file),
// a page of cards at a time, sorted by unit number, label purity or peak activation, filtered by a search.
// The cards show the crops, or the projections or occlusion maps drawn beside them (one switch for the page),
// and link the units that build each unit ("built from") and those it feeds, on the other layers' pages;
// #unit=N opens the page of cards holding unit N and brings its card into view.
// Everything is local: crops are files beside the page, histograms are inline SVG, no request leaves file://.
(function () {
  "use strict";

  const data = window.ACTINDEX_LAYER;
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const cards = $("cards");
  if (!data) {
    cards.textContent = "This layer's data file did not load: keep the page beside its .js file.";
    return;
  }

  const VIEWS = { crop: "Crops", projection: "Projections", occlusion: "Occlusion" };
  const views = (data.views || ["crop"]).filter((view) => VIEWS[view]);
  const state = { sort: "unit", find: "", page: 0, view: "crop", focus: null };
  let shownHash = "";

  // ------------------------------------------------------------------ sorting, finding, paging

  const descending = (key) => (a, b) => {
    const x = a[key];
    const y = b[key];
    if (x === y) return a.unit - b.unit;
    if (x === null) return 1; // units without a value go last, whatever the order
    if (y === null) return -1;
    return y - x || a.unit - b.unit;
  };
  const ORDERS = {
    unit: (a, b) => a.unit - b.unit,
    purity: descending("purity"),
    peak: descending("peak"),
  };

  function matches(unit, text) {
    if (!text) return true;
    if (/^\d+$/.test(text)) return unit.unit === Number(text);
    const words = [unit.name, unit.label].filter(Boolean).join(" ").toLowerCase();
    return words.includes(text.toLowerCase());
  }

  function selected() {
    const text = state.find.trim();
    return data.units.filter((u) => matches(u, text)).sort(ORDERS[state.sort] || ORDERS.unit);
  }

  function render(scroll) {
    let units = selected();
    let at = -1;
    if (state.focus !== null) {
      at = units.findIndex((u) => u.unit === state.focus);
      if (at < 0 && state.find && data.units.some((u) => u.unit === state.focus)) {
        state.find = ""; // the unit asked for is hidden by the search: show every unit
        $("find").value = "";
        units = selected();
        at = units.findIndex((u) => u.unit === state.focus);
      }
      if (at >= 0) state.page = Math.floor(at / data.pageSize);
    }
    const pages = Math.max(1, Math.ceil(units.length / data.pageSize));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    const first = state.page * data.pageSize;
    const shown = units.slice(first, first + data.pageSize);
    const fragment = document.createDocumentFragment();
    shown.forEach((unit) => fragment.appendChild(card(unit)));
    cards.replaceChildren(fragment);
    $("count").textContent =
      units.length === data.units.length
        ? `${plural(units.length, "unit")}`
        : `${units.length} of ${plural(data.units.length, "unit")} match`;
    $("page").textContent = units.length
      ? `Page ${state.page + 1} of ${pages} · units ${first + 1}–${first + shown.length}`
      : "No unit matches";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    document.body.dataset.page = String(state.page + 1);
    writeHash();
    const focused = at >= 0 ? $(`unit-${state.focus}`) : null;
    if (focused) {
      focused.classList.add("focus");
      focused.scrollIntoView({ block: "center" });
    } else if (scroll) cards.scrollIntoView({ block: "start" });
  }

  // ------------------------------------------------------------------ one card

  function card(unit) {
    const article = el("article", "card");
    article.id = `unit-${unit.unit}`;
    article.dataset.unit = unit.unit;
    article.dataset.peak = unit.peak === null ? "" : unit.peak;
    article.dataset.purity = unit.purity === null ? "" : unit.purity;

    const head = el("header", "card-head");
    head.appendChild(el("span", "unit-no", `unit ${unit.unit}`));
    head.appendChild(el("span", "unit-name", unit.name || ""));
    const peak = el("span", "peak", unit.peak === null ? "–" : fmt(unit.peak));
    peak.title = "peak activation (the top image's)";
    head.appendChild(peak);
    article.appendChild(head);

    const crops = el("div", "crops");
    const k = data.k;
    crops.style.setProperty("--cols", String(k <= 4 ? k : Math.ceil(Math.sqrt(k))));
    unit.tops.forEach((top) => crops.appendChild(crop(unit, top)));
    if (!unit.tops.length) crops.appendChild(el("p", "empty", "no indexed image"));
    article.appendChild(crops);

    const foot = el("div", "card-foot");
    if (data.histograms) foot.appendChild(histogram(unit));
    if (data.labels) foot.appendChild(purity(unit));
    if (unit.from && unit.from.length) foot.appendChild(related("built from", "from", unit.from));
    if (unit.feeds && unit.feeds.length) foot.appendChild(related("feeds", "feeds", unit.feeds));
    article.appendChild(foot);
    return article;
  }

  // the units of another layer a card links: "built from" (with their top-1 crop) or "feeds"
  function related(title, kind, items) {
    const box = el("section", `related related-${kind}`);
    box.appendChild(el("h3", "related-title", title));
    const list = el("ol", "related-list");
    items.forEach((item) => {
      const entry = el("li", "related-item");
      const target = item.href ? el("a", "related-link") : el("span", "related-link");
      if (item.href) target.href = item.href;
      if (kind === "from") {
        if (item.img) {
          const img = document.createElement("img");
          img.loading = "lazy";
          img.decoding = "async";
          img.width = 36;
          img.height = 36;
          img.alt = "";
          img.src = item.img;
          target.appendChild(img);
        } else target.appendChild(el("span", "related-none"));
      }
      target.appendChild(el("span", "related-unit", `${item.layer} · ${item.unit}`));
      if (item.name) target.appendChild(el("span", "related-name", item.name));
      const share = el("span", item.score < 0 ? "related-share inhibits" : "related-share", percent(item.share));
      share.title =
        kind === "from"
          ? "its share of this unit's contributions from that layer (negative: it inhibits)"
          : "its share of that unit's contributions from this layer (negative: it inhibits)";
      target.appendChild(share);
      entry.appendChild(target);
      list.appendChild(entry);
    });
    box.appendChild(list);
    return box;
  }

  function crop(unit, top) {
    const figure = el("figure", "crop");
    const img = document.createElement("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.width = data.tile;
    img.height = data.tile;
    img.dataset.stem = `${data.dir}/u${String(unit.unit).padStart(5, "0")}-${top.rank}`;
    img.src = viewSrc(img.dataset.stem);
    const ties = top.ties > 1 ? ` · ${top.ties} images share it` : "";
    const label = top.label ? ` · label ${top.label}` : "";
    img.alt = `unit ${unit.unit}, rank ${top.rank}: ${top.file}`;
    img.title = `#${top.rank} · activation ${top.act === null ? "NaN" : fmt(top.act)}${ties}\n${top.file}${label}`;
    figure.appendChild(img);
    const caption = el("figcaption");
    caption.appendChild(el("span", "rank", `#${top.rank}`));
    caption.appendChild(el("span", "act", top.act === null ? "NaN" : fmt(top.act)));
    caption.appendChild(el("span", "file", top.file));
    figure.appendChild(caption);
    return figure;
  }

  function histogram(unit) {
    const box = el("div", "hist");
    const h = unit.hist;
    if (!h) {
      box.appendChild(el("span", "muted", "no finite activations"));
      return box;
    }
    const bins = h.counts.length;
    const most = Math.max(...h.counts);
    const kth = unit.tops.length ? unit.tops[unit.tops.length - 1].act : null;
    const cut = kth === null || h.hi === h.lo ? bins : ((kth - h.lo) / (h.hi - h.lo)) * bins;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${bins} 20`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    const total = h.counts.reduce((a, b) => a + b, 0);
    svg.setAttribute("aria-label", `histogram of ${total} images' maxima, ${fmt(h.lo)} to ${fmt(h.hi)}`);
    const step = (h.hi - h.lo) / bins;
    h.counts.forEach((count, i) => {
      if (!count) return;
      const height = Math.max(1.2, (20 * count) / most); // a lone image in the tail stays visible
      const bar = document.createElementNS(SVG, "rect");
      bar.setAttribute("x", i + 0.08);
      bar.setAttribute("y", 20 - height);
      bar.setAttribute("width", 0.84);
      bar.setAttribute("height", height);
      bar.setAttribute("class", i + 1 > cut ? "bar top" : "bar");
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${fmt(h.lo + i * step)} to ${fmt(h.lo + (i + 1) * step)}: ${plural(count, "image")}`;
      bar.appendChild(title);
      svg.appendChild(bar);
    });
    box.appendChild(svg);
    const axis = el("div", "axis");
    axis.appendChild(el("span", "", fmt(h.lo)));
    axis.appendChild(el("span", "axis-mid", `${plural(total, "image")}`));
    axis.appendChild(el("span", "", fmt(h.hi)));
    box.appendChild(axis);
    return box;
  }

  function purity(unit) {
    const box = el("div", "purity");
    if (unit.purity === null) {
      box.appendChild(el("span", "muted", "no labels in its top images"));
      return box;
    }
    const percent = Math.round(unit.purity * 100);
    const meter = el("span", "meter");
    const fill = el("span", "meter-fill");
    fill.style.width = `${percent}%`;
    meter.appendChild(fill);
    box.appendChild(meter);
    box.appendChild(el("span", "purity-value", `${percent}%`));
    box.appendChild(el("span", "purity-label", unit.label));
    box.title = `label purity: ${percent}% of the top ${unit.tops.length} images are labelled ${unit.label}`;
    return box;
  }

  // ------------------------------------------------------------------ small helpers

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(x) {
    if (x === null || x === undefined) return "–";
    const abs = Math.abs(x);
    if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) return x.toExponential(2);
    return String(Number(x.toPrecision(4)));
  }

  function percent(x) {
    return x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`;
  }

  function viewSrc(stem) {
    return state.view === "crop" ? `${stem}.${data.ext}` : `${stem}.${state.view}.${data.ext}`;
  }

  // switching a view swaps the files of the crops shown (lazy images stay lazy)
  function showView(view) {
    state.view = views.includes(view) ? view : "crop";
    document.querySelectorAll(".crop img").forEach((img) => {
      img.src = viewSrc(img.dataset.stem);
    });
    document.querySelectorAll("#views button").forEach((button) => {
      button.setAttribute("aria-pressed", String(button.dataset.view === state.view));
    });
    document.body.dataset.view = state.view;
  }

  function plural(n, word) {
    return `${n.toLocaleString("en")} ${word}${n === 1 ? "" : "s"}`;
  }

  // the state lives in the address's #fragment: a sorted page can be bookmarked, and Back works
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    state.sort = ORDERS[params.get("sort")] ? params.get("sort") : "unit";
    state.find = params.get("find") || "";
    state.page = Math.max(0, (parseInt(params.get("page"), 10) || 1) - 1);
    const focus = parseInt(params.get("unit"), 10);
    state.focus = Number.isInteger(focus) ? focus : null;
    state.view = views.includes(params.get("view")) ? params.get("view") : "crop";
    $("sort").value = state.sort;
    $("find").value = state.find;
  }

  function writeHash() {
    const params = new URLSearchParams();
    if (state.sort !== "unit") params.set("sort", state.sort);
    if (state.find) params.set("find", state.find);
    if (state.page) params.set("page", String(state.page + 1));
    if (state.view !== "crop") params.set("view", state.view);
    if (state.focus !== null) params.set("unit", String(state.focus));
    const hash = params.toString();
    if (hash === shownHash) return;
    shownHash = hash;
    location.replace(`#${hash}`);
  }

  // ------------------------------------------------------------------ wiring

  if (!data.labels) {
    const option = document.querySelector('#sort option[value="purity"]');
    option.disabled = true;
    option.textContent += " (no labels)";
  }
  if (data.notes.length) {
    $("notes").textContent = data.notes.join(" · ");
    $("notes").hidden = false;
  }
  if (views.length > 1) {
    const group = $("views");
    views.forEach((view) => {
      const button = el("button", "", VIEWS[view]);
      button.type = "button";
      button.dataset.view = view;
      if (view === "projection" && data.method) button.title = `projections by ${data.method}`;
      button.addEventListener("click", () => {
        showView(view);
        writeHash();
      });
      group.appendChild(button);
    });
    group.hidden = false;
  }
  const unfocus = () => {
    state.focus = null;
    document.querySelectorAll(".card.focus").forEach((card) => card.classList.remove("focus"));
  };
  $("sort").addEventListener("change", (event) => {
    unfocus();
    state.sort = event.target.value;
    state.page = 0;
    render(false);
  });
  $("find").addEventListener("input", (event) => {
    unfocus();
    state.find = event.target.value;
    state.page = 0;
    render(false);
  });
  $("prev").addEventListener("click", () => {
    unfocus();
    state.page -= 1;
    render(true);
  });
  $("next").addEventListener("click", () => {
    unfocus();
    state.page += 1;
    render(true);
  });
  window.addEventListener("hashchange", () => {
    if (location.hash.slice(1) === shownHash) return;
    readHash();
    showView(state.view);
    render(false);
  });
  readHash();
  showView(state.view);
  render(false);
})();
