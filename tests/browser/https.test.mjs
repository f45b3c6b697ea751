// Browser end-to-end test over HTTPS on one port: the agent serves the page with a
// certificate `peercam cert` makes for this test, and relays MQTT at /mqtt on the same port.
// Chromium (told to accept certificate errors, in this file only: the certificate is
// self-signed) opens https://127.0.0.1:PORT/; the page must pick wss://127.0.0.1:PORT/mqtt
// by itself and play. The broker's own WebSocket listener speaks WSS as well. Must run in a loopback-only network namespace.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { repo, agentBinary, waitFor, Agent, useChromium, decodedFrames } from './harness.mjs';

const browser = useChromium(['--ignore-certificate-errors']);

/** A certificate for 127.0.0.1 from `peercam cert`, in a fresh directory: [tls] lines. */
function tlsSection() {
  const dir = mkdtempSync(join(tmpdir(), 'peercam-https-'));
  const [cert, key] = [join(dir, 'cert.pem'), join(dir, 'key.pem')];
  execFileSync(agentBinary, ['cert', '--host', '127.0.0.1', '--cert', cert, '--key', key]);
  return `[tls]\ncert_file = ${JSON.stringify(cert)}\nkey_file = ${JSON.stringify(key)}\n`;
}

test('the page over HTTPS reaches the broker at wss://…/mqtt on its own port and plays; ws_listen speaks WSS', async () => {
  const agent = await Agent.create({
    webRoot: join(repo, 'web', 'dist'),
    webSocket: true,
    extra: tlsSection(),
  });
  try {
    // The broker's own WebSocket listener speaks WSS too (for other clients).
    const other = await mqtt.connectAsync(`wss://127.0.0.1:${agent.ports.ws}/`,
      { protocolVersion: 4, reconnectPeriod: 0, rejectUnauthorized: false });
    const status = new Promise((resolve) => other.on('message', (_topic, payload) => resolve(JSON.parse(payload))));
    await other.subscribeAsync('peercam/cam1/status');
    assert.equal((await status).state, 'online', 'the retained status over WSS on ws_listen');
    await other.endAsync();

    const origin = `https://127.0.0.1:${agent.ports.http}`;
    const context = await browser().newContext();
    const page = await context.newPage();
    const sockets = [];
    page.on('websocket', (ws) => sockets.push(ws.url()));
    const response = await page.goto(`${origin}/`);
    assert.equal(response.status(), 200);
    const csp = response.headers()['content-security-policy'];
    assert.match(csp, /connect-src 'self' ws: wss:/, 'security headers over HTTPS too');
    await waitFor('90 decoded frames', 20000, async () => (await decodedFrames(page)) >= 90);
    assert.ok(sockets.length > 0, 'the page opened WebSockets');
    assert.ok(sockets.every((url) => url === `wss://127.0.0.1:${agent.ports.http}/mqtt`), `sockets: ${sockets}`);
    console.log(`figures: decoded ${await decodedFrames(page)} frames over ${sockets.length} WebSocket(s) to ${sockets[0]}`);
    await context.close();
  } finally {
    await agent.stop();
  }
});

test('with broker users, the page logs in with the user and password in its broker URL', async () => {
  const users = `[broker.users]\n${execFileSync(agentBinary, ['passwd', 'alice'], { input: 'pa55 word\n', stdio: ['pipe', 'pipe', 'ignore'] })}`;
  const agent = await Agent.create({
    webRoot: join(repo, 'web', 'dist'),
    extra: `${tlsSection()}${users}`,
  });
  try {
    const origin = `https://127.0.0.1:${agent.ports.http}`;
    const context = await browser().newContext();
    const anonymous = await context.newPage();
    await anonymous.goto(`${origin}/`);
    await waitFor('the anonymous page is refused', 10000, async () =>
      (await anonymous.getAttribute('#broker-state', 'data-state')) === 'unreachable');
    const page = await context.newPage();
    const broker = encodeURIComponent(`wss://alice:${encodeURIComponent('pa55 word')}@127.0.0.1:${agent.ports.http}/mqtt`);
    // In the fragment: a login never goes into a URL a server sees.
    await page.goto(`${origin}/#broker=${broker}`);
    await waitFor('30 decoded frames', 20000, async () => (await decodedFrames(page)) >= 30);
    assert.equal(await page.evaluate(() => location.href), `${origin}/`, 'the login left the address bar');
    assert.ok(!agent.log.includes('pa55 word'), 'no password in the log');
    await context.close();
  } finally {
    await agent.stop();
  }
});
