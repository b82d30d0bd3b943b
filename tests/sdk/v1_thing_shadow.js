// SPDX-License-Identifier: Apache-2.0
// The AWS IoT Device SDK v1 (npm aws-iot-device-sdk, thingShadow) through a device's whole
// shadow flow against gnomon, over mosquitto's TLS listener with a client certificate, the way
// a device developer uses it against AWS. Usage: node v1_thing_shadow.js '{settings}' (see
// common.js); run by tests/integration/sdk_conformance_test.cc.
'use strict';

const awsIot = require('aws-iot-device-sdk');
const { cfg, check, finish, rest, sleep, within, isErrorDocument } = require('./common');

let timeouts = 0;

function options(clientId) {
  return {
    host: cfg.host,
    port: cfg.port,
    protocol: 'mqtts',
    caPath: cfg.ca,
    certPath: cfg.cert,
    keyPath: cfg.key,
    clientId,
    operationTimeout: 5000,
    reconnectPeriod: 500,
  };
}

function connect(clientId) {
  const ts = awsIot.thingShadow(options(clientId));
  ts.on('timeout', () => timeouts++);
  return within(10000, null, (done) => {
    ts.once('connect', () => done(ts));
    ts.on('error', (e) => console.error(`${clientId}: ${e}`));
  });
}

function register(ts, thing, opts) {
  return within(10000, 'no SUBACK', (done) => {
    ts.register(thing, opts, (err, failed) => done(err ? `${err} ${JSON.stringify(failed)}` : null));
  });
}

function end(ts) {
  return within(5000, null, (done) => ts.end(false, () => done(null)));
}

// One shadow operation: resolves with {stat, token, state} from the SDK's 'status' event for
// the token the operation returned ('timeout' when the SDK gave up waiting for its answer).
function operate(ts, thing, kind, state) {
  return new Promise((resolve) => {
    let token = null;
    const onStatus = (name, stat, tok, obj) => {
      if (name === thing && tok === token) {
        stop();
        resolve({ stat, token: tok, state: obj });
      }
    };
    const onTimeout = (name, tok) => {
      if (name === thing && tok === token) {
        stop();
        resolve({ stat: 'timeout', token: tok, state: null });
      }
    };
    function stop() {
      ts.removeListener('status', onStatus);
      ts.removeListener('timeout', onTimeout);
    }
    ts.on('status', onStatus);
    ts.on('timeout', onTimeout);
    token = kind === 'update' ? ts.update(thing, state)
          : kind === 'get' ? ts.get(thing)
          : ts.delete(thing);
    if (token === null) {
      stop();
      resolve({ stat: 'busy', token: null, state: null });
    }
  });
}

