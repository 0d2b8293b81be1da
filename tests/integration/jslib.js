// Helpers shared by the node integration tests (08, 12, 18).
'use strict';

const http = require('http');
const net = require('net');

function fail(msg) {
  throw new Error(msg);
}

function check(cond, msg) {
  if (!cond) fail(msg);
}

function eq(actual, want, what) {
  if (actual !== want) fail(`${what}: got ${JSON.stringify(actual)}, want ${JSON.stringify(want)}`);
}

// A loopback port nothing listens on (bound, read, released).
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
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
