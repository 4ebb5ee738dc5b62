/* An import's progress (/contacts/imports/{id}): edm.js refreshes the counts every 5 s; when the status changes
   (started, finished) the page reloads to show what the new state offers (the error file, the contacts). */
(function () {
  "use strict";
  function init() {
    var progress = document.getElementById("progress");
    if (!progress || !progress.hasAttribute("data-poll")) return;
    progress.addEventListener("edm:polled", function (event) {
      var data = event.detail || {};
      if (data.status && data.status !== progress.getAttribute("data-status")) window.location.reload();
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
