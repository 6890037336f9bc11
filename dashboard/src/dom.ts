// Small DOM helpers: elements built with text content only (never HTML from data), and the
// number formats the views share.

type Child = Node | string | number | null | undefined | false;

/** An element with attributes (`on*` functions become listeners) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Record<string, string | number | boolean | ((event: Event) => void) | undefined> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (typeof value === "function") {
      element.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else if (value !== undefined && value !== false) {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

/** Appends children, skipping the empty ones. */
export function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    parent.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
}

/** Replaces every child of `parent`. */
export function replace(parent: Node, ...children: Child[]): void {
  while (parent.firstChild) {
    parent.removeChild(parent.firstChild);
  }
  append(parent, children);
}

/** A percentage with one decimal. */
export function percent(value: number): string {
  return `${value.toFixed(1)} %`;
}

/** Megabytes, as MB or GB. */
export function megabytes(value: number): string {
  return value >= 1024 ? `${(value / 1024).toFixed(2)} GB` : `${value.toFixed(1)} MB`;
}

/** A rate in bytes per second, in B/s, KB/s, MB/s or GB/s (powers of 1024); a dash when unknown. */
export function rate(bytesPerSecond: number | null): string {
  return bytesPerSecond === null ? "–" : `${bytes(bytesPerSecond)}/s`;
}

/** Bytes in B, KB, MB, GB or TB (powers of 1024). */
export function bytes(value: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** A load average with two decimals. */
export function load(value: number): string {
  return value.toFixed(2);
}

/** The time of day of an ISO timestamp or clock milliseconds, in the browser's zone. */
export function time(value: string | number): string {
  return new Date(value).toLocaleTimeString();
}

/**
 * A table with a header row and one row per item; cells carry `data-field`. With an
 * `action`, each row ends with a button that runs it on the row.
 */
export function table<Row>(
  caption: string,
  columns: { label: string; field: string; cell: (row: Row) => string; numeric?: boolean }[],
  rows: Row[],
  key: (row: Row) => string,
  action?: { label: string; run: (row: Row) => void },
): HTMLTableElement {
  const width = columns.length + (action ? 1 : 0);
  return h(
    "table",
    { "aria-label": caption },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...columns.map((column) => h("th", { class: column.numeric ? "num" : undefined, scope: "col" }, column.label)),
        action && h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, action.label)),
      ),
    ),
    h(
      "tbody",
      {},
      ...(rows.length === 0
        ? [h("tr", {}, h("td", { colspan: width, class: "empty" }, "No data in this window."))]
        : rows.map((row) =>
            h(
              "tr",
              { "data-key": key(row) },
              ...columns.map((column) =>
                h("td", { class: column.numeric ? "num" : undefined, "data-field": column.field }, column.cell(row)),
              ),
              action && h("td", {}, h("button", { type: "button", class: "row-action", onClick: () => action.run(row) }, action.label)),
            ),
          )),
    ),
  );
}
