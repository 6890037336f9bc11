// Pods per namespace (loaded when first opened), filtered by namespace as one types.

import type { EntryState, Filters, PodRow } from "./data.js";
import { h, megabytes, percent, replace, table, time } from "./dom.js";
import { type View, type ViewContext, watch } from "./views.js";

/**
 * Pods and their processes' CPU and memory, optionally in one namespace. A new namespace is
 * watched in place (the input keeps its focus); `change` is told it.
 */
export function pods(context: ViewContext, namespace: string, change: (namespace: string) => void): View {
  const filters = (namespace: string): Filters => ({ window: context.window, namespace: namespace || undefined, limit: 100 });
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
      typing = window.setTimeout(() => {
        if (value !== namespace) {
          namespace = value;
          change(value);
          stop();
          stop = watch(context, filters(value), draw);
        }
      }, 300);
    },
  });
  const draw = (state: EntryState) => {
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
  };
  let stop = watch(context, filters(namespace), draw);
  return {
    element: h("div", { class: "view", id: "view-pods" }, h("div", { class: "controls" }, input), body),
    stop: () => {
      window.clearTimeout(typing);
      stop();
    },
  };
}
