// API compatibility of `brix engine-sim` with the official `openai` npm client:
// starts its own engine on a free loopback port, talks to it only through the
// client (models, chat and text completions with and without streaming,
// embeddings, a LoRA adapter as the model, error classes), then stops it with
// SIGTERM and fails on a non-zero exit, an ERROR log line or a sanitizer report.
//
// Needs BRIX_BIN (the brix binary) and NODE_PATH pointing at
// tests/compat/node_modules; ctest sets both.
'use strict';

const { spawn } = require('child_process');
const http = require('http');
const OpenAI = require('openai');
const { fail, check, eq, freePort, sleep } = require('./jslib');

const BASE_MODEL = 'llama-3-8b';
const ADAPTER = 'sql';
const EMBED_DIM = 4096;

let engine = null;
let engineLog = '';
let engineExit = null; // { code, signal } once it exited

function getStatus(url) {
  return new Promise((resolve) => {
    const req = http.get(url, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', () => resolve(0));
    req.setTimeout(1000, () => {
      req.destroy();
      resolve(0);
    });
  });
}

function startEngine(port) {
  const bin = process.env.BRIX_BIN;
  check(bin, 'BRIX_BIN is not set (run through ctest)');
  const args = [
    'engine-sim', '--port', String(port), '--time-scale', '0.05',
    '--served-model-name', BASE_MODEL, '--enable-lora', '--max-loras', '4',
    '--lora-modules', `${ADAPTER}=/a`,
  ];
  engine = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
  engine.stdout.on('data', (d) => { engineLog += d.toString(); });
  engine.stderr.on('data', (d) => { engineLog += d.toString(); });
  engine.exitPromise = new Promise((resolve) => {
    engine.on('exit', (code, signal) => {
      engineExit = { code, signal };
      resolve(engineExit);
    });
  });
}

async function waitHealthy(port) {
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    if (engineExit) fail(`engine exited during start-up: ${JSON.stringify(engineExit)}`);
    if ((await getStatus(`http://127.0.0.1:${port}/health`)) === 200) return;
    await sleep(100);
  }
  fail('engine did not become healthy within 30 s');
}

async function stopEngine() {
  if (!engine || engineExit) return engineExit;
  engine.kill('SIGTERM');
  const timeout = sleep(20000).then(() => null);
  const r = await Promise.race([engine.exitPromise, timeout]);
  if (!r) {
    engine.kill('SIGKILL');
    await engine.exitPromise;
    fail('engine did not exit within 20 s of SIGTERM');
  }
  return r;
}

async function expectError(promise, cls, status, what) {
  let err = null;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  check(err, `${what}: expected ${cls.name}, but the call succeeded`);
  if (!(err instanceof cls)) {
    fail(`${what}: expected ${cls.name}, got ${err && err.constructor && err.constructor.name}: ` +
         `${err && err.message}`);
  }
  eq(err.status, status, `${what}: status`);
  return err;
}

function checkUsage(u, what) {
  check(u && typeof u === 'object', `${what}: no usage object`);
  for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens']) {
    check(Number.isInteger(u[k]) && u[k] >= 0, `${what}: usage.${k} is ${u[k]}`);
  }
  eq(u.total_tokens, u.prompt_tokens + u.completion_tokens, `${what}: usage.total_tokens`);
  check(u.prompt_tokens > 0, `${what}: usage.prompt_tokens is 0`);
}

// ---------------------------------------------------------------- tests --

async function testModels(client) {
  const ids = [];
  for await (const m of client.models.list()) {
    eq(m.object, 'model', `model ${m.id}: object`);
    ids.push(m.id);
  }
  check(ids.includes(BASE_MODEL), `models.list: ${JSON.stringify(ids)} lacks ${BASE_MODEL}`);
  check(ids.includes(ADAPTER), `models.list: ${JSON.stringify(ids)} lacks adapter ${ADAPTER}`);
  eq(ids.length, 2, 'models.list: number of models');
}

