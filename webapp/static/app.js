// Upload page: drag-and-drop, preview, client-side size check; results: auto-apply filters.
(function () {
  "use strict";
  function $(id) { return document.getElementById(id); }

  var form = $("upload-form");
  if (form) {
    var zone = $("dropzone"), picker = $("image-input"), camera = $("camera-input");
    var preview = $("preview"), errBox = $("client-error"), button = $("search-button");
    var maxBytes = parseInt(zone.getAttribute("data-max-bytes"), 10) || 0;
    var lastUrl = null, notPhoto = false, tools = $("photo-tools");
    var NOT_PHOTO = "That file is not a photo we can open. Please choose a JPEG, PNG, WebP or similar image.";

    function showError(msg) { errBox.textContent = msg; errBox.hidden = !msg; }
    function chosen() { return (picker.files && picker.files[0]) || (camera.files && camera.files[0]) || null; }
    var dzText = $("dz-text"), dzEmpty = dzText ? dzText.innerHTML : "";
    function announce(ok) {
      if (tools) { tools.hidden = !ok; }
      // the drop zone's words follow what it holds (constant strings: no user text in innerHTML)
      if (dzText) { dzText.innerHTML = ok ? "<strong>Your photo</strong><br>drop or choose another to change it" : dzEmpty; }
      window.dispatchEvent(new CustomEvent("shopsearch:photo", {detail: {ok: ok}}));
    }
    function rejectFile() {
      notPhoto = true;
      preview.hidden = true;
      preview.removeAttribute("src");
      showError(NOT_PHOTO);
      announce(false);
    }
    function show(file) {
      showError("");
      notPhoto = false;
      if (!file) { preview.hidden = true; announce(false); return; }
      var looksLikeImage = file.type ? file.type.indexOf("image/") === 0 : /\.(jpe?g|png|gif|webp|bmp|tiff?|heic|heif|avif)$/i.test(file.name);
      if (!looksLikeImage) { rejectFile(); return; }
      if (maxBytes && file.size > maxBytes) {
        showError("This photo is " + (file.size / 1048576).toFixed(1) + " MB; the limit is " + (maxBytes / 1048576) + " MB.");
      }
      if (lastUrl) { URL.revokeObjectURL(lastUrl); }
      lastUrl = URL.createObjectURL(file);
      preview.onerror = function () { if (chosen() === file) { rejectFile(); } };
      preview.onload = function () { if (chosen() === file && !notPhoto) { preview.hidden = false; announce(true); } };
      preview.src = lastUrl;
    }
    // Enter and Space on the pick buttons open the file chooser (the inputs themselves are hidden).
    Array.prototype.forEach.call(document.querySelectorAll("label.pick"), function (label) {
      label.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " " || e.key === "Spacebar") {
          e.preventDefault();
          label.querySelector("input[type=file]").click();
        }
      });
    });
    picker.addEventListener("change", function () { if (picker.files.length) { camera.value = ""; } show(chosen()); });
    camera.addEventListener("change", function () { if (camera.files.length) { picker.value = ""; } show(chosen()); });

    ["dragenter", "dragover"].forEach(function (t) {
      zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.add("dragging"); });
    });
    ["dragleave", "drop"].forEach(function (t) {
      zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.remove("dragging"); });
    });
    zone.addEventListener("drop", function (e) {
      var files = e.dataTransfer && e.dataTransfer.files;
      if (!files || !files.length) { return; }
      var dt = new DataTransfer();
      dt.items.add(files[0]);
      picker.files = dt.files;
      camera.value = "";
      show(files[0]);
    });
    // Back to this page (from the back/forward cache, or with the browser's restored form): the
    // button is usable again and the preview shows the photo the inputs still hold, if any, so
    // the shopper sees what "Find similar products" would search.
    window.addEventListener("pageshow", function () {
      button.disabled = false;
      button.textContent = button.getAttribute("data-label") || button.textContent;
      show(chosen());
    });
    button.setAttribute("data-label", button.textContent);
    form.addEventListener("submit", function (e) {
      var f = chosen();
      if (!f) { e.preventDefault(); showError("Choose or take a photo first."); return; }
      if (notPhoto) { e.preventDefault(); showError(NOT_PHOTO); return; }
      if (maxBytes && f.size > maxBytes) { e.preventDefault(); return; }
      if (!checkPrices(form)) { e.preventDefault(); return; }
      button.disabled = true;
      button.textContent = "Searching…";
    });
  }

  // Price filters: a minimum above the maximum is said inline, in the shopper's words, before sending.
  function checkPrices(f) {
    var lo = f.querySelector("input[name=min_price]"), hi = f.querySelector("input[name=max_price]");
    var box = f.querySelector(".inline-error") || $("filter-error");
    if (!lo || !hi || !box) { return true; }
    var a = parseFloat(lo.value), b = parseFloat(hi.value), bad = !isNaN(a) && !isNaN(b) && a > b;
    box.textContent = bad ? "Min price (" + a.toFixed(2) + ") is higher than Max price (" + b.toFixed(2) +
                            "). Lower the minimum or raise the maximum." : "";
    box.hidden = !bad;
    [lo, hi].forEach(function (el) { if (bad) { el.setAttribute("aria-invalid", "true"); } else { el.removeAttribute("aria-invalid"); } });
    if (bad) { lo.focus(); }
    return !bad;
  }
  var filterForm = $("filter-form");
  if (filterForm) {
    filterForm.addEventListener("submit", function (e) {
      var clear = e.submitter && e.submitter.name === "clear";
      if (!clear && !checkPrices(filterForm)) { e.preventDefault(); }
    });
  }

  // Results page: outlines over the photo (placed here: the CSP allows no inline styles).
  Array.prototype.forEach.call(document.querySelectorAll("[data-box]"), function (el) {
    var b = el.getAttribute("data-box").split(",").map(parseFloat);
    el.style.left = (b[0] * 100) + "%"; el.style.top = (b[1] * 100) + "%";
    el.style.width = (b[2] * 100) + "%"; el.style.height = (b[3] * 100) + "%";
    if (el.getAttribute("data-z")) { el.style.zIndex = el.getAttribute("data-z"); }
  });

  // Results page: the objects found in the photo, chosen by their outline or chip.
  var regionButtons = document.querySelectorAll("[data-region]");
  function pick(id) {
    Array.prototype.forEach.call(regionButtons, function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-region") === id));
    });
    Array.prototype.forEach.call(document.querySelectorAll(".region-results"), function (s) { s.hidden = s.id !== id; });
    ["results", "nearest-heading", "verdict", "more-form"].forEach(function (name) { var el = $(name); if (el) { el.hidden = !!id; } });
  }
  Array.prototype.forEach.call(regionButtons, function (b) {
    b.addEventListener("click", function () { pick(b.getAttribute("data-region")); });
  });

  // Results page: a category picked with the mouse or a finger applies at once; with the keyboard
  // the arrows only move through the list (each would otherwise reload the page) and Enter applies.
  // Leaving the list without Enter puts back the category applied, so it never shows one that is not.
  Array.prototype.forEach.call(document.querySelectorAll("#filter-form select.auto-submit"), function (sel) {
    var keyed = false;
    function apply() { if (sel.form.requestSubmit) { sel.form.requestSubmit(); } else { sel.form.submit(); } }
    sel.addEventListener("pointerdown", function () { keyed = false; });
    sel.addEventListener("keydown", function (e) {
      keyed = true;
      if (e.key === "Enter") { e.preventDefault(); apply(); }
    });
    sel.addEventListener("change", function () { if (!keyed) { apply(); } });
    sel.addEventListener("blur", function () {
      if (!keyed) { return; }
      keyed = false;
      Array.prototype.forEach.call(sel.options, function (o) { o.selected = o.defaultSelected; });
    });
  });

  // Results: "this is it" / "not this" answered in place (without JavaScript the form posts and
  // comes back to the logged results); a failed request falls back to the plain form post.
  Array.prototype.forEach.call(document.querySelectorAll("form.feedback-form"), function (f) {
    f.addEventListener("submit", function (e) {
      var button = e.submitter;
      if (!button || !window.fetch) { return; }
      e.preventDefault();
      var body = {request_id: f.getAttribute("data-request-id"), sku: f.querySelector("input[name=sku]").value,
                  event: button.value};
      fetch(f.getAttribute("data-api"), {method: "POST", headers: {"Content-Type": "application/json"},
                                         body: JSON.stringify(body)})
        .then(function (r) {
          if (!r.ok && r.status !== 409) { throw new Error(String(r.status)); }
          Array.prototype.forEach.call(f.querySelectorAll("button.fb"), function (b) {
            b.setAttribute("aria-pressed", String(b === button));
          });
        })
        .catch(function () { var h = document.createElement("input"); h.type = "hidden"; h.name = "event";
                             h.value = button.value; f.appendChild(h); f.submit(); });
    });
  });

  // Product page: thumbnails swap the main photo.
  var main = $("main-image");
  if (main) {
    Array.prototype.forEach.call(document.querySelectorAll(".gallery-thumb"), function (a) {
      a.addEventListener("click", function (e) { e.preventDefault(); main.src = a.getAttribute("data-large"); });
    });
  }
})();
