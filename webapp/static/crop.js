// Upload page: the crop box over the preview (mouse, touch and keyboard) and the photo tools.
// The box is kept in fractions of the photo and written to the hidden `crop` field as x,y,w,h.
//
// Pointer rules: the box or a handle is dragged at once; on the photo outside the box a new box
// is drawn only once the pointer has moved DRAW_PX, so a tap (or a finger's jitter) changes
// nothing; a box never ends smaller than minimum() (a size a finger can still move and resize);
// a second finger, the browser taking the gesture (pointercancel: a scroll or a pinch) or Escape
// puts back the box the drag started from; "Reset box" puts back the default box. Moves and
// resizes are announced in a polite live region (the box itself is a group: no value to read).
(function () {
  "use strict";
  var stage = document.getElementById("crop-stage");
  if (!stage) { return; }
  var img = document.getElementById("preview"), box = document.getElementById("crop-box");
  var toggle = document.getElementById("crop-toggle"), field = document.getElementById("crop-input");
  var MIN = 0.08, STEP = 0.02, DRAW_PX = 10, ANNOUNCE_MS = 500;
  var DEFAULT = {x: 0.15, y: 0.15, w: 0.7, h: 0.7};
  var coarse = window.matchMedia ? window.matchMedia("(pointer: coarse)") : null;
  var r = copy(DEFAULT);

  function copy(b) { return {x: b.x, y: b.y, w: b.w, h: b.h}; }
  function clamp(v, lo, hi) { return Math.max(lo, Math.min(hi, v)); }
  function pct(v) { return Math.round(v * 100) + "%"; }

  // the smallest box, as fractions of the photo: MIN, and never under 48 CSS px (56 on a touch
  // screen, where a corner handle's hit area is 48 px) on either side, or the whole photo
  function minimum() {
    var b = img.getBoundingClientRect(), px = coarse && coarse.matches ? 56 : 48;
    return {w: Math.min(1, Math.max(MIN, b.width ? px / b.width : 0)),
            h: Math.min(1, Math.max(MIN, b.height ? px / b.height : 0))};
  }
  function fix() {
    var m = minimum();
    r.w = clamp(r.w, m.w, 1); r.h = clamp(r.h, m.h, 1);
    r.x = clamp(r.x, 0, 1 - r.w); r.y = clamp(r.y, 0, 1 - r.h);
  }
  function describe() {
    return "Box: left " + pct(r.x) + ", top " + pct(r.y) + ", width " + pct(r.w) + ", height " + pct(r.h);
  }
  function render(loose) {
    if (!loose) { fix(); }
    box.style.left = (r.x * 100) + "%"; box.style.top = (r.y * 100) + "%";
    box.style.width = (r.w * 100) + "%"; box.style.height = (r.h * 100) + "%";
    // the hole in the dimmed layer (style.css: .crop-stage.cropping::before)
    stage.style.setProperty("--crop-l", (r.x * 100) + "%"); stage.style.setProperty("--crop-t", (r.y * 100) + "%");
    stage.style.setProperty("--crop-r", ((r.x + r.w) * 100) + "%"); stage.style.setProperty("--crop-b", ((r.y + r.h) * 100) + "%");
    field.value = toggle.checked ? [r.x, r.y, r.w, r.h].map(function (v) { return v.toFixed(4); }).join(",") : "";
  }

  // the live region and the reset button (made here: the template has neither, and the CSP
  // allows no inline script)
  var status = document.createElement("p");
  status.id = "crop-status";
  status.className = "visually-hidden";
  status.setAttribute("role", "status");
  status.setAttribute("aria-live", "polite");
  status.setAttribute("aria-atomic", "true");
  var reset = document.createElement("button");
  reset.type = "button";
  reset.id = "crop-reset";
  reset.className = "crop-reset";
  reset.textContent = "Reset box";
  reset.hidden = true;
  stage.parentNode.insertBefore(status, stage.nextSibling);
  stage.parentNode.insertBefore(reset, stage.nextSibling);
  box.setAttribute("aria-label", "Search area. Arrow keys move it; Shift and arrow keys change its size; " +
                   "drag it or its corner with a mouse or finger; the Reset box button after the photo puts it back.");

  var announceTimer = null;
  function announce(prefix) {
    clearTimeout(announceTimer);
    announceTimer = setTimeout(function () {
      if (!box.hidden) { status.textContent = (prefix || "") + describe(); }
    }, ANNOUNCE_MS);
  }

  function setActive(on) {
    box.hidden = !on || img.hidden;
    reset.hidden = box.hidden;
    stage.classList.toggle("cropping", !box.hidden);
    if (on) { render(); } else { field.value = ""; status.textContent = ""; }
  }
  toggle.addEventListener("change", function () {
    setActive(toggle.checked);
    if (toggle.checked) { box.focus(); announce(); }
  });
  window.addEventListener("shopsearch:photo", function (e) {
    cancelDrag(false);
    r = copy(DEFAULT);
    setActive(toggle.checked && e.detail.ok);
  });
  reset.addEventListener("click", function () {
    cancelDrag(false);
    r = copy(DEFAULT);
    render();
    announce("Box reset. ");
  });
  // a change of layout (a phone turned round) can raise the minimum in pixels
  window.addEventListener("resize", function () { if (!box.hidden && !drag) { render(); } });

  // keyboard: arrows move, Shift+arrows resize
  box.addEventListener("keydown", function (e) {
    var dx = {ArrowLeft: -STEP, ArrowRight: STEP}[e.key] || 0, dy = {ArrowUp: -STEP, ArrowDown: STEP}[e.key] || 0;
    if (!dx && !dy) { return; }
    e.preventDefault();
    if (e.shiftKey) { r.w += dx; r.h += dy; } else { r.x += dx; r.y += dy; }
    render();
    announce();
  });

  // mouse, pen and touch: drag the box, drag a corner, or draw a new box on the photo
  var drag = null, down = {};
  function point(e) {
    var b = img.getBoundingClientRect();
    return {x: clamp((e.clientX - b.left) / b.width, 0, 1), y: clamp((e.clientY - b.top) / b.height, 0, 1)};
  }
  function cancelDrag(restore) {
    if (!drag) { return; }
    if (restore && drag.moved) { r = copy(drag.orig); render(); announce("Change undone. "); }
    if (stage.hasPointerCapture && stage.hasPointerCapture(drag.id)) { stage.releasePointerCapture(drag.id); }
    drag = null;
  }
  // the pointers down anywhere, to tell a second finger from a first
  window.addEventListener("pointerdown", function (e) { down[e.pointerId] = true; }, true);
  function up(e) { delete down[e.pointerId]; }
  window.addEventListener("pointerup", up, true);
  window.addEventListener("pointercancel", up, true);
  stage.addEventListener("pointerdown", function (e) {
    if (box.hidden) { return; }
    if (drag) {  // a second finger: a pinch or a scroll is the browser's, not a drag
      cancelDrag(true);
      return;
    }
    if (e.pointerType === "mouse" && e.button !== 0) { return; }
    if (Object.keys(down).length > 1) { return; }
    var handle = e.target.getAttribute && e.target.getAttribute("data-handle");
    var mode = handle || (e.target === box ? "move" : "pending");  // pending: a draw once it moves DRAW_PX
    drag = {id: e.pointerId, mode: mode, start: point(e), sx: e.clientX, sy: e.clientY, orig: copy(r), moved: false};
    stage.setPointerCapture(e.pointerId);
    e.preventDefault();  // no text selection, no native image drag
  });
  stage.addEventListener("pointermove", function (e) {
    if (!drag || e.pointerId !== drag.id) { return; }
    if (drag.mode === "pending") {
      if (Math.abs(e.clientX - drag.sx) < DRAW_PX && Math.abs(e.clientY - drag.sy) < DRAW_PX) { return; }
      drag.mode = "draw";
    }
    var p = point(e), o = drag.orig, dx = p.x - drag.start.x, dy = p.y - drag.start.y, m = minimum();
    drag.moved = true;
    if (drag.mode === "move") { r.x = o.x + dx; r.y = o.y + dy; }
    else if (drag.mode === "se") { r.w = o.w + dx; r.h = o.h + dy; }
    else if (drag.mode === "nw") {
      var nx = clamp(o.x + dx, 0, o.x + o.w - m.w), ny = clamp(o.y + dy, 0, o.y + o.h - m.h);
      r = {x: nx, y: ny, w: o.x + o.w - nx, h: o.y + o.h - ny};
    } else {  // draw from the start point to here; shown as drawn, made at least minimum() at the end
      r = {x: Math.min(p.x, drag.start.x), y: Math.min(p.y, drag.start.y),
           w: Math.abs(p.x - drag.start.x), h: Math.abs(p.y - drag.start.y)};
      render(true);
      return;
    }
    render();
  });
  function grow() {  // a drawn box too small: grown from its start corner in the direction drawn
    var m = minimum(), s = drag.start;
    if (r.w < m.w) { r.x = r.x < s.x ? s.x - m.w : s.x; r.w = m.w; }
    if (r.h < m.h) { r.y = r.y < s.y ? s.y - m.h : s.y; r.h = m.h; }
  }
  stage.addEventListener("pointerup", function (e) {
    if (!drag || e.pointerId !== drag.id) { return; }
    if (drag.mode === "draw") { grow(); }
    var moved = drag.moved;
    drag = null;
    if (moved) { render(); announce(); }
  });
  stage.addEventListener("pointercancel", function (e) {
    if (drag && e.pointerId === drag.id) { cancelDrag(true); }
  });
  document.addEventListener("keydown", function (e) {
    if (drag && (e.key === "Escape" || e.key === "Esc")) { e.preventDefault(); cancelDrag(true); }
  });
})();
