// Interop tests: MQTT.js (MQTT 3.1.1, protocolVersion 4) against the real
// Junction binary, over TCP and over WebSocket (path /ws on the web-mqtt
// listener and on the HTTP listener), and crossing to AMQP with amqplib (an
// MQTT topic a/b is the routing key a.b on amq.topic).
//
// One broker is started for the whole file (broker.mjs). Every test uses its
// own client ids and topics, every wait has a deadline, and a test never
// sleeps to wait for something: it waits for the message or acknowledgement
// that shows it happened.
//
// Run with `npm test` in this directory (after `npm install`). JUNCTION_BIN
// names the broker executable; the default is <repo>/target/debug/junction.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import mqtt from 'mqtt';
import amqp from 'amqplib';
import {
  SHUTDOWN_TIMEOUT_MS, STARTUP_TIMEOUT_MS, TEST_TIMEOUT_MS,
  startBroker, stopBroker, unique, withDeadline,
} from './broker.mjs';

/** The longest any single step (connect, subscribe, a message) may take. */
const STEP_MS = 10_000;

let broker;
/** Open MQTT clients and AMQP connections, closed after each test. */
let clients = [];
let amqpConnections = [];

before(async () => {
  broker = await startBroker();
  for (const name of ['mqtt', 'http', 'web-mqtt']) {
    assert.ok(broker.listeners[name], `junction printed no "listening ${name}" line`);
  }
}, { timeout: STARTUP_TIMEOUT_MS + 5_000 });

afterEach(async () => {
  const open = clients;
  clients = [];
  await Promise.all(open.map((client) =>
    withDeadline(client.endAsync(true), STEP_MS, 'closing an MQTT client').catch(() => {})));
  const connections = amqpConnections;
  amqpConnections = [];
  for (const connection of connections) {
    try { await connection.close(); } catch { /* already closed */ }
  }
});

after(async () => {
  if (broker) await stopBroker(broker);
}, { timeout: SHUTDOWN_TIMEOUT_MS * 2 + 5_000 });

/** The broker URL of each way in: MQTT over TCP, and over WebSocket on both listeners. */
const TRANSPORTS = {
  tcp: () => `mqtt://127.0.0.1:${broker.listeners.mqtt.port}`,
  'ws (web-mqtt)': () => `ws://127.0.0.1:${broker.listeners['web-mqtt'].port}/ws`,
  'ws (http)': () => `ws://127.0.0.1:${broker.listeners.http.port}/ws`,
};

/**
 * Connects an MQTT 3.1.1 client as guest (no automatic reconnect); the client
 * is closed after the test. Resolves once CONNACK has arrived.
 */
async function connectMqtt(url, { clientId = unique('client'), ...options } = {}) {
  const client = await withDeadline(mqtt.connectAsync(url, {
    protocolVersion: 4,
    clientId,
    username: 'guest',
    password: 'guest',
    clean: true,
    keepalive: 30,
    reconnectPeriod: 0,
    connectTimeout: STEP_MS,
    ...options,
  }, false), STEP_MS, `MQTT connect to ${url}`);
  clients.push(client);
  // An 'error' event with no listener would throw; the tests look at what
  // they expect instead (messages, acknowledgements, closes).
  client.on('error', () => {});
  return client;
}

/** Subscribes, resolving with the granted QoS of each filter. */
async function subscribe(client, filter, qos) {
  const granted = await withDeadline(client.subscribeAsync(filter, { qos }), STEP_MS,
    `SUBSCRIBE ${filter}`);
  return granted.map((g) => g.qos);
}

/**
 * Publishes and resolves once the broker has acknowledged (PUBACK for QoS 1,
 * PUBCOMP for QoS 2; QoS 0 once written).
 */
async function publish(client, topic, payload, options = {}) {
  await withDeadline(client.publishAsync(topic, payload, options), STEP_MS,
    `PUBLISH ${topic} (qos ${options.qos ?? 0})`);
}

/**
 * Buffers a client's incoming messages; `next()` resolves with the next one
 * as `{ topic, payload, qos, retain, dup }` or rejects after `ms`.
 */