async function testChat(client) {
  const messages = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Say something.' },
  ];
  // Runs to max_tokens with ignore_eos (a vLLM parameter: passed through as is).
  const r = await client.chat.completions.create({
    model: BASE_MODEL, messages, max_tokens: 7, ignore_eos: true,
  });
  eq(r.object, 'chat.completion', 'chat: object');
  eq(r.model, BASE_MODEL, 'chat: model');
  check(typeof r.id === 'string' && r.id.length > 0, 'chat: id');
  eq(r.choices.length, 1, 'chat: choices');
  const c = r.choices[0];
  eq(c.index, 0, 'chat: index');
  eq(c.message.role, 'assistant', 'chat: role');
  check(typeof c.message.content === 'string' && c.message.content.length > 0,
    'chat: empty content');
  eq(c.finish_reason, 'length', 'chat: finish_reason with ignore_eos');
  checkUsage(r.usage, 'chat');
  eq(r.usage.completion_tokens, 7, 'chat: usage.completion_tokens');

  // Without ignore_eos it may stop early, but never beyond max_tokens.
  const r2 = await client.chat.completions.create({ model: BASE_MODEL, messages, max_tokens: 64 });
  checkUsage(r2.usage, 'chat (eos)');
  const fr = r2.choices[0].finish_reason;
  check(fr === 'stop' || fr === 'length', `chat (eos): finish_reason ${fr}`);
  check(r2.usage.completion_tokens >= 1 && r2.usage.completion_tokens <= 64,
    `chat (eos): completion_tokens ${r2.usage.completion_tokens}`);
  if (fr === 'length') eq(r2.usage.completion_tokens, 64, 'chat (eos): length at max_tokens');
  eq(r2.usage.prompt_tokens, r.usage.prompt_tokens, 'chat: same prompt, same prompt_tokens');
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
  let text = '';
  let contentChunks = 0;
  let finish = null;
  let last = null;
  let n = 0;
  let id = null;
  for await (const chunk of stream) {
    n++;
    eq(chunk.object, 'chat.completion.chunk', 'chat stream: object');
    if (id === null) id = chunk.id;
    eq(chunk.id, id, 'chat stream: the same id in every chunk');
    check(chunk.usage === undefined || chunk.usage === null || chunk.choices.length === 0,
      'chat stream: usage only in the final choices-less chunk');
    for (const ch of chunk.choices) {
      const d = ch.delta || {};
      if (typeof d.content === 'string' && d.content.length > 0) {
        text += d.content;
        contentChunks++;
      }
      if (ch.finish_reason) {
        check(finish === null, 'chat stream: two finish_reasons');
        finish = ch.finish_reason;
      }
    }
    last = chunk;
  }
  check(n > 2, `chat stream: only ${n} chunks`);
  check(text.length > 0, 'chat stream: empty concatenated content');
  eq(finish, 'length', 'chat stream: finish_reason');
  check(last && last.usage, 'chat stream: the last chunk has no usage');
  eq(last.choices.length, 0, 'chat stream: the usage chunk has choices');
  checkUsage(last.usage, 'chat stream');
  eq(last.usage.completion_tokens, 9, 'chat stream: usage.completion_tokens with ignore_eos');
  // One output token per content chunk.
  eq(contentChunks, last.usage.completion_tokens, 'chat stream: content chunks');

  // Without include_usage there is no usage chunk.
  const s2 = await client.chat.completions.create({
    model: BASE_MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 3, stream: true,
  });
  for await (const chunk of s2) {
    check(!chunk.usage, 'chat stream without include_usage: got usage');
  }
}

