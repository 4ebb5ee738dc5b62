/* EDM console: the template editor's own script (templates/content/editor.html).
   - three modes over the one stored HTML (the radio buttons `editor`): HTML in CodeMirror (vendor/codemirror),
     rich text in Quill (vendor/quill), Markdown in its own text area (converted on the server). The `html` text area
     stays the form field: CodeMirror and Quill write into it on every change. Without this script (or without the
     vendored editors) the text areas are plain fields and the mode changes when the form is saved.
   - switching to rich text asks first when the HTML holds markup Quill would drop (same test as RICH_TEXT_LOSSY in
     console/content_templates.py); switching to Markdown asks first when the HTML would be replaced
   - [data-insert] buttons insert their text where the cursor is, in the last source field used (else the current mode's)
   - [data-insert-image] buttons insert an image with the alternative text typed (required): <img> in HTML, an image
     in rich text, ![alt](url) in Markdown
   Every change fires an `input` event on a form field, so htmx refreshes the preview as when the user types. */
(function () {
  "use strict";

  var LOSSY = /<(table|style|div|span|center|font|!--|head|body|html)\b|\sstyle\s*=|\sclass\s*=|\{%|\{#/i;
  var form = document.getElementById("editor");
  var html = document.getElementById("f-html");
  var markdown = document.getElementById("f-markdown");
  var htmlBox = document.getElementById("html-source");
  var markdownBox = document.getElementById("markdown-source");
  var richBox = document.getElementById("rich-text");
  var cm = null;
  var quill = null;
  var mode = htmlBox ? htmlBox.getAttribute("data-mode") : "html";
  var last = null; // the last source used: a field, "cm" or "quill"

  function escapeAttribute(text) {
    return text.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function changed(field) {
    field.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function labelOf(field) {
    var label = document.querySelector('label[for="' + field.id + '"]');
    return label ? label.textContent.replace("*", "").trim() : field.name;
  }

  // ---- the editors --------------------------------------------------------------------------------------

  function startCodeMirror() {
    if (!window.CodeMirror || !html || cm) return;
    cm = window.CodeMirror.fromTextArea(html, {
      mode: "htmlmixed",
      lineNumbers: true,
      lineWrapping: true,
      indentUnit: 2,
      tabSize: 2,
      inputStyle: "textarea"
    });
    cm.getWrapperElement().classList.add("code-editor");
    var input = cm.getInputField();
    input.setAttribute("aria-label", labelOf(html));
    if (html.hasAttribute("aria-describedby")) input.setAttribute("aria-describedby", html.getAttribute("aria-describedby"));
    cm.on("change", function () {
      cm.save();
      changed(html);
    });
    cm.on("focus", function () { last = "cm"; });
    document.querySelector('label[for="f-html"]').addEventListener("click", function () { cm.focus(); });
  }

  function startQuill() {
    if (quill || !window.Quill || !richBox) return quill;
    richBox.hidden = false;
    quill = new window.Quill(richBox, {
      theme: "snow",
      modules: {
        toolbar: [
          [{ header: 1 }, { header: 2 }],
          ["bold", "italic", "underline", "strike"],
          ["link", "blockquote"],
          [{ list: "ordered" }, { list: "bullet" }],
          ["clean"]
        ]
      }
    });
    quill.root.setAttribute("aria-label", labelOf(html));
    quill.root.setAttribute("role", "textbox");
    quill.root.setAttribute("aria-multiline", "true");
    quill.root.addEventListener("focus", function () { last = "quill"; });
    quill.on("text-change", function () {
      html.value = richHtml();
      changed(html);
    });
    return quill;
  }

  // Quill 2.0 writes every space of its semantic HTML as &nbsp; (a typed no-break space stays a character).
  function richHtml() {
    return quill.getSemanticHTML().replace(/&nbsp;/g, " ");
  }

  function loadRich(source) {
    quill.setContents([], "silent");
    quill.clipboard.dangerouslyPasteHTML(0, source, "silent");
    quill.history.clear();
    html.value = richHtml();
  }

  // ---- the modes ----------------------------------------------------------------------------------------

  function show(next) {
    var rich = next === "rich";
    htmlBox.hidden = next === "markdown";
    markdownBox.hidden = next !== "markdown";
    if (cm) cm.getWrapperElement().hidden = rich;
    else html.hidden = rich;
    if (richBox) {
      var toolbar = richBox.previousElementSibling;
      richBox.hidden = !rich;
      if (toolbar && toolbar.classList.contains("ql-toolbar")) toolbar.hidden = !rich;
    }
    if (next === "html" && cm) {
      cm.setValue(html.value);
      cm.refresh();
    }
    mode = next;
    htmlBox.setAttribute("data-mode", next);
  }

  // The HTML of the Markdown field, converted by the server as a save would.
  function converted() {
    var body = new FormData();
    body.append("csrf_token", form.querySelector("input[name=csrf_token]").value);
    body.append("markdown", markdown.value);
    return fetch("/templates/markdown", { method: "POST", body: body, credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error("markdown conversion failed: " + r.status);
      return r.text();
    });
  }

  function choose(next) {
    var previous = mode;
    if (next === previous) return;
    var source = previous === "markdown" ? converted() : Promise.resolve(html.value);
    source.then(function (text) {
      if (next === "rich" && LOSSY.test(text) && !window.confirm(htmlBox.getAttribute("data-confirm-rich"))) {
        return revert(previous);
      }
      if (next === "markdown" && text.trim() && !markdown.value.trim() &&
          !window.confirm(htmlBox.getAttribute("data-confirm-markdown"))) {
        return revert(previous);
      }
      html.value = text;
      if (next === "rich") {
        if (!startQuill()) return revert(previous);
        loadRich(text);
      }
      show(next);
      changed(next === "markdown" ? markdown : html);
    }).catch(function () { revert(previous); });
  }

  function revert(previous) {
    var radio = document.getElementById("m-" + previous);
    if (radio) radio.checked = true;
  }

  // ---- inserting ----------------------------------------------------------------------------------------

  function insertInto(field, text) {
    if (!field) return;
    var start = field.selectionStart;
    var end = field.selectionEnd;
    if (typeof start === "number") field.setRangeText(text, start, end, "end");
    else field.value += text;
    field.focus();
    changed(field);
  }

  function insertSource(text, image) {
    // image: {url, alt} when inserting an image into the current mode's source
    var target = image ? null : last;
    if (target && target !== "cm" && target !== "quill" && !target.closest("[hidden]") && target !== html) {
      return insertInto(target, text); // the subject, the preheader, the text part
    }
    if (mode === "markdown") {
      return insertInto(markdown, image ? "![" + image.alt.replace(/[\[\]]/g, "") + "](" + image.url + ")" : text);
    }
    if (mode === "rich" && quill) {
      var range = quill.getSelection(true);
      var at = range ? range.index : quill.getLength() - 1;
      if (image) {
        quill.clipboard.dangerouslyPasteHTML(at, text, "user");
      } else {
        quill.insertText(at, text, "user");
        quill.setSelection(at + text.length, 0, "user");
      }
      return;
    }
    if (cm) {
      cm.replaceSelection(text);
      cm.focus();
      return;
    }
    insertInto(html, text);
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
    insertSource('<img src="' + escapeAttribute(url) + '" alt="' + escapeAttribute(text) + '">', { url: url, alt: text });
  }

  document.addEventListener("focusin", function (event) {
    var field = event.target;
    if (field.matches && field.matches("#f-subject, #f-preheader, #f-html, #f-markdown, #f-text")) last = field;
  });

  document.addEventListener("click", function (event) {
    if (!event.target.closest) return;
    var variable = event.target.closest("[data-insert]");
    if (variable) {
      insertSource(variable.getAttribute("data-insert"));
      return;
    }
    var image = event.target.closest("[data-insert-image]");
    if (image) insertImage(image);
  });

  if (!form || !html || !htmlBox) return;
  startCodeMirror();
  if (mode === "rich") {
    if (startQuill()) {
      loadRich(html.value);
      show("rich");
    } else {
      revert("html");
      show("html");
    }
  }
  form.addEventListener("change", function (event) {
    var radio = event.target;
    if (radio.name === "editor") choose(radio.value);
  });
})();