function inbox(client) {
  const queued = [];
  const waiting = [];
  client.on('message', (topic, payload, packet) => {
    const message = {
      topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain, dup: packet.dup,
    };
    const waiter = waiting.shift();
    if (waiter) waiter(message);
    else queued.push(message);
  });
  return {
    next(what = 'an MQTT message', ms = STEP_MS) {
      if (queued.length > 0) return Promise.resolve(queued.shift());
      let resolve;
      const arrived = new Promise((r) => { resolve = r; });
      waiting.push(resolve);
      return withDeadline(arrived, ms, what).catch((err) => {
        // A waiter that timed out must not swallow a later message.
        const at = waiting.indexOf(resolve);
        if (at >= 0) waiting.splice(at, 1);
        throw err;
      });
    },
  };
}

/** Opens an AMQP connection (closed after the test) and a channel on it. */
async function amqpChannel() {
  const connection = await withDeadline(
    amqp.connect(`amqp://guest:guest@127.0.0.1:${broker.port}`), STEP_MS, 'AMQP connect');
  amqpConnections.push(connection);
  return connection.createChannel();
}

/** Resolves with the next delivery of `queue` (acked), or rejects after `ms`. */
async function amqpNext(channel, queue, what, ms = STEP_MS) {
  let consumerTag;
  const arrived = new Promise((resolve) => {
    channel.consume(queue, (msg) => {
      if (msg === null) return;
      channel.ack(msg);
      resolve(msg);
    }).then((ok) => { consumerTag = ok.consumerTag; });
  });
  try {
    return await withDeadline(arrived, ms, what);
  } finally {
    if (consumerTag) await channel.cancel(consumerTag);
  }
}

for (const [transport, url] of Object.entries(TRANSPORTS)) {
  for (const qos of [0, 1, 2]) {
    test(`QoS ${qos} publish and subscribe over ${transport}`, { timeout: TEST_TIMEOUT_MS }, async () => {
      const topic = `${unique(`qos${qos}`)}/round/trip`;
      const subscriber = await connectMqtt(url());
      const messages = inbox(subscriber);
      assert.deepEqual(await subscribe(subscriber, topic, qos), [qos]);

      const publisher = await connectMqtt(url());
      const bodies = ['one', 'two', 'three'];
      for (const body of bodies) await publish(publisher, topic, body, { qos });
      // A last message: what arrives before it is everything that was sent,
      // so a duplicate (a QoS 2 message delivered twice) would show here.
      await publish(publisher, topic, 'end', { qos });

      const received = [];
      for (let i = 0; i < bodies.length + 1; i += 1) {
        received.push(await messages.next(`message ${i} on ${topic}`));
      }
      assert.deepEqual(received.map((m) => m.payload), [...bodies, 'end']);
      for (const message of received) {
        assert.equal(message.topic, topic);
        assert.equal(message.qos, qos, 'delivered at the QoS published and granted');
        assert.equal(message.retain, false, 'a live delivery is not flagged retained');
        assert.equal(message.dup, false);
      }
    });
  }
}

test('a delivery goes out at the lower of the published and the granted QoS', { timeout: TEST_TIMEOUT_MS }, async () => {
  const url = TRANSPORTS.tcp();
  const base = unique('downgrade');
  const subscriber = await connectMqtt(url);
  const messages = inbox(subscriber);
  assert.deepEqual(await subscribe(subscriber, `${base}/granted1`, 1), [1]);
  assert.deepEqual(await subscribe(subscriber, `${base}/granted2`, 2), [2]);

  const publisher = await connectMqtt(url);
  await publish(publisher, `${base}/granted1`, 'published at 2', { qos: 2 });
  await publish(publisher, `${base}/granted2`, 'published at 0', { qos: 0 });
  await publish(publisher, `${base}/granted2`, 'published at 1', { qos: 1 });

  const got = [];
  for (let i = 0; i < 3; i += 1) got.push(await messages.next());
  assert.deepEqual(got.map((m) => [m.payload, m.qos]), [
    ['published at 2', 1],
    ['published at 0', 0],
    ['published at 1', 1],
  ]);
});

