// The fleet overview: a summary of every node, one row per node, and when the data changed;
// for windows answered from hourly buckets (over 6 hours), a chart of them per node, whose
// module (with uPlot) is loaded only then, with a link to the nodes over time (the trends).

import type { Filters, HostOverallRow } from "./data.js";
import { bytes, h, load, megabytes, percent, rate, replace, table, time } from "./dom.js";
import { type View, type ViewContext, watch } from "./views.js";

/** The fleet overview: a summary of every node, and one row per node. */
export function overview(context: ViewContext): View {
  const filters: Filters = { window: context.window };
  const summary = h("section", { class: "cards", "aria-label": "Fleet summary" });
  const freshness = h("p", { class: "muted", id: "freshness" });
  const nodes = h("section", { "aria-label": "Nodes" }, h("p", { class: "loading" }, "Loading…"));
  const chartBox = h("section", { class: "charts", id: "overview-chart", "aria-label": "Nodes over the window", hidden: true });
  const overTime = h("p", { hidden: true }, h("a", { id: "overview-trends", href: `#view=trends&window=${encodeURIComponent(context.window)}` }, `Each node over the last ${context.window}, line by line: Trends`));
  let chart: { destroy(): void } | undefined;
  /** The answer the chart should show (the latest), or undefined once stopped. */
  let charted: unknown;
  // Three widgets on one key: one request (the data layer shares the entry).
  const stops = [
    watch(context, filters, (state) => {
      const part = state.data?.host_overall_metrics;
      freshness.textContent = part
        ? `Last ${context.window}, ${part.source === "raw" ? "raw samples" : "hourly buckets"}; last changed at ${time(state.updatedAt ?? Date.now())}.`
        : "";
    }),
    watch(context, filters, (state) => {
      const rows = state.data?.host_overall_metrics?.rows ?? [];
      const average = (pick: (row: HostOverallRow) => number) =>
        rows.length === 0 ? 0 : rows.reduce((sum, row) => sum + pick(row), 0) / rows.length;
      replace(
        summary,
        card("Nodes", String(rows.length), "nodes"),
        card("CPU (average)", percent(average((row) => row.avg_cpu)), "cpu"),
        card("Memory in use", megabytes(rows.reduce((sum, row) => sum + row.avg_memory_mb, 0)), "memory"),
        card("Load 1 min (average)", load(average((row) => row.avg_load_1)), "load"),
        card("Network in now", rate(rows.reduce((sum, row) => sum + (row.network_rx_bytes_per_second ?? 0), 0)), "network-in"),
        card("Network out now", rate(rows.reduce((sum, row) => sum + (row.network_tx_bytes_per_second ?? 0), 0)), "network-out"),
      );
    }),
    watch(context, filters, (state) => {
      const part = state.data?.host_overall_metrics;
      const hourly = part !== undefined && part.source !== "raw" && part.rows.length > 0;
      chartBox.hidden = !hourly;
      overTime.hidden = !hourly;
      charted = hourly ? part : undefined;
      if (!hourly) return;
      void import("./hourly.js").then(({ hourlyChart }) => {
        if (charted !== part) return;
        chart?.destroy();
        replace(chartBox);
        chart = hourlyChart(chartBox, part.rows, context.window);
      });
    }),
    watch(context, filters, (state) => {
      const rows = state.data?.host_overall_metrics?.rows ?? [];
      replace(
        nodes,
        table<HostOverallRow>(
          "Nodes",
          [
            { label: "Node", field: "host", cell: (row) => row.host },
            { label: "CPU avg", field: "avg_cpu", cell: (row) => percent(row.avg_cpu), numeric: true },
            { label: "CPU peak", field: "max_cpu", cell: (row) => percent(row.max_cpu), numeric: true },
            { label: "Memory avg", field: "avg_memory_mb", cell: (row) => megabytes(row.avg_memory_mb), numeric: true },
            { label: "Memory peak", field: "max_memory_mb", cell: (row) => megabytes(row.max_memory_mb), numeric: true },
            { label: "Load 1 min", field: "avg_load_1", cell: (row) => load(row.avg_load_1), numeric: true },
            { label: "Network in", field: "network_rx_bytes_per_second", cell: (row) => rate(row.network_rx_bytes_per_second), numeric: true },
            { label: "Network out", field: "network_tx_bytes_per_second", cell: (row) => rate(row.network_tx_bytes_per_second), numeric: true },
            {
              label: "Disk used",
              field: "disk_used_bytes",
              cell: (row) =>
                row.disk_used_bytes === null || row.disk_total_bytes === null
                  ? "–"
                  : `${bytes(row.disk_used_bytes)} of ${bytes(row.disk_total_bytes)}`,
              numeric: true,
            },
            { label: "Samples", field: "samples", cell: (row) => String(row.samples), numeric: true },
            { label: "Last seen", field: "last_seen", cell: (row) => time(row.last_seen) },
          ],
          rows,
          (row) => row.host,
        ),
      );
    }),
  ];
  return {
    element: h("div", { class: "view", id: "view-overview" }, summary, chartBox, overTime, nodes, freshness),
    stop: () => {
      charted = undefined;
      stops.forEach((stop) => stop());
      chart?.destroy();
    },
  };
}

function card(label: string, value: string, name: string): HTMLElement {
  return h("div", { class: "card", "data-card": name }, h("div", { class: "card-label" }, label), h("div", { class: "card-value" }, value));
}
