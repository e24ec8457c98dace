// Interop tests: @stomp/stompjs 7 against the real Junction binary, over TCP
// (the stomp listener, through @stomp/tcp-wrapper) and over WebSocket (path
// /ws on the web-stomp listener and on the HTTP listener, with the `ws`
// package: Node 20 has no global WebSocket), and crossing to AMQP (amqplib)
// and MQTT (MQTT.js). Destinations are RabbitMQ's: /queue/N is queue N through
// the default exchange, /topic/K is amq.topic with key K, /exchange/X/K is
// exchange X, /amq/queue/N an existing queue, /temp-queue/N a reply queue of
// the connection.
//
// One broker is started for the whole file (broker.mjs). Every test uses its
// own queue, topic and subscription names, every wait has a deadline, and a
// test never sleeps to wait for something: it waits for the message or
// RECEIPT that shows it happened (a SUBSCRIBE with a receipt header is
// answered once its queue is bound, so a publish after it cannot miss it).
//
// Run with `npm test` in this directory (after `npm install`). JUNCTION_BIN
// names the broker executable; the default is <repo>/target/debug/junction.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client, Versions } from '@stomp/stompjs';
import { TCPWrapper } from '@stomp/tcp-wrapper';
import WebSocket from 'ws';
import amqp from 'amqplib';
import mqtt from 'mqtt';
import {
  SHUTDOWN_TIMEOUT_MS, STARTUP_TIMEOUT_MS, TEST_TIMEOUT_MS,
  startBroker, stopBroker, unique, withDeadline,
} from './broker.mjs';

/** The longest any single step (connect, subscribe, a message) may take. */
const STEP_MS = 10_000;

let broker;
/** Open STOMP clients, MQTT clients and AMQP connections, closed after each test. */
let stompClients = [];
let mqttClients = [];
let amqpConnections = [];

before(async () => {
  broker = await startBroker();
  for (const name of ['stomp', 'http', 'web-stomp', 'mqtt']) {
    assert.ok(broker.listeners[name], `junction printed no "listening ${name}" line`);
  }
}, { timeout: STARTUP_TIMEOUT_MS + 5_000 });

