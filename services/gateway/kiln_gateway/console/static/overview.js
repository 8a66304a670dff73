// The overview's charts: jobs per day (live and sandbox side by side) and the credits live jobs
// spent per day, drawn with uPlot from the page's JSON (no inline script: CSP allows files only).
"use strict";

(function () {
  const source = document.getElementById("usage-data");
  if (!source || typeof uPlot === "undefined") return;
  const data = JSON.parse(source.textContent);
  const days = data.days.map((d) => Date.parse(d + "T00:00:00Z") / 1000);
  const spent = data.live_spent_millicredits.map((m) => m / 1000);

  function bars(align) {
    return uPlot.paths.bars({ size: [0.4, 40], align: align });
  }

  function draw(element, series, values) {
    const width = () => Math.max(element.clientWidth, 240);
    const chart = new uPlot(
      {
        width: width(),
        height: 220,
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
        // Half a day of room on each side, so that the first and last days' bars show whole.
        scales: {
          x: { time: true, range: (u, min, max) => [min - 43200, max + 43200] },
          y: { range: (u, min, max) => [0, Math.max(max, 1)] },
        },
        axes: [{}, { size: 50 }],
        series: [{}, ...series],
      },
      [days, ...values],
      element
    );
    window.addEventListener("resize", () => chart.setSize({ width: width(), height: 220 }));
  }

  draw(
    document.getElementById("chart-jobs"),
    [
      { label: "Live jobs", stroke: "#b4410f", fill: "#b4410fcc", paths: bars(-1), points: { show: false } },
      { label: "Sandbox jobs", stroke: "#1f5fbf", fill: "#1f5fbfcc", paths: bars(1), points: { show: false } },
    ],
    [data.live_jobs, data.sandbox_jobs]
  );
  draw(
    document.getElementById("chart-spend"),
    [{ label: "Credits spent (live)", stroke: "#17663a", fill: "#17663acc", paths: bars(0), points: { show: false } }],
    [spent]
  );
})();
