// WHEP end-to-end test: the real agent (testsrc, WHEP on its HTTP listener) and headless
// Debian Chromium running a minimal WHEP player (whep-player.html, plain RTCPeerConnection
// + fetch) served by this test from another origin, so CORS is exercised too. Must run in
// a loopback-only network namespace (scripts/in-loopback-netns); it refuses otherwise.
// Endpoint behaviour under test: docs/whep.md (draft-ietf-wish-whep).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createHmac } from 'node:crypto';
import { tmpdir } from 'node:os';
import { createServer as createHttpServer } from 'node:http';
import { join } from 'node:path';
import { artifacts, requireLoopbackOnly, freePort, sleep, waitFor, Agent, launchChromium } from './harness.mjs';

const here = import.meta.dirname;
const REQUEST_TIMEOUT_MS = 10000;

/**
 * The agent with WHEP on its HTTP listener (no MQTT over WebSocket, an empty web root). Options as
 * Agent.create: maxViewers, source ("testsrc" or a V4L2 path), iceServers, extra (e.g. a [whep] table).
 */
const startAgent = (options = {}) => Agent.create({ name: 'WHEP test camera', prefix: 'peercam-whep-', ...options });

/** Serves the player page on its own 127.0.0.1 port: a different origin from the agent. */
async function startPageServer() {
  const files = {
    '/whep-player.html': 'text/html; charset=utf-8',
    '/whep-player.js': 'text/javascript; charset=utf-8',
  };
  const server = createHttpServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (req.method !== 'GET' || !files[path]) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'Content-Type': files[path], 'Cache-Control': 'no-store' });
    res.end(readFileSync(join(here, path.slice(1))));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    playerUrl: (endpoint, query = '') => `${origin}/whep-player.html?url=${encodeURIComponent(endpoint)}${query}`,
    close: () => new Promise((r) => server.close(r)),
  };
}

/** fetch with a timeout and an error that names the request. */
async function request(method, url, { headers = {}, body, timeoutMs = REQUEST_TIMEOUT_MS } = {}) {
  try {
    return await fetch(url, { method, headers, body, signal: AbortSignal.timeout(timeoutMs) });
  } catch (error) {
    throw new Error(`${method} ${url} failed after at most ${timeoutMs} ms: ${error.cause?.message ?? error.message}`);
  }
}

