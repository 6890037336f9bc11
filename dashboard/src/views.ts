// The three views of the initial bundle: the fleet overview, top processes and pods. Each
// subscribes to the data layer for what it shows, and draws again only when its answer
// changed (a 304 keeps the same object, so nothing is drawn).

import type { DashboardData, EntryState, Filters, HostOverallRow, PodRow, TopProcessRow } from "./data.js";
import { bytes, h, load, megabytes, percent, rate, replace, table, time } from "./dom.js";

/** What every view is given: the data layer, the page's filters, and the nodes seen. */
export interface ViewContext {
  data: DashboardData;
  window: string;
  /** Nodes seen in any answer so far, for the node filter. */
  nodes: Set<string>;
  /** Told every state of the view's data, for the page's notice. */
  report(state: EntryState): void;
}

/** A view on screen: its element and what removes it (unsubscribing). */
export interface View {
  element: HTMLElement;
  stop(): void;
}

/** Subscribes `draw` to `filters`, drawing only when the data object changes. */
function watch(context: ViewContext, filters: Filters, draw: (state: EntryState) => void): () => void {
  let drawn: unknown;
  return context.data.subscribe(filters, (state) => {
    context.report(state);
    for (const row of state.data?.host_overall_metrics?.rows ?? []) {
      context.nodes.add(row.host);
    }
    if (state.data !== drawn) {
      drawn = state.data;
      draw(state);
    }
  });
}

/** The fleet overview: a summary of every node, and one row per node. */
export function overview(context: ViewContext): View {
  const filters: Filters = { window: context.window };
  const summary = h("section", { class: "cards", "aria-label": "Fleet summary" });
  const freshness = h("p", { class: "muted", id: "freshness" });
  const nodes = h("section", { "aria-label": "Nodes" }, h("p", { class: "loading" }, "Loading…"));
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
    element: h("div", { class: "view", id: "view-overview" }, summary, nodes, freshness),
    stop: () => stops.forEach((stop) => stop()),
  };
}

function card(label: string, value: string, name: string): HTMLElement {
  return h("div", { class: "card", "data-card": name }, h("div", { class: "card-label" }, label), h("div", { class: "card-value" }, value));
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
  return {
    element: h("div", { class: "view", id: "view-processes" }, h("div", { class: "controls" }, ...metricButtons, nodeSelect), body),
    stop,
  };
}

/** Pods and their processes' CPU and memory, optionally in one namespace. */
export function pods(context: ViewContext, namespace: string, change: (namespace: string) => void): View {
  const filters: Filters = { window: context.window, namespace: namespace || undefined, limit: 100 };
  const body = h("section", { "aria-label": "Pods" }, h("p", { class: "loading" }, "Loading…"));
  let typing: number | undefined;
  const input = h("input", {
    id: "namespace-filter",
    type: "search",
    placeholder: "Namespace",
    "aria-label": "Namespace",
    value: namespace,
    onInput: (event) => {
      // Debounced: one request once typing pauses, not one per key.
      window.clearTimeout(typing);
      const value = (event.target as HTMLInputElement).value.trim();
      typing = window.setTimeout(() => change(value), 300);
    },
  });
  const stop = watch(context, filters, (state) => {
    const rows = state.data?.vm_metrics?.rows ?? [];
    const namespaces = new Map<string, PodRow[]>();
    for (const row of rows) {
      namespaces.set(row.namespace, [...(namespaces.get(row.namespace) ?? []), row]);
    }
    replace(
      body,
      ...(rows.length === 0 ? [h("p", { class: "empty" }, "No pods in this window.")] : []),
      ...[...namespaces.entries()]
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([name, pods]) =>
          h(
            "section",
            { class: "namespace", "data-namespace": name },
            h("h2", {}, name, h("span", { class: "muted" }, ` ${pods.length} pods, ${percent(pods.reduce((sum, pod) => sum + pod.cpu_usage_percent, 0))} CPU`)),
            table<PodRow>(
              `Pods in ${name}`,
              [
                { label: "Pod", field: "pod", cell: (row) => row.pod },
                { label: "Node", field: "host", cell: (row) => row.host },
                { label: "Processes", field: "processes", cell: (row) => String(row.processes), numeric: true },
                { label: "CPU", field: "cpu_usage_percent", cell: (row) => percent(row.cpu_usage_percent), numeric: true },
                { label: "Memory", field: "memory_usage_mb", cell: (row) => megabytes(row.memory_usage_mb), numeric: true },
                { label: "Last seen", field: "last_seen", cell: (row) => time(row.last_seen) },
              ],
              pods,
              (row) => `${row.namespace}/${row.pod}`,
            ),
          ),
        ),
    );
  });
  return {
    element: h("div", { class: "view", id: "view-pods" }, h("div", { class: "controls" }, input), body),
    stop: () => {
      window.clearTimeout(typing);
      stop();
    },
  };
}
