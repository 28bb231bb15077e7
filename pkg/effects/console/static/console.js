// The console's script, all of it: a confirmation before each action, and
// the live refresh of the parts of a page marked data-refresh (the server
// renders them again with ?fragment=1; nothing is built here).
(function () {
  "use strict";

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      ev.preventDefault();
      return;
    }
    // One press, one request: the button is disabled once the form is sent.
    var button = form.querySelector("button[type=submit]");
    if (button) {
      window.setTimeout(function () { button.disabled = true; }, 0);
    }
  });

  var live = document.getElementById("live");
  var parts = document.querySelectorAll("[data-refresh]");
  if (!parts.length || !live) {
    return;
  }
  var every = parseInt(document.body.getAttribute("data-refresh-ms"), 10) || 5000;

  function load(el) {
    var url = el.getAttribute("data-refresh");
    url += (url.indexOf("?") < 0 ? "?" : "&") + "fragment=1";
    return fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (resp) {
      if (resp.status === 401) {
        throw new Error("logged out: reload the page to log in again");
      }
      if (!resp.ok) {
        throw new Error("refresh failed (" + resp.status + ")");
      }
      return resp.text();
    }).then(function (html) {
      el.innerHTML = html;
    });
  }

  var busy = false;
  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    Promise.all(Array.prototype.map.call(parts, load)).then(function () {
      live.textContent = "live · updated " + new Date().toLocaleTimeString();
      live.className = "live";
    }, function (err) {
      live.textContent = err.message;
      live.className = "live stale";
    }).then(function () {
      busy = false;
    });
  }

  live.hidden = false;
  live.textContent = "live · every " + Math.round(every / 1000) + "s";
  window.setInterval(refresh, every);
  document.addEventListener("visibilitychange", refresh);
})();
