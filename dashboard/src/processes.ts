// Top processes (loaded when first opened): ranked by CPU or memory over the window, with
// the CPU peak, optionally on one node.

import type { Filters, TopProcessRow } from "./data.js";
import { h, megabytes, percent, replace, table } from "./dom.js";
import { type View, type ViewContext, watch } from "./views.js";

/** Processes ranked by CPU or memory over the window, optionally on one node. */
export function processes(context: ViewContext, metric: "cpu" | "memory", host: string, change: (metric: "cpu" | "memory", host: string) => void): View {
  const filters: Filters = { window: context.window, metric, host: host || undefined };
  const body = h("section", { "aria-label": "Top processes" }, h("p", { class: "loading" }, "Loading…"));
  const nodeSelect = h(
    "select",
    { id: "node-filter", "aria-label": "Node", onChange: (event) => change(metric, (event.target as HTMLSelectElement).value) },
    h("option", { value: "" }, "All nodes"),
    ...[...context.nodes].sort().map((node) => h("option", { value: node, selected: node === host }, node)),
  );
  const metricButtons = (["cpu", "memory"] as const).map((each) =>
    h("button", { type: "button", class: "toggle", "aria-pressed": String(each === metric), onClick: () => change(each, host) }, each === "cpu" ? "By CPU" : "By memory"),
  );
  const stop = watch(context, filters, (state) => {
    for (const row of state.data?.top_processes?.rows ?? []) {
      if (!context.nodes.has(row.host)) {
        context.nodes.add(row.host);
        nodeSelect.appendChild(h("option", { value: row.host }, row.host));
      }
    }
    replace(
      body,
      table<TopProcessRow>(
        "Top processes",
        [
          { label: "Node", field: "host", cell: (row) => row.host },
          { label: "Process", field: "process_name", cell: (row) => row.process_name },
          { label: "CPU avg", field: "avg_cpu", cell: (row) => percent(row.avg_cpu), numeric: true },
          { label: "CPU peak", field: "max_cpu", cell: (row) => percent(row.max_cpu), numeric: true },
          { label: "Memory avg", field: "avg_memory_mb", cell: (row) => megabytes(row.avg_memory_mb), numeric: true },
          { label: "Memory peak", field: "max_memory_mb", cell: (row) => megabytes(row.max_memory_mb), numeric: true },
          { label: "Samples", field: "samples", cell: (row) => String(row.samples), numeric: true },
        ],
        state.data?.top_processes?.rows ?? [],
        (row) => `${row.host}/${row.process_name}`,
      ),
    );
  });
  return {
    element: h("div", { class: "view", id: "view-processes" }, h("div", { class: "controls" }, ...metricButtons, nodeSelect), body),
    stop,
  };
}
