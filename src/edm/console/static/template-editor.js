/* EDM console: the template editor's own script (templates/content/editor.html).
   - [data-insert] buttons insert their text where the cursor is, in the last source field used (the HTML by default)
   - [data-insert-image] buttons insert <img src alt> into the HTML with the alternative text typed (required)
   Both fire an `input` event, so htmx refreshes the preview as when the user types. */
(function () {
  "use strict";

  var last = null;

  function escapeAttribute(text) {
    return text.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function insert(field, text) {
    if (!field) return;
    var start = field.selectionStart;
    var end = field.selectionEnd;
    if (typeof start === "number") field.setRangeText(text, start, end, "end");
    else field.value += text;
    field.focus();
    field.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function insertImage(button) {
    var alt = document.getElementById("f-image_alt");
    var error = document.getElementById("f-image_alt-error");
    var text = alt.value.trim();
    if (!text) {
      error.hidden = false;
      alt.setAttribute("aria-invalid", "true");
      alt.setAttribute("aria-describedby", "f-image_alt-error");
      alt.focus();
      return;
    }
    error.hidden = true;
    alt.removeAttribute("aria-invalid");
    alt.setAttribute("aria-describedby", "f-image_alt-hint");
    var url = button.getAttribute("data-insert-image");
    insert(document.getElementById("f-html"), '<img src="' + escapeAttribute(url) + '" alt="' + escapeAttribute(text) + '">');
  }

  document.addEventListener("focusin", function (event) {
    var field = event.target;
    if (field.matches && field.matches("#f-subject, #f-preheader, #f-html, #f-text")) last = field;
  });

  document.addEventListener("click", function (event) {
    if (!event.target.closest) return;
    var variable = event.target.closest("[data-insert]");
    if (variable) {
      insert(last || document.getElementById("f-html"), variable.getAttribute("data-insert"));
      return;
    }
    var image = event.target.closest("[data-insert-image]");
    if (image) insertImage(image);
  });
})();
