// Results explorer: submit only the filters that are set, so a view's link stays short and
// readable, and show each capture time in the reader's local time (the UTC value stays in the title).
(function () {
  "use strict";
  var form = document.getElementById("explorer-filters");
  if (form) {
    form.addEventListener("submit", function () {
      Array.prototype.forEach.call(form.elements, function (el) {
        if (el.name && el.value === "") {
          el.disabled = true; // left out of the query string
        }
      });
      // re-enable after the navigation starts, so going back shows a usable form
      window.setTimeout(function () {
        Array.prototype.forEach.call(form.elements, function (el) { el.disabled = false; });
      }, 0);
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("#explorer td.time"), function (td) {
    var when = new Date(td.getAttribute("data-time"));
    if (!isNaN(when.getTime())) {
      td.title = td.getAttribute("data-time");
      td.textContent = when.toLocaleString();
    }
  });
})();
