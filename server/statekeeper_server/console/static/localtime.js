/* statekeeper console: show every <time datetime="…UTC…"> in the viewer's local time.
   Part of statekeeper (Apache-2.0 like the rest of the package); no dependencies. */
(function () {
  "use strict";
  function localize(root) {
    var scope = root && root.querySelectorAll ? root : document;
    var times = scope.querySelectorAll("time[datetime]:not([data-local])");
    for (var i = 0; i < times.length; i++) {
      var t = times[i];
      var when = new Date(t.getAttribute("datetime"));
      if (!isNaN(when.getTime())) {
        t.title = t.getAttribute("datetime");
        t.textContent = when.toLocaleString();
        t.setAttribute("data-local", "");
      }
    }
  }
  window.statekeeperLocalize = localize;
  document.addEventListener("DOMContentLoaded", function () { localize(document); });
  document.addEventListener("htmx:load", function (e) { localize(e.detail.elt.parentNode || document); });
})();
