// Interop tests over TLS: MQTT.js over wss:// (web-mqtts) and mqtts://,
// @stomp/stompjs over wss:// (web-stomps) and amqplib over amqps://, each
// trusting only the throwaway CA that junction-test-certs (rcgen) makes for
// this run, and logging in by its client certificate (certificate login) or a
// password. No private key is committed.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import amqp from 'amqplib';
import mqtt from 'mqtt';
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';
import {
  JUNCTION_BIN, SHUTDOWN_TIMEOUT_MS, STARTUP_TIMEOUT_MS, TEST_TIMEOUT_MS,
  startBroker, stopBroker, unique, withDeadline,
} from './broker.mjs';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const STEP_MS = 10_000;
let broker;
let dir;
let tls;

/** junction-test-certs, built beside the broker binary by cargo build --workspace. */
function certsTool() {
  return process.env.JUNCTION_TEST_CERTS
    ?? path.join(path.dirname(JUNCTION_BIN), 'junction-test-certs');
}

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'junction-node-tls-'));
  let tool = certsTool();
  try {
    execFileSync(tool, [dir, 'device-7']);
  } catch {
    tool = path.join(REPO_ROOT, 'target', 'debug', 'junction-test-certs');
    execFileSync(tool, [dir, 'device-7']);
  }
  const config = path.join(dir, 'tls.toml');
  await writeFile(config, `
[tls]
certfile = "server.pem"
keyfile = "server.key"
cacertfile = "ca.pem"
verify_peer = true
ssl_cert_login = true

# Without a user name only the certificate can log an MQTT client in.
[mqtt]
allow_anonymous = false

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]

[[users]]
name = "device-7"
password = "unused"
permissions = [{ vhost = "/", configure = ".*", write = ".*", read = ".*" }]
`);
  tls = {
    ca: await readFile(path.join(dir, 'ca.pem')),
    cert: await readFile(path.join(dir, 'device-7.pem')),
    key: await readFile(path.join(dir, 'device-7.key')),
  };
  broker = await startBroker({
    args: ['--config', config, '--amqps', '127.0.0.1:0', '--mqtts', '127.0.0.1:0',
      '--web-mqtts', '127.0.0.1:0', '--web-stomps', '127.0.0.1:0', '--https', '127.0.0.1:0'],
  });
}, { timeout: STARTUP_TIMEOUT_MS + 5_000 });

after(async () => {
  if (broker) await stopBroker(broker);
  if (dir) await rm(dir, { recursive: true, force: true });
}, { timeout: SHUTDOWN_TIMEOUT_MS * 2 + 5_000 });

/** Connects MQTT.js to `url` with the client certificate and no user name. */
async function mqttByCertificate(url) {
  return withDeadline(mqtt.connectAsync(url, {
    ...tls, servername: 'localhost', clientId: unique('tls'), reconnectPeriod: 0,
    connectTimeout: STEP_MS, wsOptions: { ...tls, servername: 'localhost' },
  }), STEP_MS, `MQTT.js connect to ${url}`);
}

for (const [name, url] of [
  ['wss:// (web-mqtts)', () => `wss://localhost:${broker.listeners['web-mqtts'].port}/ws`],
  ['wss:// (https)', () => `wss://localhost:${broker.listeners.https.port}/ws`],
  ['mqtts://', () => `mqtts://localhost:${broker.listeners.mqtts.port}`],
]) {
  test(`MQTT.js over ${name} logs in by its certificate and gets its own message`, { timeout: TEST_TIMEOUT_MS }, async () => {
    const client = await mqttByCertificate(url());
    try {
      const topic = `tls/${unique('t')}`;
      const received = new Promise((resolve) => client.on('message', (t, payload) => resolve(payload.toString())));
      await client.subscribeAsync(topic, { qos: 1 });
      await client.publishAsync(topic, 'over wss', { qos: 1 });
      assert.equal(await withDeadline(received, STEP_MS, 'the message'), 'over wss');
    } finally {
      await client.endAsync(true);
    }
  });
}

test('stompjs over wss:// (web-stomps) logs in by its certificate', { timeout: TEST_TIMEOUT_MS }, async () => {
  const client = new Client({
    webSocketFactory: () => new WebSocket(
      `wss://localhost:${broker.listeners['web-stomps'].port}/ws`, ['v12.stomp'], { ...tls, servername: 'localhost' }),
    connectHeaders: { host: '/' },
    reconnectDelay: 0,
    debug: () => {},
  });
  const connected = new Promise((resolve, reject) => {
    client.onConnect = resolve;
    client.onStompError = (frame) => reject(new Error(frame.headers.message));
  });
  client.activate();
  try {
    await withDeadline(connected, STEP_MS, 'CONNECTED over wss');
    const destination = `/queue/${unique('q')}`;
    const received = new Promise((resolve) => client.subscribe(destination, (message) => resolve(message.body)));
    client.publish({ destination, body: 'hello over wss' });
    assert.equal(await withDeadline(received, STEP_MS, 'the message'), 'hello over wss');
  } finally {
    await client.deactivate();
  }
});

test('amqplib over amqps:// with a password, trusting only the test CA', { timeout: TEST_TIMEOUT_MS }, async () => {
  const connection = await amqp.connect(
    `amqps://guest:guest@localhost:${broker.listeners.amqps.port}`, { ca: [tls.ca], servername: 'localhost' });
  try {
    const channel = await connection.createChannel();
    const { queue } = await channel.assertQueue('', { exclusive: true });
    channel.sendToQueue(queue, Buffer.from('over amqps'));
    let message = false;
    const deadline = Date.now() + STEP_MS;
    while (!message && Date.now() < deadline) message = await channel.get(queue, { noAck: true });
    assert.equal(message.content.toString(), 'over amqps');
  } finally {
    await connection.close();
  }
});

test('a client that does not trust the server certificate is not let in', { timeout: TEST_TIMEOUT_MS }, async () => {
  await assert.rejects(amqp.connect(`amqps://guest:guest@localhost:${broker.listeners.amqps.port}`));
});
