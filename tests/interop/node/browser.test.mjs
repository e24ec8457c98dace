// End-to-end test of the browser demo (examples/web/demo/, served by the
// broker's HTTP listener at /demo/): Debian's Chromium, driven by
// playwright-core, opens the page, which talks STOMP over WebSocket to /ws. A
// device publishes a reading with MQTT.js and the page shows it; the page sends
// a command and a pika consumer (examples/python/command_consumer.py, run with
// the repository's .venv Python) prints it.
//
// CHROMIUM names the browser executable (default /usr/bin/chromium; Debian's
// `apt-get install chromium`). Without one the test is skipped, unless
// JUNCTION_REQUIRE_BROWSER is set (scripts/test.sh and CI set it), when it
// fails instead. On a failure a screenshot of the page is kept in the test's
// temporary directory, named in the error.
//
// Every wait has a deadline and waits for what shows the step happened (the
// status text, a table row, a line printed by the consumer), never a sleep.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';
import {
  SHUTDOWN_TIMEOUT_MS, STARTUP_TIMEOUT_MS,
  startBroker, stopBroker, unique, withDeadline,
} from './broker.mjs';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const PYTHON = path.join(REPO_ROOT, '.venv', 'bin', 'python');
const COMMAND_CONSUMER = path.join(REPO_ROOT, 'examples', 'python', 'command_consumer.py');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const REQUIRED = Boolean(process.env.JUNCTION_REQUIRE_BROWSER);
/** Flags Chromium needs here: run as root, headless, and no connections of its own. */
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** The longest any single step may take (starting Chromium, a message, a line). */
const STEP_MS = 15_000;

const skip = existsSync(CHROMIUM) || REQUIRED
  ? false
  : `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`;

let broker;

before(async () => {
  if (skip) return;
  broker = await startBroker();
}, { timeout: STARTUP_TIMEOUT_MS + 5_000 });

after(async () => {
  if (broker) await stopBroker(broker);
}, { timeout: SHUTDOWN_TIMEOUT_MS * 2 + 5_000 });

/**
 * Runs a program and reads its standard output line by line: `line(pattern)`
 * resolves with the next line matching `pattern` (waiting up to `ms`), and
 * rejects if the program exits first; `stop()` ends it.
 */
