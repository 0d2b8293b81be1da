// API compatibility of `brix gateway` with the official `openai` npm client:
// starts two engine-sims (the same base model and adapter on both) and a
// gateway in front of them on free loopback ports, then talks to the gateway
// only through the client: models, chat (plain and streaming with usage),
// completions, embeddings, an adapter as the model, an unknown model as
// NotFoundError, 64 concurrent streams, and an aborted stream followed by
// more requests. Every process is stopped with SIGTERM; a non-zero exit, an
// ERROR log line or a sanitizer report fails the test.
//
// Needs BRIX_BIN (the brix binary) and NODE_PATH pointing at
// tests/compat/node_modules; ctest sets both.
'use strict';

const { spawn } = require('child_process');
const OpenAI = require('openai');
const { fail, check, eq, freePort, sleep, httpGet } = require('./jslib');

const BASE_MODEL = 'llama-3-8b';
const ADAPTER = 'sql';
const EMBED_DIM = 4096;
const procs = [];

function start(name, args) {
  const bin = process.env.BRIX_BIN;
  check(bin, 'BRIX_BIN is not set (run through ctest)');
  const p = { name, log: '', exit: null };
  p.child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
  p.child.stdout.on('data', (d) => { p.log += d.toString(); });
  p.child.stderr.on('data', (d) => { p.log += d.toString(); });
  p.exitPromise = new Promise((resolve) => {
    p.child.on('exit', (code, signal) => {
      p.exit = { code, signal };
      resolve(p.exit);
    });
  });
  procs.push(p);
  return p;
}

async function waitFor(p, url, pred, what) {
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    if (p.exit) fail(`${p.name} exited during start-up: ${JSON.stringify(p.exit)}\n${p.log}`);
    const r = await httpGet(url);
    if (pred(r)) return;
    await sleep(50);
  }
  fail(`${p.name}: ${what} not reached within 30 s`);
}

async function stop(p) {
  if (p.exit) return p.exit;
  p.child.kill('SIGTERM');
  const r = await Promise.race([p.exitPromise, sleep(20000).then(() => null)]);
  if (!r) {
    p.child.kill('SIGKILL');
    await p.exitPromise;
    fail(`${p.name} did not exit within 20 s of SIGTERM`);
  }
  return r;
}

function badLines(p) {
  return p.log.split('\n').filter((l) =>
    / ERROR /.test(l) || /Sanitizer|runtime error:|SUMMARY: /.test(l));
}

function gatewayMetric(text, name, labels) {
  let total = null;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || line.startsWith('#')) continue;
    const m = line.match(/^([^{\s]+)(\{[^}]*\})?\s+(\S+)/);
    if (!m || m[1] !== name) continue;
    const lab = {};
    for (const [, k, v] of (m[2] || '').matchAll(/(\w+)="([^"]*)"/g)) lab[k] = v;
    if (labels && Object.keys(labels).some((k) => lab[k] !== labels[k])) continue;
    total = (total || 0) + Number(m[3]);
  }
  return total;
}

function checkUsage(u, what) {
  check(u && typeof u === 'object', `${what}: no usage object`);
  for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens']) {
    check(Number.isInteger(u[k]) && u[k] >= 0, `${what}: usage.${k} is ${u[k]}`);
  }
  eq(u.total_tokens, u.prompt_tokens + u.completion_tokens, `${what}: usage.total_tokens`);
  check(u.prompt_tokens > 0, `${what}: usage.prompt_tokens is 0`);
}

// Consumes a chat stream; returns { contentChunks, finish, last, n }.
async function drainChat(stream, what) {
  let contentChunks = 0;
  let finish = null;
  let last = null;
  let n = 0;
  let id = null;
  for await (const chunk of stream) {
    n++;
    eq(chunk.object, 'chat.completion.chunk', `${what}: object`);
    if (id === null) id = chunk.id;
    eq(chunk.id, id, `${what}: the same id in every chunk`);
    for (const ch of chunk.choices) {
      const d = ch.delta || {};
      if (typeof d.content === 'string' && d.content.length > 0) contentChunks++;
      if (ch.finish_reason) {
        check(finish === null, `${what}: two finish_reasons`);
        finish = ch.finish_reason;
      }
    }
    last = chunk;
  }
  return { contentChunks, finish, last, n };
}

// ---------------------------------------------------------------- tests --

