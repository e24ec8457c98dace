// End-to-end test of the web console (served by the broker's HTTP listener at
// /): Debian's Chromium, driven by playwright-core, logs in, watches a queue
// fill while a pika publisher (the repository's .venv Python) runs, purges it,
// and closes an MQTT.js connection from the connections page. It saves the
// screenshots the README shows under docs/images/.
//
// CHROMIUM and JUNCTION_REQUIRE_BROWSER work as in browser.test.mjs. Every wait
// has a deadline and waits for what the page shows, never a sleep.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';
import {
  SHUTDOWN_TIMEOUT_MS, STARTUP_TIMEOUT_MS,
  startBroker, stopBroker, unique, withDeadline,
} from './broker.mjs';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const PYTHON = path.join(REPO_ROOT, '.venv', 'bin', 'python');
const IMAGES = path.join(REPO_ROOT, 'docs', 'images');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const REQUIRED = Boolean(process.env.JUNCTION_REQUIRE_BROWSER);
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const STEP_MS = 15_000;
const MESSAGES = 300;

/** A pika publisher that sends MESSAGES messages to `queue`, a few per 10 ms. */
const PUBLISHER = `
import sys, time, pika
url, queue, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.queue_declare(queue, durable=True)
for i in range(count):
    channel.basic_publish("", queue, f"order {i}".encode(), pika.BasicProperties(delivery_mode=2))
    if i % 5 == 4:
        connection.sleep(0.01)
print("published", count, flush=True)
connection.close()
`;

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

function run(command, args) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk) => { output += chunk; });
  child.stderr.on('data', (chunk) => { output += chunk; });
  const done = new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve(output) : reject(new Error(`exit ${code}: ${output}`))));
  });
  return done;
}

/** The number the queue page shows for `label` (Ready, Total, ...). */
async function shown(page, label) {
  const text = await page.textContent(`[data-stat="${label}"]`);
  return Number(text.replaceAll(',', ''));
}

test('the console logs in, follows a queue filling, purges it and closes an MQTT connection', { skip, timeout: 120_000 }, async () => {
  if (!existsSync(CHROMIUM)) {
    assert.fail(`JUNCTION_REQUIRE_BROWSER is set but there is no Chromium at ${CHROMIUM}`);
  }
  assert.ok(existsSync(PYTHON), `no Python at ${PYTHON}: scripts/test.sh makes the virtualenv`);
  await mkdir(IMAGES, { recursive: true });
  const { chromium } = await import('playwright-core');
  const base = `http://127.0.0.1:${broker.listeners.http.port}`;
  const queue = unique('orders');
  let browser;
  let device;
  const pageLog = [];
  try {
    browser = await withDeadline(chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: STEP_MS }),
      STEP_MS + 5_000, 'starting Chromium');
    const page = await (await browser.newContext({ viewport: { width: 1360, height: 860 } })).newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on('pageerror', (err) => pageLog.push(`page error: ${err.message}`));
    page.on('dialog', (dialog) => dialog.accept());

    // A wrong password is refused on the login form.
    assert.equal((await page.goto(`${base}/`)).status(), 200);
    await page.fill('#username', 'guest');
    await page.fill('#password', 'wrong');
    await page.click('#login-button');
    await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('Login failed'));
    await page.fill('#password', 'guest');
    await page.click('#login-button');
    await page.waitForSelector('#totals');
    assert.match(await page.textContent('#who'), /guest/);

    // A pika publisher runs; the queues page shows the queue filling up.
    const publisher = run(PYTHON, ['-c', PUBLISHER, `amqp://guest:guest@127.0.0.1:${broker.port}/%2F`, queue, String(MESSAGES)]);
    await page.goto(`${base}/#queues`);
    const row = `tr[data-queue="${queue}"]`;
    await page.waitForSelector(row);
    const readyCell = `${row} td:nth-child(4)`;
    await page.waitForFunction((cell) => Number(document.querySelector(cell)?.textContent.replaceAll(',', '')) > 0, readyCell);
    const early = Number((await page.textContent(readyCell)).replaceAll(',', ''));
    assert.match(await withDeadline(publisher, 60_000, 'the pika publisher'), /published 300/);
    await page.waitForFunction(({ cell, count }) => Number(document.querySelector(cell)?.textContent.replaceAll(',', '')) === count,
      { cell: readyCell, count: MESSAGES });
    assert.ok(early <= MESSAGES, `the page showed ${early} while the publisher ran`);
    await page.screenshot({ path: path.join(IMAGES, 'console-queues.png') });

    // The queue's page: get one message back, then purge.
    await page.click(`${row} a`);
    await page.waitForSelector('[data-stat="Ready"]');
    assert.equal(await shown(page, 'Ready'), MESSAGES);
    await page.click('form.inline button[type="submit"]');
    await page.waitForSelector('#got pre.payload');
    assert.equal(await page.textContent('#got pre.payload'), 'order 0');
    await page.click('#purge');
    await page.waitForFunction(() => document.querySelector('[data-stat="Ready"]')?.textContent === '0');
    assert.equal(await shown(page, 'Total'), 0);

    // The overview's charts have seen the burst.
    await page.goto(`${base}/#overview`);
    await page.waitForSelector('svg.chart polyline');
    await page.waitForFunction(() => document.querySelectorAll('svg.chart polyline')[0].getAttribute('points').split(' ').length > 2);
    await page.screenshot({ path: path.join(IMAGES, 'console-overview.png'), fullPage: true });

    // An MQTT device connects; it is closed from the connections page.
    const clientId = unique('device');
    device = await withDeadline(mqtt.connectAsync(`mqtt://127.0.0.1:${broker.listeners.mqtt.port}`, {
      protocolVersion: 4, clientId, username: 'guest', password: 'guest', reconnectPeriod: 0, connectTimeout: STEP_MS,
    }, false), STEP_MS, 'MQTT connect');
    device.on('error', () => {});
    const closed = new Promise((resolve) => device.once('close', resolve));
    await page.goto(`${base}/#connections`);
    const mqttRow = 'tr[data-protocol="MQTT 3.1.1"]';
    await page.waitForSelector(mqttRow);
    assert.match(await page.textContent(mqttRow), new RegExp(clientId));
    await page.screenshot({ path: path.join(IMAGES, 'console-connections.png') });
    await page.click(`${mqttRow} button`);
    await withDeadline(closed, STEP_MS, 'the MQTT connection closing');
    await page.waitForFunction(() => !document.querySelector('tr[data-protocol="MQTT 3.1.1"]'));
    assert.deepEqual(pageLog, []);
  } finally {
    if (device) device.end(true);
    if (browser) await browser.close();
  }
});
