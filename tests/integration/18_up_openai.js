// The issue-7 "done when", as a new user tries it: `brix up -c examples/local.yaml` (the file
// `make run` uses, on free ports and a private state directory), then the official `openai`
// npm client uses the base model and both adapters, plain and streaming; `brix get adapters`
// shows where each is loaded; SIGINT stops everything with exit 0 and no ERROR or sanitizer
// line in any log.
//
// Needs BRIX_BIN, BRIX_SRC and NODE_PATH (tests/compat/node_modules); ctest sets them.
'use strict';

const { spawn, execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const OpenAI = require('openai');
const { fail, check, eq, freePort, sleep, httpGet } = require('./jslib');

async function main() {
  const bin = process.env.BRIX_BIN;
  const src = process.env.BRIX_SRC;
  check(bin && src, 'BRIX_BIN / BRIX_SRC not set (run through ctest)');
  const gw = await freePort();
  const api = await freePort();
  const state = fs.mkdtempSync(path.join(os.tmpdir(), 'brix-up-js-'));
  const up = { log: '', exit: null };
  up.child = spawn(bin, ['up', '-c', path.join(src, 'examples/local.yaml'), '--port', String(gw),
    '--api-port', String(api), '--state-dir', state], { stdio: ['ignore', 'pipe', 'pipe'] });
  up.child.stdout.on('data', (d) => { up.log += d.toString(); });
  up.child.stderr.on('data', (d) => { up.log += d.toString(); });
  up.exited = new Promise((resolve) => up.child.on('exit', (code, signal) => {
    up.exit = { code, signal };
    resolve(up.exit);
  }));
  try {
    const deadline = Date.now() + 90000;
    while (!up.log.includes('brix is up.')) {
      if (up.exit) fail(`brix up exited: ${JSON.stringify(up.exit)}\n${up.log}`);
      if (Date.now() > deadline) fail(`brix up not ready in 90 s:\n${up.log}`);
      await sleep(100);
    }
    check(up.log.includes(`http://127.0.0.1:${gw}/v1`), `banner names the API:\n${up.log}`);

    const client = new OpenAI({ baseURL: `http://127.0.0.1:${gw}/v1`, apiKey: 'anything' });
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    for (const want of ['llama-3-8b', 'sql-lora', 'chat-lora']) {
      check(ids.includes(want), `models.list lacks ${want}: ${ids}`);
    }
    for (const model of ['llama-3-8b', 'sql-lora', 'chat-lora']) {
      const r = await client.chat.completions.create({
        model, messages: [{ role: 'user', content: 'Hello!' }], max_tokens: 5, ignore_eos: true,
      });
      eq(r.model, model, `${model}: response model`);
      eq(r.usage.completion_tokens, 5, `${model}: completion_tokens`);
      const stream = await client.chat.completions.create({
        model, messages: [{ role: 'user', content: 'Stream!' }], max_tokens: 4, ignore_eos: true,
        stream: true, stream_options: { include_usage: true },
      });
      let content = 0;
      let usage = null;
      for await (const chunk of stream) {
        eq(chunk.model, model, `${model}: chunk model`);
        for (const ch of chunk.choices) if (ch.delta && ch.delta.content) content++;
        if (chunk.usage) usage = chunk.usage;
      }
      eq(content, 4, `${model}: streamed content chunks`);
      check(usage && usage.completion_tokens === 4, `${model}: stream usage ${JSON.stringify(usage)}`);
    }
    // the token is found in the state directory (after `make run`: .brix), never typed
    const table = execFileSync(bin, ['get', 'adapters', '--server', `http://127.0.0.1:${api}`,
      '--state-dir', state]).toString();
    check(/^sql-lora\s+llama-3-8b\s+Running\s+1\s+1\s+2\s+llama-3-8b-[01]\s/m.test(table),
      `brix get adapters:\n${table}`);
    check(/^chat-lora\s+llama-3-8b\s+Running\s+2\s+2\s+2\s+llama-3-8b-0,llama-3-8b-1\s/m.test(table),
      `brix get adapters:\n${table}`);
    const status = await httpGet(`http://127.0.0.1:${api}/`);
    eq(status.status, 401, 'status page without the login link');
    const link = up.log.match(/status page\s+(http:\/\/\S+\/login\?code=\w+)/);
    check(link, `banner has a login link:\n${up.log}`);
    eq((await httpGet(link[1])).status, 303, 'login link');
  } finally {
    if (!up.exit) up.child.kill('SIGINT');
    const r = await Promise.race([up.exited, sleep(60000).then(() => null)]);
    if (!r) {
      up.child.kill('SIGKILL');
      fail('brix up did not stop within 60 s of SIGINT');
    }
  }
  eq(up.exit.code, 0, `brix up exit code\n${up.log}`);
  const logs = path.join(state, 'logs');
  for (const f of fs.readdirSync(logs)) {
    const bad = fs.readFileSync(path.join(logs, f), 'utf8').split('\n')
      .filter((l) => / ERROR /.test(l) || /Sanitizer|runtime error:/.test(l));
    check(bad.length === 0, `${f}: ${bad.slice(0, 5).join('\n')}`);
  }
  console.log('ok   brix up + openai client: base model and both adapters, plain and streaming');
  process.exit(0); // the stop timeout's timer would keep node alive
}

main().catch((e) => fail(e.stack || String(e)));