async function testModels(client) {
  const ids = [];
  for await (const m of client.models.list()) {
    eq(m.object, 'model', `model ${m.id}: object`);
    ids.push(m.id);
  }
  // both engines serve both: listed once each, base model first
  eq(JSON.stringify(ids), JSON.stringify([BASE_MODEL, ADAPTER]), 'models.list ids');
}

async function testChat(client) {
  const r = await client.chat.completions.create({
    model: BASE_MODEL, messages: [{ role: 'user', content: 'Say something.' }], max_tokens: 7,
    ignore_eos: true,
  });
  eq(r.object, 'chat.completion', 'chat: object');
  eq(r.model, BASE_MODEL, 'chat: model');
  check(typeof r.id === 'string' && r.id.startsWith('chatcmpl-'), `chat: id ${r.id}`);
  eq(r.choices.length, 1, 'chat: choices');
  eq(r.choices[0].message.role, 'assistant', 'chat: role');
  check(typeof r.choices[0].message.content === 'string' && r.choices[0].message.content.length,
    'chat: empty content');
  eq(r.choices[0].finish_reason, 'length', 'chat: finish_reason');
  checkUsage(r.usage, 'chat');
  eq(r.usage.completion_tokens, 7, 'chat: completion_tokens');

  // withResponse exposes the gateway's AIBrix headers
  const { data, response } = await client.chat.completions.create({
    model: BASE_MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 2,
  }, { headers: { 'x-request-id': 'node-req-1' } }).withResponse();
  eq(data.id, 'chatcmpl-node-req-1', 'chat: id from x-request-id');
  eq(response.headers.get('x-request-id'), 'node-req-1', 'chat: x-request-id header');
  const pod = response.headers.get('target-pod');
  check(/^127\.0\.0\.1:\d+$/.test(pod || ''), `chat: target-pod ${pod}`);
  eq(response.headers.get('target-pod-ip'), pod, 'chat: target-pod-ip');
}

async function testChatStream(client) {
  const stream = await client.chat.completions.create({
    model: BASE_MODEL,
    messages: [{ role: 'user', content: 'Stream please.' }],
    max_tokens: 9,
    stream: true,
    stream_options: { include_usage: true },
    ignore_eos: true,
  });
  const { contentChunks, finish, last, n } = await drainChat(stream, 'chat stream');
  check(n > 2, `chat stream: only ${n} chunks`);
  eq(finish, 'length', 'chat stream: finish_reason');
  check(last && last.usage, 'chat stream: the last chunk has no usage');
  eq(last.choices.length, 0, 'chat stream: the usage chunk has choices');
  checkUsage(last.usage, 'chat stream');
  eq(last.usage.completion_tokens, 9, 'chat stream: usage.completion_tokens');
  eq(contentChunks, 9, 'chat stream: content chunks');
}

async function testCompletions(client) {
  const r = await client.completions.create({
    model: BASE_MODEL, prompt: 'Once upon a time', max_tokens: 8, ignore_eos: true,
  });
  eq(r.object, 'text_completion', 'completion: object');
  eq(r.model, BASE_MODEL, 'completion: model');
  eq(r.choices.length, 1, 'completion: choices');
  check(typeof r.choices[0].text === 'string' && r.choices[0].text.length > 0, 'completion: text');
  eq(r.choices[0].finish_reason, 'length', 'completion: finish_reason');
  checkUsage(r.usage, 'completion');
  eq(r.usage.completion_tokens, 8, 'completion: completion_tokens');
}

async function testEmbeddings(client) {
  const r = await client.embeddings.create({ model: BASE_MODEL, input: 'hello world' });
  eq(r.object, 'list', 'embeddings: object');
  eq(r.data.length, 1, 'embeddings: data');
  const v = r.data[0].embedding;
  check(Array.isArray(v), 'embeddings: embedding is not an array');
  eq(v.length, EMBED_DIM, 'embeddings: vector length');
  let norm = 0;
  for (const x of v) norm += x * x;
  check(Math.abs(Math.sqrt(norm) - 1) < 1e-3, `embeddings: L2 norm ${Math.sqrt(norm)}`);
  check(r.usage && r.usage.prompt_tokens > 0, 'embeddings: usage.prompt_tokens');
  const r2 = await client.embeddings.create({
    model: BASE_MODEL, input: ['hello world', 'other'], encoding_format: 'float',
  });
  eq(r2.data.length, 2, 'embeddings (float): data');
  for (let i = 0; i < EMBED_DIM; i += 97) {
    check(Math.abs(r2.data[0].embedding[i] - v[i]) < 1e-6, `embeddings: component ${i} differs`);
  }
}

