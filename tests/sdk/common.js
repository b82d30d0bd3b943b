// SPDX-License-Identifier: Apache-2.0
// What the SDK scenario scripts share: their settings, the REST client, and the report that
// sdk_conformance_test.cc reads ("ok - NAME" / "not ok - NAME: WHY", then a summary line).
'use strict';

const cfg = JSON.parse(process.argv[2] || '{}');
for (const key of ['host', 'port', 'ca', 'cert', 'key', 'api', 'thing']) {
  if (cfg[key] === undefined) {
    console.error(`missing setting '${key}' in ${process.argv[2]}`);
    process.exit(2);
  }
}

let passed = 0;
let failed = 0;

function check(name, ok, detail) {
  if (ok) {
    passed++;
    console.log(`ok - ${name}`);
  } else {
    failed++;
    console.log(`not ok - ${name}: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`);
  }
  return ok;
}

function finish() {
  console.log(`scenarios: ${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

// A REST call to gnomon's API; the body is JSON or null.
async function rest(method, path, body, headers) {
  const res = await fetch(cfg.api + path, {
    method,
    headers: Object.assign({ 'content-type': 'application/json' }, headers || {}),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch (e) {
    json = null;
  }
  return { status: res.status, body: json, text };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Resolves with what `subscribe(resolve)` hands over, or with `fallback` after `ms`.
function within(ms, fallback, subscribe) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(fallback), ms);
    subscribe((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

// An AWS error document: code, message and timestamp (numbers and a string), as AWS sends it.
function isErrorDocument(doc, code) {
  return doc !== null && typeof doc === 'object' && doc.code === code &&
         typeof doc.message === 'string' && doc.message.length > 0 &&
         (typeof doc.timestamp === 'number' || doc.timestamp instanceof Date);
}

// The whole run must end: a hung SDK call is a failure, not a hung test.
setTimeout(() => {
  console.log('not ok - the run finished in time: still running after 120 s');
  failed++;
  finish();
}, 120000).unref();

module.exports = { cfg, check, finish, rest, sleep, within, isErrorDocument };
