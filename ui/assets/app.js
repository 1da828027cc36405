// hopscope's one script. It never writes span data as HTML: everything from the API goes through
// textContent, so a span name like <script> stays text. The one HTML it inserts is the server's own
// rendering of a trace's folded rows, escaped as the page around it is.
"use strict";

(function () {
  const loading = document.getElementById("loading");
  function showLoading() { if (loading) loading.hidden = false; }
  window.addEventListener("pageshow", function () { if (loading) loading.hidden = true; });

  // A loading banner while the next page is computed.
  document.addEventListener("click", function (event) {
    const link = event.target.closest ? event.target.closest("a[href]") : null;
    if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
    if (link.origin === window.location.origin && !link.hash) showLoading();
  });
  document.addEventListener("submit", showLoading);

  // The time-range picker: a preset applies at once; "custom" shows the start and end inputs.
  const range = document.querySelector("form.range select[name=range]");
  const showCustom = function () {
    const custom = range.value === "custom";
    const inputs = document.querySelector("form.range .custom-range");
    if (inputs) {
      inputs.hidden = !custom;
      inputs.querySelectorAll("input").forEach(function (i) { i.disabled = !custom; });
    }
    return custom;
  };
  if (range) {
    range.addEventListener("change", function () {
      if (!showCustom()) { showLoading(); range.form.submit(); }
    });
    // Back to a page (from the browser's cache, or with its fields restored): the picker shows
    // the range of the page, not the one chosen before leaving it.
    window.addEventListener("pageshow", function () { range.form.reset(); showCustom(); });
  }

  // The service graph opens fitted to its box; the wheel, a drag, the buttons and the keys (+, −,
  // 0, arrows) zoom and move it by changing the drawing's viewBox. A drag does not follow the link
  // it started on.
  const graph = document.getElementById("service-graph");
  const view = document.getElementById("graph-view");
  if (graph && view) {
    const whole = graph.viewBox.baseVal;
    const home = [whole.x, whole.y, whole.width, whole.height];
    let box = home.slice();
    const show = function () { graph.setAttribute("viewBox", box.map(function (v) { return v.toFixed(1); }).join(" ")); };
    // Drawing units per screen pixel, as the drawing is shown now.
    const unitsPerPixel = function () {
      const rect = graph.getBoundingClientRect();
      return Math.max(box[2] / Math.max(rect.width, 1), box[3] / Math.max(rect.height, 1));
    };
    const centre = function () { return [box[0] + box[2] / 2, box[1] + box[3] / 2]; };
    // Zooms by `factor` (< 1: in) keeping the drawing's point (x, y) where it is.
    const zoom = function (factor, x, y) {
      const width = Math.min(home[2] * 4, Math.max(home[2] / 40, box[2] * factor));
      const f = width / box[2];
      box = [x - (x - box[0]) * f, y - (y - box[1]) * f, box[2] * f, box[3] * f];
      show();
    };
    const pan = function (dx, dy) { box[0] += dx; box[1] += dy; show(); };
    const fit = function () { box = home.slice(); show(); };
    const at = function (event) {
      const rect = graph.getBoundingClientRect();
      const u = unitsPerPixel();
      // The drawing is centred in its box (preserveAspectRatio's default).
      const x = box[0] + box[2] / 2 + (event.clientX - rect.left - rect.width / 2) * u;
      const y = box[1] + box[3] / 2 + (event.clientY - rect.top - rect.height / 2) * u;
      return [x, y];
    };
    const buttons = document.querySelector(".graph-controls .zoom");
    if (buttons) {
      buttons.hidden = false;
      buttons.addEventListener("click", function (event) {
        const which = event.target.dataset ? event.target.dataset.zoom : null;
        const c = centre();
        if (which === "in") zoom(1 / 1.5, c[0], c[1]);
        else if (which === "out") zoom(1.5, c[0], c[1]);
        else if (which === "fit") fit();
      });
    }
    view.addEventListener("wheel", function (event) {
      event.preventDefault();
      const p = at(event);
      zoom(event.deltaY > 0 ? 1.2 : 1 / 1.2, p[0], p[1]);
    }, { passive: false });
    let drag = null;
    // Set when a drag ends: the click that ends it is not a click on what it ended over. Cleared
    // by the next press, so it can never swallow a click of its own.
    let dragged = false;
    view.addEventListener("click", function (event) {
      if (dragged) { dragged = false; event.preventDefault(); event.stopPropagation(); }
    }, true);
    view.addEventListener("pointerdown", function (event) {
      dragged = false;
      if (event.button !== 0) return;
      drag = { x: event.clientX, y: event.clientY, moved: false, id: event.pointerId };
    });
    view.addEventListener("pointermove", function (event) {
      if (!drag || drag.id !== event.pointerId) return;
      const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
      if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 5) return;
      if (!drag.moved) { drag.moved = true; view.classList.add("dragging"); view.setPointerCapture(event.pointerId); }
      const u = unitsPerPixel();
      pan(-dx * u, -dy * u);
      drag.x = event.clientX; drag.y = event.clientY;
    });
    const release = function () {
      if (drag && drag.moved) {
        view.classList.remove("dragging");
        dragged = true;
      }
      drag = null;
    };
    view.addEventListener("pointerup", release);
    view.addEventListener("pointercancel", release);
    view.addEventListener("keydown", function (event) {
      if (event.target !== view) return;
      const c = centre(), step = box[2] / 10;
      const keys = {
        "+": function () { zoom(1 / 1.5, c[0], c[1]); },
        "=": function () { zoom(1 / 1.5, c[0], c[1]); },
        "-": function () { zoom(1.5, c[0], c[1]); },
        "0": fit,
        ArrowLeft: function () { pan(-step, 0); },
        ArrowRight: function () { pan(step, 0); },
        ArrowUp: function () { pan(0, -step); },
        ArrowDown: function () { pan(0, step); },
      };
      if (keys[event.key]) { event.preventDefault(); keys[event.key](); }
    });
  }

  // A heatmap of a latency page. Its cells are drawn as a path per colour; the grid is described
  // on the drawing (charts.rs `heatmap`): each column's start (ns) and x, each row's bounds (ns)
  // and label, and each cell's column, row and count. A cell's count shows on hover. With a
  // comparison link, a click on a cell opens the comparison of its calls with the rest, and a
  // region dragged across cells that of theirs (the durations from the lowest row's lower bound
  // to the highest's upper bound, started in the columns they cover). Times are nanoseconds
  // beyond 2^53, so they stay BigInt.
  document.querySelectorAll("svg.heatmap[data-cells]").forEach(function (map) {
    const ns = "http://www.w3.org/2000/svg";
    const d = map.dataset;
    const columns = d.columns.split(" ").filter(Boolean).map(function (c) {
      const [t, x] = c.split(":");
      return { t: BigInt(t), x: +x };
    });
    const rows = d.rows.split("|").filter(Boolean).map(function (r) {
      const [lower, upper, label] = r.split(",");
      return { lower: BigInt(lower), upper: BigInt(upper), label: label };
    });
    const counts = new Map();
    d.cells.split(" ").filter(Boolean).forEach(function (c) {
      const [j, r, n] = c.split(":").map(Number);
      counts.set(j + ":" + r, n);
    });
    const cellW = +d.cellW, rowH = +d.rowH, bottom = +d.bottom, step = BigInt(d.step);
    const tip = map.parentNode.querySelector(".heat-tip");
    const point = function (event) {
      const matrix = map.getScreenCTM();
      if (!matrix) return null;
      const p = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix.inverse());
      return { x: p.x, y: p.y };
    };
    // The cells with calls whose area meets [x0, x1] × [y0, y1] (drawing units).
    const cellsIn = function (x0, x1, y0, y1) {
      const found = [];
      columns.forEach(function (c, j) {
        if (c.x > x1 || c.x + cellW < x0) return;
        rows.forEach(function (_, r) {
          const top = bottom - (r + 1) * rowH;
          if (top > y1 || top + rowH < y0) return;
          if (counts.has(j + ":" + r)) found.push({ j: j, r: r, n: counts.get(j + ":" + r) });
        });
      });
      return found;
    };
    const cellAt = function (at) {
      if (!at) return null;
      const r = Math.floor((bottom - at.y) / rowH);
      if (r < 0 || r >= rows.length) return null;
      const j = columns.findIndex(function (c, j) { return at.x >= c.x && at.x < c.x + cellW && counts.has(j + ":" + r); });
      return j < 0 ? null : { j: j, r: r, n: counts.get(j + ":" + r) };
    };
    const compare = d.compare;
    // The cell under the pointer: outlined, its count in the tip.
    const outline = document.createElementNS(ns, "rect");
    outline.setAttribute("class", "hover");
    outline.setAttribute("width", cellW);
    outline.setAttribute("height", Math.max(rowH, 1));
    const hide = function () { if (tip) tip.hidden = true; outline.remove(); };
    map.addEventListener("pointermove", function (event) {
      const cell = cellAt(point(event));
      if (!cell) { hide(); return; }
      outline.setAttribute("x", columns[cell.j].x);
      outline.setAttribute("y", bottom - (cell.r + 1) * rowH);
      if (!outline.isConnected) map.appendChild(outline);
      if (!tip) return;
      tip.textContent = cell.n + " calls of " + rows[cell.r].label + (compare ? ": click to compare them with the rest" : "");
      tip.hidden = false;
      const box = map.parentNode.getBoundingClientRect();
      const left = Math.min(event.clientX - box.left + 12, box.width - tip.offsetWidth);
      tip.style.left = Math.max(0, left) + "px";
      tip.style.top = (event.clientY - box.top + 12) + "px";
    });
    map.addEventListener("pointerleave", hide);
    map.addEventListener("pointerdown", hide);
    // Back to a cached page: no tip left from before leaving it.
    window.addEventListener("pageshow", hide);
    if (!compare) return;
    let region = null, marquee = null;
    const box = function () {
      return {
        x: Math.min(region.from.x, region.to.x), y: Math.min(region.from.y, region.to.y),
        w: Math.abs(region.to.x - region.from.x), h: Math.abs(region.to.y - region.from.y),
      };
    };
    map.addEventListener("pointerdown", function (event) {
      // The main button, or the middle one (a new tab, as for a link).
      if (event.button !== 0 && event.button !== 1) return;
      const at = point(event);
      if (at) region = { from: at, to: at, id: event.pointerId, moved: false, cell: cellAt(at), button: event.button };
    });
    map.addEventListener("pointermove", function (event) {
      if (!region || region.id !== event.pointerId) return;
      const at = point(event);
      if (!at) return;
      region.to = at;
      if (!region.moved && Math.abs(at.x - region.from.x) + Math.abs(at.y - region.from.y) < 6) return;
      if (!region.moved) {
        region.moved = true;
        map.setPointerCapture(event.pointerId);
        marquee = document.createElementNS(ns, "rect");
        marquee.setAttribute("class", "marquee");
        map.appendChild(marquee);
      }
      const b = box();
      marquee.setAttribute("x", b.x); marquee.setAttribute("y", b.y);
      marquee.setAttribute("width", b.w); marquee.setAttribute("height", b.h);
    });
    const release = function (event) {
      if (!region || region.id !== event.pointerId) return;
      const moved = region.moved, b = moved ? box() : null, pressed = region.cell, button = region.button;
      region = null;
      if (marquee) { marquee.remove(); marquee = null; }
      let cells;
      if (moved) {
        cells = cellsIn(b.x, b.x + b.w, b.y, b.y + b.h);
      } else {
        // A click: the cell pressed, if released on it.
        const cell = cellAt(point(event));
        if (!pressed || !cell || cell.j !== pressed.j || cell.r !== pressed.r) return;
        cells = [cell];
      }
      if (!cells.length) return;
      const js = cells.map(function (c) { return c.j; }), rs = cells.map(function (c) { return c.r; });
      const start = columns[Math.min.apply(null, js)].t, end = columns[Math.max.apply(null, js)].t + step;
      const lower = rows[Math.min.apply(null, rs)].lower, upper = rows[Math.max.apply(null, rs)].upper;
      const iso = function (t) {
        const ms = t / 1000000n, rest = (t % 1000000n).toString().padStart(6, "0");
        return new Date(Number(ms)).toISOString().replace("Z", rest + "Z");
      };
      const url = new URL(compare, window.location.href);
      url.searchParams.set("min_duration", lower + "ns");
      url.searchParams.set("max_duration", upper + "ns");
      url.searchParams.set("selection_start", iso(start));
      url.searchParams.set("selection_end", iso(end));
      // As for a link: the middle button, Ctrl or ⌘ open a new tab; on a Mac, Ctrl-click is the
      // context menu's.
      const mac = /Mac|iPhone|iPad/.test(navigator.platform);
      if (mac && event.ctrlKey && button === 0) return;
      if (button === 1 || event.metaKey || event.ctrlKey) {
        window.open(url.toString(), "_blank", "noopener");
        return;
      }
      showLoading();
      window.location.assign(url.toString());
    };
    map.addEventListener("pointerup", release);
    map.addEventListener("pointercancel", function () {
      region = null;
      if (marquee) { marquee.remove(); marquee = null; }
    });
  });

  // The trace page's overview: a drag across it (or its keys) zooms the waterfall to a stretch of
  // time. Only two custom properties of the waterfall change (every bar's position is computed
  // from them by the stylesheet), so a trace of thousands of rows zooms in one style pass.
  const overview = document.querySelector("svg.minimap");
  const fall = document.querySelector(".waterfall[data-total-ns]");
  if (overview && fall) {
    const total = Number(fall.dataset.totalNs);
    const frame = overview.querySelector(".mm-window");
    const label = document.querySelector(".minimap-note .zoom-range");
    const wholeButton = document.querySelector(".minimap-note .zoom-whole");
    const axisStart = fall.querySelector(".span-row.head .axis-start");
    const axisEnd = fall.querySelector(".span-row.head .axis-end");
    const initial = [label.textContent, axisStart ? axisStart.textContent : "", axisEnd ? axisEnd.textContent : ""];
    // As the server writes durations: 850ns, 12.3µs, 4.56ms, 1.20s.
    const human = function (ns) {
      if (Math.abs(ns) < 1e3) return ns.toFixed(0) + "ns";
      const [value, unit] = Math.abs(ns) < 1e6 ? [ns / 1e3, "µs"] : Math.abs(ns) < 1e9 ? [ns / 1e6, "ms"] : [ns / 1e9, "s"];
      return value.toFixed(Math.abs(value) < 10 ? 2 : Math.abs(value) < 100 ? 1 : 0) + unit;
    };
    let shown = [0, 1];
    // Shows the stretch [from, to] of the trace (fractions of its duration).
    const zoomTo = function (from, to) {
      const width = Math.min(1, Math.max(to - from, 0.001));
      from = Math.min(Math.max(from, 0), 1 - width);
      shown = [from, from + width];
      const whole = width >= 1;
      fall.style.setProperty("--zoom-from", String(from * 100));
      fall.style.setProperty("--zoom-scale", String(1 / width));
      frame.setAttribute("x", (from * 1000).toFixed(2));
      frame.setAttribute("width", (width * 1000).toFixed(2));
      frame.classList.toggle("whole", whole);
      wholeButton.hidden = whole;
      const stretch = human(from * total) + " to " + human((from + width) * total);
      label.textContent = whole ? initial[0] : "Showing " + stretch + " of " + human(total) + ".";
      if (axisStart) axisStart.textContent = whole ? initial[1] : human(from * total);
      if (axisEnd) axisEnd.textContent = whole ? initial[2] : human((from + width) * total);
      overview.setAttribute("aria-valuenow", String(Math.round(from * 100)));
      overview.setAttribute("aria-valuetext", whole ? "the whole trace" : stretch);
    };
    const fraction = function (event) {
      const rect = overview.getBoundingClientRect();
      return Math.min(1, Math.max(0, (event.clientX - rect.left) / Math.max(rect.width, 1)));
    };
    let drag = null;
    overview.addEventListener("pointerdown", function (event) {
      if (event.button !== 0) return;
      drag = { from: fraction(event), x: event.clientX, moved: false, id: event.pointerId };
      // (At once: a drag that leaves the overview's few pixels of height still ends on it.)
      overview.setPointerCapture(event.pointerId);
    });
    overview.addEventListener("pointermove", function (event) {
      if (!drag || drag.id !== event.pointerId) return;
      if (!drag.moved && Math.abs(event.clientX - drag.x) < 4) return;
      drag.moved = true;
      // The frame follows the pointer; the waterfall zooms once the drag ends.
      const at = fraction(event);
      frame.classList.remove("whole");
      frame.setAttribute("x", (Math.min(at, drag.from) * 1000).toFixed(2));
      frame.setAttribute("width", (Math.abs(at - drag.from) * 1000).toFixed(2));
    });
    overview.addEventListener("pointerup", function (event) {
      if (!drag || drag.id !== event.pointerId) return;
      const at = fraction(event), started = drag;
      drag = null;
      if (started.moved) {
        zoomTo(Math.min(at, started.from), Math.max(at, started.from));
      } else {
        // A click moves the shown stretch to centre there.
        const width = shown[1] - shown[0];
        if (width < 1) zoomTo(at - width / 2, at + width / 2);
      }
    });
    overview.addEventListener("pointercancel", function () { drag = null; zoomTo(shown[0], shown[1]); });
    overview.addEventListener("dblclick", function () { zoomTo(0, 1); });
    wholeButton.addEventListener("click", function () { zoomTo(0, 1); });
    overview.addEventListener("keydown", function (event) {
      const width = shown[1] - shown[0], centre = (shown[0] + shown[1]) / 2;
      const keys = {
        ArrowLeft: function () { zoomTo(shown[0] - width / 5, shown[1] - width / 5); },
        ArrowRight: function () { zoomTo(shown[0] + width / 5, shown[1] + width / 5); },
        "+": function () { zoomTo(centre - width / 3, centre + width / 3); },
        "=": function () { zoomTo(centre - width / 3, centre + width / 3); },
        "-": function () { zoomTo(centre - width * 0.75, centre + width * 0.75); },
        "0": function () { zoomTo(0, 1); },
        Escape: function () { zoomTo(0, 1); },
      };
      if (keys[event.key]) { event.preventDefault(); keys[event.key](); }
    });
  }

  // On a server that keeps tenants apart, the page's tenant (links carry it in their URL; what
  // the script fetches carries it in the header the API reads).
  const tenant = document.body.dataset.tenant;
  const fetchOptions = tenant ? { headers: { "X-Scope-OrgID": tenant } } : {};

  // The trace page: span details on click.
  const panel = document.getElementById("span-details");
  if (!panel) return;
  const traceId = panel.dataset.traceId;
  let trace = null;
  function load() {
    if (!trace) {
      trace = fetch("/api/v1/traces/" + encodeURIComponent(traceId), fetchOptions).then(function (r) {
        if (!r.ok) throw new Error("the API answered " + r.status);
        return r.json();
      });
    }
    return trace;
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function show(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "string" ? value : JSON.stringify(value);
  }
  function keyValues(title, attributes) {
    const section = document.createDocumentFragment();
    section.appendChild(el("h4", title));
    const list = Array.isArray(attributes) ? attributes : [];
    if (list.length === 0) { section.appendChild(el("p", "none", "muted")); return section; }
    const table = el("table");
    list.forEach(function (a) {
      const row = el("tr");
      row.appendChild(el("th", a.key));
      row.appendChild(el("td", show(a.value)));
      table.appendChild(row);
    });
    section.appendChild(table);
    return section;
  }
  function fields(pairs) {
    const table = el("table");
    pairs.forEach(function (p) {
      const row = el("tr");
      row.appendChild(el("th", p[0]));
      row.appendChild(el("td", p[1]));
      table.appendChild(row);
    });
    return table;
  }

  function render(span) {
    panel.replaceChildren();
    panel.appendChild(el("h3", span.service_name + " · " + span.name));
    panel.appendChild(fields([
      ["span id", span.span_id], ["parent", span.parent_span_id || "(root)"], ["kind", span.kind],
      ["start", span.start_time], ["duration", (span.duration_ns / 1e6).toFixed(3) + " ms"],
      ["status", span.status.code + (span.status.message ? ": " + span.status.message : "")],
      ["scope", span.scope.name + (span.scope.version ? " " + span.scope.version : "")],
    ]));
    panel.appendChild(keyValues("Attributes", span.attributes));
    panel.appendChild(el("h4", "Events (" + span.events.length + ")"));
    span.events.forEach(function (e) {
      panel.appendChild(el("p", e.time + "  " + e.name));
      panel.appendChild(keyValues("", e.attributes));
    });
    panel.appendChild(el("h4", "Links (" + span.links.length + ")"));
    span.links.forEach(function (l) {
      const p = el("p");
      const a = el("a", l.trace_id + " / " + l.span_id);
      a.href = "/ui/trace/" + encodeURIComponent(l.trace_id) + (tenant ? "?tenant=" + encodeURIComponent(tenant) : "");
      p.appendChild(a);
      panel.appendChild(p);
    });
    panel.appendChild(keyValues("Resource", span.resource.attributes));
  }

  function select(row) {
    document.querySelectorAll(".span-row.selected").forEach(function (r) { r.classList.remove("selected"); });
    row.classList.add("selected");
    // The selected span is in the URL: `#span=<id>` opens the page with it selected.
    history.replaceState(null, "", "#span=" + row.dataset.spanId);
    panel.hidden = false;
    panel.replaceChildren(el("p", "Loading span details…"));
    load().then(function (t) {
      const span = t.spans.find(function (s) { return s.span_id === row.dataset.spanId; });
      if (span) render(span); else panel.replaceChildren(el("p", "This span is no longer stored."));
    }).catch(function (err) {
      trace = null;
      panel.replaceChildren(el("p", "Could not load the span: " + err.message));
    });
  }

  // A fold (a run of like spans, or a long list's rest): its button puts the fold's rows
  // (rendered and escaped by the server, folded within as the page folds) in the fold row's place.
  function unfold(button) {
    const row = button.closest(".span-row.fold");
    if (!row || button.disabled) return;
    button.disabled = true;
    button.textContent = "loading…";
    fetch(row.dataset.fold, fetchOptions).then(function (r) {
      if (!r.ok) throw new Error("the server answered " + r.status);
      return r.text();
    }).then(function (html) {
      const rows = document.createElement("template");
      rows.innerHTML = html;
      row.replaceWith(rows.content);
    }).catch(function (err) {
      button.disabled = false;
      button.textContent = "retry";
      button.title = "Could not load these spans: " + err.message;
    });
  }

  // A `#span=<id>` link selects that span; a span hidden in a fold is asked of the server with
  // `?span=<id>`, which renders the page with it and its ancestors shown.
  function followLink() {
    const linked = /^#span=([0-9a-fA-F]{1,64})$/.exec(window.location.hash);
    if (!linked) return;
    const id = linked[1].toLowerCase();
    const row = document.querySelector('.span-row[data-span-id="' + id + '"]');
    const url = new URL(window.location.href);
    if (row) {
      if (!row.classList.contains("selected")) {
        row.scrollIntoView({ block: "center" });
        select(row);
      }
    } else if (url.searchParams.get("span") !== id) {
      url.searchParams.set("span", id);
      window.location.replace(url.toString());
    }
  }
  followLink();
  window.addEventListener("hashchange", followLink);

  // One listener for every row: a trace can have thousands.
  function rowOf(event) { return event.target.closest ? event.target.closest(".span-row[data-span-id]") : null; }
  document.addEventListener("click", function (e) {
    const button = e.target.closest ? e.target.closest("button.unfold") : null;
    if (button) { unfold(button); return; }
    const row = rowOf(e);
    if (row) select(row);
  });
  document.addEventListener("keydown", function (e) { const row = rowOf(e); if (row && e.key === "Enter") select(row); });
})();
