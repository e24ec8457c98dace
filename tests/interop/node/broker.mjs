// Shared by the Node interop tests: starts the real Junction binary on
// ephemeral loopback ports with its own data directory, reads the addresses it
// prints (`listening <name> <host:port>` lines, then `ready`), and stops it.
//
// JUNCTION_BIN names the broker executable; the default is
// <repo>/target/debug/junction.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const JUNCTION_BIN = process.env.JUNCTION_BIN ?? path.join(REPO_ROOT, 'target', 'debug', 'junction');
export const STARTUP_TIMEOUT_MS = 20_000;
export const SHUTDOWN_TIMEOUT_MS = 10_000;
export const TEST_TIMEOUT_MS = 30_000;

/** Rejects after `ms` with `what` in the message, unless `promise` settles first. */
export function withDeadline(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** A name no other test (or run) uses. */
export function unique(role) {
  return `node-${role}-${randomUUID().slice(0, 8)}`;
}

/**
 * Starts the broker with all its listeners (AMQP, MQTT, STOMP, HTTP, and MQTT
 * and STOMP over WebSocket) on 127.0.0.1, port 0, and resolves once it has
 * printed `ready` with `{ child, dataDir, port, listeners, stderr }`: `port`
 * is the AMQP port, `listeners` maps each printed listener name (`amqp`,
 * `mqtt`, `stomp`, `http`, `web-mqtt`, `web-stomp`) to `{ host, port }`.
 * `args` are passed on after those (for example `['--config', file]`).
 */
export async function startBroker({ args = [] } = {}) {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'junction-node-'));
  const child = spawn(
    JUNCTION_BIN,
    ['--data-dir', dataDir, '--amqp', '127.0.0.1:0',
      '--mqtt', '127.0.0.1:0', '--stomp', '127.0.0.1:0', '--http', '127.0.0.1:0',
      '--web-stomp', '127.0.0.1:0', '--web-mqtt', '127.0.0.1:0', '--prometheus', '127.0.0.1:0', ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const stderr = [];
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => stderr.push(chunk));

  const ready = new Promise((resolve, reject) => {
    const listeners = {};
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      const words = line.trim().split(/\s+/);
      if (words[0] === 'listening' && words.length === 3) {
        const address = words[2];
        const colon = address.lastIndexOf(':');
        listeners[words[1]] = {
          host: address.slice(0, colon).replace(/^\[(.*)\]$/, '$1'),
          port: Number(address.slice(colon + 1)),
        };
      } else if (line.trim() === 'ready') {
        if (listeners.amqp) resolve(listeners);
        else reject(new Error('junction was ready without a "listening amqp" line'));
      }
    });
    child.once('error', (err) => reject(new Error(`cannot start ${JUNCTION_BIN}: ${err.message}` +
      ' (build it with `cargo build -p junction` or set JUNCTION_BIN)')));
    child.once('exit', (code, sig) => reject(new Error(
      `junction exited (${code ?? sig}) before "ready"; stderr:\n${stderr.join('')}`)));
  });

  try {
    const listeners = await withDeadline(ready, STARTUP_TIMEOUT_MS, 'junction startup');
    return { child, dataDir, port: listeners.amqp.port, listeners, stderr };
  } catch (err) {
    child.kill('SIGKILL');
    await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
}

/** SIGTERM, then SIGKILL if the broker has not exited within the shutdown timeout. */
export async function stopBroker({ child, dataDir }) {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    try {
      await withDeadline(exited, SHUTDOWN_TIMEOUT_MS, 'junction shutdown');
    } catch {
      child.kill('SIGKILL');
      await exited;
    }
  }
  await rm(dataDir, { recursive: true, force: true });
}