async function testAdapter(client) {
  const r = await client.chat.completions.create({
    model: ADAPTER, messages: [{ role: 'user', content: 'SELECT' }], max_tokens: 4,
    ignore_eos: true,
  });
  eq(r.model, ADAPTER, 'adapter: model');
  eq(r.usage.completion_tokens, 4, 'adapter: completion_tokens');
  const s = await client.completions.create({
    model: ADAPTER, prompt: 'x', max_tokens: 3, ignore_eos: true, stream: true,
  });
  let pieces = 0;
  for await (const c of s) {
    eq(c.model, ADAPTER, 'adapter stream: model');
    for (const ch of c.choices) if (ch.text) pieces++;
  }
  eq(pieces, 3, 'adapter stream: text chunks');
}

async function testConcurrentStreams(client) {
  const N = 64;
  const TOKENS = 12;
  const results = await Promise.all(Array.from({ length: N }, async (_, i) => {
    const stream = await client.chat.completions.create({
      model: i % 2 ? ADAPTER : BASE_MODEL,
      messages: [{ role: 'user', content: `stream ${i}` }],
      max_tokens: TOKENS,
      ignore_eos: true,
      stream: true,
      stream_options: { include_usage: true },
    });
    return drainChat(stream, `concurrent stream ${i}`);
  }));
  results.forEach((r, i) => {
    eq(r.contentChunks, TOKENS, `concurrent stream ${i}: content chunks`);
    eq(r.finish, 'length', `concurrent stream ${i}: finish_reason`);
    check(r.last && r.last.usage, `concurrent stream ${i}: no usage chunk`);
    eq(r.last.usage.completion_tokens, TOKENS, `concurrent stream ${i}: completion_tokens`);
    // role chunk + one per token (the last may carry finish_reason, or an empty finish
    // chunk follows) + the usage chunk
    check(r.n === TOKENS + 2 || r.n === TOKENS + 3, `concurrent stream ${i}: ${r.n} chunks`);
  });
}

async function testAbortedStream(client, gwPort) {
  const ac = new AbortController();
  const stream = await client.chat.completions.create({
    model: BASE_MODEL, messages: [{ role: 'user', content: 'a long answer' }],
    max_tokens: 4000, ignore_eos: true, stream: true,
  }, { signal: ac.signal });
  // The client ends the iteration quietly on abort (after chunks it had buffered) or
  // throws an abort error; either way the stream must stop long before its end.
  let seen = 0;
  try {
    for await (const chunk of stream) {
      check(chunk.object === 'chat.completion.chunk', 'aborted stream: chunk object');
      if (++seen === 3) ac.abort();
    }
  } catch (e) {
    if (!(e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError')) throw e;
  }
  check(seen >= 3 && seen < 1000, `aborted stream: ${seen} chunks`);
  // the next requests are fine
  for (let i = 0; i < 4; i++) {
    const r = await client.chat.completions.create({
      model: BASE_MODEL, messages: [{ role: 'user', content: `after ${i}` }], max_tokens: 3,
      ignore_eos: true,
    });
    eq(r.usage.completion_tokens, 3, 'after abort: completion_tokens');
  }
  const s = await client.chat.completions.create({
    model: BASE_MODEL, messages: [{ role: 'user', content: 'again' }], max_tokens: 5,
    ignore_eos: true, stream: true,
  });
  eq((await drainChat(s, 'stream after abort')).contentChunks, 5, 'stream after abort: chunks');
  // the gateway saw the client leave and no request is left on any pod
  const deadline = Date.now() + 5000;
  let m = '';
  while (Date.now() < deadline) {
    m = (await httpGet(`http://127.0.0.1:${gwPort}/metrics`)).body;
    if (gatewayMetric(m, 'brix_gateway_client_aborts_total') === 1 &&
        gatewayMetric(m, 'brix_gateway_pod_inflight_requests') === 0) return;
    await sleep(50);
  }
  fail(`after abort: client_aborts_total ${gatewayMetric(m, 'brix_gateway_client_aborts_total')}` +
       `, pod inflight ${gatewayMetric(m, 'brix_gateway_pod_inflight_requests')} (want 1, 0)`);
}

async function testUnknownModel(client) {
  let err = null;
  try {
    await client.chat.completions.create({
      model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }],
    });
  } catch (e) {
    err = e;
  }
  check(err, 'unknown model: the call succeeded');
  check(err instanceof OpenAI.NotFoundError,
    `unknown model: expected NotFoundError, got ${err.constructor.name}: ${err.message}`);
  eq(err.status, 404, 'unknown model: status');
  check(/no-such-model/.test(err.message), `unknown model: message "${err.message}"`);
  eq(err.code, 'model_not_found', 'unknown model: code');
  eq(err.param, 'model', 'unknown model: param');
  // and the gateway still serves
  const r = await client.completions.create({ model: BASE_MODEL, prompt: 'x', max_tokens: 1 });
  eq(r.usage.completion_tokens, 1, 'after unknown model: completion_tokens');
}

