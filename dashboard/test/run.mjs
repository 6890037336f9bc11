// `npm test`: compiles the TypeScript sources and tests (esbuild, file by file, so that line
// numbers stay close to the sources) into a temporary directory, runs them with node's test
// runner and its line coverage, and fails when the data layer's line coverage is below 90 %.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildSync } from "esbuild";

const MIN_LINE_COVERAGE = 90;
const root = fileURLToPath(new URL("..", import.meta.url));
const out = mkdtempSync(join(tmpdir(), "metricsstack-dashboard-test-"));
try {
  const tests = readdirSync(join(root, "test")).filter((name) => name.endsWith(".ts"));
  buildSync({
    entryPoints: [join(root, "src/data.ts"), ...tests.map((name) => join(root, "test", name))],
    outbase: root,
    outdir: out,
    format: "esm",
    platform: "node",
    target: "node20",
    logLevel: "warning",
  });
  const testFiles = tests.filter((name) => name.endsWith(".test.ts")).map((name) => join(out, "test", name.replace(/\.ts$/, ".js")));
  const run = spawnSync(process.execPath, ["--test", "--experimental-test-coverage", ...testFiles], {
    encoding: "utf8",
    cwd: out,
  });
  process.stdout.write(run.stdout);
  process.stderr.write(run.stderr);
  if (run.status !== 0) {
    process.exit(run.status ?? 1);
  }
  const row = run.stdout.split("\n").find((line) => /\bsrc\/data\.js\s*\|/.test(line));
  const lines = row && Number.parseFloat(row.split("|")[1]);
  if (!(lines >= MIN_LINE_COVERAGE)) {
    console.error(`src/data.ts line coverage ${lines ?? "unknown"} % is below ${MIN_LINE_COVERAGE} %`);
    process.exit(1);
  }
  console.log(`src/data.ts line coverage: ${lines} % (at least ${MIN_LINE_COVERAGE} % required)`);
} finally {
  rmSync(out, { recursive: true, force: true });
}
