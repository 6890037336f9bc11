// The trends view, loaded only when opened (its own chunk, with uPlot): each node's CPU,
// memory, load and network over the page's window, from the query service's buckets
// (`GET /api/host-history`: raw buckets up to 6 hours, hourly ones beyond, which carry no
// network), one chart per metric with a line per node. It refreshes on the data layer's
// schedule (`follow`: when the server's answer stops being fresh, with If-None-Match,
// nothing while the page is hidden), and an unchanged answer (a 304 gives the same object)
// is not drawn again.

import uPlot from "uplot";
import { type HostHistory, type HostSeries, hostSeries } from "./data.js";
import { h, load, megabytes, percent, rate, replace } from "./dom.js";
import type { View, ViewContext } from "./views.js";

const COLOURS = ["#2f7ed8", "#d8572f", "#2fa84f", "#a82fd8", "#d8b42f", "#2fc7d8"];

/** One chart: its name (the element's id is `trends-<name>`), title, lines and unit. */
interface Metric {
  name: string;
  title: string;
  /** The lines per node: a label suffix, the values, and whether dashed. */
  lines: (series: HostSeries) => { suffix: string; values: (number | null)[][]; dashed: boolean }[];
  format: (value: number) => string;
  /** Why the chart is empty, when the answer cannot have its values. */
  missing?: (series: HostSeries) => string | undefined;
}

const METRICS: Metric[] = [
  {
    name: "cpu",
    title: "CPU, percent (dashed: peak)",
    lines: (series) => [
      { suffix: "", values: series.avgCpu, dashed: false },
      { suffix: " peak", values: series.maxCpu, dashed: true },
    ],
    format: percent,
  },
  {
    name: "memory",
    title: "Memory in use (average)",
    lines: (series) => [{ suffix: "", values: series.avgMemory, dashed: false }],
    format: megabytes,
  },
  {
    name: "load",
    title: "Load, one minute (average)",
    lines: (series) => [{ suffix: "", values: series.avgLoad, dashed: false }],
    format: load,
  },
  {
    name: "network",
    title: "Network, bytes per second (solid: in, dashed: out)",
    lines: (series) => [
      { suffix: " in", values: series.networkIn, dashed: false },
      { suffix: " out", values: series.networkOut, dashed: true },
    ],
    format: (value) => rate(value),
    missing: (series) =>
      series.hasNetwork ? undefined : "Hourly buckets keep no network: choose a window of 6 hours or less to see it.",
  },
];

/** A chart's uPlot data and series options: the buckets, then each line of each node. */
function chartOf(metric: Metric, series: HostSeries): { data: uPlot.AlignedData; options: uPlot.Series[] } {
  const data: (number | null)[][] = [series.times];
  const options: uPlot.Series[] = [{}];
  for (const line of metric.lines(series)) {
    series.hosts.forEach((host, i) => {
      data.push(line.values[i]);
      options.push({
        label: `${host}${line.suffix}`,
        stroke: COLOURS[i % COLOURS.length],
        width: line.dashed ? 1 : 2,
        dash: line.dashed ? [4, 4] : undefined,
        // Nodes sample at their own times, so that a node's buckets are not all adjacent.
        spanGaps: true,
        value: (_, v) => (v === null ? "–" : metric.format(v)),
      });
    });
  }
  return { data: data as uPlot.AlignedData, options };
}

/** The points each node has in a chart's first line, for the page's tests and people alike. */
function pointsPerNode(metric: Metric, series: HostSeries): string {
  const [first] = metric.lines(series);
  return JSON.stringify(Object.fromEntries(series.hosts.map((host, i) => [host, first.values[i].filter((v) => v !== null).length])));
}

/** The trends view: the nodes over the page's window, one chart per metric. */
export function trends(context: ViewContext): View {
  const window = context.window;
  const boxes = new Map(METRICS.map((metric) => [metric.name, h("section", { class: "charts", id: `trends-${metric.name}`, "aria-label": metric.title })]));
  const status = h("p", { class: "loading" }, "Loading…");
  const charts = new Map<string, uPlot>();
  /** The nodes of the charts drawn, and when their answer came (clock milliseconds). */
  let drawnHosts = "";
  let drawnAt: number | undefined;
  /** The time axis: the whole window (from its first bucket) up to now, in seconds. */
  let span: [number, number] = [0, 1];

  const draw = (answer: HostHistory) => {
    const series = hostSeries(answer.rows);
    for (const host of series.hosts) context.nodes.add(host);
    status.textContent =
      series.times.length === 0
        ? `No samples in the last ${window}.`
        : `Last ${window} in buckets of ${answer.bucket_seconds} s, ${answer.source === "raw" ? "from raw samples" : "from hourly buckets"}.`;
    status.className = series.times.length === 0 ? "empty" : "muted";
    const hosts = series.hosts.join("\n");
    const now = Date.now() / 1000;
    span = [Math.floor((now - answer.window_seconds) / answer.bucket_seconds) * answer.bucket_seconds, now];
    for (const metric of METRICS) {
      const box = boxes.get(metric.name) as HTMLElement;
      const { data, options } = chartOf(metric, series);
      const missing = series.times.length === 0 ? "No samples in this window." : metric.missing?.(series);
      box.dataset.points = pointsPerNode(metric, series);
      const chart = charts.get(metric.name);
      if (missing !== undefined) {
        chart?.destroy();
        charts.delete(metric.name);
        replace(box, h("h2", {}, metric.title), h("p", { class: "muted" }, missing));
      } else if (chart && hosts === drawnHosts) {
        chart.setData(data); // The same lines: update in place, no new chart.
      } else {
        chart?.destroy();
        replace(box);
        charts.set(
          metric.name,
          new uPlot(
            {
              title: metric.title,
              width: Math.max(320, document.body.clientWidth - 64),
              height: 240,
              scales: {
                x: { time: true, range: () => span },
                y: { range: (_, min, max) => [Math.min(0, min), Math.max(max, min + 1) * 1.05] },
              },
              series: options,
              axes: [
                { stroke: "currentColor" },
                { stroke: "currentColor", size: 80, values: (_, ticks) => ticks.map((tick) => metric.format(tick)) },
              ],
            },
            data,
            box,
          ),
        );
      }
    }
    drawnHosts = hosts;
  };

  // The page's notice tells of failures, as for the other views.
  const stop = context.data.follow<HostHistory>("/api/host-history", { window }, (update) => {
    if (update.error) {
      context.report({ error: update.error, data: drawnAt === undefined ? undefined : {}, updatedAt: drawnAt, stale: true, outdated: false, fetching: false, fallback: false });
      if (drawnAt === undefined) {
        status.className = "failed";
        status.textContent = "The nodes' history could not be loaded.";
      }
      return;
    }
    drawnAt = Date.now();
    context.report({ stale: false, outdated: false, fetching: false, fallback: false });
    draw(update.answer);
  });
  return {
    element: h("div", { class: "view", id: "view-trends" }, status, ...boxes.values()),
    stop: () => {
      stop();
      for (const chart of charts.values()) chart.destroy();
    },
  };
}