// ----------------------------------------------------------------- main --

async function main() {
  const [pa, pb, pg] = [await freePort(), await freePort(), await freePort()];
  const engineArgs = (port) => [
    'engine-sim', '--port', String(port), '--time-scale', '0.05',
    '--served-model-name', BASE_MODEL, '--enable-lora', '--max-loras', '4',
    '--lora-modules', `${ADAPTER}=/a`,
  ];
  const ea = start('engine-A', engineArgs(pa));
  const eb = start('engine-B', engineArgs(pb));
  const gw = start('gateway', [
    'gateway', '--port', String(pg), '--health-interval', '100ms',
    '--worker-urls', `http://127.0.0.1:${pa},http://127.0.0.1:${pb}`,
  ]);
  await waitFor(ea, `http://127.0.0.1:${pa}/health`, (r) => r.status === 200, '/health');
  await waitFor(eb, `http://127.0.0.1:${pb}/health`, (r) => r.status === 200, '/health');
  await waitFor(gw, `http://127.0.0.1:${pg}/metrics`,
    (r) => r.status === 200 && gatewayMetric(r.body, 'brix_gateway_pod_healthy') === 2,
    'two healthy pods');
  await waitFor(gw, `http://127.0.0.1:${pg}/readyz`, (r) => r.status === 200, '/readyz');

  const client = new OpenAI({
    baseURL: `http://127.0.0.1:${pg}/v1`, apiKey: 'x', maxRetries: 0, timeout: 30000,
  });
  const tests = [
    ['models', () => testModels(client)],
    ['chat', () => testChat(client)],
    ['chat stream with usage', () => testChatStream(client)],
    ['completions', () => testCompletions(client)],
    ['embeddings', () => testEmbeddings(client)],
    ['adapter as model', () => testAdapter(client)],
    ['64 concurrent streams', () => testConcurrentStreams(client)],
    ['aborted stream', () => testAbortedStream(client, pg)],
    ['unknown model', () => testUnknownModel(client)],
  ];
  const failed = [];
  for (const [name, fn] of tests) {
    try {
      await fn();
      console.log(`ok   ${name}`);
    } catch (e) {
      failed.push(name);
      console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
    }
  }

  // the gateway first (it drains), then the engines
  for (const p of [gw, ea, eb]) {
    try {
      const wasDead = !!p.exit;
      const ex = await stop(p);
      if (ex.code !== 0) {
        fail(`${p.name} ${wasDead ? 'had died' : 'exit after SIGTERM'}: code ${ex.code}, ` +
             `signal ${ex.signal}`);
      }
      const bad = badLines(p);
      if (bad.length) fail(`${p.name} log has error lines:\n${bad.slice(0, 20).join('\n')}`);
      console.log(`ok   ${p.name} shutdown`);
    } catch (e) {
      failed.push(`${p.name} shutdown`);
      const tail = p.log.split('\n').slice(-60).join('\n');
      console.log(`FAIL ${p.name} shutdown: ${e.message}\n--- ${p.name} output (tail) ---\n${tail}`);
    }
  }
  if (failed.length) fail(`${failed.length} of ${tests.length + 3} checks failed: ${failed.join(', ')}`);
  console.log(`all ${tests.length + 3} checks passed`);
}

main().then(() => {
  process.exit(0);
}, async (err) => {
  console.error(`FAIL: ${err && err.message ? err.message : err}`);
  for (const p of procs) {
    if (!p.exit) {
      p.child.kill('SIGKILL');
      await p.exitPromise;
    }
  }
  process.exit(1);
});
