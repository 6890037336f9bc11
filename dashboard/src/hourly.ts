// The overview's chart for long windows (loaded only when a window is answered from hourly
// buckets, with uPlot): each node's CPU average and peak and its memory average over the
// window, as bars, from the hourly answer the overview already has.

import uPlot from "uplot";
import type { HostOverallRow } from "./data.js";
import { megabytes, percent } from "./dom.js";

/** Bars of each node's CPU average and peak and memory average, drawn into `box`. */
export function hourlyChart(box: HTMLElement, rows: HostOverallRow[], window: string): uPlot {
  const hosts = rows.map((row) => row.host);
  const bars = uPlot.paths.bars?.({ size: [0.9, 48], gap: 1 });
  // Three bars side by side per node: node i's at i - 0.3, i and i + 0.3, each series with
  // values at its own offset only.
  const OFFSETS = [-0.3, 0, 0.3];
  const x = rows.flatMap((_, i) => OFFSETS.map((offset) => i + offset));
  const at = (k: number, pick: (row: HostOverallRow) => number) =>
    rows.flatMap((row) => OFFSETS.map((_, j) => (j === k ? pick(row) : null)));
  return new uPlot(
    {
      title: `Per node over the last ${window}, from hourly buckets`,
      width: Math.max(320, document.body.clientWidth - 64),
      height: 280,
      scales: {
        x: { time: false, range: () => [-0.6, rows.length - 0.4] },
        // Bars start at zero.
        y: { range: (_, __, max) => [0, Math.max(1, max) * 1.1] },
        mb: { range: (_, __, max) => [0, Math.max(1, max) * 1.1] },
      },
      series: [
        {},
        { label: "CPU avg", fill: "#2f7ed8", stroke: "#2f7ed8", paths: bars, points: { show: false }, value: (_, v) => (v === null ? "–" : percent(v)) },
        { label: "CPU peak", fill: "#a82fd8", stroke: "#a82fd8", paths: bars, points: { show: false }, value: (_, v) => (v === null ? "–" : percent(v)) },
        { label: "Memory avg", fill: "#2fa84f", stroke: "#2fa84f", scale: "mb", paths: bars, points: { show: false }, value: (_, v) => (v === null ? "–" : megabytes(v)) },
      ],
      axes: [
        { stroke: "currentColor", splits: () => rows.map((_, i) => i), values: (_, ticks) => ticks.map((tick) => hosts[tick] ?? "") },
        { stroke: "currentColor", size: 64, values: (_, ticks) => ticks.map((tick) => `${tick} %`) },
        { stroke: "currentColor", size: 80, scale: "mb", side: 1, grid: { show: false }, values: (_, ticks) => ticks.map((tick) => `${tick} MB`) },
      ],
    },
    [x, at(0, (row) => row.avg_cpu), at(1, (row) => row.max_cpu), at(2, (row) => row.avg_memory_mb)],
    box,
  );
}
