// A process's history across restarts (loaded when first opened, with uPlot): the process
// followed by its pod, its container's name and its command rather than by pid, CPU and
// memory over the page's window, each restart marked on the chart and listed beside its
// incarnations. Opened from a pod's drill-down.

import uPlot from "uplot";
import { type HistorySeries, historySeries, type Part, type ProcessHistoryRow, RefreshFailure } from "./data.js";
import { h, megabytes, percent, replace, table, time } from "./dom.js";
import type { HistoryTarget, View, ViewContext } from "./views.js";

const RESTART_COLOUR = "#d8572f";

/** The date and time of clock seconds, in the browser's zone. */
function moment(seconds: number): string {
  return new Date(seconds * 1000).toLocaleString();
}

/** A vertical dashed line at each restart, drawn over the series. */
function restartMarkers(series: HistorySeries): uPlot.Plugin {
  return {
    hooks: {
      draw: [
        (chart) => {
          const { ctx, bbox } = chart;
          ctx.save();
          ctx.strokeStyle = RESTART_COLOUR;
          ctx.fillStyle = RESTART_COLOUR;
          ctx.lineWidth = Math.max(1, devicePixelRatio);
          ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
          ctx.font = `${12 * devicePixelRatio}px system-ui, sans-serif`;
          for (const restart of series.restarts) {
            const x = Math.round(chart.valToPos(restart.at, "x", true));
            ctx.beginPath();
            ctx.moveTo(x, bbox.top);
            ctx.lineTo(x, bbox.top + bbox.height);
            ctx.stroke();
            ctx.fillText(`restart: pid ${restart.pid}`, x + 4 * devicePixelRatio, bbox.top + 14 * devicePixelRatio);
          }
          ctx.restore();
        },
      ],
    },
  };
}

/**
 * The chart's data: the series with an empty point just before each restart, so that the
 * lines break there rather than join one incarnation to the next.
 */
function chartData(series: HistorySeries): uPlot.AlignedData {
  const columns: (number | null)[][] = [[], [], [], []];
  let next = 0;
  series.times.forEach((at, i) => {
    const restart = series.restarts[next];
    if (restart && restart.at === at) {
      next += 1;
      if (i > 0) {
        // Between the last bucket of one incarnation and the first of the next.
        columns[0].push((series.times[i - 1] + at) / 2);
        columns[1].push(null);
        columns[2].push(null);
        columns[3].push(null);
      }
    }
    columns[0].push(at);
    columns[1].push(series.avgCpu[i]);
    columns[2].push(series.maxCpu[i]);
    columns[3].push(series.avgMemory[i]);
  });
  return columns as uPlot.AlignedData;
}

/** The chart, the restarts and the incarnations of `rows`, drawn into `panel`. */
function draw(panel: HTMLElement, target: HistoryTarget, window: string, rows: ProcessHistoryRow[]): uPlot | undefined {
  const series = historySeries(rows);
  if (series.times.length === 0) {
    replace(panel, h("p", { class: "empty" }, `No samples of this command in ${target.namespace}/${target.pod}, container ${target.container}, in the last ${window}.`));
    return undefined;
  }
  const chartBox = h("div", { class: "charts", id: "history-chart" });
  replace(
    panel,
    chartBox,
    h("h2", {}, series.restarts.length === 0 ? "No restart in this window" : `${series.restarts.length} restart${series.restarts.length === 1 ? "" : "s"}`),
    h(
      "ul",
      { id: "restarts" },
      ...series.restarts.map((restart) =>
        h(
          "li",
          { "data-restart": `${restart.pid}/${restart.startTime}` },
          `${moment(restart.at)}: now pid ${restart.pid}, started ${new Date(restart.startTime).toLocaleString()}${restart.containerRestarted ? "; the container restarted too" : ""}`,
        ),
      ),
    ),
    table(
      "Incarnations",
      [
        { label: "PID", field: "pid", cell: (row) => String(row.pid), numeric: true },
        { label: "Started", field: "start_time", cell: (row) => new Date(row.startTime).toLocaleString() },
        { label: "Node", field: "host", cell: (row) => row.host },
        { label: "Container id", field: "container_id", cell: (row) => row.containerId.slice(0, 12) },
        { label: "First seen", field: "first_seen", cell: (row) => time(row.firstSeen * 1000) },
        { label: "Last seen", field: "last_seen", cell: (row) => time(row.lastSeen * 1000) },
        { label: "Samples", field: "samples", cell: (row) => String(row.samples), numeric: true },
      ],
      series.incarnations,
      (row) => `${row.pid}/${row.startTime}`,
    ),
  );
  return new uPlot(
    {
      title: "CPU (percent of one core) and memory; dashed lines mark restarts",
      width: Math.max(320, document.body.clientWidth - 64),
      height: 320,
      plugins: [restartMarkers(series)],
      scales: {
        x: { time: true, range: (_, min, max) => (min === max ? [min - 60, max + 60] : [min, max]) },
        mb: {},
      },
      series: [
        {},
        { label: "CPU avg", stroke: "#2f7ed8", width: 2, value: (_, v) => (v === null ? "–" : percent(v)) },
        { label: "CPU peak", stroke: "#a82fd8", width: 1, dash: [4, 4], value: (_, v) => (v === null ? "–" : percent(v)) },
        { label: "Memory", stroke: "#2fa84f", width: 2, scale: "mb", value: (_, v) => (v === null ? "–" : megabytes(v)) },
      ],
      axes: [
        { stroke: "currentColor" },
        { stroke: "currentColor", size: 64, values: (_, ticks) => ticks.map((tick) => `${tick} %`) },
        { stroke: "currentColor", size: 72, scale: "mb", side: 1, grid: { show: false }, values: (_, ticks) => ticks.map((tick) => `${tick} MB`) },
      ],
    },
    chartData(series),
    chartBox,
  );
}

/** The history of `target` over the page's window; without a target, how to choose one. */
export function history(context: ViewContext, target: HistoryTarget | undefined): View {
  if (!target) {
    return {
      element: h("div", { class: "view", id: "view-history" }, h("p", { class: "empty" }, "Open a process's history from a pod's drill-down (Pods, Show processes, History).")),
      stop: () => undefined,
    };
  }
  const window = context.window;
  const panel = h("section", { id: "history", "aria-label": "Process history" }, h("p", { class: "loading" }, "Loading…"));
  let chart: uPlot | undefined;
  let asked = 0;
  const load = () => {
    const mine = ++asked;
    context.data.get<Part<ProcessHistoryRow>>("/api/process-history", { ...target, window }).then(
      (answer) => {
        if (mine !== asked) return;
        chart?.destroy();
        chart = draw(panel, target, window, answer.rows);
      },
      (error: unknown) => {
        if (mine !== asked) return;
        replace(panel, h("p", { class: "failed" }, `The history could not be loaded: ${error instanceof RefreshFailure ? error.detail.message : String(error)}`));
      },
    );
  };
  load();
  return {
    element: h(
      "div",
      { class: "view", id: "view-history" },
      h("h2", {}, `${target.command}`, h("span", { class: "muted" }, ` in ${target.namespace}/${target.pod}, container ${target.container}, last ${window}`)),
      h("div", { class: "controls" }, h("button", { type: "button", id: "history-reload", onClick: load }, "Reload")),
      panel,
    ),
    stop: () => {
      asked += 1;
      chart?.destroy();
    },
  };
}
