// weakseg annotate: scribbles and tags for a folder-format dataset, saved on every change.
//
// The scribble of the current image lives here as a Uint8Array of class ids (255 = unlabelled),
// one byte per image pixel; the canvas shows it in the dataset's colours. Every change (a stroke,
// undo, redo, a tag) sends the whole map as runs [value, count, ...] with the tags to the server,
// which writes scribbles/<id>.png and the tags.csv row. Saves are sent one at a time, newest last.
"use strict";

(() => {
  const UNLABELLED = 255;
  const $ = (id) => document.getElementById(id);
  const els = {
    body: document.body,
    name: $("dataset-name"),
    progressFill: $("progress-fill"),
    progressText: $("progress-text"),
    tabAll: $("tab-all"),
    tabUncertain: $("tab-uncertain"),
    todoOnly: $("todo-only"),
    rankStatus: $("rank-status"),
    list: $("image-list"),
    classes: $("classes"),
    width: $("brush-width"),
    widthValue: $("brush-width-value"),
    undo: $("undo"),
    redo: $("redo"),
    zoomValue: $("zoom-value"),
    modelTools: $("model-tools"),
    showPrediction: $("show-prediction"),
    predictionOpacity: $("prediction-opacity"),
    uncertaintyValue: $("uncertainty-value"),
    viewport: $("viewport"),
    stage: $("stage"),
    image: $("image"),
    prediction: $("prediction"),
    scribble: $("scribble"),
    message: $("message"),
    imageId: $("image-id"),
    tags: $("tags"),
    saveStatus: $("save-status"),
  };

  const state = {
    dataset: null,
    images: [], // [{id, done}] in dataset order
    byId: new Map(),
    id: null,
    width: 0,
    height: 0,
    labels: null, // Uint8Array [H * W]
    counts: new Int32Array(256), // pixels per value, to know which classes are scribbled
    tags: new Set(), // tagged classes (the background is added by the server)
    pixels: null, // ImageData of the scribble canvas
    ctx: null,
    colours: [],
    cls: 0,
    tool: "brush",
    brushWidth: 5,
    undo: [],
    redo: [],
    maxUndo: 50,
    view: { scale: 1, tx: 0, ty: 0 },
    version: 0, // bumped on every change of the current image
    savedVersion: 0,
    saving: null, // the save in flight (a Promise)
    pending: false,
    revision: 0, // the server's stamp of what we loaded / saved last
    loadToken: 0,
    listMode: "all",
    ranking: null,
    rankTimer: null,
    showPrediction: false,
    predictionFor: null,
  };

  // ------------------------------------------------------------------------------------ server
  const idPath = (id) => id.split("/").map(encodeURIComponent).join("/");

  async function api(method, path, body) {
    const options = { method, headers: {} };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
    return data;
  }

  function encodeRuns(values) {
    const out = [];
    let i = 0;
    while (i < values.length) {
      const v = values[i];
      let j = i + 1;
      while (j < values.length && values[j] === v) j++;
      out.push(v, j - i);
      i = j;
    }
    return out;
  }

  function decodeRuns(runs, size) {
    const out = new Uint8Array(size);
    let p = 0;
    for (let k = 0; k < runs.length; k += 2) {
      out.fill(runs[k], p, p + runs[k + 1]);
      p += runs[k + 1];
    }
    if (p !== size) throw new Error(`the runs cover ${p} pixels, expected ${size}`);
    return out;
  }

  // ------------------------------------------------------------------------------------ status
  function setStatus(text, error = false) {
    els.saveStatus.textContent = text;
    els.saveStatus.classList.toggle("error", error);
  }

  function showMessage(text) {
    els.message.textContent = text;
    els.message.hidden = !text;
  }

  function updateSavedFlag() {
    const clean = !state.saving && !state.pending && state.savedVersion === state.version;
    els.body.dataset.saved = clean ? "yes" : "no";
  }

  // ------------------------------------------------------------------------------------ list
  function renderProgress() {
    const done = state.images.filter((im) => im.done).length;
    const total = state.images.length;
    els.progressText.textContent = `${done} / ${total} done`;
    els.progressFill.style.width = total ? `${(100 * done) / total}%` : "0";
  }

  function listEntries() {
    let entries;
    if (state.listMode === "uncertain" && state.ranking) {
      entries = state.ranking.items.map((it) => ({ ...state.byId.get(it.id), score: it.uncertainty }));
    } else {
      entries = state.images;
    }
    return els.todoOnly.checked ? entries.filter((e) => !e.done || e.id === state.id) : entries;
  }

  function renderList() {
    const fragment = document.createDocumentFragment();
    for (const entry of listEntries()) {
      const li = document.createElement("li");
      li.dataset.id = entry.id;
      li.classList.toggle("done", entry.done);
      li.classList.toggle("current", entry.id === state.id);
      const mark = document.createElement("span");
      mark.className = "mark";
      mark.textContent = entry.done ? "✓" : "○";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = entry.id;
      li.append(mark, name);
      if (entry.score !== undefined) {
        const score = document.createElement("span");
        score.className = "score";
        score.textContent = entry.score.toFixed(3);
        li.append(score);
      }
      fragment.append(li);
    }
    els.list.replaceChildren(fragment);
    const current = els.list.querySelector("li.current");
    if (current) current.scrollIntoView({ block: "nearest" });
    renderProgress();
  }

  function setDone(id, done) {
    const entry = state.byId.get(id);
    if (entry && entry.done !== done) {
      entry.done = done;
      renderList();
    }
  }

  els.list.addEventListener("click", (e) => {
    const li = e.target.closest("li");
    if (li) openImage(li.dataset.id);
  });
  els.todoOnly.addEventListener("change", renderList);
  els.tabAll.addEventListener("click", () => setListMode("all"));
  els.tabUncertain.addEventListener("click", () => setListMode("uncertain"));

  function setListMode(mode) {
    state.listMode = mode;
    els.tabAll.classList.toggle("active", mode === "all");
    els.tabUncertain.classList.toggle("active", mode === "uncertain");
    renderList();
    if (mode === "uncertain") pollRanking();
  }

  async function pollRanking() {
    clearTimeout(state.rankTimer);
    try {
      state.ranking = await api("GET", "/api/uncertainty");
      const r = state.ranking;
      els.rankStatus.textContent = r.finished
        ? `${r.scored} images ranked by the model's uncertainty` + (r.failed ? `, ${r.failed} failed` : "")
        : `ranking: ${r.scored} / ${r.total} images scored…`;
      if (state.listMode === "uncertain") renderList();
      if (!r.finished) state.rankTimer = setTimeout(pollRanking, 1500);
    } catch (err) {
      els.rankStatus.textContent = `ranking failed: ${err.message}`;
    }
  }

  // ------------------------------------------------------------------------------------ classes, tools
  function renderClasses() {
    const fragment = document.createDocumentFragment();
    state.dataset.classes.forEach((name, c) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.class = String(c);
      button.setAttribute("role", "radio");
      button.title = c < 9 ? `${name} (${c + 1})` : name;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = `rgb(${state.colours[c].join(",")})`;
      const label = document.createElement("span");
      label.textContent = name;
      button.append(swatch, label);
      button.addEventListener("click", () => selectClass(c));
      fragment.append(button);
    });
    els.classes.replaceChildren(fragment);
  }

  function selectClass(c) {
    if (c < 0 || c >= state.dataset.classes.length) return;
    state.cls = c;
    if (state.tool === "eraser") selectTool("brush");
    for (const b of els.classes.children) b.setAttribute("aria-checked", String(Number(b.dataset.class) === c));
  }

  function selectTool(tool) {
    state.tool = tool;
    for (const t of ["brush", "eraser", "pan"]) $(`tool-${t}`).classList.toggle("active", t === tool);
    els.viewport.classList.toggle("panning", tool === "pan");
  }

  function setBrushWidth(w) {
    state.brushWidth = Math.max(1, Math.min(64, Math.round(w)));
    els.width.value = String(state.brushWidth);
    els.widthValue.textContent = String(state.brushWidth);
  }

  for (const t of ["brush", "eraser", "pan"]) $(`tool-${t}`).addEventListener("click", () => selectTool(t));
  els.width.addEventListener("input", () => setBrushWidth(Number(els.width.value)));

  // ------------------------------------------------------------------------------------ tags
  function scribbledClasses() {
    const out = new Set();
    for (let c = 0; c < state.dataset.classes.length; c++) if (state.counts[c] > 0) out.add(c);
    return out;
  }

  function renderTags() {
    const scribbled = scribbledClasses();
    const legend = els.tags.querySelector("legend");
    const fragment = document.createDocumentFragment();
    fragment.append(legend);
    state.dataset.classes.forEach((name, c) => {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.dataset.class = String(c);
      const isBackground = c === state.dataset.background;
      box.checked = isBackground || state.tags.has(c) || scribbled.has(c);
      box.disabled = isBackground || scribbled.has(c);
      label.title = isBackground
        ? "every image shows some background"
        : scribbled.has(c)
          ? "scribbled with this class"
          : "the image shows this class";
      box.addEventListener("change", () => {
        if (box.checked) state.tags.add(c);
        else state.tags.delete(c);
        changed();
      });
      label.append(box, document.createTextNode(name));
      fragment.append(label);
    });
    els.tags.replaceChildren(fragment);
  }

  // ------------------------------------------------------------------------------------ drawing
  function colourPixel(i, v) {
    const d = state.pixels.data;
    const o = 4 * i;
    if (v === UNLABELLED) {
      d[o + 3] = 0;
    } else {
      const rgb = state.colours[v] || [255, 0, 255];
      d[o] = rgb[0];
      d[o + 1] = rgb[1];
      d[o + 2] = rgb[2];
      d[o + 3] = 255;
    }
  }

  function renderScribble() {
    state.counts.fill(0);
    for (let i = 0; i < state.labels.length; i++) {
      state.counts[state.labels[i]]++;
      colourPixel(i, state.labels[i]);
    }
    state.ctx.putImageData(state.pixels, 0, 0);
  }

  // The pen: the same disk as weakseg.data.scribbles.rasterize_polylines (a w-pixel disk placed
  // as OpenCV's dilation places it), so a stroke equals that function's polyline of the same width.
  function penOffsets(w) {
    const out = [];
    const centre = (w - 1) / 2;
    const anchor = Math.floor(w / 2);
    for (let ky = 0; ky < w; ky++) {
      for (let kx = 0; kx < w; kx++) {
        if ((ky - centre) ** 2 + (kx - centre) ** 2 <= (w / 2) ** 2 + 1e-9) out.push([anchor - kx, anchor - ky]);
      }
    }
    return out;
  }

  const stroke = {
    active: false,
    pointerId: null,
    value: 0,
    offsets: [],
    last: null,
    before: null, // labels before the stroke (for undo)
    changed: false,
    box: null, // dirty rectangle [x0, y0, x1, y1)
  };

  function stamp(x, y) {
    const { width: W, height: H, labels } = state;
    for (const [dx, dy] of stroke.offsets) {
      const px = x + dx;
      const py = y + dy;
      if (px < 0 || py < 0 || px >= W || py >= H) continue;
      const i = py * W + px;
      const old = labels[i];
      if (old === stroke.value) continue;
      labels[i] = stroke.value;
      state.counts[old]--;
      state.counts[stroke.value]++;
      colourPixel(i, stroke.value);
      stroke.changed = true;
      const b = stroke.box;
      if (px < b[0]) b[0] = px;
      if (py < b[1]) b[1] = py;
      if (px + 1 > b[2]) b[2] = px + 1;
      if (py + 1 > b[3]) b[3] = py + 1;
    }
  }

  // 8-connected line between two pixels (Bresenham), stamping the pen at each.
  function line(x0, y0, x1, y1) {
    const dx = Math.abs(x1 - x0);
    const dy = -Math.abs(y1 - y0);
    const sx = x0 < x1 ? 1 : -1;
    const sy = y0 < y1 ? 1 : -1;
    let err = dx + dy;
    for (;;) {
      stamp(x0, y0);
      if (x0 === x1 && y0 === y1) return;
      const e2 = 2 * err;
      if (e2 >= dy) {
        err += dy;
        x0 += sx;
      }
      if (e2 <= dx) {
        err += dx;
        y0 += sy;
      }
    }
  }

  function flushStroke() {
    const b = stroke.box;
    if (b[2] > b[0] && b[3] > b[1]) state.ctx.putImageData(state.pixels, 0, 0, b[0], b[1], b[2] - b[0], b[3] - b[1]);
    stroke.box = [Infinity, Infinity, -Infinity, -Infinity];
  }

  // The image pixel under a pointer event.
  function pixelAt(e) {
    const r = els.scribble.getBoundingClientRect();
    return [
      Math.floor(((e.clientX - r.left) * state.width) / r.width),
      Math.floor(((e.clientY - r.top) * state.height) / r.height),
    ];
  }

  function beginStroke(e) {
    stroke.active = true;
    stroke.pointerId = e.pointerId;
    stroke.value = state.tool === "eraser" ? UNLABELLED : state.cls;
    stroke.offsets = penOffsets(state.brushWidth);
    stroke.before = state.labels.slice();
    stroke.changed = false;
    stroke.box = [Infinity, Infinity, -Infinity, -Infinity];
    stroke.last = pixelAt(e);
    stamp(...stroke.last);
    flushStroke();
  }

  function extendStroke(e) {
    const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) {
      const p = pixelAt(ev);
      line(stroke.last[0], stroke.last[1], p[0], p[1]);
      stroke.last = p;
    }
    flushStroke();
  }

  function endStroke(cancel = false) {
    if (!stroke.active) return;
    stroke.active = false;
    if (cancel) {
      state.labels.set(stroke.before);
      renderScribble();
      return;
    }
    if (!stroke.changed) return;
    pushUndo(stroke.before);
    if (stroke.value !== UNLABELLED) state.tags.add(stroke.value); // tag what was scribbled
    changed();
  }

  function pushUndo(snapshot) {
    state.undo.push(snapshot);
    if (state.undo.length > state.maxUndo) state.undo.shift();
    state.redo = [];
  }

  function undo() {
    if (!state.undo.length || stroke.active) return;
    state.redo.push(state.labels);
    state.labels = state.undo.pop();
    renderScribble();
    changed();
  }

  function redo() {
    if (!state.redo.length || stroke.active) return;
    state.undo.push(state.labels);
    state.labels = state.redo.pop();
    renderScribble();
    changed();
  }

  els.undo.addEventListener("click", undo);
  els.redo.addEventListener("click", redo);

  // ------------------------------------------------------------------------------------ view
  function applyView() {
    const v = state.view;
    els.stage.style.transform = `translate(${v.tx}px, ${v.ty}px) scale(${v.scale})`;
    els.zoomValue.textContent = `${Math.round(v.scale * 100)}%`;
  }

  function fit() {
    if (!state.width) return;
    const vw = els.viewport.clientWidth;
    const vh = els.viewport.clientHeight;
    const scale = Math.min(vw / state.width, vh / state.height, 8);
    state.view = {
      scale,
      tx: Math.round((vw - state.width * scale) / 2),
      ty: Math.round((vh - state.height * scale) / 2),
    };
    applyView();
  }

  function zoomTo(scale, cx, cy) {
    const v = state.view;
    const s = Math.max(0.05, Math.min(64, scale));
    if (cx === undefined) {
      cx = els.viewport.clientWidth / 2;
      cy = els.viewport.clientHeight / 2;
    }
    v.tx = Math.round(cx - ((cx - v.tx) * s) / v.scale);
    v.ty = Math.round(cy - ((cy - v.ty) * s) / v.scale);
    v.scale = s;
    applyView();
  }

  $("zoom-in").addEventListener("click", () => zoomTo(state.view.scale * 1.25));
  $("zoom-out").addEventListener("click", () => zoomTo(state.view.scale / 1.25));
  $("zoom-fit").addEventListener("click", fit);
  $("zoom-one").addEventListener("click", () => zoomTo(1));

  els.viewport.addEventListener(
    "wheel",
    (e) => {
      e.preventDefault();
      const r = els.viewport.getBoundingClientRect();
      zoomTo(state.view.scale * Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
    },
    { passive: false },
  );

  // ------------------------------------------------------------------------------------ pointers
  const pointers = new Map(); // active pointers: id -> {x, y, type}
  let pan = null; // {x, y, tx, ty} while dragging the view
  let pinch = null; // {distance, scale, cx, cy, tx, ty} while two touches are down
  let spaceDown = false;

  function touchPair() {
    const [a, b] = [...pointers.values()];
    return { distance: Math.hypot(a.x - b.x, a.y - b.y) || 1, cx: (a.x + b.x) / 2, cy: (a.y + b.y) / 2 };
  }

  els.viewport.addEventListener("pointerdown", (e) => {
    if (!state.labels) return;
    els.viewport.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, { x: e.clientX, y: e.clientY, type: e.pointerType });
    if (e.pointerType === "touch" && pointers.size === 2) {
      endStroke(true); // a second finger: pinch and pan instead of drawing
      const p = touchPair();
      pinch = { ...p, scale: state.view.scale, tx: state.view.tx, ty: state.view.ty };
      return;
    }
    if (pointers.size > 1) return;
    const wantsPan = state.tool === "pan" || spaceDown || e.button === 1;
    if (wantsPan) {
      pan = { x: e.clientX, y: e.clientY, tx: state.view.tx, ty: state.view.ty };
      els.viewport.classList.add("dragging");
      e.preventDefault();
      return;
    }
    if (e.button !== 0) return;
    e.preventDefault();
    beginStroke(e);
  });

  els.viewport.addEventListener("pointermove", (e) => {
    if (pointers.has(e.pointerId)) pointers.set(e.pointerId, { x: e.clientX, y: e.clientY, type: e.pointerType });
    if (pinch && pointers.size === 2) {
      const p = touchPair();
      const r = els.viewport.getBoundingClientRect();
      const scale = Math.max(0.05, Math.min(64, (pinch.scale * p.distance) / pinch.distance));
      const ax = pinch.cx - r.left;
      const ay = pinch.cy - r.top;
      state.view.scale = scale;
      state.view.tx = Math.round(ax - ((ax - pinch.tx) * scale) / pinch.scale + (p.cx - pinch.cx));
      state.view.ty = Math.round(ay - ((ay - pinch.ty) * scale) / pinch.scale + (p.cy - pinch.cy));
      applyView();
    } else if (pan) {
      state.view.tx = Math.round(pan.tx + e.clientX - pan.x);
      state.view.ty = Math.round(pan.ty + e.clientY - pan.y);
      applyView();
    } else if (stroke.active && e.pointerId === stroke.pointerId) {
      extendStroke(e);
    }
  });

  function pointerEnd(e) {
    pointers.delete(e.pointerId);
    if (pinch) {
      if (pointers.size < 2) pinch = null;
      return;
    }
    if (pan && pointers.size === 0) {
      pan = null;
      els.viewport.classList.remove("dragging");
    }
    if (stroke.active && e.pointerId === stroke.pointerId) endStroke(e.type === "pointercancel");
  }

  els.viewport.addEventListener("pointerup", pointerEnd);
  els.viewport.addEventListener("pointercancel", pointerEnd);
  els.viewport.addEventListener("contextmenu", (e) => e.preventDefault());

  // ------------------------------------------------------------------------------------ saving
  function changed() {
    state.version++;
    renderTags();
    scheduleSave();
  }

  function scheduleSave() {
    if (state.saving) {
      state.pending = true;
    } else {
      state.saving = save();
    }
    updateSavedFlag();
  }

  async function save() {
    const id = state.id;
    const version = state.version;
    const body = {
      width: state.width,
      height: state.height,
      scribble: encodeRuns(state.labels),
      tags: [...state.tags].sort((a, b) => a - b),
    };
    setStatus("saving…");
    try {
      const result = await api("PUT", `/api/images/${idPath(id)}/annotation`, body);
      if (id === state.id) {
        state.savedVersion = Math.max(state.savedVersion, version);
        state.revision = result.revision;
      }
      setDone(id, result.done);
      setStatus(`saved ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      setStatus(`not saved: ${err.message}`, true);
    } finally {
      state.saving = null;
      if (state.pending) {
        state.pending = false;
        state.saving = save();
      }
      updateSavedFlag();
    }
  }

  async function flushSaves() {
    while (state.saving) await state.saving;
  }

  window.addEventListener("beforeunload", (e) => {
    if (state.saving || state.pending || state.savedVersion !== state.version) {
      e.preventDefault();
      e.returnValue = "";
    }
  });

  // ------------------------------------------------------------------------------------ images
  function applyAnnotation(data) {
    state.width = data.width;
    state.height = data.height;
    state.labels = decodeRuns(data.scribble, data.width * data.height);
    state.tags = new Set(data.tags.filter((c) => c !== state.dataset.background));
    state.revision = data.revision;
    for (const canvas of [els.scribble, els.prediction]) {
      canvas.width = data.width;
      canvas.height = data.height;
    }
    state.ctx = els.scribble.getContext("2d");
    state.pixels = state.ctx.createImageData(data.width, data.height);
    state.maxUndo = Math.max(10, Math.min(100, Math.floor(256e6 / Math.max(1, data.width * data.height))));
    renderScribble();
    renderTags();
  }

  async function openImage(id, { keepView = false } = {}) {
    if (!state.byId.has(id)) return;
    const token = ++state.loadToken;
    await flushSaves();
    if (state.id && state.savedVersion !== state.version) {
      state.saving = save(); // the last save failed: try once more before leaving the image
      await flushSaves();
      if (state.savedVersion !== state.version) {
        setStatus("not saved: staying on this image until its changes are saved (is the server running?)", true);
        return;
      }
    }
    if (token !== state.loadToken) return;
    els.body.dataset.ready = "no";
    try {
      const url = `/api/images/${idPath(id)}/image`;
      const [data] = await Promise.all([
        api("GET", `/api/images/${idPath(id)}/annotation`),
        new Promise((resolve, reject) => {
          els.image.onload = resolve;
          els.image.onerror = () => reject(new Error(`cannot load the image of ${id}`));
          els.image.src = url;
        }),
      ]);
      if (token !== state.loadToken) return;
      state.id = id;
      state.undo = [];
      state.redo = [];
      state.version = 0;
      state.savedVersion = 0;
      state.predictionFor = null;
      els.image.width = data.width;
      els.image.height = data.height;
      els.stage.style.width = `${data.width}px`;
      els.stage.style.height = `${data.height}px`;
      applyAnnotation(data);
      showMessage("");
      els.imageId.textContent = id;
      history.replaceState(null, "", `#${encodeURIComponent(id)}`);
      if (!keepView) fit();
      renderList();
      els.uncertaintyValue.textContent = "";
      if (state.showPrediction) await loadPrediction();
      els.body.dataset.imageId = id;
      els.body.dataset.ready = "yes";
      updateSavedFlag();
    } catch (err) {
      if (token === state.loadToken) showMessage(`${id}: ${err.message}`);
    }
  }

  function step(delta) {
    const entries = listEntries();
    const at = entries.findIndex((e) => e.id === state.id);
    const next = entries[at + delta];
    if (next) openImage(next.id);
  }

  function nextTodo() {
    const entries = listEntries();
    const at = entries.findIndex((e) => e.id === state.id);
    const order = [...entries.slice(at + 1), ...entries.slice(0, Math.max(at, 0))];
    const next = order.find((e) => !e.done);
    if (next) openImage(next.id);
    else setStatus("every image is done");
  }

  $("prev").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));
  $("next-todo").addEventListener("click", nextTodo);

  // Another tab may have saved this image: reload it when we come back, unless we have unsaved work.
  async function refreshFromServer() {
    if (!state.id || state.saving || state.pending || stroke.active) return;
    try {
      const data = await api("GET", `/api/images/${idPath(state.id)}/annotation`);
      if (data.id === state.id && data.revision !== state.revision && !state.saving && !state.pending) {
        state.undo = [];
        state.redo = [];
        applyAnnotation(data);
        setStatus("reloaded: this image was saved from another tab");
      }
    } catch (err) {
      setStatus(`cannot check for changes: ${err.message}`, true);
    }
  }

  window.addEventListener("focus", refreshFromServer);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") refreshFromServer();
  });

  // ------------------------------------------------------------------------------------ prediction
  async function loadPrediction() {
    if (!state.id || state.predictionFor === state.id) return;
    const id = state.id;
    const data = await api("GET", `/api/images/${idPath(id)}/prediction`);
    if (id !== state.id) return;
    const labels = decodeRuns(data.labels, data.width * data.height);
    const ctx = els.prediction.getContext("2d");
    const pixels = ctx.createImageData(data.width, data.height);
    for (let i = 0; i < labels.length; i++) {
      const rgb = state.colours[labels[i]] || [255, 0, 255];
      pixels.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * i);
    }
    ctx.putImageData(pixels, 0, 0);
    state.predictionFor = id;
    els.uncertaintyValue.textContent = `uncertainty ${data.uncertainty.toFixed(3)}`;
  }

  async function setPrediction(on) {
    state.showPrediction = on;
    els.showPrediction.checked = on;
    els.prediction.hidden = !on;
    if (on) {
      try {
        await loadPrediction();
      } catch (err) {
        setStatus(`prediction failed: ${err.message}`, true);
      }
    }
    els.body.dataset.prediction = on && state.predictionFor === state.id ? "shown" : "hidden";
  }

  els.showPrediction.addEventListener("change", () => setPrediction(els.showPrediction.checked));
  els.predictionOpacity.addEventListener("input", () => {
    els.prediction.style.opacity = String(Number(els.predictionOpacity.value) / 100);
  });

  // ------------------------------------------------------------------------------------ keys
  document.addEventListener("keydown", (e) => {
    const target = e.target;
    if (target instanceof HTMLInputElement && target.type !== "checkbox" && target.type !== "range") return;
    const key = e.key;
    const mod = e.ctrlKey || e.metaKey;
    if (mod && (key === "z" || key === "Z")) {
      e.preventDefault();
      if (e.shiftKey) redo();
      else undo();
      return;
    }
    if (mod && (key === "y" || key === "Y")) {
      e.preventDefault();
      redo();
      return;
    }
    if (mod || e.altKey) return;
    if (key === " ") {
      if (!spaceDown) {
        spaceDown = true;
        els.viewport.classList.add("panning");
      }
      e.preventDefault();
      return;
    }
    const handled = {
      ArrowRight: () => step(1),
      PageDown: () => step(1),
      ArrowLeft: () => step(-1),
      PageUp: () => step(-1),
      n: nextTodo,
      b: () => selectTool("brush"),
      e: () => selectTool("eraser"),
      h: () => selectTool("pan"),
      "[": () => setBrushWidth(state.brushWidth - 1),
      "]": () => setBrushWidth(state.brushWidth + 1),
      "+": () => zoomTo(state.view.scale * 1.25),
      "=": () => zoomTo(state.view.scale * 1.25),
      "-": () => zoomTo(state.view.scale / 1.25),
      f: fit,
      z: () => zoomTo(1),
      o: () => state.dataset.has_model && setPrediction(!state.showPrediction),
    }[key.length === 1 ? key.toLowerCase() : key];
    if (handled) {
      e.preventDefault();
      handled();
    } else if (/^[1-9]$/.test(key)) {
      selectClass(Number(key) - 1);
    }
  });

  document.addEventListener("keyup", (e) => {
    if (e.key === " ") {
      spaceDown = false;
      els.viewport.classList.toggle("panning", state.tool === "pan");
    }
  });

  window.addEventListener("resize", () => {
    if (state.labels) fit();
  });

  // ------------------------------------------------------------------------------------ start
  async function start() {
    try {
      const data = await api("GET", "/api/dataset");
      state.dataset = data;
      state.colours = data.colours;
      state.images = data.images;
      state.byId = new Map(data.images.map((im) => [im.id, im]));
      document.title = `${data.name} · weakseg annotate`;
      els.name.textContent = data.name;
      renderClasses();
      // Scribble the first foreground class by default.
      selectClass(data.classes.length > 1 && data.background === 0 ? 1 : 0);
      selectTool("brush");
      setBrushWidth(state.brushWidth);
      els.modelTools.hidden = !data.has_model;
      els.tabUncertain.hidden = !data.has_model;
      els.prediction.style.opacity = String(Number(els.predictionOpacity.value) / 100);
      if (data.has_model) pollRanking();
      renderList();
      if (!data.images.length) {
        showMessage("this dataset lists no images");
        return;
      }
      const fromHash = decodeURIComponent(location.hash.slice(1));
      await openImage(state.byId.has(fromHash) ? fromHash : data.images[0].id);
    } catch (err) {
      showMessage(`cannot open the dataset: ${err.message}`);
    }
  }

  // For tests and the console: read-only views of the state.
  window.weakseg = {
    state,
    labels: () => Array.from(state.labels || []),
    openImage,
    setPrediction,
    flushSaves,
  };

  start();
})();
