// Upload page: drag-and-drop, preview, client-side size check; results: auto-apply filters.
(function () {
  "use strict";
  function $(id) { return document.getElementById(id); }

  var form = $("upload-form");
  if (form) {
    var zone = $("dropzone"), picker = $("image-input"), camera = $("camera-input");
    var preview = $("preview"), errBox = $("client-error"), button = $("search-button");
    var maxBytes = parseInt(zone.getAttribute("data-max-bytes"), 10) || 0;
    var lastUrl = null;

    function showError(msg) { errBox.textContent = msg; errBox.hidden = !msg; }
    function chosen() { return (picker.files && picker.files[0]) || (camera.files && camera.files[0]) || null; }
    function show(file) {
      showError("");
      if (!file) { preview.hidden = true; return; }
      if (maxBytes && file.size > maxBytes) {
        showError("This photo is " + (file.size / 1048576).toFixed(1) + " MB; the limit is " + (maxBytes / 1048576) + " MB.");
      } else if (file.type && file.type.indexOf("image/") !== 0) {
        showError("That does not look like a photo. Please choose an image file.");
      }
      if (lastUrl) { URL.revokeObjectURL(lastUrl); }
      lastUrl = URL.createObjectURL(file);
      preview.src = lastUrl;
      preview.hidden = false;
    }
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
    form.addEventListener("submit", function (e) {
      var f = chosen();
      if (!f) { e.preventDefault(); showError("Choose or take a photo first."); return; }
      if (maxBytes && f.size > maxBytes) { e.preventDefault(); return; }
      button.disabled = true;
      button.textContent = "Searching…";
    });
  }

  // Results page: changing the category applies it at once.
  Array.prototype.forEach.call(document.querySelectorAll("#filter-form select.auto-submit"), function (sel) {
    sel.addEventListener("change", function () { sel.form.submit(); });
  });

  // Product page: thumbnails swap the main photo.
  var main = $("main-image");
  if (main) {
    Array.prototype.forEach.call(document.querySelectorAll(".gallery-thumb"), function (a) {
      a.addEventListener("click", function (e) { e.preventDefault(); main.src = a.getAttribute("data-large"); });
    });
  }
})();