afterEach(async () => {
  const stomp = stompClients;
  stompClients = [];
  await Promise.all(stomp.map((client) =>
    withDeadline(client.deactivate(), STEP_MS, 'closing a STOMP client').catch(() => {})));
  const open = mqttClients;
  mqttClients = [];
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

/** Each way in: a factory of the socket stompjs talks through. */
const TRANSPORTS = {
  tcp: () => new TCPWrapper('127.0.0.1', broker.listeners.stomp.port),
  'ws (web-stomp)': () => new WebSocket(
    `ws://127.0.0.1:${broker.listeners['web-stomp'].port}/ws`, ['v12.stomp']),
  'ws (http)': () => new WebSocket(
    `ws://127.0.0.1:${broker.listeners.http.port}/ws`, ['v12.stomp']),
};

/**
 * Connects a stompjs client (no reconnect) and resolves with it once CONNECTED
 * has arrived; `client.connectedFrame` is that frame. It is deactivated after
 * the test. Rejects with the ERROR frame's message if the broker refuses.
 */
async function connectStomp(transport = 'tcp', {
  login = 'guest', passcode = 'guest', versions, factory, ...options
} = {}) {
  const client = new Client({
    webSocketFactory: factory ?? TRANSPORTS[transport],
    connectHeaders: { login, passcode },
    reconnectDelay: 0,
    heartbeatIncoming: 10_000,
    heartbeatOutgoing: 10_000,
    connectionTimeout: STEP_MS,
    debug: () => {},
    ...options,
  });
  if (versions) client.stompVersions = new Versions(versions);
  stompClients.push(client);
  const connected = new Promise((resolve, reject) => {
    client.onConnect = (frame) => {
      client.connectedFrame = frame;
      resolve(client);
    };
    client.onStompError = (frame) => reject(new Error(
      `ERROR frame: ${frame.headers.message}: ${frame.body}`));
    client.onWebSocketClose = (event) => reject(new Error(
      `the connection closed before CONNECTED (code ${event?.code})`));
  });
  client.activate();
  return withDeadline(connected, STEP_MS, `STOMP connect over ${transport}`);
}

/**
 * Starts waiting for RECEIPT `id` (watchForReceipt must be called before the
 * frame that asks for it is sent); the returned promise has a deadline.
 */
function receiptFor(client, what) {
  const id = unique('receipt');
  const arrived = new Promise((resolve) => client.watchForReceipt(id, resolve));
  const done = withDeadline(arrived, STEP_MS, `RECEIPT for ${what}`);
  done.catch(() => {}); // awaited by the caller; no unhandled rejection meanwhile
  return { id, done };
}

/** A buffer of messages; `next()` resolves with the next one or rejects after `ms`. */
function mailbox() {
  const queued = [];
  const waiting = [];
  return {
    push(message) {
      const waiter = waiting.shift();
      if (waiter) waiter(message);
      else queued.push(message);
    },
    get size() { return queued.length; },
    next(what = 'a STOMP message', ms = STEP_MS) {
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

/**
 * SUBSCRIBEs with a receipt and resolves once the broker has answered it (the
 * queue exists and is bound); messages go to the returned mailbox.
 * `subscription.id` is the subscription id.
 */
async function subscribe(client, destination, headers = {}) {
  const messages = mailbox();
  const receipt = receiptFor(client, `SUBSCRIBE ${destination}`);
  const subscription = client.subscribe(destination, (message) => messages.push(message),
    { ...headers, receipt: receipt.id });
  await receipt.done;
  return { subscription, messages };
}

/** SENDs with a receipt and resolves once the broker has answered it. */
async function send(client, destination, body, headers = {}, options = {}) {
  const receipt = receiptFor(client, `SEND to ${destination}`);
  client.publish({ destination, body, headers: { ...headers, receipt: receipt.id }, ...options });
  return receipt.done;
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

/** Connects an MQTT 3.1.1 client over TCP as guest; closed after the test. */
async function connectMqtt() {
  const url = `mqtt://127.0.0.1:${broker.listeners.mqtt.port}`;
  const client = await withDeadline(mqtt.connectAsync(url, {
    protocolVersion: 4,
    clientId: unique('mqtt'),
    username: 'guest',
    password: 'guest',
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: STEP_MS,
  }, false), STEP_MS, `MQTT connect to ${url}`);
  mqttClients.push(client);
  client.on('error', () => {});
  return client;
}

// ---------------------------------------------------------------------------
// The same behaviour over every transport.

for (const transport of Object.keys(TRANSPORTS)) {
  test(`CONNECT as guest over ${transport}: STOMP 1.2, heart-beats and the server named`, { timeout: TEST_TIMEOUT_MS }, async () => {
    const client = await connectStomp(transport);
    const headers = client.connectedFrame.headers;
    assert.equal(headers.version, '1.2');
    assert.equal(client.connectedVersion, '1.2');
    assert.match(headers.server, /^Junction\//);
    assert.match(headers.session, /^session-/);
    assert.match(headers['heart-beat'], /^\d+,\d+$/);
  });

  test(`publish and subscribe on /queue/ over ${transport}`, { timeout: TEST_TIMEOUT_MS }, async () => {
    const queue = unique('stomp-queue');
    const consumer = await connectStomp(transport);
    const { messages } = await subscribe(consumer, `/queue/${queue}`);
    const producer = await connectStomp(transport);
    const bodies = ['one', 'two', 'three'];
    for (const body of bodies) await send(producer, `/queue/${queue}`, body);
    const got = [];
    for (let i = 0; i < bodies.length; i += 1) got.push(await messages.next(`message ${i}`));
    assert.deepEqual(got.map((m) => m.body), bodies, 'in the order sent');
    for (const message of got) {
      assert.equal(message.headers.destination, `/queue/${queue}`);
      assert.equal(message.command, 'MESSAGE');
      assert.ok(message.headers['message-id']);
      assert.equal(message.headers.redelivered, 'false');
    }
  });

  test(`/topic/ with * and # wildcards over ${transport}`, { timeout: TEST_TIMEOUT_MS }, async () => {
    const base = unique('stomp-topic');
    const client = await connectStomp(transport);
    const exact = await subscribe(client, `/topic/${base}.a.b`);
    const star = await subscribe(client, `/topic/${base}.*.b`);
    const hash = await subscribe(client, `/topic/${base}.#`);
    const publisher = await connectStomp(transport);
    await send(publisher, `/topic/${base}.a.b`, 'ab');
    await send(publisher, `/topic/${base}.x.b`, 'xb');
    await send(publisher, `/topic/${base}.a.b.c`, 'abc');
    await send(publisher, `/topic/${base}`, 'base');
    // A last message to every subscriber: what came before it is all there is.
    await send(publisher, `/topic/${base}.a.b`, 'end');

    async function drain(mail) {
      const got = [];
      for (;;) {
        const message = await mail.messages.next();
        got.push([message.headers.destination.replace(`/topic/${base}`, ''), message.body]);
        if (message.body === 'end') return got;
      }
    }
    assert.deepEqual(await drain(exact), [['.a.b', 'ab'], ['.a.b', 'end']]);
    assert.deepEqual(await drain(star), [['.a.b', 'ab'], ['.x.b', 'xb'], ['.a.b', 'end']]);
    assert.deepEqual(await drain(hash),
      [['.a.b', 'ab'], ['.x.b', 'xb'], ['.a.b.c', 'abc'], ['', 'base'], ['.a.b', 'end']]);
  });

  test(`headers, escaped values and a binary body round-trip over ${transport}`, { timeout: TEST_TIMEOUT_MS }, async () => {
    const queue = unique('stomp-headers');
    const client = await connectStomp(transport);
    const { messages } = await subscribe(client, `/queue/${queue}`);
    // (stompjs unescapes with one replace per sequence, so a value with a
    // backslash followed by c, n or r would come back wrong on its side.)
    const tricky = 'a:b \\ z\nnext:line';
    await send(client, `/queue/${queue}`, 'héllo wörld', {
      'content-type': 'text/plain;charset=utf-8',
      'correlation-id': 'corr-1',
      'x-custom': 'custom value',
      'x-tricky': tricky,
      priority: '7',
      type: 'greeting',
      'app-id': 'stomp.test',
      'amqp-message-id': 'm-1',
      persistent: 'true',
    });
    const text = await messages.next('the message with headers');
    assert.equal(text.body, 'héllo wörld');
    assert.equal(text.headers['content-type'], 'text/plain;charset=utf-8');
    assert.equal(text.headers['correlation-id'], 'corr-1');
    assert.equal(text.headers['x-custom'], 'custom value');
    assert.equal(text.headers['x-tricky'], tricky, 'escaped on the wire, the same value back');
    assert.equal(text.headers.priority, '7');
    assert.equal(text.headers.type, 'greeting');
    assert.equal(text.headers['app-id'], 'stomp.test');
    assert.equal(text.headers['amqp-message-id'], 'm-1');
    assert.equal(text.headers.persistent, 'true');
    assert.equal(text.headers.receipt, undefined, 'frame headers are not message headers');

    // A body with NUL bytes travels with content-length.
    const bytes = new Uint8Array([0, 1, 2, 0, 255, 0, 10, 0]);
    await send(client, `/queue/${queue}`, undefined,
      { 'content-type': 'application/octet-stream' }, { binaryBody: bytes });
    const binary = await messages.next('the binary message');
    assert.deepEqual([...binary.binaryBody], [...bytes]);
    assert.equal(binary.headers['content-length'], String(bytes.length));

    // A body larger than any one read or WebSocket frame.
    const large = 'x'.repeat(1024 * 1024 - 7) + 'the end';
    await send(client, `/queue/${queue}`, large);
    const big = await messages.next('the 1 MiB message');
    assert.equal(big.body.length, large.length);
    assert.equal(big.body, large);

    // An empty body.
    await send(client, `/queue/${queue}`, '');
    const empty = await messages.next('the empty message');
    assert.equal(empty.body, '');
  });

  test(`client-individual ACK and NACK (redelivered) over ${transport}`, { timeout: TEST_TIMEOUT_MS }, async () => {
    const queue = unique('stomp-ack');
    const client = await connectStomp(transport);
    const { messages } = await subscribe(client, `/queue/${queue}`, { ack: 'client-individual' });
    await send(client, `/queue/${queue}`, 'first');
    await send(client, `/queue/${queue}`, 'second');
    const first = await messages.next('first');
    const second = await messages.next('second');
    assert.deepEqual([first.body, second.body], ['first', 'second']);
    assert.ok(first.headers.ack, 'STOMP 1.2 MESSAGE frames of an acking subscription carry ack');

    // Acknowledging the second settles it alone; the first is NACKed and comes back.
    second.ack();
    first.nack();
    const again = await messages.next('the NACKed message, redelivered');
    assert.equal(again.body, 'first');
    assert.equal(again.headers.redelivered, 'true');
    again.ack();

    // Frames are handled in order: once a later SEND has its RECEIPT, the
    // ACKs are applied. After the client leaves, nothing comes back.
    await send(client, `/topic/${unique('sync')}`, '');
    assert.equal(messages.size, 0);
    await withDeadline(client.deactivate(), STEP_MS, 'DISCONNECT');
    const later = await connectStomp(transport);
    const check = await subscribe(later, `/queue/${queue}`);
    await send(later, `/queue/${queue}`, 'end');
    assert.equal((await check.messages.next()).body, 'end', 'every message was settled');
  });

  test(`transactions: COMMIT applies SENDs in order, ABORT drops them over ${transport}`, { timeout: TEST_TIMEOUT_MS }, async () => {
    const queue = unique('stomp-tx');
    const consumer = await connectStomp(transport);
    const { messages } = await subscribe(consumer, `/queue/${queue}`);
    const producer = await connectStomp(transport);

    const aborted = producer.begin(unique('tx'));
    producer.publish({ destination: `/queue/${queue}`, body: 'aborted', headers: { transaction: aborted.id } });
    const committed = producer.begin(unique('tx'));
    producer.publish({ destination: `/queue/${queue}`, body: 'c1', headers: { transaction: committed.id } });
    producer.publish({ destination: `/queue/${queue}`, body: 'c2', headers: { transaction: committed.id } });
    aborted.abort();
    // Nothing of the open transaction is delivered before COMMIT: a message
    // sent outside it after its SENDs arrives first.
    await send(producer, `/queue/${queue}`, 'outside');
    assert.equal((await messages.next('the message outside the transaction')).body, 'outside');

    committed.commit();
    const got = [];
    for (let i = 0; i < 2; i += 1) got.push((await messages.next(`committed ${i}`)).body);
    assert.deepEqual(got, ['c1', 'c2']);
    await send(producer, `/queue/${queue}`, 'end');
    assert.equal((await messages.next('the last message')).body, 'end',
      'the aborted SEND never arrives');
  });
}

// ---------------------------------------------------------------------------
// STOMP specifics (over TCP unless the test is about a transport).

test('receipts: SUBSCRIBE, SEND, persistent SEND (after the disk), UNSUBSCRIBE', { timeout: TEST_TIMEOUT_MS }, async () => {
  const queue = unique('stomp-receipts');
  const client = await connectStomp('tcp');
  const { subscription, messages } = await subscribe(client, `/queue/${queue}`);
  await send(client, `/queue/${queue}`, 'transient');
  assert.equal((await messages.next()).body, 'transient');

  const unsubscribed = receiptFor(client, 'UNSUBSCRIBE');
  subscription.unsubscribe({ receipt: unsubscribed.id });
  await unsubscribed.done;

  // A persistent message to a durable queue: its RECEIPT comes once it is
  // stored, and it is then in the queue for an AMQP client.
  const receipt = await send(client, `/queue/${queue}`, 'stored', { persistent: 'true' });
  assert.equal(receipt.command, 'RECEIPT');
  const channel = await amqpChannel();
  const { messageCount } = await channel.checkQueue(queue);
  assert.equal(messageCount, 1);
  const msg = await amqpNext(channel, queue, 'the persistent message over AMQP');
  assert.equal(msg.content.toString(), 'stored');
  assert.equal(msg.properties.deliveryMode, 2);
});

test('a DISCONNECT receipt comes after the receipts of the frames before it', { timeout: TEST_TIMEOUT_MS }, async () => {
  const queue = unique('stomp-disconnect');
  const client = await connectStomp('tcp');
  const sends = [];
  for (let i = 0; i < 3; i += 1) {
    const receipt = receiptFor(client, `persistent SEND ${i}`);
    sends.push(receipt);
    client.publish({
      destination: `/queue/${queue}`, body: `m${i}`,
      headers: { persistent: 'true', receipt: receipt.id },
    });
  }
  const closed = new Promise((resolve) => { client.onWebSocketClose = resolve; });
  let disconnectReceipt = false;
  client.onDisconnect = () => { disconnectReceipt = true; };
  await withDeadline(client.deactivate(), STEP_MS, 'DISCONNECT');
  await withDeadline(closed, STEP_MS, 'the connection closing');
  for (const [i, receipt] of sends.entries()) await receipt.done.catch(() => assert.fail(
    `the RECEIPT for persistent SEND ${i} never came: the broker closed after DISCONNECT ` +
    'without the receipts it owed for earlier frames'));
  assert.ok(disconnectReceipt, 'the DISCONNECT got its RECEIPT');
  const channel = await amqpChannel();
  assert.equal((await channel.checkQueue(queue)).messageCount, 3);
});

test('client ACK is cumulative; unacknowledged messages go back when the client leaves', { timeout: TEST_TIMEOUT_MS }, async () => {
  const queue = unique('stomp-client-ack');
  const first = await connectStomp('tcp');
  const { messages } = await subscribe(first, `/queue/${queue}`, { ack: 'client' });
  for (const body of ['m1', 'm2', 'm3']) await send(first, `/queue/${queue}`, body);
  const got = [];
  for (let i = 0; i < 3; i += 1) got.push(await messages.next());
  assert.deepEqual(got.map((m) => m.body), ['m1', 'm2', 'm3']);
  got[1].ack(); // settles m1 and m2
  await send(first, `/topic/${unique('sync')}`, ''); // handled after the ACK
  await withDeadline(first.deactivate(), STEP_MS, 'DISCONNECT');

  const second = await connectStomp('tcp');
  const again = await subscribe(second, `/queue/${queue}`, { ack: 'client-individual' });
  const back = await again.messages.next('the unacknowledged message, redelivered');
  assert.equal(back.body, 'm3');
  assert.equal(back.headers.redelivered, 'true');
  back.ack();
});

test('NACK with requeue:false drops the message', { timeout: TEST_TIMEOUT_MS }, async () => {
  const queue = unique('stomp-nack-drop');
  const client = await connectStomp('tcp');
  const { messages } = await subscribe(client, `/queue/${queue}`, { ack: 'client-individual' });
  await send(client, `/queue/${queue}`, 'dropped');
  const dropped = await messages.next();
  dropped.nack({ requeue: 'false' });
  await send(client, `/queue/${queue}`, 'next');
  const next = await messages.next('the message after the dropped one');
  assert.equal(next.body, 'next', 'the NACKed message did not come back');
  next.ack();
});

test('STOMP 1.1 and 1.0: ACK names the message by message-id', { timeout: TEST_TIMEOUT_MS }, async () => {
  for (const version of ['1.1', '1.0']) {
    const queue = unique(`stomp-v${version}`);
    const client = await connectStomp('tcp', { versions: [version] });
    assert.equal(client.connectedFrame.headers.version, version);
    const { messages } = await subscribe(client, `/queue/${queue}`, { ack: 'client-individual' });
    await send(client, `/queue/${queue}`, `over ${version}`, { 'x-colon': 'a:b' });
    const message = await messages.next();
    assert.equal(message.body, `over ${version}`);
    // 1.0 has no escaping: the value travels as it is. 1.1 escapes ':' as
    // '\c' in MESSAGE frames, which stompjs (escaping only for 1.2) leaves as is.
    assert.equal(message.headers['x-colon'], version === '1.0' ? 'a:b' : 'a\\cb');
    assert.equal(message.headers.ack, undefined, `STOMP ${version} MESSAGE frames have no ack header`);
    message.ack();
    await send(client, `/topic/${unique('sync')}`, '');
    await withDeadline(client.deactivate(), STEP_MS, 'DISCONNECT');
    // The message was acknowledged: nothing comes back to a new subscriber.
    const later = await connectStomp('tcp', { versions: [version] });
    const check = await subscribe(later, `/queue/${queue}`);
    await send(later, `/queue/${queue}`, 'end');
    assert.equal((await check.messages.next()).body, 'end');
  }
});

test('an ACK inside an aborted transaction does not settle the message', { timeout: TEST_TIMEOUT_MS }, async () => {
  const queue = unique('stomp-tx-ack');
  const client = await connectStomp('tcp');
  const { messages } = await subscribe(client, `/queue/${queue}`, { ack: 'client-individual' });
  await send(client, `/queue/${queue}`, 'kept');
  await send(client, `/queue/${queue}`, 'settled');
  const kept = await messages.next();
  const settled = await messages.next();
  const aborted = client.begin(unique('tx'));
  kept.ack({ transaction: aborted.id });
  aborted.abort();
  const committed = client.begin(unique('tx'));
  settled.ack({ transaction: committed.id });
  committed.commit();
  await send(client, `/topic/${unique('sync')}`, ''); // handled after COMMIT
  await withDeadline(client.deactivate(), STEP_MS, 'DISCONNECT');

  const again = await connectStomp('tcp');
  const { messages: after } = await subscribe(again, `/queue/${queue}`);
  await send(again, `/queue/${queue}`, 'end');
  const got = [(await after.next()).body, (await after.next()).body];
  assert.deepEqual(got, ['kept', 'end'], 'the aborted ACK left "kept" in the queue; "settled" is gone');
});

test('prefetch-count limits unacknowledged deliveries', { timeout: TEST_TIMEOUT_MS }, async () => {
  const queue = unique('stomp-prefetch');
  const client = await connectStomp('tcp');
  for (const body of ['p1', 'p2', 'p3']) await send(client, `/queue/${queue}`, body);
  const { messages } = await subscribe(client, `/queue/${queue}`,
    { ack: 'client-individual', 'prefetch-count': '1' });
  const first = await messages.next();
  assert.equal(first.body, 'p1');
  const channel = await amqpChannel();
  assert.equal((await channel.checkQueue(queue)).messageCount, 2, 'two wait while one is unacknowledged');
  first.ack();
  const second = await messages.next();
  assert.equal(second.body, 'p2');
  second.ack();
  const third = await messages.next();
  assert.equal(third.body, 'p3');
  third.ack();
});

test('a durable topic subscription keeps messages while its client is away', { timeout: TEST_TIMEOUT_MS }, async () => {
  const topic = unique('stomp-durable');
  const id = unique('durable-sub');
  const first = await connectStomp('tcp');
  await subscribe(first, `/topic/${topic}`, { id, durable: 'true', 'auto-delete': 'false' });
  await withDeadline(first.deactivate(), STEP_MS, 'DISCONNECT');

  const publisher = await connectStomp('tcp');
  await send(publisher, `/topic/${topic}`, 'while away', { persistent: 'true' });

  const back = await connectStomp('tcp');
  const { subscription, messages } = await subscribe(back, `/topic/${topic}`,
    { id, durable: 'true', 'auto-delete': 'false' });
  const message = await messages.next('the message kept for the durable subscription');
  assert.equal(message.body, 'while away');
  assert.equal(message.headers.destination, `/topic/${topic}`);
  assert.equal(message.headers.subscription, id);
  // UNSUBSCRIBE with durable:true removes the queue.
  const gone = receiptFor(back, 'UNSUBSCRIBE');
  subscription.unsubscribe({ durable: 'true', receipt: gone.id });
  await gone.done;
  const channel = await amqpChannel();
  channel.on('error', () => {}); // the 404 closes the channel
  await assert.rejects(channel.checkQueue(`stomp-subscription-${id}`), /404|NOT_FOUND/);
});

test('/exchange/X/K and /amq/queue/N address exchanges and queues AMQP declared', { timeout: TEST_TIMEOUT_MS }, async () => {
  const exchange = unique('stomp-direct');
  const queue = unique('stomp-amq-queue');
  const channel = await amqpChannel();
  await channel.assertExchange(exchange, 'direct', { durable: false, autoDelete: false });
  await channel.assertQueue(queue, { durable: false });
  await channel.bindQueue(queue, exchange, 'to-queue');

  const client = await connectStomp('tcp');
  const viaExchange = await subscribe(client, `/exchange/${exchange}/red`);
  const viaQueue = await subscribe(client, `/amq/queue/${queue}`);
  await send(client, `/exchange/${exchange}/red`, 'red one');
  await send(client, `/exchange/${exchange}/blue`, 'blue one');
  await send(client, `/exchange/${exchange}/to-queue`, 'for the queue');
  channel.publish(exchange, 'red', Buffer.from('red from AMQP'));

  const red = await viaExchange.messages.next('red one');
  assert.equal(red.body, 'red one');
  assert.equal(red.headers.destination, `/exchange/${exchange}/red`);
  assert.equal((await viaExchange.messages.next('red from AMQP')).body, 'red from AMQP');
  const queued = await viaQueue.messages.next('the queue message');
  assert.equal(queued.body, 'for the queue');
  assert.equal(queued.headers.destination, `/exchange/${exchange}/to-queue`);

  // A SEND to /amq/queue/N goes to the existing queue.
  await send(client, `/amq/queue/${queue}`, 'direct to queue');
  assert.equal((await viaQueue.messages.next()).body, 'direct to queue');

  // Subscribing to /amq/queue/ of a queue that does not exist is an ERROR.
  const errors = [];
  client.onStompError = (frame) => errors.push(frame);
  const closed = new Promise((resolve) => { client.onWebSocketClose = resolve; });
  client.subscribe(`/amq/queue/${unique('missing')}`, () => {});
  await withDeadline(closed, STEP_MS, 'the connection closing after the ERROR');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].headers.message, 'not_found');
});

test('request and reply through /temp-queue/', { timeout: TEST_TIMEOUT_MS }, async () => {
  const service = unique('stomp-rpc');
  const server = await connectStomp('tcp');
  const requests = await subscribe(server, `/queue/${service}`);
  const caller = await connectStomp('ws (web-stomp)');
  const replies = mailbox();
  caller.onUnhandledMessage = (message) => replies.push(message);
  await send(caller, `/queue/${service}`, 'ping', {
    'reply-to': '/temp-queue/replies', 'correlation-id': 'c-42',
  });
  const request = await requests.messages.next('the request');
  assert.equal(request.body, 'ping');
  assert.match(request.headers['reply-to'], /^\/reply-queue\/./);
  await send(server, request.headers['reply-to'], 'pong',
    { 'correlation-id': request.headers['correlation-id'] });
  const reply = await replies.next('the reply');
  assert.equal(reply.body, 'pong');
  assert.equal(reply.headers['correlation-id'], 'c-42');
  assert.equal(reply.headers.subscription, '/temp-queue/replies');
  assert.equal(reply.headers.destination, '/temp-queue/replies');
});

test('every STOMP subprotocol is accepted over WebSocket, and none on the web-stomp listener', { timeout: TEST_TIMEOUT_MS }, async () => {
  const cases = [
    ['http', 'v10.stomp', '1.0'],
    ['http', 'v11.stomp', '1.1'],
    ['http', 'v12.stomp', '1.2'],
    ['web-stomp', 'v11.stomp', '1.1'],
    ['web-stomp', undefined, '1.2'],
  ];
  for (const [listener, protocol, version] of cases) {
    const url = `ws://127.0.0.1:${broker.listeners[listener].port}/ws`;
    let socket;
    const client = await connectStomp(`ws ${listener} ${protocol}`, {
      versions: [version],
      factory: () => {
        socket = protocol ? new WebSocket(url, [protocol]) : new WebSocket(url);
        return socket;
      },
    });
    assert.equal(socket.protocol, protocol ?? '', `${listener} agreed on ${protocol}`);
    assert.equal(client.connectedFrame.headers.version, version);
    const queue = unique('stomp-subprotocol');
    const { messages } = await subscribe(client, `/queue/${queue}`);
    await send(client, `/queue/${queue}`, `${listener} ${protocol}`);
    assert.equal((await messages.next()).body, `${listener} ${protocol}`);
  }
});

test('a bad login gets an ERROR frame and the connection closes', { timeout: TEST_TIMEOUT_MS }, async () => {
  for (const transport of Object.keys(TRANSPORTS)) {
    const client = new Client({
      webSocketFactory: TRANSPORTS[transport],
      connectHeaders: { login: 'guest', passcode: 'not-the-password' },
      reconnectDelay: 0,
      debug: () => {},
    });
    stompClients.push(client);
    let connected = false;
    client.onConnect = () => { connected = true; };
    const error = new Promise((resolve) => { client.onStompError = resolve; });
    const closed = new Promise((resolve) => { client.onWebSocketClose = resolve; });
    client.activate();
    const frame = await withDeadline(error, STEP_MS, `the ERROR frame over ${transport}`);
    assert.equal(frame.command, 'ERROR');
    assert.equal(frame.headers.message, 'Bad CONNECT');
    assert.equal(frame.body, "Access refused for user 'guest'\n");
    await withDeadline(closed, STEP_MS, `the connection closing over ${transport}`);
    assert.equal(connected, false);
  }
});

test('a frame the broker refuses gets an ERROR frame with the receipt-id', { timeout: TEST_TIMEOUT_MS }, async () => {
  const client = await connectStomp('tcp');
  const errors = [];
  client.onStompError = (frame) => errors.push(frame);
  const closed = new Promise((resolve) => { client.onWebSocketClose = resolve; });
  client.publish({ destination: '/nowhere/at-all', body: 'x', headers: { receipt: 'bad-send' } });
  await withDeadline(closed, STEP_MS, 'the connection closing after the ERROR');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].headers.message, 'Unknown destination');
  assert.equal(errors[0].headers['receipt-id'], 'bad-send');
});

test('heart-beats: the broker sends them, keeps a client that sends them, drops one that stops', { timeout: TEST_TIMEOUT_MS }, async () => {
  // A broker of its own that offers 500 ms heart-beats (short, with room
  // for a busy machine: a side is given up on after twice the interval).
  const configDir = await mkdtemp(path.join(tmpdir(), 'junction-stomp-hb-'));
  const configFile = path.join(configDir, 'junction.toml');
  await writeFile(configFile, '[stomp]\nheartbeat_ms = 500\n');
  const own = await startBroker({ args: ['--config', configFile] });
  const sockets = [];
  try {
    const port = own.listeners.stomp.port;
    /** A raw TCP connection that CONNECTs with `heartBeat`; resolves with its reader. */
    async function rawConnect(heartBeat) {
      const socket = net.createConnection(port, '127.0.0.1');
      sockets.push(socket);
      await withDeadline(once(socket, 'connect'), STEP_MS, 'TCP connect');
      let received = Buffer.alloc(0);
      const changed = [];
      socket.on('data', (chunk) => {
        received = Buffer.concat([received, chunk]);
        changed.splice(0).forEach((wake) => wake());
      });
      const closed = once(socket, 'close');
      closed.catch(() => {});
      socket.write(`CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:${heartBeat}\n\n\0`);
      /** Resolves once `test(received)` holds (re-checked on every chunk). */
      const until = (predicate, what) => withDeadline((async () => {
        while (!predicate(received)) await new Promise((wake) => changed.push(wake));
        return received;
      })(), STEP_MS, what);
      const connected = await until((b) => b.includes(0), 'CONNECTED');
      const head = connected.subarray(0, connected.indexOf(0)).toString();
      return { socket, head, until, closed, afterConnected: connected.indexOf(0) + 1 };
    }

    // The client wants heart-beats every 100 ms: heartbeat_ms (500) is the
    // broker's offer, not a floor, so it offers 100 ms and sends them that
    // often (each direction is the larger of what one side sends and the
    // other wants), as end-of-line bytes between frames. CONNECTED names the
    // negotiated intervals, as RabbitMQ does: 100 ms out, none expected from
    // a client that sends none.
    const listener = await rawConnect('0,100');
    assert.match(listener.head, /^CONNECTED\n/);
    assert.match(listener.head, /\nheart-beat:100,0\n/);
    const beats = await listener.until((b) => b.subarray(listener.afterConnected)
      .filter((byte) => byte === 10).length >= 3, 'three heart-beats from the broker');
    assert.ok(beats.subarray(listener.afterConnected).every((byte) => byte === 10 || byte === 13),
      'nothing but heart-beats after CONNECTED');

    // A client that promised heart-beats every 100 ms and sends none is
    // disconnected (twice the negotiated 100 ms without a byte).
    const silent = await rawConnect('100,0');
    await withDeadline(silent.closed, STEP_MS, 'the broker closing a silent client');

    // stompjs sends its heart-beats and stays connected across many intervals.
    let beatsIn = 0;
    let lost = 0;
    const waiters = [];
    const client = await connectStomp('tcp', {
      factory: () => new TCPWrapper('127.0.0.1', port),
      heartbeatIncoming: 500,
      heartbeatOutgoing: 500,
      onHeartbeatReceived: () => {
        beatsIn += 1;
        waiters.splice(0).forEach((wake) => wake());
      },
      onHeartbeatLost: () => { lost += 1; },
    });
    let dropped = false;
    client.onWebSocketClose = () => { dropped = true; };
    await withDeadline((async () => {
      while (beatsIn < 4) await new Promise((wake) => waiters.push(wake));
    })(), STEP_MS, 'four heart-beats from the broker to stompjs');
    assert.equal(dropped, false, 'a client that sends heart-beats is kept');
    assert.equal(lost, 0, 'stompjs never missed the broker\'s heart-beats');
    const queue = unique('stomp-heartbeat');
    const { messages } = await subscribe(client, `/queue/${queue}`);
    await send(client, `/queue/${queue}`, 'still here');
    assert.equal((await messages.next()).body, 'still here');
    await withDeadline(client.deactivate(), STEP_MS, 'DISCONNECT');
  } finally {
    for (const socket of sockets) socket.destroy();
    await stopBroker(own);
    await rm(configDir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------
// Crossing protocols.

test('amqplib publishes to amq.topic and a STOMP /topic/ subscriber receives it', { timeout: TEST_TIMEOUT_MS }, async () => {
  const base = unique('amqp-to-stomp');
  const client = await connectStomp('ws (http)');
  const { messages } = await subscribe(client, `/topic/${base}.*`);
  const channel = await amqpChannel();
  channel.publish('amq.topic', `${base}.k`, Buffer.from('{"t":21.5}'), {
    contentType: 'application/json',
    correlationId: 'amqp-corr',
    messageId: 'amqp-id-1',
    persistent: true,
    headers: { 'x-origin': 'amqplib', 'x-count': 5, 'x-flag': true },
  });
  const message = await messages.next('the AMQP message over STOMP');
  assert.equal(message.body, '{"t":21.5}');
  assert.equal(message.headers.destination, `/topic/${base}.k`);
  assert.equal(message.headers['content-type'], 'application/json');
  assert.equal(message.headers['correlation-id'], 'amqp-corr');
  assert.equal(message.headers['amqp-message-id'], 'amqp-id-1');
  assert.equal(message.headers.persistent, 'true');
  assert.equal(message.headers['x-origin'], 'amqplib');
  assert.equal(message.headers['x-count'], '5');
  assert.equal(message.headers['x-flag'], 'true');

  // amqplib straight to a queue a STOMP client reads.
  const queue = unique('amqp-to-stomp-queue');
  const reader = await subscribe(client, `/queue/${queue}`);
  channel.sendToQueue(queue, Buffer.from('via the default exchange'));
  const queued = await reader.messages.next();
  assert.equal(queued.body, 'via the default exchange');
  assert.equal(queued.headers.destination, `/queue/${queue}`);
});

test('a STOMP /queue/ SEND reaches an amqplib consumer with its properties and headers', { timeout: TEST_TIMEOUT_MS }, async () => {
  const queue = unique('stomp-to-amqp');
  const client = await connectStomp('tcp');
  await send(client, `/queue/${queue}`, 'fan on', {
    'content-type': 'text/plain',
    'content-encoding': 'identity',
    'correlation-id': 'stomp-corr',
    'reply-to': 'replies',
    'amqp-message-id': 'stomp-id-1',
    type: 'command',
    'app-id': 'stomp.test',
    priority: '3',
    persistent: 'true',
    'x-room': 'kitchen',
    'x-by': 'stompjs',
  });
  const channel = await amqpChannel();
  // The STOMP SEND declared the queue durable, as RabbitMQ does.
  await channel.assertQueue(queue, { durable: true });
  const msg = await amqpNext(channel, queue, 'the STOMP message over AMQP');
  assert.equal(msg.content.toString(), 'fan on');
  assert.equal(msg.fields.exchange, '');
  assert.equal(msg.fields.routingKey, queue);
  assert.equal(msg.properties.contentType, 'text/plain');
  assert.equal(msg.properties.contentEncoding, 'identity');
  assert.equal(msg.properties.correlationId, 'stomp-corr');
  assert.equal(msg.properties.replyTo, 'replies');
  assert.equal(msg.properties.messageId, 'stomp-id-1');
  assert.equal(msg.properties.type, 'command');
  assert.equal(msg.properties.appId, 'stomp.test');
  assert.equal(msg.properties.priority, 3);
  assert.equal(msg.properties.deliveryMode, 2);
  assert.equal(msg.properties.headers['x-room'], 'kitchen');
  assert.equal(msg.properties.headers['x-by'], 'stompjs');
  for (const frameHeader of ['destination', 'receipt', 'content-length']) {
    assert.equal(msg.properties.headers[frameHeader], undefined, `no ${frameHeader} in the AMQP headers`);
  }
});

test('MQTT.js publishes on sensors/.../a/b and a STOMP /topic/ subscriber gets sensors....a.b', { timeout: TEST_TIMEOUT_MS }, async () => {
  const base = `sensors-${unique('mqtt')}`;
  const client = await connectStomp('ws (web-stomp)');
  const exact = await subscribe(client, `/topic/${base}.a.b`);
  const wildcard = await subscribe(client, `/topic/${base}.#`);
  const device = await connectMqtt();
  await withDeadline(device.publishAsync(`${base}/a/b`, '21.5', { qos: 1 }), STEP_MS, 'MQTT PUBLISH');
  await withDeadline(device.publishAsync(`${base}/x`, 'other', { qos: 0 }), STEP_MS, 'MQTT PUBLISH');
  const message = await exact.messages.next('the MQTT publication over STOMP');
  assert.equal(message.body, '21.5');
  assert.equal(message.headers.destination, `/topic/${base}.a.b`);
  assert.equal(message.headers.persistent, 'true', 'QoS 1 is persistent');
  assert.equal((await wildcard.messages.next()).body, '21.5');
  const other = await wildcard.messages.next();
  assert.deepEqual([other.headers.destination, other.body], [`/topic/${base}.x`, 'other']);

  // And back: a STOMP SEND to /topic/K reaches an MQTT subscriber of the topic K names.
  const inbox = mailbox();
  device.on('message', (topic, payload) => inbox.push({ topic, payload: payload.toString() }));
  await withDeadline(device.subscribeAsync(`${base}/commands/+`, { qos: 1 }), STEP_MS, 'MQTT SUBSCRIBE');
  await send(client, `/topic/${base}.commands.fan`, 'on');
  const command = await inbox.next('the STOMP message over MQTT');
  assert.deepEqual(command, { topic: `${base}/commands/fan`, payload: 'on' });
});
