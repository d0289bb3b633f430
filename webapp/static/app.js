// Upload page: drag-and-drop, preview, a photo over the upload limit reduced in the browser;
// results: auto-apply filters, the objects found in the photo, what is said to a screen reader.
(function () {
  "use strict";
  function $(id) { return document.getElementById(id); }

  var form = $("upload-form");
  if (form) {
    var zone = $("dropzone"), picker = $("image-input"), camera = $("camera-input");
    var preview = $("preview"), errBox = $("client-error"), button = $("search-button");
    var maxBytes = parseInt(zone.getAttribute("data-max-bytes"), 10) || 0;
    var lastUrl = null, notPhoto = false, tools = $("photo-tools");
    var note = $("client-note"), status = $("search-status");
    var SHRINK_PX = 2048, SHRINK_QUALITY = 0.9;
    var NOT_PHOTO = "That file is not a photo we can open. Please choose a JPEG, PNG, WebP or similar image.";

    function showError(msg) { errBox.textContent = msg; errBox.hidden = !msg; }
    function showNote(msg) { if (note) { note.textContent = msg; note.hidden = !msg; } }
    function say(msg) { if (status) { status.textContent = msg; } }
    function mb(n) { return (n / 1048576).toFixed(1).replace(/\.0$/, ""); }
    function limitMessage(f) { return "This photo is " + (f.size / 1048576).toFixed(1) + " MB; the limit is " + mb(maxBytes) + " MB."; }
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
    // formats the server decodes though many browsers cannot (iPhone photos are HEIC)
    function serverOnly(file) {
      return /^image\/(heic|heif|avif)/i.test(file.type || "") || /\.(heic|heif|avif)$/i.test(file.name || "");
    }
    function show(file) {
      showError("");
      showNote("");
      notPhoto = false;
      if (!file) { preview.hidden = true; announce(false); return; }
      var looksLikeImage = file.type ? file.type.indexOf("image/") === 0 : /\.(jpe?g|png|gif|webp|bmp|tiff?|heic|heif|avif)$/i.test(file.name);
      if (!looksLikeImage) { rejectFile(); return; }
      if (maxBytes && file.size > maxBytes) {  // reduced when searched (see shrink); the limit only if that fails
        showNote("This photo is " + (file.size / 1048576).toFixed(1) + " MB: it will be reduced to " + SHRINK_PX +
                 " px before searching.");
      }
      if (lastUrl) { URL.revokeObjectURL(lastUrl); }
      lastUrl = URL.createObjectURL(file);
      preview.onerror = function () {
        if (chosen() !== file) { return; }
        if (!serverOnly(file)) { rejectFile(); return; }
        // a HEIC/HEIF/AVIF photo this browser cannot draw: the server decodes it, so it is searched
        // whole (no preview, hence no crop box)
        preview.hidden = true;
        announce(false);
        if (dzText) { dzText.innerHTML = "<strong>Your photo</strong><br>drop or choose another to change it"; }
        showNote("This browser cannot show a preview of this photo; it will still be searched, whole.");
      };
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
      form.removeAttribute("aria-busy");
      say("");
      show(chosen());
    });
    button.setAttribute("data-label", button.textContent);
    function busy(before) {
      button.disabled = true;
      button.textContent = "Searching…";
      form.setAttribute("aria-busy", "true");
      say((before ? before + " " : "") + "Searching…");  // a polite live region: said, not just shown
    }
    // A photo over the upload limit (a phone's full-size photo): drawn upright (EXIF orientation
    // applied) on a canvas, longest side SHRINK_PX, re-encoded as JPEG; null when the browser cannot.
    function decoded(file) {
      if (window.createImageBitmap) {
        return createImageBitmap(file, {imageOrientation: "from-image"})
          .catch(function () { return createImageBitmap(file); });
      }
      return new Promise(function (resolve, reject) {  // an <img> applies EXIF orientation itself
        var img = new Image(), url = URL.createObjectURL(file);
        img.onload = function () { URL.revokeObjectURL(url); resolve(img); };
        img.onerror = function () { URL.revokeObjectURL(url); reject(new Error("not decodable")); };
        img.src = url;
      });
    }
    function shrink(file) {
      if (!window.Promise || !window.DataTransfer || !HTMLCanvasElement.prototype.toBlob) { return null; }
      return decoded(file).then(function (src) {
        var w = src.width || src.naturalWidth, h = src.height || src.naturalHeight;
        if (!w || !h) { return null; }
        var scale = Math.min(1, SHRINK_PX / Math.max(w, h));
        var canvas = document.createElement("canvas");
        canvas.width = Math.max(1, Math.round(w * scale));
        canvas.height = Math.max(1, Math.round(h * scale));
        var ctx = canvas.getContext("2d");
        ctx.fillStyle = "#fff";  // a transparent PNG's see-through parts: white, not JPEG's black
        ctx.fillRect(0, 0, canvas.width, canvas.height);
        ctx.drawImage(src, 0, 0, canvas.width, canvas.height);
        if (src.close) { src.close(); }
        return new Promise(function (resolve) { canvas.toBlob(resolve, "image/jpeg", SHRINK_QUALITY); });
      }).then(function (blob) {
        // the request carries the form's other fields too: keep a margin under the limit
        if (!blob || (maxBytes && blob.size > maxBytes - 65536)) { return null; }
        var name = (file.name || "photo").replace(/\.[^.]*$/, "") + ".jpg";
        var dt = new DataTransfer();
        dt.items.add(new File([blob], name, {type: "image/jpeg"}));
        return dt.files;
      }).catch(function () { return null; });
    }
    var shrinking = false;
    form.addEventListener("submit", function (e) {
      var f = chosen();
      if (!f) { e.preventDefault(); showError("Choose or take a photo first."); return; }
      if (notPhoto) { e.preventDefault(); showError(NOT_PHOTO); return; }
      if (!checkPrices(form)) { e.preventDefault(); return; }
      if (maxBytes && f.size > maxBytes) {
        e.preventDefault();
        if (shrinking) { return; }
        shrinking = true;
        button.disabled = true;
        say("Reducing the photo…");
        var pending = shrink(f);
        (pending || Promise.resolve(null)).then(function (files) {
          shrinking = false;
          if (!files || chosen() !== f) {
            button.disabled = false;
            say("");
            if (!files) { showNote(""); showError(limitMessage(f)); }
            return;
          }
          picker.files = files;  // no change event: the preview and crop box stay as they are
          camera.value = "";
          var msg = "Large photo reduced to " + SHRINK_PX + " px before searching.";
          showNote(msg);
          busy(msg);
          form.submit();  // the checks above passed; submit() sends without a second submit event
        });
        return;
      }
      busy("");
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
  // Results page: what a screen reader hears politely (the object chosen, "Updating results…").
  var resultsStatus = $("results-status"), sayTimer = null;
  function sayResults(msg) {
    if (!resultsStatus) { return; }
    // emptied first, so that choosing the same object again is said again
    resultsStatus.textContent = "";
    if (sayTimer) { clearTimeout(sayTimer); }
    sayTimer = setTimeout(function () { resultsStatus.textContent = msg; }, 60);
  }
  function updating() {
    Array.prototype.forEach.call(document.querySelectorAll("#results, .region-results"), function (el) {
      el.setAttribute("aria-busy", "true");
    });
    if (resultsStatus) { resultsStatus.textContent = "Updating results…"; }
  }
  var filterForm = $("filter-form");
  if (filterForm) {
    filterForm.addEventListener("submit", function (e) {
      var clear = e.submitter && e.submitter.name === "clear";
      if (!clear && !checkPrices(filterForm)) { e.preventDefault(); return; }
      updating();
    });
  }
  var moreForm = $("more-form");
  if (moreForm) { moreForm.addEventListener("submit", updating); }
  // Back to a results page (the back/forward cache, or the browser's cache with its restored form):
  // every filter shows what this page's results were filtered by, not what was picked on the way
  // to the next page (a native picker then fires no change for the same choice again).
  window.addEventListener("pageshow", function () {
    if (filterForm) {
      Array.prototype.forEach.call(filterForm.elements, function (el) {
        if (el.tagName === "SELECT") {
          Array.prototype.forEach.call(el.options, function (o) { o.selected = o.defaultSelected; });
          if (el.selectedIndex < 0 && el.options.length) { el.selectedIndex = 0; }
        } else if (el.tagName === "INPUT" && (el.type === "checkbox" || el.type === "radio")) {
          el.checked = el.defaultChecked;
        } else if (el.tagName === "INPUT" && el.type !== "hidden" && el.type !== "file") {
          el.value = el.defaultValue;
        }
      });
    }
    Array.prototype.forEach.call(document.querySelectorAll("[aria-busy]"), function (el) {
      if (el.id !== "upload-form") { el.removeAttribute("aria-busy"); }
    });
    if (resultsStatus) { resultsStatus.textContent = ""; }
  });

  // Results page: outlines over the photo (placed here: the CSP allows no inline styles).
  Array.prototype.forEach.call(document.querySelectorAll("[data-box]"), function (el) {
    var b = el.getAttribute("data-box").split(",").map(parseFloat);
    el.style.left = (b[0] * 100) + "%"; el.style.top = (b[1] * 100) + "%";
    el.style.width = (b[2] * 100) + "%"; el.style.height = (b[3] * 100) + "%";
    if (el.getAttribute("data-z")) { el.style.zIndex = el.getAttribute("data-z"); }
  });
  // The number badges of overlapping outlines: each at the first corner (then further along the
  // top edge) where it hides no badge placed before it, so every number stays readable.
  var outlines = document.querySelectorAll(".region-outline");
  function placeBadges() {
    var placed = [], gap = 2;
    Array.prototype.forEach.call(outlines, function (o) {
      var badge = o.querySelector("span");
      if (!badge) { return; }
      badge.style.left = gap + "px"; badge.style.top = gap + "px";
      var ob = o.getBoundingClientRect(), bb = badge.getBoundingClientRect();
      if (!ob.width || !bb.width) { return; }
      var w = bb.width, h = bb.height, maxX = Math.max(gap, ob.width - w - gap), maxY = Math.max(gap, ob.height - h - gap);
      var spots = [[gap, gap], [maxX, gap], [gap, maxY], [maxX, maxY]];
      for (var x = gap + w + gap; x < maxX; x += w + gap) { spots.push([x, gap]); }
      for (var y = gap + h + gap; y < maxY; y += h + gap) { spots.push([gap, y]); }
      var free = function (sx, sy) {
        var l = ob.left + sx, t = ob.top + sy;
        return placed.every(function (p) { return l + w <= p.l || l >= p.l + p.w || t + h <= p.t || t >= p.t + p.h; });
      };
      var spot = spots.filter(function (s) { return free(s[0], s[1]); })[0];
      if (!spot) {  // nowhere free inside: just outside the outline's top-right corner
        spot = [ob.width + gap, gap];
        var k = 0;
        while (!free(spot[0], spot[1]) && k++ < 20) { spot = [spot[0], spot[1] + h + gap]; }
      }
      badge.style.left = spot[0] + "px"; badge.style.top = spot[1] + "px";
      placed.push({l: ob.left + spot[0], t: ob.top + spot[1], w: w, h: h});
    });
  }
  if (outlines.length) {
    var framePhoto = document.querySelector("#query-frame .query-photo");
    if (framePhoto && !framePhoto.complete) { framePhoto.addEventListener("load", placeBadges); }
    placeBadges();
    var resizeTimer = null;
    window.addEventListener("resize", function () {
      if (resizeTimer) { clearTimeout(resizeTimer); }
      resizeTimer = setTimeout(placeBadges, 100);
    });
  }

  // Results page: the objects found in the photo, chosen by their outline or chip.
  var regionButtons = document.querySelectorAll("[data-region]");
  function pick(id) {
    Array.prototype.forEach.call(regionButtons, function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-region") === id));
    });
    Array.prototype.forEach.call(document.querySelectorAll(".region-results"), function (s) { s.hidden = s.id !== id; });
    ["results", "nearest-heading", "verdict", "more-form"].forEach(function (name) { var el = $(name); if (el) { el.hidden = !!id; } });
    // the results swapped in place: say which (focus stays on the chip, to compare the next one)
    var shown = id ? $(id) : null;
    sayResults(shown ? shown.getAttribute("data-announce") : (resultsStatus && resultsStatus.getAttribute("data-whole")) || "");
  }
  Array.prototype.forEach.call(regionButtons, function (b) {
    b.addEventListener("click", function () { pick(b.getAttribute("data-region")); });
  });

  // Results page on a phone: the filters folded under their summary (unless set), so the first
  // products show on the first screen; open without JavaScript and on wider screens.
  var folding = document.querySelector("details.results-filters");
  if (folding && folding.getAttribute("data-active") !== "1" && window.matchMedia &&
      window.matchMedia("(max-width: 699px)").matches) {
    folding.open = false;
  }

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
