// Security end-to-end test: anyone who can publish to the broker can put statuses in front
// of the viewer page, so forged ones must never run script, become markup or speak for
// another device; and every HTTP response of the agent carries the security headers
// (src/http.rs). The real agent (testsrc, embedded broker, page server), headless Debian
// Chromium, and a plain MQTT client publishing over the broker's TCP port. Must run in a
// loopback-only network namespace (scripts/in-loopback-netns); it refuses otherwise.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { repo, artifacts, sleep, waitFor, Agent, useChromium, openPage } from './harness.mjs';

/** The agent serving the built viewer page (MQTT over WebSocket for it; WHEP on by default). */
const startAgent = () => Agent.create({ prefix: 'peercam-security-', webSocket: true, webRoot: join(repo, 'web', 'dist') });

/** Markup that runs script wherever it is taken as HTML (in an attribute or as content). */
const PAYLOAD = '"><img src=x onerror=window.__pwned=1>';

/** The exact headers every response must carry (src/http.rs SECURITY_HEADERS). */
const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'self'; script-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

const browser = useChromium();

/** Records, from the first script on, every <img> ever added and every camera entry ever
 *  rendered (the camera may correct a forged status at any moment, so the end state alone
 *  would not tell). */
function recordRendering() {
  window.__images = [];
  window.__entries = new Map();
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      for (const node of m.addedNodes) {
        if (node.nodeType !== Node.ELEMENT_NODE) continue;
        for (const img of [node, ...node.querySelectorAll('*')].filter((n) => n.tagName === 'IMG')) window.__images.push(img.outerHTML);
      }
    }
    for (const button of document.querySelectorAll('#camera-list button')) {
      const name = button.querySelector('.cam-name');
      const entry = {
        device: button.dataset.device,
        name: name?.textContent,
        nameElements: [...(name?.children ?? [])].map((e) => `${e.tagName.toLowerCase()}.${e.className}`),
        meta: button.querySelector('.cam-meta')?.textContent,
      };
      window.__entries.set(JSON.stringify(entry), entry);
    }
  }).observe(document, { childList: true, subtree: true });
}

test('forged statuses on the broker never run script, become markup or speak for another device', async () => {
  const agent = await startAgent();
  const forger = await mqtt.connectAsync(`mqtt://127.0.0.1:${agent.ports.mqtt}`, { protocolVersion: 4, clientId: 'forger', reconnectPeriod: 0 });
  const forge = (topic, status) => forger.publishAsync(topic, JSON.stringify({ type: 'status', ...status }), { qos: 1, retain: true });
  try {
    const { page, context, violations } = await openPage(browser(), agent.url, { initScript: recordRendering });
    await waitFor('the page plays the camera', 15000, async () => (await page.getAttribute('#state', 'data-state')) === 'live');
    const entries = () => page.evaluate(() => [...window.__entries.values()]);

    // On the camera's own topic: first a status for another device id, then one for cam1
    // whose name and state are markup. Same topic, so the page sees them in this order.
    await forge('peercam/cam1/status', { state: 'offline', device: 'cam2', name: 'Impostor' });
    await forge('peercam/cam1/status', { state: PAYLOAD, device: 'cam1', name: PAYLOAD });
    // On another device's topic: a status claiming to be cam1, then that device's own.
    await forge('peercam/cam7/status', { state: 'offline', device: 'cam1', name: 'Hijacked' });
    await forge('peercam/cam7/status', { state: 'offline', device: 'cam7', name: 'Camera seven' });

    const forged = await waitFor('the forged cam1 status rendered', 10000, async () =>
      (await entries()).find((e) => e.device === 'cam1' && `${e.name} ${e.meta}`.includes('__pwned')));
    await page.screenshot({ path: join(artifacts, 'forged-status.png') });
    await waitFor('the status after the hijack rendered', 10000, async () =>
      (await entries()).some((e) => e.device === 'cam7' && e.name === 'Camera seven'));
    await sleep(1000); // time for an injected <img src=x> to fail to load and fire onerror

    assert.equal(await page.evaluate(() => window.__pwned), undefined, 'script from the status ran');
    assert.deepEqual(await page.evaluate(() => window.__images), [], 'markup from the status became elements');
    assert.equal(await page.locator('img').count(), 0);
    assert.equal(forged.name, PAYLOAD, 'the forged name is shown as it is, as text');
    assert.deepEqual(forged.nameElements, ['span.dot unknown'], 'the forged name is text beside a neutral dot');
    assert.equal(forged.meta, 'cam1 · unknown');
    const all = await entries();
    assert.deepEqual(all.filter((e) => e.device === 'cam2' || e.name === 'Impostor'), [], 'a status for cam2 on cam1\'s topic was listed');
    assert.deepEqual(all.filter((e) => e.name === 'Hijacked'), [], 'a status for cam1 on cam7\'s topic was listed');
    assert.deepEqual(await violations(), [], 'Content-Security-Policy violations');
    console.log(`figures: ${all.length} camera entries rendered, forged name shown as text: ${JSON.stringify(forged.name)}`);
    await context.close();
  } finally {
    await forger.endAsync();
    await agent.stop();
  }
});

test('every HTTP response carries the security headers', async () => {
  const agent = await startAgent();
  try {
    const base = agent.url.replace(/\/$/, '');
    const requests = [
      ['GET', '/', {}, 200],
      ['GET', '/peercam.json', {}, 200],
      ['GET', '/app.js', {}, 200],
      ['GET', '/no/such/page', {}, 200], // the fallback: the page itself
      ['OPTIONS', '/whep', { Origin: 'http://127.0.0.1:9', 'Access-Control-Request-Method': 'POST' }, 200],
      ['POST', '/whep', { 'Content-Type': 'text/plain' }, 415],
    ];
    for (const [method, path, headers, status] of requests) {
      const body = method === 'POST' ? 'not an offer' : undefined;
      const response = await fetch(base + path, { method, headers, body, signal: AbortSignal.timeout(10000) });
      assert.equal(response.status, status, `${method} ${path}`);
      for (const [name, value] of Object.entries(SECURITY_HEADERS)) {
        assert.equal(response.headers.get(name), value, `${method} ${path}: ${name}`);
      }
      await response.arrayBuffer();
    }
  } finally {
    await agent.stop();
  }
});
