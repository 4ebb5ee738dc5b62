/* The campaign wizard (/tasks/new, /tasks/<id>/edit): mark each step done or missing as its fields fill, and keep
   "Schedule" disabled, naming the steps still missing, until all are complete. The server checks it all again. */
(function () {
  "use strict";

  function value(form, name) {
    var field = form.elements[name];
    return field ? String(field.value || "").trim() : "";
  }

  function checked(form, name) {
    return Array.prototype.some.call(form.querySelectorAll("input[name=" + name + "]"), function (box) {
      return box.checked;
    });
  }

  function steps(form) {
    var hasTemplate = ["template_id_1", "template_id_2", "template_id_3", "template_id_4"].some(function (name) {
      return value(form, name) !== "";
    });
    var rule = value(form, "rule_type");
    var estimate = document.getElementById("estimate");
    var sendable = estimate ? Number(estimate.getAttribute("data-sendable") || "0") : 0;
    var ruleOk = rule === "all_contacts" || rule === "specific" || (rule === "tag_based" && checked(form, "include_tag_ids"));
    return {
      basics: value(form, "name") !== "",
      content: value(form, "sender_id") !== "" && hasTemplate,
      recipients: ruleOk && sendable > 0,
      schedule: value(form, "when") !== "at" || value(form, "at_local") !== ""
    };
  }

  function update(form) {
    var done = steps(form);
    var ready = true;
    Object.keys(done).forEach(function (step) {
      var section = form.querySelector("[data-step=" + step + "]");
      if (section) {
        section.querySelector("[data-done]").hidden = !done[step];
        section.querySelector("[data-missing]").hidden = done[step];
      }
      var item = document.querySelector("#review-missing [data-for=" + step + "]");
      if (item) item.hidden = done[step];
      ready = ready && done[step];
    });
    document.getElementById("review-missing").hidden = ready;
    var button = document.getElementById("schedule-button");
    button.disabled = !ready;
    if (ready) button.removeAttribute("aria-describedby");
    else button.setAttribute("aria-describedby", "review-missing");
  }

  function init() {
    var form = document.getElementById("wizard");
    if (!form) return;
    form.addEventListener("input", function () { update(form); });
    form.addEventListener("change", function () { update(form); });
    document.body.addEventListener("htmx:afterSwap", function () { update(form); });
    update(form);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