test('TCP and both WebSocket listeners share one broker: a message crosses them', { timeout: TEST_TIMEOUT_MS }, async () => {
  const topic = `${unique('across')}/all`;
  const inboxes = [];
  for (const url of Object.values(TRANSPORTS)) {
    const subscriber = await connectMqtt(url());
    inboxes.push(inbox(subscriber));
    await subscribe(subscriber, topic, 1);
  }
  for (const [name, url] of Object.entries(TRANSPORTS)) {
    const publisher = await connectMqtt(url());
    await publish(publisher, topic, `from ${name}`, { qos: 1 });
  }
  for (const messages of inboxes) {
    const got = [];
    for (let i = 0; i < 3; i += 1) got.push((await messages.next()).payload);
    assert.deepEqual(got, Object.keys(TRANSPORTS).map((name) => `from ${name}`));
  }
});

test('a retained message reaches a later subscriber with the retain flag', { timeout: TEST_TIMEOUT_MS }, async () => {
  const url = TRANSPORTS.tcp();
  const topic = `${unique('retained')}/status`;
  const publisher = await connectMqtt(url);
  const live = await connectMqtt(url);
  const liveMessages = inbox(live);
  await subscribe(live, topic, 1);

  await publish(publisher, topic, 'online', { qos: 1, retain: true });
  const forLive = await liveMessages.next('the retained publication, live');
  assert.equal(forLive.payload, 'online');
  assert.equal(forLive.retain, false, 'a subscriber that was already there gets it unflagged');

  // A subscriber that comes later gets it right after its SUBACK, flagged.
  for (const [name, later] of Object.entries(TRANSPORTS)) {
    const subscriber = await connectMqtt(later());
    const messages = inbox(subscriber);
    assert.deepEqual(await subscribe(subscriber, topic, 1), [1]);
    const retained = await messages.next(`the retained message over ${name}`);
    assert.equal(retained.topic, topic);
    assert.equal(retained.payload, 'online');
    assert.equal(retained.retain, true, `flagged retained over ${name}`);
    assert.equal(retained.qos, 1);
  }
  // A wildcard subscription finds it too.
  const wildcard = await connectMqtt(url);
  const wildcardMessages = inbox(wildcard);
  await subscribe(wildcard, `${topic.split('/')[0]}/+`, 0);
  const viaWildcard = await wildcardMessages.next('the retained message through a wildcard');
  assert.deepEqual([viaWildcard.topic, viaWildcard.payload, viaWildcard.retain, viaWildcard.qos],
    [topic, 'online', true, 0]);

  // An empty retained publication clears it: a new subscriber's first
  // message is then the next live one.
  await publish(publisher, topic, '', { qos: 1, retain: true });
  const after = await connectMqtt(url);
  const afterMessages = inbox(after);
  await subscribe(after, topic, 1);
  await publish(publisher, topic, 'live', { qos: 1 });
  const first = await afterMessages.next('the first message after clearing');
  assert.deepEqual([first.payload, first.retain], ['live', false]);
});

test('the last will is published when a client goes away without DISCONNECT', { timeout: TEST_TIMEOUT_MS }, async () => {
  const url = TRANSPORTS.tcp();
  const topic = `${unique('will')}/status`;
  const watcher = await connectMqtt(url);
  const messages = inbox(watcher);
  await subscribe(watcher, topic, 1);

  // A client that says DISCONNECT: its will is discarded.
  const polite = await connectMqtt(url, {
    will: { topic, payload: Buffer.from('polite gone'), qos: 1, retain: false },
  });
  await withDeadline(polite.endAsync(false), STEP_MS, 'DISCONNECT');

  // end(true) destroys the socket without sending DISCONNECT.
  for (const [name, way] of Object.entries(TRANSPORTS)) {
    const device = await connectMqtt(way(), {
      will: { topic, payload: Buffer.from(`lost over ${name}`), qos: 1, retain: false },
    });
    await withDeadline(device.endAsync(true), STEP_MS, 'dropping the connection');
    const will = await messages.next(`the will of the client over ${name}`);
    assert.equal(will.topic, topic);
    assert.equal(will.payload, `lost over ${name}`,
      'the will of the client that sent DISCONNECT was not published');
    assert.equal(will.qos, 1);
    assert.equal(will.retain, false);
  }
});