async function main() {
  const thing = cfg.thing;
  const clientId = `${thing}-device`;

  // Register: TLS with the device's certificate, every shadow topic subscribed.
  const dev = await connect(clientId);
  if (!check('connects over TLS with a client certificate', dev !== null, 'no CONNACK in 10 s')) {
    finish();
  }
  const reg = await register(dev, thing, { persistentSubscribe: true });
  check('registers the thing (every subscription granted)', reg === null, reg);

  // Update with the SDK's own token: accepted, the token echoed (else the SDK times out).
  let r = await operate(dev, thing, 'update', { state: { reported: { fw: '0.9', led: 'off' } } });
  check('update is accepted and answered with its clientToken',
        r.stat === 'accepted' && r.token === `${clientId}-0` && r.state.version === 1, r);

  r = await operate(dev, thing, 'get');
  check('get is accepted and answered with its clientToken',
        r.stat === 'accepted' && r.state.version === 1 && r.state.state.reported.fw === '0.9' &&
            r.state.state.delta === undefined, r);

  // The back end sets desired over REST: the device gets a delta.
  const delta = within(5000, null, (done) => dev.once('delta', (name, obj) => done(obj)));
  const written = await rest('POST', `/v1/things/${thing}/shadow`,
                             { state: { desired: { led: 'on' } } });
  const d = await delta;
  check('a desired state written over REST reaches the device as a delta',
        written.status === 200 && d !== null && d.state.led === 'on' && d.version === 2,
        { written, delta: d });

  r = await operate(dev, thing, 'update', { state: { reported: { led: 'on' } } });
  check('reporting the desired value is accepted (the SDK sends the version it knows)',
        r.stat === 'accepted' && r.state.version === 3, r);
  r = await operate(dev, thing, 'get');
  check('then get shows no delta', r.stat === 'accepted' && r.state.state.delta === undefined &&
        r.state.state.desired.led === 'on' && r.state.state.reported.led === 'on', r);

  // A second client that subscribes per operation misses a write and sends a stale version.
  const app = await connect(`${thing}-app`);
  check('a second client connects', app !== null, 'no CONNACK');
  check('and registers without persistent subscriptions',
        (await register(app, thing, { persistentSubscribe: false })) === null, 'no SUBACK');
  r = await operate(app, thing, 'get');
  check('its get learns version 3', r.stat === 'accepted' && r.state.version === 3, r);
  const bump = await rest('POST', `/v1/things/${thing}/shadow`, { state: { reported: { t: 1 } } });
  check('a REST write makes version 4', bump.status === 200 && bump.body.version === 4, bump);
  r = await operate(app, thing, 'update', { state: { reported: { fw: '1.1' } } });
  check('its update with the stale version is rejected 409 with its clientToken',
        r.stat === 'rejected' && isErrorDocument(r.state, 409), r);
  r = await operate(app, thing, 'get');
  r = r.stat === 'accepted' ? await operate(app, thing, 'update', { state: { reported: { fw: '1.1' } } }) : r;
  check('after a get its update is accepted', r.stat === 'accepted' && r.state.version === 5, r);
  await end(app);

  // Delete, then get and delete the deleted shadow: answered, never a timeout.
  r = await operate(dev, thing, 'delete');
  check('delete is accepted and answered with its clientToken',
        r.stat === 'accepted' && r.state.version === 5, r);
  r = await operate(dev, thing, 'get');
  check('get of the deleted shadow is rejected 404 with its clientToken',
        r.stat === 'rejected' && isErrorDocument(r.state, 404), r);
  r = await operate(dev, thing, 'delete');
  check('delete of the deleted shadow is rejected 404 with its clientToken',
        r.stat === 'rejected' && isErrorDocument(r.state, 404), r);
  // The SDK keeps the deleted shadow's version and sends it: the shadow is recreated at 6.
  r = await operate(dev, thing, 'update', { state: { reported: { fw: '2.0' } } });
  check('an update after the delete (with the deleted version) recreates it at the next version',
        r.stat === 'accepted' && r.state.version === 6, r);
  const doc = await rest('GET', `/v1/things/${thing}/shadow`);
  check('REST reads the recreated shadow', doc.status === 200 && doc.body.version === 6 &&
        doc.body.state.reported.fw === '2.0' && doc.body.state.desired === undefined, doc);
  await end(dev);

  // A device restart: the SDK numbers its tokens from 0 again. Every update is applied.
  const bootThing = `${thing}-boot`;
  const bootId = `${thing}-rebooting`;
  let boot = await connect(bootId);
  await register(boot, bootThing, { persistentSubscribe: true });
  const first = await operate(boot, bootThing, 'update', { state: { reported: { fw: '1.0' } } });
  const second = await operate(boot, bootThing, 'update', { state: { reported: { fw: '0.9' } } });
  check('first boot: two updates accepted', first.stat === 'accepted' &&
        second.stat === 'accepted' && second.state.version === 2, { first, second });
  await end(boot);
  boot = await connect(bootId);
  await register(boot, bootThing, { persistentSubscribe: true });
  r = await operate(boot, bootThing, 'update', { state: { reported: { fw: '1.0' } } });
  check('after a restart the first update (same token, same bytes) is applied, not replayed',
        r.stat === 'accepted' && r.token === first.token && r.state.version === 3, r);
  const booted = await rest('GET', `/v1/things/${bootThing}/shadow`);
  check('and the shadow holds what the device reported', booted.status === 200 &&
        booted.body.state.reported.fw === '1.0' && booted.body.version === 3, booted);
  r = await operate(boot, bootThing, 'update', { state: { reported: { fw: '1.1' } } });
  check('the second update (a token seen before, another body) is applied too',
        r.stat === 'accepted' && r.token === second.token && r.state.version === 4, r);
  await end(boot);

  // Named shadows through the SDK's device client (thingShadow has no named shadows).
  const device = awsIot.device(options(`${thing}-named`));
  const got = [];
  device.on('message', (topic, payload) => got.push({ topic, doc: JSON.parse(payload.toString()) }));
  const base = `$aws/things/${thing}/shadow/name/cfg`;
  const subscribed = await within(10000, 'no SUBACK', (done) => {
    device.on('connect', () => device.subscribe(`${base}/#`, { qos: 1 }, (err) => done(err || null)));
  });
  check('the device client subscribes to a named shadow', subscribed === null, subscribed);
  const answer = async (topic, token) => {
    for (let i = 0; i < 100; i++) {
      const hit = got.find((m) => m.topic === topic && m.doc.clientToken === token);
      if (hit) {
        return hit.doc;
      }
      await sleep(50);
    }
    return null;
  };
  device.publish(`${base}/update`, JSON.stringify({ state: { desired: { rate: 5 } }, clientToken: 'n-1' }), { qos: 1 });
  let a = await answer(`${base}/update/accepted`, 'n-1');
  check('named shadow: update accepted with its clientToken', a !== null && a.version === 1, a);
  device.publish(`${base}/get`, JSON.stringify({ clientToken: 'n-2' }), { qos: 1 });
  a = await answer(`${base}/get/accepted`, 'n-2');
  check('named shadow: get accepted with its clientToken',
        a !== null && a.state.delta.rate === 5, a);
  device.publish(`${base}/delete`, JSON.stringify({ clientToken: 'n-3' }), { qos: 1 });
  a = await answer(`${base}/delete/accepted`, 'n-3');
  check('named shadow: delete accepted with its clientToken', a !== null && a.version === 1, a);
  device.publish(`${base}/get`, JSON.stringify({ clientToken: 'n-4' }), { qos: 1 });
  a = await answer(`${base}/get/rejected`, 'n-4');
  check('named shadow: get of the deleted shadow rejected 404 with its clientToken',
        isErrorDocument(a, 404) && a.message === 'No shadow exists with name: cfg', a);
  await within(5000, null, (done) => device.end(false, () => done(null)));

  check('no SDK operation timed out', timeouts === 0, `${timeouts} timeouts`);
  finish();
}

main().catch((e) => {
  check('the scenario script ran', false, e.stack || String(e));
  finish();
});
