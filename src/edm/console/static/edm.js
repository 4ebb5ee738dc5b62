/* EDM console: the one hand-written script every page loads (no build step, no other host).
   - the menu button under 700 px
   - forms with data-confirm="…" ask first (before htmx or the browser sends them)
   - buttons with data-copy="<element id>" copy that element's text
   - EDM.poll(url, onData): GET a JSON URL every 5 s while the tab is visible; elements with data-poll="<url>" use
     it to refresh their [data-field="a.b.c"] descendants from the answer
   - elements with data-chart="<id of a JSON script>" draw a uPlot line chart of {labels, series: [{label, values}]}
   - EDM.csrfToken(): the session's CSRF token, for fetch() writes (htmx sends it by itself: hx-headers on <body>) */
(function () {
  "use strict";

  var root = document.documentElement;
  root.classList.remove("no-js");
  var POLL_EVERY = parseInt(root.getAttribute("data-live-every-ms"), 10) || 5000;  // set by the server (5 s)

  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || "";
    } catch (e) {
      return "";
    }
  }

  function numberFormat() {
    try {
      return new Intl.NumberFormat(root.lang || "en");
    } catch (e) {
      return new Intl.NumberFormat("en");
    }
  }

  function at(data, path) {
    return path.split(".").reduce(function (value, key) {
      return value == null ? undefined : value[key];
    }, data);
  }

  /* Poll `url` every `interval` ms (5 s) while the page is visible; hidden tabs do not poll, and a tab shown again
     polls at once. A 401 or 403 (the session ended) stops it. Returns {stop}. */
  function poll(url, onData, options) {
    var interval = (options && options.interval) || POLL_EVERY;
    var timer = null;
    var busy = false;
    var stopped = false;

    function schedule() {
      clearTimeout(timer);
      timer = null;
      if (!stopped && !document.hidden) timer = setTimeout(tick, interval);
    }

    function tick() {
      timer = null;
      if (stopped || busy || document.hidden) return;
      busy = true;
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) {
          if (response.status === 401 || response.status === 403) stop();
          return response.ok ? response.json() : null;
        })
        .then(function (data) {
          if (data !== null && !stopped) onData(data);
        })
        .catch(function () { /* a lost poll is retried at the next tick */ })
        .then(function () {
          busy = false;
          schedule();
        });
    }

    function onVisibility() {
      if (document.hidden) {
        clearTimeout(timer);
        timer = null;
      } else if (!timer && !busy) {
        tick();
      }
    }

    function stop() {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisibility);
    }

    document.addEventListener("visibilitychange", onVisibility);
    schedule();
    return { stop: stop };
  }

  function livePoll(element) {
    var format = numberFormat();
    poll(element.getAttribute("data-poll"), function (data) {
      element.querySelectorAll("[data-field]").forEach(function (field) {
        var value = at(data, field.getAttribute("data-field"));
        if (typeof value === "number") field.textContent = format.format(value);
      });
      element.dispatchEvent(new CustomEvent("edm:polled", { detail: data }));
    });
  }

  function chart(element) {
    if (!window.uPlot) return;
    var source = document.getElementById(element.getAttribute("data-chart"));
    if (!source) return;
    var data = JSON.parse(source.textContent);
    var style = getComputedStyle(root);
    var css = function (name) { return style.getPropertyValue(name).trim(); };
    var colors = ["--s1", "--s2", "--s3", "--s4", "--s5"].map(css);
    var axis = { stroke: css("--muted"), grid: { stroke: css("--border"), width: 1 }, ticks: { stroke: css("--border"), width: 1 } };
    var height = 220;
    var options = {
      width: element.clientWidth || 400,
      height: height,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false } },
      axes: [
        Object.assign({}, axis, {
          space: 60,
          values: function (u, splits) {
            return splits.map(function (i) { return data.labels[i] !== undefined && i === Math.round(i) ? data.labels[i] : ""; });
          }
        }),
        Object.assign({}, axis, { size: 50 })
      ],
      series: [{}].concat(data.series.map(function (s, i) {
        // `points`: a series with gaps (hours without attempts) marks its values, or a lone value would not show
        return { label: s.label, stroke: colors[i % colors.length], width: 2, points: { show: !!s.points } };
      }))
    };
    var xs = data.labels.map(function (label, i) { return i; });
    var plot = new window.uPlot(options, [xs].concat(data.series.map(function (s) { return s.values; })), element);
    if (window.ResizeObserver) {
      new ResizeObserver(function () {
        if (element.clientWidth) plot.setSize({ width: element.clientWidth, height: height });
      }).observe(element);
    }
  }

  function init() {
    var toggle = document.querySelector(".menu-toggle");
    var menu = document.getElementById("menu");
    if (toggle && menu) {
      toggle.addEventListener("click", function () {
        var open = menu.classList.toggle("open");
        toggle.setAttribute("aria-expanded", open ? "true" : "false");
      });
    }

    // Capture phase: a refused confirmation stops the submit before htmx or the browser acts on it.
    document.addEventListener("submit", function (event) {
      var form = event.target;
      var question = form.getAttribute && form.getAttribute("data-confirm");
      if (question && !window.confirm(question)) {
        event.preventDefault();
        event.stopImmediatePropagation();
      }
    }, true);

    document.addEventListener("click", function (event) {
      var button = event.target.closest && event.target.closest("[data-copy]");
      if (!button || !navigator.clipboard) return;
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (source) navigator.clipboard.writeText(source.textContent.trim()).catch(function () {});
    });

    document.querySelectorAll("[data-poll]").forEach(livePoll);
    document.querySelectorAll("[data-chart]").forEach(chart);
  }

  window.EDM = { poll: poll, csrfToken: csrfToken };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