/** Fails at once, with a clear sentence, when the agent does not serve WHEP at all. */
async function requireWhepEndpoint(agent, origin) {
  const response = await request('OPTIONS', agent.endpoint, {
    headers: { Origin: origin, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type' },
  });
  assert.ok([200, 204].includes(response.status),
    `OPTIONS ${agent.endpoint} answered ${response.status}: the agent does not serve WHEP there ` +
    `(expected 200/204 with CORS headers; is POST /whep implemented and [whep] enabled?)`);
  return response;
}

/** Path of a session URL from a Location header, which may be relative. */
const sessionPath = (agent, location) => new URL(location, agent.endpoint).pathname;

let browser;
let pages;
before(async () => {
  requireLoopbackOnly();
  mkdirSync(artifacts, { recursive: true });
  pages = await startPageServer();
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await pages?.close();
});

async function openPlayer(agent, query = '') {
  const context = await browser.newContext({ viewport: { width: 800, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(pages.playerUrl(agent.endpoint, query));
  return { page, context };
}

const whepFacts = (page) => page.evaluate(() => {
  const { state, error, status, location, etag, answerSdp, offerSdp, deleteStatus, telemetry, framesDecoded, timings, connectionStates } = window.whep;
  return { state, error, status, location, etag, answerSdp, offerSdp, deleteStatus, telemetry, framesDecoded, timings, connectionStates };
});
const framesOf = (page) => page.evaluate(() => window.whep.frames());

/** Waits for `count` decoded frames; fails at once with the page's own error if it has one. */
async function waitForFrames(page, count, timeoutMs) {
  return waitFor(`${count} decoded frames`, timeoutMs, async () => {
    const frames = await framesOf(page);
    const { state, error } = await whepFacts(page);
    if (state === 'error' || state === 'busy') throw new Error(`the player gave up: ${error}`);
    return frames >= count;
  });
}

/** An offer from Chromium (recvonly video + telemetry channel, all candidates), for requests made from node. */
async function browserOffer(agent) {
  const { page, context } = await openPlayer(agent, '&autostart=0');
  const sdp = await page.evaluate(async () => {
    const pc = new RTCPeerConnection();
    window.offerer = pc;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.createDataChannel('telemetry');
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => {
      if (pc.iceGatheringState === 'complete') r();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r();
      setTimeout(r, 3000);
    });
    return pc.localDescription.sdp;
  });
  return { sdp, close: () => context.close() };
}

const postOffer = (agent, sdp) => request('POST', agent.endpoint, { headers: { 'Content-Type': 'application/sdp' }, body: sdp });

test('the endpoint answers CORS preflights and refuses what it cannot take', { timeout: 60000 }, async () => {
  const agent = await startAgent();
  try {
    const preflight = await requireWhepEndpoint(agent, pages.origin);
    assert.equal(preflight.headers.get('access-control-allow-origin'), '*', 'allow_origin defaults to *');
    assert.match(preflight.headers.get('accept-post') ?? '', /application\/sdp/, 'Accept-Post names application/sdp');

    const offerish = 'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n';
    const wrongType = await request('POST', agent.endpoint, { headers: { 'Content-Type': 'text/plain' }, body: offerish });
    assert.equal(wrongType.status, 415, `POST as text/plain: ${await wrongType.text()}`);
    const malformed = await request('POST', agent.endpoint, { headers: { 'Content-Type': 'application/sdp' }, body: 'hello' });
    assert.equal(malformed.status, 400, `POST of malformed SDP: ${await malformed.text()}`);

    const unknown = `${agent.endpoint}/no-such-session`;
    const patch = await request('PATCH', unknown, {
      headers: { 'Content-Type': 'application/trickle-ice-sdpfrag' },
      body: 'a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=end-of-candidates\r\n',
    });
    assert.equal(patch.status, 404, 'PATCH of an unknown session');
    assert.equal((await request('DELETE', unknown)).status, 404, 'DELETE of an unknown session');
    console.log(`figures: preflight ${preflight.status}, text/plain ${wrongType.status}, malformed ${malformed.status}, unknown session PATCH ${patch.status}`);
  } finally {
    await agent.stop();
  }
});

test('Chromium plays the camera over WHEP; at max_viewers = 1 a second player gets 503 until DELETE frees the slot', { timeout: 120000 }, async () => {
  const agent = await startAgent({ maxViewers: 1 });
  const contexts = [];
  try {
    await requireWhepEndpoint(agent, pages.origin);
    const a = await openPlayer(agent);
    contexts.push(a.context);
    await waitForFrames(a.page, 90, 20000);
    const facts = await whepFacts(a.page);
    const size = await a.page.evaluate(() => [document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]);
    assert.equal(facts.status, 201);
    assert.ok(facts.location, `the page can read Location (${facts.error}); the 201 must carry it and expose it to other origins`);
    assert.match(sessionPath(agent, facts.location), /^\/whep\/[^/]+$/, `Location ${facts.location}`);
    assert.ok(facts.etag, 'the page can read ETag (the 201 must carry it and expose it to other origins)');
    assert.match(facts.answerSdp, /^a=candidate:/m, 'the answer carries the camera\'s candidates (non-trickle)');
    assert.deepEqual(size, [640, 480], 'decoded size');
    const t = facts.timings;
    const postToFirstFrame = Math.round(t.firstDecodedAt - t.postedAt);
    await a.page.screenshot({ path: join(artifacts, 'whep.png') });
    console.log(`figures: decoded ${await framesOf(a.page)} frames; POST→201 ${Math.round(t.answeredAt - t.postedAt)} ms, ` +
      `POST→connected ${Math.round(t.connectedAt - t.postedAt)} ms, POST→first decoded frame ${postToFirstFrame} ms; ` +
      `telemetry messages ${facts.telemetry}`);

    // A second player while the first plays: 503, and (seen without CORS) a Retry-After.
    const b = await openPlayer(agent);
    contexts.push(b.context);
    await waitFor('the second player is refused', 15000, async () => ['busy', 'error'].includes((await whepFacts(b.page)).state));
    const refused = await whepFacts(b.page);
    assert.equal(refused.status, 503, `second player: ${refused.error}`);
    const again = await postOffer(agent, refused.offerSdp);
    assert.equal(again.status, 503, 'the same offer from node');
    const retryAfter = again.headers.get('retry-after');
    assert.match(retryAfter ?? '', /^\d+$|GMT$/, 'a 503 at max_viewers carries Retry-After');

    // DELETE ends the first session on the server: the page keeps its peer connection open,
    // so only the agent can stop its frames and free the slot.
    const deleteStatus = await a.page.evaluate(() => window.whep.stop({ close: false }));
    assert.ok([200, 204].includes(deleteStatus), `DELETE answered ${deleteStatus}`);
    await sleep(500);
    const framesAfterDelete = await framesOf(a.page);
    await sleep(2000);
    const stillComing = (await framesOf(a.page)) - framesAfterDelete;
    assert.ok(stillComing <= 5, `${stillComing} frames decoded 0.5–2.5 s after DELETE: the agent did not end the session`);

    const rejoinAt = Date.now();
    const joined = await waitFor('the second player gets the freed slot', 5000, async () => b.page.evaluate(() => window.whep.start()));
    assert.ok(joined);
    await waitForFrames(b.page, 30, 15000);
    console.log(`figures: 503 Retry-After "${retryAfter}"; DELETE ${deleteStatus}; ${stillComing} frames 0.5–2.5 s after DELETE; ` +
      `the second player's POST #${await b.page.evaluate(() => window.whep.attempts)} got 201, ` +
      `30 frames decoded ${Date.now() - rejoinAt} ms after it retried`);
    await b.page.evaluate(() => window.whep.stop());
  } finally {
    for (const context of contexts) await context.close();
    await agent.stop();
  }
});

test('the 201 carries Location, ETag and one Link per ICE server; PATCH and DELETE act on the session', { timeout: 90000 }, async () => {
  // Loopback ports nothing listens on: the agent publishes them and never reaches anything.
  const [stunPort, turnPort] = [await freePort(), await freePort()];
  const stun = `stun:127.0.0.1:${stunPort}`;
  const turn = `turn:127.0.0.1:${turnPort}?transport=udp`;
  // TURN with a shared secret: players get credentials minted from it (TURN REST scheme).
  const secretFile = join(mkdtempSync(join(tmpdir(), 'peercam-whep-turn-')), 'secret');
  writeFileSync(secretFile, 'whep-shared-secret\n', { mode: 0o600 });
  const agent = await startAgent({ iceServers: [{ urls: stun }, { urls: turn, secretFile }] });
  const offer = await browserOffer(agent);
  try {
    await requireWhepEndpoint(agent, pages.origin);
    // The answer waits for the camera's gathering, which may try the (unreachable) servers.
    const postedAt = Date.now();
    const created = await request('POST', agent.endpoint, {
      headers: { 'Content-Type': 'application/sdp' }, body: offer.sdp, timeoutMs: 30000,
    });
    const answer = await created.text();
    const answeredIn = Date.now() - postedAt;
    assert.equal(created.status, 201, answer);
    assert.match(created.headers.get('content-type') ?? '', /^application\/sdp/);
    assert.match(answer, /^v=0\r?\n/);
    assert.match(answer, /^a=candidate:/m, 'non-trickle answer with the camera\'s candidates');
    const location = created.headers.get('location');
    assert.match(sessionPath(agent, location ?? ''), /^\/whep\/[^/]+$/, `Location ${location}`);
    const etag = created.headers.get('etag');
    assert.ok(etag, 'ETag');
    const links = (created.headers.get('link') ?? '').split(/,\s*(?=<)/).filter((l) => /rel="?ice-server"?/.test(l));
    assert.equal(links.length, 2, `one Link per ICE server: ${links}`);
    assert.ok(links.some((l) => l.startsWith(`<${stun}>`)), `a Link for ${stun}: ${links}`);
    const turnLink = links.find((l) => l.startsWith(`<${turn}>`));
    assert.ok(turnLink, `a Link for ${turn}: ${links}`);
    const username = /username="?(\d+):cam1"?/.exec(turnLink);
    assert.ok(username, `a minted username <expiry>:cam1: ${turnLink}`);
    assert.ok(Number(username[1]) > Date.now() / 1000 + 3600, 'valid for the default day');
    const minted = createHmac('sha1', 'whep-shared-secret').update(`${username[1]}:cam1`).digest('base64');
    assert.ok(turnLink.includes(`credential="${minted}"`), `credential = base64(HMAC-SHA1(secret, username)): ${turnLink}`);

    const resource = new URL(location, agent.endpoint).href;
    const ufrag = /^a=ice-ufrag:(.*)$/m.exec(offer.sdp)[1].trim();
    const pwd = /^a=ice-pwd:(.*)$/m.exec(offer.sdp)[1].trim();
    const mid = /^a=mid:(.*)$/m.exec(offer.sdp)[1].trim();
    const patch = await request('PATCH', resource, {
      headers: { 'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': etag },
      body: `a=ice-ufrag:${ufrag}\r\na=ice-pwd:${pwd}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:${mid}\r\na=end-of-candidates\r\n`,
    });
    assert.equal(patch.status, 204, `PATCH end-of-candidates: ${await patch.text()}`);
    const deleted = await request('DELETE', resource);
    assert.ok([200, 204].includes(deleted.status), `DELETE answered ${deleted.status}`);
    assert.equal((await request('DELETE', resource)).status, 404, 'a second DELETE: the session is gone');
    console.log(`figures: POST→201 with 2 unreachable ICE servers configured ${answeredIn} ms; Link ${links.join(', ')}`);
  } finally {
    await offer.close();
    await agent.stop();
  }
});

test('an unavailable camera gets 503; [whep] allow_origin and enabled are honoured', { timeout: 90000 }, async () => {
  // A V4L2 device that does not exist: the agent runs, the camera is unavailable.
  const missing = await startAgent({ source: '/dev/video-peercam-missing' });
  try {
    await missing.waitForLog('camera unavailable', 10000);
    await requireWhepEndpoint(missing, pages.origin);
    const offer = await browserOffer(missing);
    try {
      const response = await postOffer(missing, offer.sdp);
      assert.equal(response.status, 503, `POST while the camera is unavailable: ${await response.text()}`);
    } finally {
      await offer.close();
    }
  } finally {
    await missing.stop();
  }

  const origin = 'http://127.0.0.1:1';
  const restricted = await startAgent({ extra: `[whep]\nallow_origin = "${origin}"\n` });
  try {
    const preflight = await requireWhepEndpoint(restricted, origin);
    assert.equal(preflight.headers.get('access-control-allow-origin'), origin, '[whep] allow_origin');
  } finally {
    await restricted.stop();
  }

  const disabled = await startAgent({ extra: '[whep]\nenabled = false\n' });
  try {
    const response = await postOffer(disabled, 'v=0\r\n');
    assert.ok([404, 405].includes(response.status), `POST /whep with [whep] enabled = false answered ${response.status}`);
  } finally {
    await disabled.stop();
  }
});