async function testCompletions(client) {
  const r = await client.completions.create({
    model: BASE_MODEL, prompt: 'Once upon a time', max_tokens: 8, ignore_eos: true,
  });
  eq(r.object, 'text_completion', 'completion: object');
  eq(r.model, BASE_MODEL, 'completion: model');
  eq(r.choices.length, 1, 'completion: choices');
  check(typeof r.choices[0].text === 'string' && r.choices[0].text.length > 0,
    'completion: empty text');
  eq(r.choices[0].finish_reason, 'length', 'completion: finish_reason');
  checkUsage(r.usage, 'completion');
  eq(r.usage.completion_tokens, 8, 'completion: usage.completion_tokens');

  const stream = await client.completions.create({
    model: BASE_MODEL, prompt: 'Once upon a time', max_tokens: 6, ignore_eos: true,
    stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let pieces = 0;
  let finish = null;
  let last = null;
  for await (const chunk of stream) {
    eq(chunk.object, 'text_completion', 'completion stream: object');
    for (const ch of chunk.choices) {
      if (typeof ch.text === 'string' && ch.text.length > 0) {
        text += ch.text;
        pieces++;
      }
      if (ch.finish_reason) finish = ch.finish_reason;
    }
    last = chunk;
  }
  check(text.length > 0, 'completion stream: empty text');
  eq(finish, 'length', 'completion stream: finish_reason');
  check(last && last.usage, 'completion stream: the last chunk has no usage');
  checkUsage(last.usage, 'completion stream');
  eq(last.usage.completion_tokens, 6, 'completion stream: usage.completion_tokens');
  eq(pieces, 6, 'completion stream: text chunks');
  eq(last.usage.prompt_tokens, r.usage.prompt_tokens, 'completion stream: prompt_tokens');
}

async function testEmbeddings(client) {
  // The client asks for base64 by default and decodes it.
  const r = await client.embeddings.create({ model: BASE_MODEL, input: 'hello world' });
  eq(r.object, 'list', 'embeddings: object');
  eq(r.data.length, 1, 'embeddings: data');
  const v = r.data[0].embedding;
  check(Array.isArray(v), 'embeddings: embedding is not an array');
  eq(v.length, EMBED_DIM, 'embeddings: vector length');
  let norm = 0;
  for (const x of v) {
    check(Number.isFinite(x), 'embeddings: non-finite component');
    norm += x * x;
  }
  check(Math.abs(Math.sqrt(norm) - 1) < 1e-3, `embeddings: L2 norm ${Math.sqrt(norm)}`);
  check(r.usage && r.usage.prompt_tokens > 0, 'embeddings: usage.prompt_tokens');

  // Explicit float, two inputs; the same input gives the same vector.
  const r2 = await client.embeddings.create({
    model: BASE_MODEL, input: ['hello world', 'something else'], encoding_format: 'float',
  });
  eq(r2.data.length, 2, 'embeddings (float): data');
  for (const d of r2.data) eq(d.embedding.length, EMBED_DIM, 'embeddings (float): length');
  eq(r2.data[1].index, 1, 'embeddings (float): index');
  for (let i = 0; i < EMBED_DIM; i += 97) {
    check(Math.abs(r2.data[0].embedding[i] - v[i]) < 1e-6,
      `embeddings: component ${i} differs between base64 and float`);
  }
}

async function testAdapter(client) {
  const r = await client.chat.completions.create({
    model: ADAPTER, messages: [{ role: 'user', content: 'SELECT' }], max_tokens: 4,
    ignore_eos: true,
  });
  eq(r.model, ADAPTER, 'adapter: model');
  eq(r.usage.completion_tokens, 4, 'adapter: completion_tokens');
  const c = await client.completions.create({ model: ADAPTER, prompt: 'x', max_tokens: 2 });
  eq(c.model, ADAPTER, 'adapter completion: model');
}

async function testErrors(client) {
  const nf = await expectError(
    client.chat.completions.create({
      model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }],
    }),
    OpenAI.NotFoundError, 404, 'unknown model (chat)');
  check(/no-such-model/.test(nf.message), `unknown model: message "${nf.message}"`);
  await expectError(
    client.completions.create({ model: 'no-such-model', prompt: 'hi' }),
    OpenAI.NotFoundError, 404, 'unknown model (completions)');
  await expectError(
    client.embeddings.create({ model: 'no-such-model', input: 'hi' }),
    OpenAI.NotFoundError, 404, 'unknown model (embeddings)');

  await expectError(
    client.chat.completions.create({ model: BASE_MODEL, messages: [] }),
    OpenAI.BadRequestError, 400, 'empty messages');
  await expectError(
    client.chat.completions.create({
      model: BASE_MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: -1,
    }),
    OpenAI.BadRequestError, 400, 'negative max_tokens');
  await expectError(
    client.chat.completions.create({
      model: BASE_MODEL, messages: [{ role: 'user', content: 'hi' }], temperature: 5,
    }),
    OpenAI.BadRequestError, 400, 'temperature out of range');
  await expectError(
    client.completions.create({ model: BASE_MODEL, prompt: 'hi', max_tokens: 100000000 }),
    OpenAI.BadRequestError, 400, 'max_tokens beyond the context');
  await expectError(
    client.chat.completions.create({
      model: BASE_MODEL, messages: [{ role: 'user', content: 'hi' }],
      stream_options: { include_usage: true },
    }),
    OpenAI.BadRequestError, 400, 'stream_options without stream');
  // Both are APIError subclasses carrying the server's error body.
  const e = await expectError(
    client.embeddings.create({ model: BASE_MODEL, input: 'x', encoding_format: 'hex' }),
    OpenAI.BadRequestError, 400, 'bad encoding_format');
  check(e instanceof OpenAI.APIError, 'BadRequestError is not an APIError');
  check(e.error && typeof e.error.message === 'string', 'error body has no message');
}

// ----------------------------------------------------------------- main --

async function main() {
  const port = await freePort();
  startEngine(port);
  await waitHealthy(port);
  const client = new OpenAI({
    baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'x', maxRetries: 0, timeout: 30000,
  });
  const tests = [testModels, testChat, testChatStream, testCompletions, testEmbeddings,
    testAdapter, testErrors];
  for (const t of tests) {
    await t(client);
    console.log(`ok ${t.name}`);
  }
  // Concurrent requests, to exercise batching through the client too.
  const many = await Promise.all(Array.from({ length: 8 }, (_, i) =>
    client.chat.completions.create({
      model: i % 2 ? ADAPTER : BASE_MODEL,
      messages: [{ role: 'user', content: `request ${i}` }],
      max_tokens: 5, ignore_eos: true,
    })));
  for (const r of many) eq(r.usage.completion_tokens, 5, 'concurrent: completion_tokens');
  console.log('ok concurrent');

  const ex = await stopEngine();
  if (ex.code !== 0) fail(`engine exit after SIGTERM: code ${ex.code}, signal ${ex.signal}`);
  const bad = engineLog.split('\n').filter((l) =>
    / ERROR /.test(l) || /Sanitizer|runtime error:|SUMMARY: /.test(l));
  if (bad.length) fail(`engine log has error lines:\n${bad.join('\n')}`);
  console.log('ok shutdown');
}

main().then(() => {
  process.exit(0);
}, async (err) => {
  console.error(`FAIL: ${err && err.stack ? err.stack : err}`);
  if (engine && !engineExit) {
    engine.kill('SIGKILL');
    await engine.exitPromise;
  }
  const tail = engineLog.split('\n').slice(-40).join('\n');
  console.error(`--- engine output (last 40 lines) ---\n${tail}`);
  process.exit(1);
});
