// Helpers shared by the node integration tests (08, 12, 18).
'use strict';

const http = require('http');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');

function fail(msg) {
  throw new Error(msg);
}

function check(cond, msg) {
  if (!cond) fail(msg);
}

function eq(actual, want, what) {
  if (actual !== want) fail(`${what}: got ${JSON.stringify(actual)}, want ${JSON.stringify(want)}`);
}

// A loopback port nothing listens on (bound, read, released), also reserved
// against the other tests ctest runs in parallel by a file created O_EXCL in
// the same directory as harness.py's free_port() (see there for why).
const PORT_DIR = path.join(os.tmpdir(), 'brix-test-ports');

function kernelPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function freePort() {
  fs.mkdirSync(PORT_DIR, { recursive: true });
  for (let i = 0; i < 200; i++) {
    const port = await kernelPort();
    const file = path.join(PORT_DIR, String(port));
    try {
      if (Date.now() - fs.statSync(file).mtimeMs > 600000) fs.unlinkSync(file);
    } catch (e) { /* no reservation */ }
    try {
      fs.closeSync(fs.openSync(file, 'wx'));
      return port;
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
    }
  }
  throw new Error('no free port found that no other test has reserved');
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// GET url → { status, body }; status 0 when nothing answered within 2 s.
function httpGet(url) {
  return new Promise((resolve) => {
    const req = http.get(url, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', () => resolve({ status: 0, body: '' }));
    req.setTimeout(2000, () => {
      req.destroy();
      resolve({ status: 0, body: '' });
    });
  });
}

module.exports = { fail, check, eq, freePort, sleep, httpGet };
