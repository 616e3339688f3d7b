// The layer view drawn in the browser (see explorer/canvas.py for the payload and the
// conventions: bilinear upsampling with align_corners=False, robust scale, the colour
// map's table indexed by floor(v * 256), blend (1 - a) * photo + a * colour, rounded).
// Installs window.tgradCanvas = {load, step, state}; every view control's change calls
// step() in the browser only (no request to the server).
window.tgradCanvas = (() => {
  const state = {
    data: null, // the parsed payload
    photo: null, // the backdrop's R, G, B (each value * 256: a row of the blend table)
    view: null, // {layer, mode, opacity, cmap} as last asked
    tables: {}, // colour map name -> Uint8Array(768)
    alone: [], // per position: {grid, values: Float32Array} (units of the robust scale)
    indices: new Map(), // view -> its colour-table index per pixel
    luts: new Map(), // colour map and opacity -> the blend tables
    partials: [], // per position: {grid, values} (the map's own units)
    generation: 0, // counts loads, so that a stale photo decode draws nothing
    drawn: 0, // frames drawn (for tests and the benchmark)
    lastDraw: null, // {layer, mode, opacity, cmap, ms} of the last frame drawn
    blobUrls: {}, // element id -> the object URL last given to its <img>
  };

  const bytes = (text) => {
    const binary = atob(text);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out;
  };

  const decode = (entry) => {
    const codes = bytes(entry.codes);
    const [h, w] = entry.grid;
    if (codes.length !== h * w) throw new Error('payload: a map has the wrong size');
    const values = new Float32Array(h * w);
    const step = entry.top / 255;
    for (let i = 0; i < values.length; i++) values[i] = codes[i] * step;
    return {grid: [h, w], values};
  };

  // torch's bilinear interpolation, align_corners=False: source = (dst + 0.5) * in/out
  // - 0.5, clamped at 0; the next cell clamped at the edge.
  const axis = (size, out) => {
    const lo = new Int32Array(out), hi = new Int32Array(out), frac = new Float32Array(out);
    const scale = size / out;
    for (let d = 0; d < out; d++) {
      const source = Math.max(scale * (d + 0.5) - 0.5, 0);
      const i = Math.floor(source);
      lo[d] = i;
      hi[d] = i < size - 1 ? i + 1 : i;
      frac[d] = source - i;
    }
    return {lo, hi, frac};
  };
  const axes = {};
  const axisOf = (size, out) => (axes[size + ':' + out] ||= axis(size, out));

  const upsample = (values, [h, w], [H, W], into = null) => {
    const out = into || new Float32Array(H * W);
    if (h === H && w === W) {
      if (into) for (let i = 0; i < out.length; i++) out[i] += values[i];
      else out.set(values);
      return out;
    }
    const ys = axisOf(h, H), xs = axisOf(w, W);
    for (let y = 0; y < H; y++) {
      const r0 = ys.lo[y] * w, r1 = ys.hi[y] * w, fy = ys.frac[y], gy = 1 - fy;
      const row = y * W;
      for (let x = 0; x < W; x++) {
        const c0 = xs.lo[x], c1 = xs.hi[x], fx = xs.frac[x], gx = 1 - fx;
        const v = gy * (gx * values[r0 + c0] + fx * values[r0 + c1]) +
          fy * (gx * values[r1 + c0] + fx * values[r1 + c1]);
        if (into) out[row + x] += v; else out[row + x] = v;
      }
    }
    return out;
  };

  // The running sums on the model's input grid, one per position: each adds to the
  // previous one its grid's new partial minus the one it replaces (upsampling is linear).
  const runningSums = () => {
    const data = state.data, [h, w] = data.input;
    const sums = [], latest = new Map();
    let total = new Float32Array(h * w);
    for (let k = 0; k < data.positions; k++) {
      const partial = state.partials[k], name = partial.grid.join('x');
      const previous = latest.get(name);
      const change = new Float32Array(partial.values);
      if (previous) for (let i = 0; i < change.length; i++) change[i] -= previous.values[i];
      latest.set(name, partial);
      total = new Float32Array(total);
      upsample(change, partial.grid, data.input, total);
      sums.push(total);
    }
    return sums;
  };

  // The colour-table index of every pixel of a view (independent of the colour map and
  // the opacity): upsampled to the backdrop, divided by the view's scale, clipped to
  // [0, 1], floor(v * 256) clipped to 255. Cached per view.
  const indexMap = (position, cumulative) => {
    const key = (cumulative ? 'c' : 'a') + position;
    if (state.indices.has(key)) return state.indices.get(key);
    const data = state.data, size = data.size;
    let full, factor = 256;
    if (cumulative) {
      state.sums ||= runningSums();
      full = upsample(state.sums[position], data.input, size);
      const scale = data.scale[position];
      factor = scale > 0 ? 256 / scale : 0;
    } else {
      full = upsample(state.alone[position].values, state.alone[position].grid, size);
    }
    const index = new Uint8Array(full.length);
    for (let i = 0; i < full.length; i++) {
      const v = full[i] * factor;
      index[i] = v >= 255 ? 255 : v > 0 ? v : 0; // Uint8Array truncates: floor for v >= 0
    }
    state.indices.set(key, index);
    return index;
  };

  // (1 - a) * photo + a * colour in float32, rounded half to even as tgrad.viz.blend, for every photo value and table entry of one
  // channel: lut[c][photo * 256 + entry]. Cached per colour map and opacity.
  const blendTable = (cmap, opacity) => {
    const key = cmap + ':' + opacity;
    if (state.luts.has(key)) return state.luts.get(key);
    const table = state.tables[cmap] || state.tables[Object.keys(state.tables)[0]];
    const keep = Math.fround(1 - opacity), add = Math.fround(opacity);
    const luts = [0, 1, 2].map((c) => {
      const lut = new Uint8Array(65536);
      for (let p = 0; p < 256; p++) {
        const base = Math.fround(keep * p);
        for (let e = 0; e < 256; e++) {
          const x = Math.fround(base + Math.fround(add * table[e * 3 + c]));
          const near = Math.round(x); // numpy rounds halves to even
          lut[(p << 8) | e] = near - x === 0.5 && near % 2 === 1 ? near - 1 : near;
        }
      }
      return lut;
    });
    if (state.luts.size > 8) state.luts.clear();
    state.luts.set(key, luts);
    return luts;
  };

  const paint = (canvas, index, cmap, opacity) => {
    const [H, W] = state.data.size;
    if (canvas.width !== W || canvas.height !== H) {
      canvas.width = W;
      canvas.height = H;
    }
    const context = canvas.getContext('2d');
    if (!canvas.tgImage || canvas.tgImage.width !== W || canvas.tgImage.height !== H) {
      canvas.tgImage = context.createImageData(W, H);
    }
    const image = canvas.tgImage;
    const out = new Uint32Array(image.data.buffer);
    const [r, g, b] = blendTable(cmap, opacity);
    const [pr, pg, pb] = state.photo;
    for (let i = 0; i < index.length; i++) {
      const e = index[i];
      out[i] = 0xff000000 | (b[pb[i] | e] << 16) | (g[pg[i] | e] << 8) | r[pr[i] | e];
    }
    context.putImageData(image, 0, 0);
  };

  // The canvas lives inside the element (#layer-image, #overlay), laid exactly over its
  // <img>; the <img> gets the same picture a moment later (for downloads and readers).
  const canvasIn = (id) => {
    const element = document.getElementById(id);
    const img = element && element.querySelector('img');
    if (!img) return null;
    let canvas = element.querySelector('canvas.tg-canvas');
    const fresh = !canvas || canvas.parentElement !== img.parentElement;
    if (fresh) {
      if (canvas) canvas.remove();
      canvas = document.createElement('canvas');
      canvas.className = 'tg-canvas';
      canvas.setAttribute('role', 'img');
      canvas.setAttribute('aria-label', img.getAttribute('alt') || '');
      img.parentElement.insertBefore(canvas, img.nextSibling);
      if (getComputedStyle(img.parentElement).position === 'static') img.parentElement.style.position = 'relative';
    }
    const style = getComputedStyle(img);
    Object.assign(canvas.style, {
      position: 'absolute', left: img.offsetLeft + 'px', top: img.offsetTop + 'px',
      width: img.offsetWidth + 'px', height: img.offsetHeight + 'px',
      objectFit: style.objectFit, pointerEvents: 'none',
    });
    return {canvas, img, fresh};
  };

  const mirrors = {};
  const mirror = (id, canvas, img) => {
    clearTimeout(mirrors[id]);
    mirrors[id] = setTimeout(() => canvas.toBlob((blob) => {
      if (!blob) return;
      const old = state.blobUrls[id];
      state.blobUrls[id] = URL.createObjectURL(blob);
      img.src = state.blobUrls[id];
      if (old) URL.revokeObjectURL(old);
    }, 'image/png'), 300);
  };

  const modes = () => state.data.modes;
  const clampLayer = (layer) => Math.min(Math.max(Math.round(Number(layer) || 0), 0), state.data.positions - 1);
  const opacityOf = (opacity) => Math.min(Math.max(Number(opacity), 0), 1) || 0;

  const highlight = (position, cumulative) => {
    const chart = document.getElementById('decomposition-chart');
    const current = state.data.terms[position];
    if (chart) {
      chart.querySelectorAll('.tg-col').forEach((column, index) => {
        const bar = column.firstElementChild;
        if (!bar) return;
        bar.classList.toggle('tg-cur', index === current);
        const later = column.dataset.pos !== undefined && Number(column.dataset.pos) > position;
        bar.classList.toggle('tg-dim', cumulative && later && index !== current);
      });
      chart.querySelectorAll('tbody tr').forEach((row, index) => {
        if (index === current) row.setAttribute('aria-current', 'true');
        else row.removeAttribute('aria-current');
      });
      const caption = chart.querySelector('figcaption');
      if (caption) caption.innerHTML = state.data.chart[position];
      const legend = chart.querySelector('.tg-legend');
      const dim = legend && legend.querySelector('.tg-dim');
      if (legend && cumulative && !dim) {
        legend.insertAdjacentHTML('beforeend', '<span><i class="tg-key tg-pos tg-dim"></i>not yet included</span>');
      } else if (legend && !cumulative && dim) dim.parentElement.remove();
    }
    const grid = document.getElementById('layer-grid');
    if (grid) {
      grid.querySelectorAll('.thumbnail-item').forEach((item, index) => {
        item.classList.toggle('tg-here', index === position);
      });
    }
  };

  const draw = () => {
    const data = state.data, view = state.view;
    if (!data || !state.photo || !view) return false;
    const start = performance.now();
    const cmap = state.tables[view.cmap] ? view.cmap : Object.keys(state.tables)[0];
    const position = clampLayer(view.layer);
    const cumulative = view.mode === modes().cumulative;
    const opacity = opacityOf(view.opacity);
    const shown = [position, view.mode, opacity, cmap].join('|');
    const layer = canvasIn('layer-image');
    if (layer && (shown !== state.shown || layer.fresh)) {
      paint(layer.canvas, indexMap(position, cumulative), cmap, opacity);
      mirror('layer-image', layer.canvas, layer.img);
    }
    const overlay = canvasIn('overlay');
    if (overlay && (state.overlayDrawn !== cmap + ':' + opacity || overlay.fresh)) {
      paint(overlay.canvas, indexMap(data.positions - 1, true), cmap, opacity);
      mirror('overlay', overlay.canvas, overlay.img);
      state.overlayDrawn = cmap + ':' + opacity;
    }
    if (shown !== state.shown) {
      highlight(position, cumulative);
      state.drawn += 1;
      state.lastDraw = {layer: position, mode: view.mode, opacity, cmap, ms: performance.now() - start};
    }
    state.shown = shown;
    return true;
  };

  // the slider's own input event draws at once (Gradio's change event follows, for the
  // caption, and finds the view drawn)
  const follow = () => {
    const input = document.querySelector('#layer-slider input[type=range]');
    if (!input || input.dataset.tgFollowed) return;
    input.dataset.tgFollowed = '1';
    input.addEventListener('input', () => {
      if (!state.view) return;
      state.view = {...state.view, layer: Number(input.value)};
      draw();
    });
  };

  // the other views, computed while the page is idle, so that a step only paints
  const prefetch = (generation) => {
    const pending = [];
    for (let k = 0; k < state.data.positions; k++) pending.push([k, false], [k, true]);
    const work = (deadline) => {
      if (generation !== state.generation) return;
      while (pending.length && deadline.timeRemaining() > 4) indexMap(...pending.shift());
      if (pending.length) requestIdleCallback(work);
    };
    requestIdleCallback(work);
  };

  const caption = () => {
    if (!state.data || !state.view) return '';
    const position = clampLayer(state.view.layer);
    return state.data.captions[state.view.mode]?.[position] ?? state.data.captions[modes().alone][position];
  };

  const setView = (layer, mode, opacity, cmap) => { state.view = {layer, mode, opacity, cmap}; };

  const load = (text, layer, mode, opacity, cmap) => {
    setView(layer, mode, opacity, cmap);
    if (!text) return [];
    const data = JSON.parse(text);
    if (data.version !== 1) return [];
    const generation = ++state.generation;
    state.data = data;
    state.photo = null;
    state.overlayDrawn = null;
    state.shown = null;
    state.sums = null;
    state.indices = new Map();
    state.luts = new Map();
    state.tables = {};
    for (const [name, table] of Object.entries(data.cmaps)) state.tables[name] = bytes(table);
    state.alone = data.alone.map(decode);
    state.partials = data.partials.map(decode);
    const picture = new Image();
    picture.onload = () => {
      if (generation !== state.generation) return;
      const [H, W] = data.size;
      const scratch = document.createElement('canvas');
      scratch.width = W;
      scratch.height = H;
      const context = scratch.getContext('2d');
      context.drawImage(picture, 0, 0);
      const rgba = context.getImageData(0, 0, W, H).data;
      const channels = [0, 1, 2].map(() => new Uint16Array(W * H));
      for (let i = 0; i < W * H; i++) {
        for (let c = 0; c < 3; c++) channels[c][i] = rgba[i * 4 + c] << 8; // the blend's row
      }
      state.photo = channels;
      follow();
      draw();
      prefetch(generation);
    };
    picture.src = data.photo;
    return [];
  };

  const step = (text, layer, mode, opacity, cmap) => {
    setView(layer, mode, opacity, cmap);
    draw();
    return caption();
  };

  // a picture the server sends later (the next explanation's first view) replaces the
  // <img> or its parent: lay the canvas over it again
  const watch = () => {
    for (const id of ['layer-image', 'overlay']) {
      const element = document.getElementById(id);
      if (!element || element.dataset.tgWatched) continue;
      element.dataset.tgWatched = '1';
      new MutationObserver(() => {
        const img = element.querySelector('img');
        const canvas = element.querySelector('canvas.tg-canvas');
        if (img && (!canvas || canvas.parentElement !== img.parentElement)) {
          state.overlayDrawn = null;
          draw();
        }
      }).observe(element, {childList: true, subtree: true});
    }
  };
  // the layer grid's pictures load when they arrive, not when a step's highlight
  // brings them near the viewport: a step never fetches anything
  const eager = () => {
    const grid = document.getElementById('layer-grid');
    if (!grid || grid.dataset.tgEager) return;
    grid.dataset.tgEager = '1';
    const load = () => grid.querySelectorAll('img[loading="lazy"]').forEach((img) => { img.loading = 'eager'; });
    new MutationObserver(load).observe(grid, {childList: true, subtree: true});
    load();
  };
  watch();
  eager();
  const style = document.createElement('style');
  style.textContent = '#layer-grid .thumbnail-item.tg-here { outline: 3px solid #ff7f0e; outline-offset: -3px; }';
  document.head.appendChild(style);
  return {load, step, draw, state};
})();
