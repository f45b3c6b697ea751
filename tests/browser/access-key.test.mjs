// The page's access-key code (web/src/access.js) against Node's own HMAC-SHA256: the macs the
// page signs and checks are exactly the ones docs/signaling.md defines, links parse strictly,
// and refusal messages map to the right sentence. No browser or network needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import {
  AccessKey, fromBase64Url, parseAccessFragment, refusalState, storeAccess, storedAccess, toBase64Url,
} from '../../web/src/access.js';

const mac = (key, text) => createHmac('sha256', key).update(text).digest('base64url');

test('the page signs offers and hangups and checks answers with the documented macs', () => {
  const keyBytes = randomBytes(32);
  const key = new AccessKey({ viewer: 'alice', exp: 1800000000, key: keyBytes.toString('base64url') });
  const sid = 'web0123456789abcdef01234567';
  const sdp = 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\na=fingerprint:sha-256 AB:CD\r\n';
  assert.deepEqual(key.offerAuth(sid, sdp), { viewer: 'alice', exp: 1800000000, mac: mac(keyBytes, `offer\n${sid}\n${sdp}`) });
  assert.equal(key.hangupMac(sid), mac(keyBytes, `hangup\n${sid}`));
  const answerMac = mac(keyBytes, `answer\n${sid}\n${sdp}`);
  assert.equal(key.answerIsSigned(sid, sdp, answerMac), true);
  assert.equal(key.answerIsSigned(sid, sdp.replace('AB:CD', 'EF:01'), answerMac), false, 'another fingerprint');
  assert.equal(key.answerIsSigned('web-other', sdp, answerMac), false, 'another session');
  assert.equal(key.answerIsSigned(sid, sdp, mac(randomBytes(32), `answer\n${sid}\n${sdp}`)), false, 'another key');
  assert.equal(key.answerIsSigned(sid, sdp, undefined), false, 'unsigned');
  assert.equal(key.answerIsSigned(sid, undefined, answerMac), false, 'no sdp');
  assert.equal(key.hangupIsSigned(sid, mac(keyBytes, `hangup\n${sid}`)), true);
  assert.equal(key.hangupIsSigned(sid, mac(keyBytes, 'hangup\nweb-other')), false);
  assert.equal(key.hangupIsSigned(sid, null), false);
});

test('base64url round-trips without padding and rejects other alphabets', () => {
  for (const length of [0, 1, 2, 3, 31, 32, 33]) {
    const bytes = randomBytes(length);
    const text = toBase64Url(bytes);
    assert.equal(text, bytes.toString('base64url'));
    assert.deepEqual([...fromBase64Url(text)], [...bytes]);
  }
  assert.equal(fromBase64Url('a+b/'), null);
  assert.equal(fromBase64Url('<img>'), null);
  assert.equal(fromBase64Url(42), null);
});

test('access links parse strictly from the fragment', () => {
  const key = randomBytes(32).toString('base64url');
  assert.deepEqual(parseAccessFragment(`#device=cam1&viewer=alice.b-c_d&exp=1800000000&key=${key}`),
    { access: { device: 'cam1', viewer: 'alice.b-c_d', exp: 1800000000, key } });
  assert.deepEqual(parseAccessFragment(''), {}, 'no fragment');
  assert.deepEqual(parseAccessFragment('#section-2'), {}, 'an ordinary fragment');
  const damaged = {
    'device missing': `#viewer=a&exp=1&key=${key}`,
    'device with a slash': `#device=a/b&viewer=a&exp=1&key=${key}`,
    'viewer with a space': `#device=cam1&viewer=a%20b&exp=1&key=${key}`,
    'viewer too long': `#device=cam1&viewer=${'v'.repeat(65)}&exp=1&key=${key}`,
    'exp not a number': `#device=cam1&viewer=a&exp=1e9&key=${key}`,
    'key cut short': `#device=cam1&viewer=a&exp=1&key=${key.slice(0, 40)}`,
    'key in base64': `#device=cam1&viewer=a&exp=1&key=${key.replace(/-/g, '+').replace(/_/g, '/')}x`,
  };
  for (const [what, hash] of Object.entries(damaged)) assert.ok(parseAccessFragment(hash).error, what);
});

test('a kept access is per device and re-checked when read back', () => {
  const items = new Map();
  const storage = { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, String(v)) };
  const access = { device: 'cam1', viewer: 'alice', exp: 1800000000, key: randomBytes(32).toString('base64url') };
  storeAccess(access, storage);
  assert.deepEqual(storedAccess('cam1', storage), access);
  assert.equal(storedAccess('cam2', storage), null);
  items.set('peercam.access.cam2', JSON.stringify({ ...access, device: 'cam2', key: 'short' }));
  assert.equal(storedAccess('cam2', storage), null, 'a damaged stored key is not used');
  items.set('peercam.access.cam3', '{not json');
  assert.equal(storedAccess('cam3', storage), null);
});

test('each unauthorized cause gets its own state', () => {
  assert.equal(refusalState('expired: the access key has expired; ask the camera\'s admin for a new link'), 'expired');
  assert.equal(refusalState('revoked: this viewer\'s access has been revoked'), 'revoked');
  assert.equal(refusalState('missing auth: this camera admits only viewers with an access key'), 'needs-key');
  assert.equal(refusalState('bad mac: the message is not signed with a valid access key for this camera'), 'invalid-key');
  assert.equal(refusalState('unknown viewer: the access key names no valid viewer'), 'invalid-key');
  assert.equal(refusalState(undefined), 'invalid-key');
});
