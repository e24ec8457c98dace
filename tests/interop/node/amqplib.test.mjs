// Interop tests: amqplib (Node) against the real Junction binary.
//
// One broker is started for the whole file (broker.mjs), on ephemeral ports
// with its own data directory (the binary's contract is in DESIGN.md §6). Every test
// names its queues and exchanges uniquely, so the tests do not see each
// other's messages.
//
// Run with `npm test` in this directory (after `npm install`). JUNCTION_BIN
// names the broker executable; the default is <repo>/target/debug/junction.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import amqp from 'amqplib';
import {
  SHUTDOWN_TIMEOUT_MS, STARTUP_TIMEOUT_MS, TEST_TIMEOUT_MS,
  startBroker, stopBroker, unique, withDeadline,
} from './broker.mjs';

let broker;
let url;
const connections = [];

/** Opens a connection that is closed in `after` if the test leaves it open. */
async function connect() {
  const connection = await amqp.connect(url);
  connections.push(connection);
  return connection;
}

/**
 * Consumes `count` messages from `queue` on `channel` (acking each) and
 * resolves with them; rejects if they do not all arrive within `ms`.
 */
async function consumeN(channel, queue, count, ms = 10_000) {
  const received = [];
  let consumerTag;
  const done = new Promise((resolve) => {
    channel.consume(queue, (msg) => {
      if (msg === null) return; // cancelled by the broker
      channel.ack(msg);
      received.push(msg);
      if (received.length === count) resolve(received);
    }).then((ok) => { consumerTag = ok.consumerTag; });
  });
  try {
    return await withDeadline(done, ms,
      `${count} message(s) from ${queue} (got ${received.length})`);
  } finally {
    if (consumerTag) await channel.cancel(consumerTag);
  }
}

before(async () => {
  broker = await startBroker();
  url = `amqp://guest:guest@127.0.0.1:${broker.port}`;
}, { timeout: STARTUP_TIMEOUT_MS + 5_000 });

after(async () => {
  for (const connection of connections) {
    try { await connection.close(); } catch { /* already closed */ }
  }
  if (broker) await stopBroker(broker);
}, { timeout: SHUTDOWN_TIMEOUT_MS * 2 + 5_000 });

test('assertQueue, sendToQueue, then consume and ack', { timeout: TEST_TIMEOUT_MS }, async () => {
  const connection = await connect();
  const channel = await connection.createChannel();
  const queue = unique('hello');

  const ok = await channel.assertQueue(queue, { durable: false });
  assert.equal(ok.queue, queue);
  assert.equal(ok.messageCount, 0);

  assert.ok(channel.sendToQueue(queue, Buffer.from('Hello from Node'), {
    contentType: 'text/plain',
    correlationId: 'node-1',
    headers: { origin: 'amqplib' },
  }));

  const [msg] = await consumeN(channel, queue, 1);
  assert.equal(msg.content.toString(), 'Hello from Node');
  assert.equal(msg.fields.routingKey, queue);
  assert.equal(msg.fields.redelivered, false);
  assert.equal(msg.properties.contentType, 'text/plain');
  assert.equal(msg.properties.correlationId, 'node-1');
  assert.deepEqual(msg.properties.headers, { origin: 'amqplib' });

  // The ack settled it: nothing is left in the queue.
  assert.equal(await channel.get(queue), false);
  await channel.close();
});

test('a confirm channel publish resolves once the broker acks it', { timeout: TEST_TIMEOUT_MS }, async () => {
  const connection = await connect();
  const channel = await connection.createConfirmChannel();
  const queue = unique('confirmed');
  await channel.assertQueue(queue);

  // The callback form: called with no error on basic.ack, with one on basic.nack.
  await new Promise((resolve, reject) => {
    channel.sendToQueue(queue, Buffer.from('one'), { persistent: true },
      (err) => (err ? reject(err) : resolve()));
  });
  // And the batch form.
  for (const body of ['two', 'three']) channel.sendToQueue(queue, Buffer.from(body));
  await channel.waitForConfirms();

  const { messageCount } = await channel.checkQueue(queue);
  assert.equal(messageCount, 3, 'every confirmed message is in the queue');
  await channel.close();
});

test('a topic exchange routes by * and # patterns', { timeout: TEST_TIMEOUT_MS }, async () => {
  const connection = await connect();
  const channel = await connection.createChannel();
  const exchange = unique('topic');
  await channel.assertExchange(exchange, 'topic', { durable: false });

  const bindings = { oneWord: 'kern.*', anyWords: 'kern.#', everything: '#' };
  const queues = {};
  for (const [name, pattern] of Object.entries(bindings)) {
    const { queue } = await channel.assertQueue('', { exclusive: true });
    await channel.bindQueue(queue, exchange, pattern);
    queues[name] = queue;
  }

  const keys = ['kern', 'kern.critical', 'kern.disk.full', 'cron.info'];
  for (const key of keys) channel.publish(exchange, key, Buffer.from(key));
  // A sentinel straight to each queue, published last on this channel: once it
  // arrives, everything routed to that queue before it has arrived too.
  for (const queue of Object.values(queues)) channel.sendToQueue(queue, Buffer.from('END'));

  const routed = async (queue) => {
    const count = { [queues.oneWord]: 2, [queues.anyWords]: 4, [queues.everything]: 5 }[queue];
    const messages = await consumeN(channel, queue, count);
    assert.equal(messages.at(-1).content.toString(), 'END');
    return messages.slice(0, -1).map((m) => m.fields.routingKey);
  };
  assert.deepEqual(await routed(queues.oneWord), ['kern.critical']);
  assert.deepEqual(await routed(queues.anyWords), ['kern', 'kern.critical', 'kern.disk.full']);
  assert.deepEqual(await routed(queues.everything), keys);
  await channel.close();
});

test('a channel error rejects with 404 and the connection stays usable', { timeout: TEST_TIMEOUT_MS }, async () => {
  const connection = await connect();
  const connectionErrors = [];
  connection.on('error', (err) => connectionErrors.push(err));

  const channel = await connection.createChannel();
  const channelErrors = [];
  // The broker's channel.close is also emitted as 'error' on the channel;
  // without a listener, Node would treat it as an uncaught exception.
  channel.on('error', (err) => channelErrors.push(err));
  // (Not events.once: it would reject on that 'error' event.)
  const closed = new Promise((resolve) => channel.once('close', resolve));

  await assert.rejects(channel.checkQueue(unique('missing')), (err) => {
    assert.equal(err.code, 404);
    assert.match(err.message, /NOT_FOUND/);
    return true;
  });
  await withDeadline(closed, 5_000, 'channel close event');
  assert.equal(channelErrors.length, 1);

  // Only the channel was closed: a new one on the same connection works.
  const another = await connection.createChannel();
  const queue = unique('after-error');
  await another.assertQueue(queue, { exclusive: true });
  another.sendToQueue(queue, Buffer.from('still here'));
  const [msg] = await consumeN(another, queue, 1);
  assert.equal(msg.content.toString(), 'still here');
  await another.close();
  assert.deepEqual(connectionErrors, []);
});
