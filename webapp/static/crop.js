// Upload page: the crop box over the preview (mouse, touch and keyboard) and the photo tools.
// The box is kept in fractions of the photo and written to the hidden `crop` field as x,y,w,h.
(function () {
  "use strict";
  var stage = document.getElementById("crop-stage");
  if (!stage) { return; }
  var img = document.getElementById("preview"), box = document.getElementById("crop-box");
  var toggle = document.getElementById("crop-toggle"), field = document.getElementById("crop-input");
  var MIN = 0.08, STEP = 0.02;
  var r = {x: 0.15, y: 0.15, w: 0.7, h: 0.7};

  function clamp(v, lo, hi) { return Math.max(lo, Math.min(hi, v)); }
  function fix() {
    r.w = clamp(r.w, MIN, 1); r.h = clamp(r.h, MIN, 1);
    r.x = clamp(r.x, 0, 1 - r.w); r.y = clamp(r.y, 0, 1 - r.h);
  }
  function render() {
    fix();
    box.style.left = (r.x * 100) + "%"; box.style.top = (r.y * 100) + "%";
    box.style.width = (r.w * 100) + "%"; box.style.height = (r.h * 100) + "%";
    field.value = toggle.checked ? [r.x, r.y, r.w, r.h].map(function (v) { return v.toFixed(4); }).join(",") : "";
    box.setAttribute("aria-valuetext", "left " + Math.round(r.x * 100) + "%, top " + Math.round(r.y * 100) +
                     "%, width " + Math.round(r.w * 100) + "%, height " + Math.round(r.h * 100) + "%");
  }
  function setActive(on) {
    box.hidden = !on || img.hidden;
    if (on) { render(); } else { field.value = ""; }
  }
  toggle.addEventListener("change", function () { setActive(toggle.checked); if (toggle.checked) { box.focus(); } });
  window.addEventListener("shopsearch:photo", function (e) {
    r = {x: 0.15, y: 0.15, w: 0.7, h: 0.7};
    setActive(toggle.checked && e.detail.ok);
  });

  // keyboard: arrows move, Shift+arrows resize
  box.addEventListener("keydown", function (e) {
    var dx = {ArrowLeft: -STEP, ArrowRight: STEP}[e.key] || 0, dy = {ArrowUp: -STEP, ArrowDown: STEP}[e.key] || 0;
    if (!dx && !dy) { return; }
    e.preventDefault();
    if (e.shiftKey) { r.w += dx; r.h += dy; } else { r.x += dx; r.y += dy; }
    render();
  });

  // mouse and touch: drag the box, drag a corner, or draw a new box on the photo
  var drag = null;
  function point(e) {
    var b = img.getBoundingClientRect();
    return {x: clamp((e.clientX - b.left) / b.width, 0, 1), y: clamp((e.clientY - b.top) / b.height, 0, 1)};
  }
  stage.addEventListener("pointerdown", function (e) {
    if (box.hidden) { return; }
    var p = point(e), handle = e.target.getAttribute && e.target.getAttribute("data-handle");
    var mode = handle || (e.target === box ? "move" : "draw");
    if (mode === "draw") { r = {x: p.x, y: p.y, w: MIN, h: MIN}; }
    drag = {mode: mode, start: p, orig: {x: r.x, y: r.y, w: r.w, h: r.h}};
    stage.setPointerCapture(e.pointerId);
    e.preventDefault();
    render();
  });
  stage.addEventListener("pointermove", function (e) {
    if (!drag) { return; }
    var p = point(e), o = drag.orig, dx = p.x - drag.start.x, dy = p.y - drag.start.y;
    if (drag.mode === "move") { r.x = o.x + dx; r.y = o.y + dy; }
    else if (drag.mode === "se") { r.w = o.w + dx; r.h = o.h + dy; }
    else if (drag.mode === "nw") {
      var nx = clamp(o.x + dx, 0, o.x + o.w - MIN), ny = clamp(o.y + dy, 0, o.y + o.h - MIN);
      r = {x: nx, y: ny, w: o.x + o.w - nx, h: o.y + o.h - ny};
    } else {  // draw from the start point to here
      r = {x: Math.min(p.x, drag.start.x), y: Math.min(p.y, drag.start.y),
           w: Math.abs(p.x - drag.start.x), h: Math.abs(p.y - drag.start.y)};
    }
    render();
  });
  function end() { drag = null; }
  stage.addEventListener("pointerup", end);
  stage.addEventListener("pointercancel", end);
})();
