// Top processes (loaded when first opened): ranked by CPU or memory over the window, with
// the CPU peak, optionally on one node; and the search over command lines (debounced: one
// request once typing pauses).

import { type Filters, type Part, type ProcessMatchRow, RefreshFailure, type TopProcessRow } from "./data.js";
import { h, megabytes, percent, replace, table, time } from "./dom.js";
import { type View, type ViewContext, watch } from "./views.js";

/** How long typing must pause before the search is asked. */
const SEARCH_PAUSE_MS = 300;
/** The text searched last, kept while the view is opened again with other filters. */
let searched = "";

/** The search box and its results: processes whose command line or name holds the text. */
function search(context: ViewContext, host: string): { element: HTMLElement; stop(): void } {
  const results = h("section", { id: "search-results", "aria-label": "Search results", "aria-live": "polite" });
  let ticket = 0;
  const run = (text: string) => {
    searched = text;
    const mine = ++ticket;
    if (!text) {
      replace(results);
      return;
    }
    context.data
      .get<Part<ProcessMatchRow>>("/api/process-search", { q: text, window: context.window, host: host || undefined, limit: 50 })
      .then(
        (answer) => {
          if (mine !== ticket) return;
          replace(
            results,
            h("h2", {}, `Processes matching “${text}”`, h("span", { class: "muted" }, ` ${answer.rows.length} at their latest sample, last ${context.window}`)),
            table<ProcessMatchRow>(
              `Processes matching ${text}`,
              [
                { label: "Node", field: "host", cell: (row) => row.host },
                { label: "PID", field: "pid", cell: (row) => String(row.pid), numeric: true },
                { label: "Process", field: "process_name", cell: (row) => row.process_name },
                { label: "Command line", field: "command_line", cell: (row) => row.command_line ?? "–" },
                { label: "CPU", field: "cpu_usage_percent", cell: (row) => percent(row.cpu_usage_percent), numeric: true },
                { label: "CPU peak", field: "cpu_peak_percent", cell: (row) => percent(row.cpu_peak_percent), numeric: true },
                { label: "Memory", field: "memory_usage_mb", cell: (row) => megabytes(row.memory_usage_mb), numeric: true },
                { label: "Seen", field: "timestamp", cell: (row) => time(row.timestamp) },
              ],
              answer.rows,
              (row) => `${row.host}/${row.pid}/${row.start_time}`,
            ),
          );
        },
        (error: unknown) => {
          if (mine !== ticket) return;
          const message = error instanceof RefreshFailure ? error.detail.message : String(error);
          replace(results, h("p", { class: "failed" }, `The search failed: ${message}`));
        },
      );
  };
  const debounced = context.data.debounce<string>(SEARCH_PAUSE_MS, run);
  const input = h("input", {
    id: "process-search",
    type: "search",
    placeholder: "Search command lines",
    "aria-label": "Search command lines",
    value: searched,
    onInput: (event) => debounced.call((event.target as HTMLInputElement).value.trim()),
  });
  if (searched) run(searched);
  return { element: h("div", { class: "search" }, input, results), stop: () => debounced.cancel() };
}

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
  const finder = search(context, host);
  return {
    element: h("div", { class: "view", id: "view-processes" }, finder.element, h("div", { class: "controls" }, ...metricButtons, nodeSelect), body),
    stop: () => {
      finder.stop();
      stop();
    },
  };
}
