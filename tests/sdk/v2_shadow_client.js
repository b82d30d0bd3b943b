// SPDX-License-Identifier: Apache-2.0
// The AWS IoT Device SDK v2 (npm aws-iot-device-sdk-v2: the AWS CRT's MQTT 5 client and the
// IotShadowClientv2 request-response shadow client) through a device's shadow flow against
// gnomon, over mosquitto's TLS listener with a client certificate. Its requests carry a fresh
// clientToken each and match answers by it: an answer without the token is a timeout.
// Usage: node v2_shadow_client.js '{settings}' (see common.js).
'use strict';

const { iot, mqtt5, iotshadow } = require('aws-iot-device-sdk-v2');
const { cfg, check, finish, rest, within, isErrorDocument } = require('./common');

function newClient(clientId) {
  const builder = iot.AwsIotMqtt5ClientConfigBuilder.newDirectMqttBuilderWithMtlsFromPath(
      cfg.host, cfg.cert, cfg.key);
  builder.withCertificateAuthorityFromPath(undefined, cfg.ca);
  builder.withPort(cfg.port);
  builder.withConnectProperties({ clientId, keepAliveIntervalSeconds: 30 });
  return new mqtt5.Mqtt5Client(builder.build());
}

// The promise's value, or {error} with what the SDK threw (a ServiceError carries the modeled
// error document of a rejection).
async function outcome(promise) {
  try {
    return { value: await promise };
  } catch (e) {
    return { error: e };
  }
}

async function main() {
  const thing = cfg.thing;
  const client = newClient(`${thing}-v2`);
  const connected = within(10000, 'no CONNACK in 10 s', (done) => {
    client.on('connectionSuccess', () => done(null));
    client.on('connectionFailure', (e) => done(`connection failed: ${e.error}`));
  });
  client.start();
  const conn = await connected;
  if (!check('MQTT 5 client connects over TLS with a client certificate', conn === null, conn)) {
    finish();
  }
  const shadow = iotshadow.IotShadowClientv2.newFromMqtt5(client, {
    maxRequestResponseSubscriptions: 4,
    maxStreamingSubscriptions: 4,
    operationTimeoutInSeconds: 5,
  });

  // Deltas, through the SDK's streaming operation.
  const deltas = [];
  const stream = shadow.createShadowDeltaUpdatedStream({ thingName: thing });
  const streaming = within(10000, 'no subscription', (done) => {
    stream.on('subscriptionStatus', (ev) => done(ev.type === 0 ? null : `status ${ev.type}`));
  });
  stream.on('incomingPublish', (ev) => deltas.push(ev.message));
  stream.open();
  check('the delta stream subscribes', (await streaming) === null, 'no SUBACK');

  let r = await outcome(shadow.getShadow({ thingName: thing }));
  check('get of a shadow that does not exist is rejected 404 (matched by its clientToken)',
        r.error !== undefined && isErrorDocument(r.error.modeledError, 404),
        r.error ? { message: r.error.message, modeled: r.error.modeledError } : r.value);

  r = await outcome(shadow.updateShadow({
    thingName: thing, state: { reported: { fw: '0.9', led: 'off' } },
  }));
  check('update is accepted (matched by its clientToken)',
        r.value !== undefined && r.value.version === 1 && r.value.state.reported.fw === '0.9',
        r.error ? r.error.message : r.value);

  const written = await rest('POST', `/v1/things/${thing}/shadow`,
                             { state: { desired: { led: 'on' } } });
  const delta = await within(5000, null, (done) => {
    const poll = setInterval(() => {
      if (deltas.length > 0) {
        clearInterval(poll);
        done(deltas[0]);
      }
    }, 50);
  });
  check('a desired state written over REST reaches the device as a delta',
        written.status === 200 && delta !== null && delta.state.led === 'on' &&
            delta.version === 2, { written: written.status, delta });

  r = await outcome(shadow.getShadow({ thingName: thing }));
  check('get is accepted with the delta',
        r.value !== undefined && r.value.version === 2 && r.value.state.delta.led === 'on',
        r.error ? r.error.message : r.value);

  r = await outcome(shadow.updateShadow({ thingName: thing, version: 1,
                                          state: { reported: { led: 'on' } } }));
  check('an update with a stale version is rejected 409',
        r.error !== undefined && isErrorDocument(r.error.modeledError, 409),
        r.error ? r.error.modeledError : r.value);

  r = await outcome(shadow.updateShadow({ thingName: thing, version: 2,
                                          state: { reported: { led: 'on' } } }));
  check('an update with the current version is accepted',
        r.value !== undefined && r.value.version === 3, r.error ? r.error.message : r.value);

  // Named shadows.
  r = await outcome(shadow.updateNamedShadow({ thingName: thing, shadowName: 'cfg',
                                               state: { desired: { rate: 5 } } }));
  check('named shadow: update accepted', r.value !== undefined && r.value.version === 1,
        r.error ? r.error.message : r.value);
  r = await outcome(shadow.getNamedShadow({ thingName: thing, shadowName: 'cfg' }));
  check('named shadow: get accepted', r.value !== undefined && r.value.state.delta.rate === 5,
        r.error ? r.error.message : r.value);
  r = await outcome(shadow.deleteNamedShadow({ thingName: thing, shadowName: 'cfg' }));
  check('named shadow: delete accepted', r.value !== undefined && r.value.version === 1,
        r.error ? r.error.message : r.value);
  r = await outcome(shadow.deleteNamedShadow({ thingName: thing, shadowName: 'cfg' }));
  check('named shadow: delete of the deleted shadow rejected 404',
        r.error !== undefined && isErrorDocument(r.error.modeledError, 404),
        r.error ? r.error.modeledError : r.value);

  // Delete and recreate within 48 h: the version carries on.
  r = await outcome(shadow.deleteShadow({ thingName: thing }));
  check('delete accepted', r.value !== undefined && r.value.version === 3,
        r.error ? r.error.message : r.value);
  r = await outcome(shadow.updateShadow({ thingName: thing, version: 3,
                                          state: { reported: { fw: '2.0' } } }));
  check('an update with the deleted version recreates the shadow at the next version',
        r.value !== undefined && r.value.version === 4, r.error ? r.error.message : r.value);

  stream.close();
  shadow.close();
  const stopped = within(5000, null, (done) => client.on('stopped', () => done(null)));
  client.stop();
  await stopped;
  client.close();
  finish();
}

main().catch((e) => {
  check('the scenario script ran', false, e.stack || String(e));
  finish();
});
