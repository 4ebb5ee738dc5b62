/* Contacts list (/contacts): the header checkbox selects or clears every row of the page; choosing a row picks
   "Selected below" in the bulk form. */
(function () {
  "use strict";
  function init() {
    var all = document.getElementById("select-page");
    var form = document.getElementById("bulk");
    if (!all || !form) return;
    var rows = function () { return form.querySelectorAll("input.select-row"); };
    var selected = form.querySelector("input[name=scope][value=selected]");
    all.addEventListener("change", function () {
      rows().forEach(function (box) { box.checked = all.checked; });
      if (all.checked && selected) selected.checked = true;
    });
    form.addEventListener("change", function (event) {
      if (event.target.classList && event.target.classList.contains("select-row") && event.target.checked && selected) {
        selected.checked = true;
      }
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
