/* Campaign pages (/tasks, /tasks/<id>): when a live section's poll of /api/v1/tasks/<id>/stats answers (edm.js
   fires `edm:polled`), move its progress bar and rename its status badge. The badges' names in the page's
   language come from <script type="application/json" id="task-status-labels">. */
(function () {
  "use strict";

  function labels() {
    var source = document.getElementById("task-status-labels");
    return source ? JSON.parse(source.textContent) : {};
  }

  function init() {
    var names = labels();
    document.querySelectorAll("[data-poll]").forEach(function (section) {
      section.addEventListener("edm:polled", function (event) {
        var data = event.detail || {};
        section.querySelectorAll("progress").forEach(function (bar) {
          if (typeof data.progress === "number") bar.value = data.progress;
        });
        if (data.status && data.status !== section.getAttribute("data-status")) {
          section.setAttribute("data-status", data.status);
          section.querySelectorAll("[data-role=status]").forEach(function (badge) {
            if (names[data.status]) badge.textContent = names[data.status];
            badge.className = "badge status-" + data.status;
          });
          // A campaign's own page shows other actions and banners in the new status: load it again.
          if (section.hasAttribute("data-reload-on-status")) window.location.replace(window.location.pathname);
        }
      });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
