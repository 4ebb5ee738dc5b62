/* The queue page (/admin/queue): when the poll of /api/v1/admin/queue answers (edm.js fires `edm:polled`), write
   each worker's heartbeat age, and reload the page when its rows changed (a worker came, went or fell silent, the
   users or services listed changed, sending was paused or resumed): the same signature as admin_queue.signature. */
(function () {
  "use strict";

  function at(data, path) {
    return path.split(".").reduce(function (value, key) {
      return value == null ? undefined : value[key];
    }, data);
  }

  function signature(data) {
    return [
      data.sending_paused ? "paused" : "running",
      (data.workers || []).map(function (w) { return w.id + ":" + (w.alive ? "alive" : "silent"); }).join(","),
      (data.users || []).map(function (u) { return String(u.user_id); }).join(","),
      (data.services || []).map(function (s) { return String(s.service_id); }).join(",")
    ].join("|");
  }

  function init() {
    var section = document.getElementById("queue-live");
    var source = document.getElementById("queue-texts");
    if (!section || !source) return;
    var texts = JSON.parse(source.textContent);
    section.addEventListener("edm:polled", function (event) {
      var data = event.detail || {};
      if (signature(data) !== section.getAttribute("data-signature")) {
        window.location.replace(window.location.pathname);
        return;
      }
      section.querySelectorAll("[data-age]").forEach(function (cell) {
        var value = at(data, cell.getAttribute("data-age"));
        if (typeof value === "number") cell.textContent = texts.ago.replace("%(seconds)s", String(Math.round(value)));
      });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
