/* FLOps dashboard: round charts (uPlot) and the log viewer, reading the manager's JSON API with
 * the page's session cookie. No inline code (the page's CSP forbids it); text goes in as text. */
(function () {
  "use strict";
  var POLL_MS = 2000;
  var FINAL = ["completed", "failed", "cancelled"];
  var COLORS = ["#2f6fdf", "#c0392b", "#1f8a4c", "#b7791f", "#8e44ad", "#16a085", "#d35400", "#2c3e50",
                "#7f8c8d", "#e84393"];

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (answer) {
      if (answer.status === 401) {
        window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname));
        throw new Error("signed out");
      }
      if (!answer.ok) { throw new Error(url + ": HTTP " + answer.status); }
      return answer.json();
    });
  }

  /* Rounds are whole numbers: ticks at 1, 2, 5, 10, ... rounds apart. */
  function roundAxis() {
    return { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] };
  }

  function chartWidth(element) { return Math.max(320, element.clientWidth || 640); }

  /* A uPlot chart that is made again when its series change, else given new data. */
  function LiveChart(element, height) {
    this.element = element;
    this.height = height;
    this.plot = null;
    this.key = "";
  }
  LiveChart.prototype.show = function (options, data, key) {
    if (this.plot === null || key !== this.key) {
      if (this.plot !== null) { this.plot.destroy(); }
      options.width = chartWidth(this.element);
      options.height = this.height;
      this.plot = new window.uPlot(options, data, this.element);
      this.key = key;
    } else {
      this.plot.setData(data);
    }
  };
  LiveChart.prototype.resize = function () {
    if (this.plot !== null) { this.plot.setSize({ width: chartWidth(this.element), height: this.height }); }
  };

  function roundOptions() {
    return {
      scales: { x: { time: false }, acc: { range: [0, 1] }, loss: {} },
      axes: [
        roundAxis(),
        { scale: "acc", label: "accuracy" },
        { scale: "loss", label: "loss", side: 1, grid: { show: false } }
      ],
      series: [
        { label: "round" },
        { label: "accuracy (global)", scale: "acc", stroke: COLORS[0], width: 2 },
        { label: "accuracy (local)", scale: "acc", stroke: COLORS[2], dash: [6, 4] },
        { label: "loss (global)", scale: "loss", stroke: COLORS[1], width: 2 },
        { label: "loss (local)", scale: "loss", stroke: COLORS[3], dash: [6, 4] }
      ]
    };
  }

  function roundData(project) {
    var rounds = (project.rounds || []).filter(function (report) { return report.duration_s > 0; });
    rounds.sort(function (a, b) { return a.round - b.round; });
    function column(name) { return rounds.map(function (report) { return report[name] == null ? null : report[name]; }); }
    return [rounds.map(function (report) { return report.round; }), column("accuracy"), column("local_accuracy"),
            column("loss"), column("local_loss")];
  }

  function learnerData(view, figure) {
    var names = Object.keys(view.learners || {}).sort();
    var roundSet = {};
    names.forEach(function (name) { view.learners[name].forEach(function (record) { roundSet[record.round] = true; }); });
    var rounds = Object.keys(roundSet).map(Number).sort(function (a, b) { return a - b; });
    var data = [rounds];
    names.forEach(function (name) {
      var byRound = {};
      view.learners[name].forEach(function (record) { byRound[record.round] = record[figure]; });
      data.push(rounds.map(function (round) { return byRound[round] == null ? null : byRound[round]; }));
    });
    var flaggedNames = {};
    (view.flagged || []).forEach(function (entry) { flaggedNames[entry.learner] = true; });
    var options = {
      scales: { x: { time: false } },
      axes: [roundAxis(), { label: figure.replace(/_/g, " ") }],
      series: [{ label: "round" }].concat(names.map(function (name, index) {
        return { label: flaggedNames[name] ? name + " (flagged)" : name, stroke: COLORS[index % COLORS.length],
                 width: flaggedNames[name] ? 3 : 1.5, points: { show: true } };
      }))
    };
    return { names: names, rounds: rounds, data: data, options: options, flagged: Object.keys(flaggedNames).sort() };
  }

  /* The component names of the log viewer's select, kept in step with the project's (the selection stays). */
  function syncComponents(names) {
    var select = document.getElementById("log-component");
    if (!select || !names) { return; }
    var current = Array.prototype.map.call(select.options, function (option) { return option.value; });
    if (current.join("\n") === names.join("\n")) { return; }
    var chosen = select.value;
    select.textContent = "";
    names.forEach(function (name) {
      var option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      select.appendChild(option);
    });
    if (names.indexOf(chosen) >= 0) { select.value = chosen; }
  }

  function startProject() {
    var root = document.getElementById("project-root");
    if (!root) { return; }
    var roundElement = document.getElementById("round-chart");
    var learnerElement = document.getElementById("learner-chart");
    var figureSelect = document.getElementById("learner-figure");
    var rounds = roundElement ? new LiveChart(roundElement, 260) : null;
    var learners = learnerElement ? new LiveChart(learnerElement, 260) : null;
    var lastView = null;

    function drawLearners() {
      if (!learners || lastView === null) { return; }
      var figure = figureSelect ? figureSelect.value : "local_loss";
      var shown = learnerData(lastView, figure);
      learners.show(shown.options, shown.data, figure + "|" + shown.names.join(",") + "|" + shown.flagged.join(","));
      learnerElement.dataset.rounds = String(shown.rounds.length);
      learnerElement.dataset.learners = String(shown.names.length);
      learnerElement.dataset.flagged = shown.flagged.join(",");
    }

    function update() {
      var project = getJSON(root.dataset.projectUrl);
      var view = learnerElement ? getJSON(learnerElement.dataset.learnersUrl) : Promise.resolve(null);
      return Promise.all([project, view]).then(function (answers) {
        syncComponents(answers[0].components);
        if (rounds) {
          var data = roundData(answers[0]);
          rounds.show(roundOptions(), data, "rounds");
          roundElement.dataset.rounds = String(data[0].length);
        }
        if (answers[1] !== null) { lastView = answers[1]; drawLearners(); }
        return FINAL.indexOf(answers[0].status) >= 0;
      });
    }

    function loop() {
      update().then(function (final) {
        if (!final) { window.setTimeout(loop, POLL_MS); }
      }, function () { window.setTimeout(loop, POLL_MS * 2); });
    }

    if (figureSelect) { figureSelect.addEventListener("change", drawLearners); }
    window.addEventListener("resize", function () {
      if (rounds) { rounds.resize(); }
      if (learners) { learners.resize(); }
    });
    loop();
  }

  function startLogs() {
    var form = document.getElementById("log-form");
    if (!form) { return; }
    var output = document.getElementById("log-lines");
    var summary = document.getElementById("log-summary");

    function show(event) {
      if (event) { event.preventDefault(); }
      var component = form.elements.component.value;
      if (!component) { summary.textContent = "no component has run yet"; return; }
      var tail = form.elements.tail.value || "200";
      var needle = form.elements.q.value.trim().toLowerCase();
      var url = form.dataset.logsUrl + "?component=" + encodeURIComponent(component) + "&tail=" + encodeURIComponent(tail);
      getJSON(url).then(function (logs) {
        var lines = String(logs[component] || "").split("\n").filter(function (line) { return line.length > 0; });
        var matching = needle ? lines.filter(function (line) { return line.toLowerCase().indexOf(needle) >= 0; }) : lines;
        output.textContent = matching.join("\n");
        summary.textContent = needle
          ? matching.length + " of " + lines.length + " lines of " + component + " contain \u201c" + needle + "\u201d"
          : lines.length + " lines of " + component;
      }, function (error) {
        output.textContent = "";
        summary.textContent = "could not read the logs: " + error.message;
      });
    }

    form.addEventListener("submit", show);
    show(null);
  }

  document.addEventListener("DOMContentLoaded", function () {
    startLogs();
    startProject();
  });
})();