function runLines(command, args, env) {
  const child = spawn(command, args, {
    env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines = [];
  const stderr = [];
  let seen = 0;
  /** The one pending `line()` call, if any: { pattern, resolve, reject }. */
  let waiter = null;
  let ended = null;
  const output = () => `stdout:\n${lines.join('\n')}\nstderr:\n${stderr.join('')}`;
  const check = () => {
    if (!waiter) return;
    while (seen < lines.length) {
      const text = lines[seen];
      seen += 1;
      if (waiter.pattern.test(text)) {
        const { resolve } = waiter;
        waiter = null;
        resolve(text);
        return;
      }
    }
    if (ended) {
      const { reject } = waiter;
      waiter = null;
      reject(new Error(`${command} ${ended}`));
    }
  };
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => stderr.push(chunk));
  const reader = createInterface({ input: child.stdout });
  reader.on('line', (text) => {
    lines.push(text);
    check();
  });
  const exited = new Promise((resolve) => {
    child.once('error', (err) => resolve(`could not start: ${err.message}`));
    // 'close' comes after the last line of output has been read.
    child.once('close', (code, signal) => resolve(`exited (${code ?? signal})`));
  });
  exited.then((why) => {
    ended = why;
    check();
  });
  return {
    /** Resolves with the next line that matches `pattern`. */
    line(pattern, what, ms = STEP_MS) {
      assert.equal(waiter, null, 'one line() at a time');
      const found = new Promise((resolve, reject) => {
        waiter = { pattern, resolve, reject };
        check();
      });
      return withDeadline(found, ms, what).catch((err) => {
        waiter = null;
        throw new Error(`${what}: ${err.message}\n${output()}`);
      });
    },
    async stop() {
      if (ended === null && child.pid) {
        child.kill('SIGTERM');
        await withDeadline(exited, STEP_MS, 'the consumer exiting').catch(() => child.kill('SIGKILL'));
      }
    },
  };
}

test('the demo page shows MQTT readings live and its commands reach a pika consumer', { skip, timeout: 90_000 }, async () => {
  if (!existsSync(CHROMIUM)) {
    assert.fail(`JUNCTION_REQUIRE_BROWSER is set but there is no Chromium at ${CHROMIUM}` +
      ' (apt-get install chromium, or set CHROMIUM)');
  }
  assert.ok(existsSync(PYTHON),
    `no Python at ${PYTHON}: create the virtualenv (scripts/test.sh does) to run the pika consumer`);
  const { chromium } = await import('playwright-core');

  const room = unique('room');
  const commandsQueue = unique('commands');
  const workDir = await mkdtemp(path.join(tmpdir(), 'junction-browser-'));
  const http = broker.listeners.http;
  const url = `http://127.0.0.1:${http.port}/demo/` +
    `?topic=sensors.${room}.%23&queue=${encodeURIComponent(commandsQueue)}`;

  const consumer = runLines(PYTHON, [COMMAND_CONSUMER, '--queue', commandsQueue, '--count', '2'],
    { AMQP_URL: `amqp://guest:guest@127.0.0.1:${broker.port}/%2F` });
  let browser;
  let page;
  let device;
  const pageLog = [];
  try {
    browser = await withDeadline(chromium.launch({
      executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: STEP_MS,
    }), STEP_MS + 5_000, 'starting Chromium');
    const context = await browser.newContext();
    page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on('console', (message) => pageLog.push(`console.${message.type()}: ${message.text()}`));
    page.on('pageerror', (err) => pageLog.push(`page error: ${err.message}`));

    const response = await page.goto(url);
    assert.equal(response.status(), 200, `GET ${url}`);
    await page.waitForFunction(
      () => document.getElementById('status')?.textContent === 'connected', null,
      { timeout: STEP_MS });
    assert.equal(await page.textContent('#status'), 'connected');

    await consumer.line(/^Waiting/, 'the command consumer getting ready');

    // The page sent its SUBSCRIBE when it said "connected", before anything
    // typed; the broker handles one connection's frames in order, so once the
    // consumer has the first command the page's subscription is bound, and a
    // reading published now cannot miss it.
    await page.fill('#command', 'fan on');
    await page.click('#send');
    assert.equal(await consumer.line(/^command: /, 'the first command in the pika consumer'),
      'command: fan on');
    assert.equal(await page.textContent('#sent'), 'sent: fan on');
    assert.equal(await page.inputValue('#command'), '', 'the form is cleared');

    // A device publishes a reading over MQTT (topic a/b/c is key a.b.c).
    device = await withDeadline(mqtt.connectAsync(`mqtt://127.0.0.1:${broker.listeners.mqtt.port}`, {
      protocolVersion: 4, clientId: unique('device'), username: 'guest', password: 'guest',
      reconnectPeriod: 0, connectTimeout: STEP_MS,
    }, false), STEP_MS, 'MQTT connect');
    device.on('error', () => {});
    const key = `sensors.${room}.kitchen`;
    await withDeadline(device.publishAsync(`sensors/${room}/kitchen`, '21.5', { qos: 1 }),
      STEP_MS, 'MQTT PUBLISH (qos 1)');
    await page.waitForFunction(({ key: k, reading }) => [...document.querySelectorAll('tr.reading')]
      .some((row) => row.children[0]?.textContent === k && row.children[1]?.textContent === reading),
    { key, reading: '21.5' }, { timeout: STEP_MS });
    // A reading outside the page's binding key is not shown; the next one in it is, on top.
    await withDeadline(device.publishAsync(`sensors/${unique('elsewhere')}/kitchen`, '99', { qos: 1 }),
      STEP_MS, 'MQTT PUBLISH elsewhere');
    await withDeadline(device.publishAsync(`sensors/${room}/hall/humidity`, '40%', { qos: 1 }),
      STEP_MS, 'MQTT PUBLISH (qos 1)');
    await page.waitForFunction(() => document.querySelectorAll('tr.reading').length >= 2, null,
      { timeout: STEP_MS });
    const rows = await page.$$eval('tr.reading',
      (all) => all.map((row) => [...row.children].map((cell) => cell.textContent)));
    assert.deepEqual(rows, [[`sensors.${room}.hall.humidity`, '40%'], [key, '21.5']]);

    // Then the user sends a second command.
    await page.fill('#command', 'window close');
    await page.click('#send');
    assert.equal(await consumer.line(/^command: /, 'the second command in the pika consumer'),
      'command: window close');
    await rm(workDir, { recursive: true, force: true });
  } catch (err) {
    let note = '';
    if (page) {
      const shot = path.join(workDir, 'failure.png');
      try {
        await page.screenshot({ path: shot, fullPage: true });
        note = `\nscreenshot: ${shot}`;
      } catch { /* the page is gone */ }
    }
    err.message += `${note}\npage log:\n${pageLog.join('\n')}`;
    throw err;
  } finally {
    if (device) await withDeadline(device.endAsync(true), STEP_MS, 'closing MQTT').catch(() => {});
    if (browser) await withDeadline(browser.close(), STEP_MS, 'closing Chromium').catch(() => {});
    await consumer.stop();
  }
});
