// The trends view, loaded only when opened (its own chunk, with uPlot): each node's CPU
// average over the window, one point per refresh while the view is open (the last
// MAX_POINTS of them). The query service
// has no time-series endpoint yet; this draws what the page receives.

import uPlot from "uplot";
import type { HostOverallRow } from "./data.js";
import { h, replace } from "./dom.js";
import type { View, ViewContext } from "./views.js";

/** Points kept per series: the oldest are dropped beyond, so a long-open view stays small. */
export const MAX_POINTS = 1000;

const COLOURS = ["#2f7ed8", "#d8572f", "#2fa84f", "#a82fd8", "#d8b42f", "#2fc7d8"];

/** The trends view. */
export function trends(context: ViewContext): View {
  const times: number[] = [];
  const cpu = new Map<string, (number | null)[]>();
  const charts = h("div", { class: "charts" }, h("p", { class: "loading" }, "Waiting for the first answer…"));
  let chart: uPlot | undefined;
  let drawn: number | undefined;
  const stop = context.data.subscribe({ window: context.window }, (state) => {
    context.report(state);
    const rows: HostOverallRow[] = state.data?.host_overall_metrics?.rows ?? [];
    // One point per refresh the server confirmed (a 304 too), none for the other changes.
    if (state.updatedAt === undefined || state.updatedAt === drawn || rows.length === 0) {
      return;
    }
    drawn = state.updatedAt;
    times.push(state.updatedAt / 1000);
    for (const row of rows) {
      if (!cpu.has(row.host)) {
        cpu.set(row.host, times.slice(1).map(() => null));
      }
    }
    for (const [host, series] of cpu) {
      series.push(rows.find((row) => row.host === host)?.avg_cpu ?? null);
    }
    if (times.length > MAX_POINTS) {
      times.splice(0, times.length - MAX_POINTS);
      for (const series of cpu.values()) {
        series.splice(0, series.length - MAX_POINTS);
      }
    }
    const hosts = [...cpu.keys()];
    const data: uPlot.AlignedData = [times, ...hosts.map((host) => cpu.get(host) ?? [])];
    if (chart && chart.series.length === hosts.length + 1) {
      chart.setData(data); // Same series: update in place, no new chart.
      return;
    }
    chart?.destroy();
    replace(charts);
    chart = new uPlot(
      {
        title: "CPU average over the window, per node",
        width: Math.max(320, document.body.clientWidth - 64),
        height: 320,
        scales: {
          // A single point still gets a readable time axis: a minute either side.
          x: { time: true, range: (_, min, max) => (min === max ? [min - 60, max + 60] : [min, max]) },
        },
        series: [{}, ...hosts.map((host, i) => ({ label: host, stroke: COLOURS[i % COLOURS.length], width: 2 }))],
        axes: [
          { stroke: "currentColor" },
          { stroke: "currentColor", size: 64, values: (_, ticks) => ticks.map((tick) => `${tick} %`) },
        ],
      },
      data,
      charts,
    );
  });
  return {
    element: h("div", { class: "view", id: "view-trends" }, h("p", { class: "muted" }, "One point per refresh while this view is open."), charts),
    stop: () => {
      stop();
      chart?.destroy();
    },
  };
}
