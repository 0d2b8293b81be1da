// Helpers shared by the node integration tests (08, 12).
'use strict';

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

module.exports = { fail, check, eq, freePort, sleep };
