// `scripts/build-dashboard --check`: builds the dashboard into a temporary directory and
// fails when the committed query-service/dashboard-dist/ differs from it. The compressed
// files are compared by what they decompress to (and the manifest with their hashes
// masked), so that another zlib or brotli version, which may compress differently, does not
// fail the check; the query service's tests check those hashes against the bytes.
//
//   node check.mjs

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { brotliDecompressSync, gunzipSync } from "node:zlib";

const root = fileURLToPath(new URL(".", import.meta.url));
const committed = join(root, "../query-service/dashboard-dist");
const fresh = mkdtempSync(join(tmpdir(), "metricsstack-dashboard-check-"));
const files = (dir) =>
  readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath ?? entry.path, entry.name)))
    .sort();
const masked = (manifest) => manifest.replace(/(Variant \{ encoding: "\w+", sha256: )"[0-9a-f]+"/g, '$1"…"');
const differences = [];
try {
  execFileSync(process.execPath, [join(root, "build.mjs"), fresh], { stdio: ["ignore", "ignore", "inherit"] });
  const want = files(fresh);
  const have = files(committed);
  for (const name of want.filter((name) => !have.includes(name))) differences.push(`missing: ${name}`);
  for (const name of have.filter((name) => !want.includes(name))) differences.push(`not in a fresh build: ${name}`);
  for (const name of have.filter((name) => want.includes(name))) {
    const bytes = readFileSync(join(committed, name));
    let same;
    if (name.endsWith(".gz") || name.endsWith(".br")) {
      const plain = readFileSync(join(fresh, name.slice(0, -3)));
      const decompress = name.endsWith(".gz") ? gunzipSync : brotliDecompressSync;
      same = decompress(bytes).equals(plain);
    } else if (name === "manifest.rs") {
      same = masked(bytes.toString()) === masked(readFileSync(join(fresh, name), "utf8"));
    } else {
      same = bytes.equals(readFileSync(join(fresh, name)));
    }
    if (!same) differences.push(`differs: ${name}`);
  }
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
if (differences.length > 0) {
  console.error(differences.join("\n"));
  process.exit(1);
}