test('a retained will is kept for later subscribers', { timeout: TEST_TIMEOUT_MS }, async () => {
  const url = TRANSPORTS.tcp();
  const topic = `${unique('will-retained')}/status`;
  const device = await connectMqtt(url, {
    will: { topic, payload: Buffer.from('offline'), qos: 1, retain: true },
  });
  const watcher = await connectMqtt(url);
  const messages = inbox(watcher);
  await subscribe(watcher, topic, 1);
  device.stream.destroy();
  const will = await messages.next('the will');
  assert.equal(will.payload, 'offline');

  const later = await connectMqtt(url);
  const laterMessages = inbox(later);
  await subscribe(later, topic, 1);
  const retained = await laterMessages.next('the retained will');
  assert.deepEqual([retained.payload, retained.retain], ['offline', true]);
  // Clean up the retained message.
  await publish(watcher, topic, '', { qos: 1, retain: true });
});

test('amqplib publishes to amq.topic and an MQTT.js subscriber receives it', { timeout: TEST_TIMEOUT_MS }, async () => {
  const base = unique('amqp-to-mqtt');
  const subscriber = await connectMqtt(TRANSPORTS.tcp());
  const messages = inbox(subscriber);
  await subscribe(subscriber, `${base}/k`, 1);
  await subscribe(subscriber, `${base}/+/wild`, 1);

  const channel = await amqpChannel();
  channel.publish('amq.topic', `${base}.k`, Buffer.from('persistent'), { persistent: true });
  channel.publish('amq.topic', `${base}.k`, Buffer.from('transient'));
  channel.publish('amq.topic', `${base}.x.wild`, Buffer.from('through +'), { persistent: true });

  const got = [];
  for (let i = 0; i < 3; i += 1) got.push(await messages.next());
  assert.deepEqual(got.map((m) => [m.topic, m.payload, m.qos]), [
    [`${base}/k`, 'persistent', 1],
    [`${base}/k`, 'transient', 0],
    [`${base}/x/wild`, 'through +', 1],
  ]);
});

test('an MQTT.js publish reaches an amqplib queue bound to amq.topic', { timeout: TEST_TIMEOUT_MS }, async () => {
  const base = unique('mqtt-to-amqp');
  const channel = await amqpChannel();
  const { queue } = await channel.assertQueue('', { exclusive: true });
  await channel.bindQueue(queue, 'amq.topic', `${base}.#`);

  const publisher = await connectMqtt(TRANSPORTS['ws (web-mqtt)']());
  await publish(publisher, `${base}/k`, 'at least once', { qos: 1 });
  const first = await amqpNext(channel, queue, 'the QoS 1 publication in the AMQP queue');
  assert.equal(first.fields.exchange, 'amq.topic');
  assert.equal(first.fields.routingKey, `${base}.k`);
  assert.equal(first.content.toString(), 'at least once');
  assert.equal(first.properties.deliveryMode, 2, 'QoS 1 messages are persistent');
  assert.equal(first.properties.headers['x-mqtt-publish-qos'], 1);

  // A '.' in an MQTT topic is a '/' in the routing key (and back).
  await publish(publisher, `${base}/v1.2/x`, 'at most once', { qos: 0 });
  const second = await amqpNext(channel, queue, 'the QoS 0 publication in the AMQP queue');
  assert.equal(second.fields.routingKey, `${base}.v1/2.x`);
  assert.equal(second.content.toString(), 'at most once');
  assert.notEqual(second.properties.deliveryMode, 2, 'QoS 0 messages are transient');
  assert.equal(second.properties.headers['x-mqtt-publish-qos'], 0);
});
