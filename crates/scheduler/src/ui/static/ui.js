// The scheduler's pages: refreshes <main> every 2 s from the same URL with fragment=1 (only
// the main section, see base.html), and sends the workers page's offline/reinstate POSTs with
// the admin token kept in this tab's sessionStorage, when the scheduler wants tokens.
// Served by the scheduler itself: the page's Content-Security-Policy allows no other script.
(function () {
  "use strict";
  var PERIOD_MS = 2000;
  var LIVE_KEY = "scoot-ui-live";
  var TOKEN_KEY = "scoot-ui-admin-token";
  var main = document.getElementById("main");
  var live = document.getElementById("live");
  var refreshStatus = document.getElementById("refresh-status");
  var inFlight = false;

  function say(element, text) {
    // textContent, never innerHTML: messages carry server and worker text.
    if (element) { element.textContent = text; }
  }

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.toString();
  }

  function refresh() {
    if (inFlight || document.hidden || !live.checked) { return; }
    inFlight = true;
    fetch(fragmentUrl(), { cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        return response.text().then(function (text) {
          if (response.ok) {
            // The server rendered (and escaped) this HTML; scripts inserted this way never run.
            main.innerHTML = text;
            // How many refreshes landed: for people debugging the page, and for the tests.
            main.dataset.refreshes = String(Number(main.dataset.refreshes || 0) + 1);
            say(refreshStatus, "");
          } else {
            say(refreshStatus, "refresh failed: HTTP " + response.status);
          }
        });
      })
      .catch(function () { say(refreshStatus, "scheduler unreachable; retrying"); })
      .then(function () { inFlight = false; });
  }

  live.checked = sessionStorage.getItem(LIVE_KEY) !== "off";
  live.addEventListener("change", function () {
    sessionStorage.setItem(LIVE_KEY, live.checked ? "on" : "off");
    if (live.checked) { refresh(); }
  });
  window.setInterval(refresh, PERIOD_MS);
  document.addEventListener("visibilitychange", refresh);

  var tokenForm = document.getElementById("token-form");
  var tokenInput = document.getElementById("token");
  var actionStatus = document.getElementById("action-status");
  if (tokenForm && tokenInput) {
    tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || "";
    tokenForm.addEventListener("submit", function (event) {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
      say(actionStatus, "token kept for this tab");
    });
    document.getElementById("token-forget").addEventListener("click", function () {
      sessionStorage.removeItem(TOKEN_KEY);
      tokenInput.value = "";
      say(actionStatus, "token forgotten");
    });
  }

  // Buttons are re-rendered every refresh, so clicks are taken where they bubble to.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-post]");
    if (!button) { return; }
    var what = button.getAttribute("data-what");
    var headers = {};
    var token = tokenForm ? (sessionStorage.getItem(TOKEN_KEY) || "") : "";
    if (token) { headers["Authorization"] = "Bearer " + token; }
    button.disabled = true;
    say(actionStatus, what + "…");
    fetch(button.getAttribute("data-post"), { method: "POST", headers: headers, credentials: "same-origin" })
      .then(function (response) {
        return response.text().then(function (text) {
          say(actionStatus, what + ": " + (response.ok ? "done" : "HTTP " + response.status + " " + text.trim()));
        });
      })
      .catch(function (error) { say(actionStatus, what + ": " + error); })
      .then(function () { button.disabled = false; refresh(); });
  });
})();
