/* statekeeper console: live views over Server-Sent Events (EventSource, no dependencies).
   An element with data-live-src listens to that URL until it leaves the page:
   - "append": HTML added at the end of the element named by data-live-target;
     its id (a seq) becomes data-live-after, so a restored page resumes after it;
   - "swap": JSON {id, html}, the element of that id replaced by the HTML;
   - "end": HTML shown in the element's [data-live-status]; listening stops.
   The HTML is rendered and escaped by the server. */
(function () {
  "use strict";
  var listening = [];

  function localize(node) {
    if (window.statekeeperLocalize) { window.statekeeperLocalize(node); }
  }

  function url(el) {
    var src = el.getAttribute("data-live-src");
    var after = el.getAttribute("data-live-after");
    if (after === null) { return src; }
    return src + (src.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(after);
  }

  function listen(el) {
    var source = new EventSource(url(el));
    var status = el.querySelector("[data-live-status]");
    listening.push({ el: el, source: source });
    el.setAttribute("data-live-state", "connecting");
    source.addEventListener("open", function () { el.setAttribute("data-live-state", "open"); });
    source.addEventListener("append", function (e) {
      var target = document.getElementById(el.getAttribute("data-live-target"));
      if (!target) { return; }
      target.insertAdjacentHTML("beforeend", e.data);
      if (e.lastEventId) { el.setAttribute("data-live-after", e.lastEventId); }
      localize(target);
    });
    source.addEventListener("swap", function (e) {
      var change = JSON.parse(e.data);
      var old = document.getElementById(change.id);
      if (!old) { return; }
      var parent = old.parentNode;
      old.outerHTML = change.html;
      localize(parent);
      if (window.htmx) { window.htmx.process(parent); }
    });
    source.addEventListener("end", function (e) {
      source.close();
      el.setAttribute("data-live-state", "ended");
      if (status) { status.innerHTML = e.data; localize(status); }
    });
  }

  function start(root) {
    var scope = root && root.querySelectorAll ? root : document;
    var found = Array.prototype.slice.call(scope.querySelectorAll("[data-live-src]"));
    if (scope.matches && scope.matches("[data-live-src]")) { found.push(scope); }
    found.forEach(function (el) {
      var known = listening.some(function (l) { return l.el === el; });
      if (!known && window.EventSource) { listen(el); }
    });
  }

  function stop(root) {
    listening = listening.filter(function (l) {
      if (root === document || root.contains(l.el) || !l.el.isConnected) {
        l.source.close();
        return false;
      }
      return true;
    });
  }

  document.addEventListener("DOMContentLoaded", function () { start(document); });
  document.addEventListener("htmx:load", function (e) { start(e.detail.elt); });
  document.addEventListener("htmx:beforeSwap", function (e) { stop(e.detail.target); });
  document.addEventListener("htmx:beforeHistorySave", function () { stop(document); });
  window.addEventListener("pagehide", function () { stop(document); });
})();
