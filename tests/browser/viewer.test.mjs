// Browser end-to-end test: the real agent (testsrc, embedded broker, HTTP page server) and
// headless Debian Chromium driven by playwright-core. Must run in a loopback-only network
// namespace (scripts/in-loopback-netns); it refuses to run anywhere else.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import mqtt from 'mqtt';
import { repo, artifacts, waitFor, Agent, useChromium, openPage, decodedFrames } from './harness.mjs';

/** The agent serving the built viewer page, with MQTT over WebSocket for it. */
const startAgent = ({ maxViewers = 8, webrtcExtra = '' } = {}) =>
  Agent.create({ maxViewers, webrtcExtra, webSocket: true, webRoot: join(repo, 'web', 'dist') });

const browser = useChromium();

const openViewer = (agent) => openPage(browser(), agent.url);


test('the page plays the camera with telemetry and latency', async () => {
  const agent = await startAgent();
  try {
    const { page, context, loadedAt, violations } = await openViewer(agent);
    let firstFrameMs = null;
    await waitFor('90 decoded frames', 15000, async () => {
      const frames = await decodedFrames(page);
      if (frames > 0 && firstFrameMs == null) firstFrameMs = Date.now() - loadedAt;
      return frames >= 90;
    });
    const facts = await page.evaluate(() => {
      const v = document.getElementById('video');
      return { width: v.videoWidth, height: v.videoHeight, state: document.getElementById('state').dataset.state,
        telemetry: window.peercam.telemetry, latency: window.peercam.latencyMs,
        latencyText: document.getElementById('latency').textContent, fpsText: document.getElementById('fps').textContent };
    });
    assert.equal(facts.width, 640);
    assert.equal(facts.height, 480);
    assert.equal(facts.state, 'live');
    const telemetryBefore = facts.telemetry;
    await waitFor('telemetry updates', 5000, async () => (await page.evaluate(() => window.peercam.telemetry)) > telemetryBefore + 2);
    assert.match(await page.textContent('#fps'), /^\d+(\.\d+)?$/);
    await waitFor('a latency reading', 5000, async () => /^-?\d+ ms$/.test(await page.textContent('#latency')));
    const latency = await page.evaluate(() => window.peercam.latencyMs);
    await waitFor('connection facts', 5000, async () => (await page.textContent('#path')) !== '–');
    const shot = join(artifacts, 'viewer.png');
    await page.screenshot({ path: shot });
    assert.deepEqual(await violations(), [], 'the page works under the agent\'s Content-Security-Policy');
    // An ordinary session is no news for journald: an admin reads WARN as something to fix.
    assert.match(agent.log, /Z +INFO new viewer session/);
    // (The loopback-only namespace has no multicast interface: the one mDNS warning is true here.)
    const warnings = agent.log.split('\n').filter((line) => /Z +WARN /.test(line) && !/mDNS unavailable/.test(line));
    assert.deepEqual(warnings, [], 'no warnings for a normal session');
    const frames = await decodedFrames(page);
    console.log(`figures: decoded ${frames} frames, first frame ${firstFrameMs} ms after page load, page latency ${latency} ms, path ${await page.textContent('#path')}, screenshot ${shot}`);
    await context.close();
  } finally {
    await agent.stop();
  }
});

test('the Snapshot button saves a JPEG of the camera\'s size with a fresh stamp, over the data channel', async () => {
  const agent = await Agent.create({ webSocket: true, webRoot: join(repo, 'web', 'dist'), width: 1280, height: 720 });
  try {
    const { page, context, violations } = await openViewer(agent);
    await waitFor('30 presented frames', 20000, async () => (await page.evaluate(() => window.peercam?.presentedFrames ?? 0)) >= 30);
    const [download] = await Promise.all([page.waitForEvent('download', { timeout: 10000 }), page.click('#snapshot')]);
    const saved = join(artifacts, 'snapshot-data-channel.jpg');
    await download.saveAs(saved);
    assert.match(download.suggestedFilename(), /^cam1-\d{4}-\d\d-\d\dT[\d-]+Z\.jpg$/);
    const jpeg = readFileSync(saved);
    assert.deepEqual([...jpeg.subarray(0, 2)], [0xff, 0xd8], 'JPEG start of image');
    assert.deepEqual([...jpeg.subarray(-2)], [0xff, 0xd9], 'JPEG end of image');
    // Chromium decodes the very bytes saved; the stamp is read from the top row of cells
    // here, independently of the page's reader (docs/latency-stamp.md).
    const facts = await page.evaluate(async () => {
      const shot = window.peercam.lastSnapshot;
      const bitmap = await createImageBitmap(shot.blob);
      const cell = bitmap.height >= 720 ? 16 : 8;
      const canvas = document.createElement('canvas');
      canvas.width = 48 * cell;
      canvas.height = cell;
      const context = canvas.getContext('2d');
      context.drawImage(bitmap, 0, 0);
      const pixels = context.getImageData(0, 0, 48 * cell, cell).data;
      let stamp = 0;
      for (let bit = 0; bit < 48; bit += 1) {
        const i = ((cell >> 1) * 48 * cell + bit * cell + (cell >> 1)) * 4;
        stamp = stamp * 2 + (pixels[i + 1] >= 128 ? 1 : 0);
      }
      return { width: bitmap.width, height: bitmap.height, bytes: shot.blob.size, stamp, receivedAt: shot.receivedAt,
        captureMs: Math.floor(shot.captureUs / 1000), header: [shot.width, shot.height], errors: window.peercam.snapshotErrors };
    });
    assert.equal(facts.bytes, jpeg.length, 'the saved file is the snapshot received');
    assert.deepEqual([facts.width, facts.height], [1280, 720]);
    assert.deepEqual(facts.header, [1280, 720]);
    assert.equal(facts.stamp, facts.captureMs, 'the header names the frame shown');
    const ageMs = facts.receivedAt - facts.stamp;
    assert.ok(ageMs >= 0 && ageMs < 1000, `the snapshot was ${ageMs} ms old when it arrived`);
    assert.deepEqual(facts.errors, []);
    assert.deepEqual(await violations(), [], 'the download works under the agent\'s Content-Security-Policy');
    console.log(`figures: data-channel snapshot 1280x720, ${jpeg.length} bytes, ${ageMs} ms old on arrival; saved ${saved}`);
    await context.close();
  } finally {
    await agent.stop();
  }
});

const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) * p)];
};

// Figures, not thresholds (scripts/bench has the Rust viewer's): Chromium's first frame and
// stamp latency at 720p30 with the playout-delay extension the camera sends by default, and
// without it. Asserts what must hold either way: it plays, and the page shows the camera's
// own share of the latency from telemetry.
test('720p30 with and without the playout-delay extension: first frame and latency', async () => {
  for (const [label, webrtcExtra] of [['playout-delay [0, 100] ms', ''], ['no playout-delay', 'playout_delay_ms = []']]) {
    const agent = await Agent.create({ webSocket: true, webRoot: join(repo, 'web', 'dist'), width: 1280, height: 720, webrtcExtra });
    try {
      const firstFrames = [];
      const latencies = [];
      let stages = '';
      for (let load = 0; load < 3; load += 1) {
        const { page, context } = await openViewer(agent);
        await waitFor('30 presented frames', 20000, async () => (await page.evaluate(() => window.peercam?.presentedFrames ?? 0)) >= 30);
        firstFrames.push(await page.evaluate(() => window.peercam.offerToFirstFrameMs));
        if (load === 0) {
          // Stamp latency of the presented frames over 5 s.
          const until = Date.now() + 5000;
          while (Date.now() < until) {
            latencies.push(await page.evaluate(() => window.peercam.latencyMs));
            await new Promise((resolve) => setTimeout(resolve, 100));
          }
          await waitFor('the camera\'s latency stages', 5000, async () => /capture→encoded \d/.test(await page.textContent('#latency-stages')));
          stages = await page.textContent('#latency-stages');
          assert.equal(await page.evaluate(() => document.getElementById('video').videoWidth), 1280);
        }
        await context.close();
      }
      const readings = latencies.filter((v) => typeof v === 'number');
      assert.ok(readings.length >= 25, `latency readings: ${latencies}`);
      assert.ok(firstFrames.every((ms) => typeof ms === 'number'), `first frames: ${firstFrames}`);
      console.log(`figures: Chromium 720p30, ${label}: offer → first frame ${firstFrames.join(', ')} ms (median ${percentile(firstFrames, 0.5)}); stamp latency p50 ${percentile(readings, 0.5)} ms, p95 ${percentile(readings, 0.95)} ms over ${readings.length} readings; page shows "${stages}"`);
    } finally {
      await agent.stop();
    }
  }
});

// The agent in a pid and mount namespace of its own with /proc mounted as a unit with
// ProcSubset=pid and ProtectProc=invisible sees it: no /proc/stat, so system CPU is null.
const PROC_SUBSET_PID = ['unshare', '--mount', '--pid', '--fork', '--kill-child', '--', 'sh', '-c',
  'mount -t proc -o subset=pid,hidepid=invisible proc /proc && test ! -e /proc/stat && exec "$0" "$@"'];

test('a null CPU figure shows as unknown and the page keeps playing', async () => {
  const agent = await Agent.create({ webSocket: true, webRoot: join(repo, 'web', 'dist'), exec: PROC_SUBSET_PID });
  try {
    await agent.waitForLog('/proc/stat is unreadable', 5000);
    const { page, context } = await openViewer(agent);
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await waitFor('30 decoded frames', 15000, async () => (await decodedFrames(page)) >= 30);
    const telemetryBefore = await page.evaluate(() => window.peercam.telemetry);
    await waitFor('telemetry updates', 5000, async () => (await page.evaluate(() => window.peercam.telemetry)) > telemetryBefore + 2);
    assert.equal(await page.textContent('#cpu'), '–');
    assert.match(await page.textContent('#fps'), /^\d+(\.\d+)?$/);
    const frames = await decodedFrames(page);
    await waitFor('more decoded frames', 5000, async () => (await decodedFrames(page)) > frames + 10);
    assert.deepEqual(errors, [], 'no script error on null figures');
    console.log(`figures: with proc subset=pid the page shows CPU ${JSON.stringify(await page.textContent('#cpu'))} after ${await page.evaluate(() => window.peercam.telemetry)} telemetry messages`);
    await context.close();
  } finally {
    await agent.stop();
  }
});

test('two pages play at once; with max_viewers = 1 the second is told the camera is busy', async () => {
  const both = await startAgent();
  try {
    const a = await openViewer(both);
    const b = await openViewer(both);
    await waitFor('both pages decode', 15000, async () => (await decodedFrames(a.page)) >= 30 && (await decodedFrames(b.page)) >= 30);
    await a.context.close();
    await b.context.close();
  } finally {
    await both.stop();
  }
  const single = await startAgent({ maxViewers: 1 });
  try {
    const first = await openViewer(single);
    await waitFor('first page decodes', 15000, async () => (await decodedFrames(first.page)) >= 30);
    const second = await openViewer(single);
    await waitFor('busy state', 10000, async () => (await second.page.getAttribute('#state', 'data-state')) === 'busy');
    const sentence = await second.page.textContent('#state');
    assert.match(sentence, /maximum number of viewers/);
    await second.page.screenshot({ path: join(artifacts, 'busy.png') });
    console.log(`figures: busy page says "${sentence}"`);
    await first.context.close();
    await second.context.close();
  } finally {
    await single.stop();
  }
});

test('a page refused because too many sessions are connecting says so and plays once one is free', async () => {
  // One pending slot, taken by an offer that never goes further (a genuine Chromium offer
  // published raw, no ICE): the page is refused until it times out after 3 s.
  const agent = await startAgent({ webrtcExtra: 'max_pending = 1\nconnect_timeout_s = 3' });
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${agent.ports.mqtt}`, { protocolVersion: 4 });
  try {
    const blank = await browser().newPage();
    const sdp = await blank.evaluate(async () => {
      const pc = new RTCPeerConnection();
      pc.addTransceiver('video', { direction: 'recvonly' });
      const offer = await pc.createOffer();
      pc.close();
      return offer.sdp;
    });
    await blank.close();
    const sid = `abandoned${Date.now()}`;
    await client.subscribeAsync(`peercam/cam1/session/${sid}/to-viewer`, { qos: 1 });
    const answered = new Promise((resolve) => client.on('message', (_, payload) => {
      if (JSON.parse(payload.toString()).type === 'answer') resolve();
    }));
    await client.publishAsync(`peercam/cam1/session/${sid}/to-camera`, JSON.stringify({ type: 'offer', sdp }), { qos: 1 });
    await answered;
    const viewer = await openViewer(agent);
    await waitFor('crowded state', 10000, async () => (await viewer.page.getAttribute('#state', 'data-state')) === 'crowded');
    const sentence = await viewer.page.textContent('#state');
    assert.match(sentence, /joining the camera at once/);
    console.log(`figures: crowded page says "${sentence}"`);
    await waitFor('the page plays by itself', 20000, async () => (await decodedFrames(viewer.page)) >= 30);
    await viewer.context.close();
  } finally {
    await client.endAsync();
    await agent.stop();
  }
});

test('the page recovers by itself when the agent restarts', async () => {
  const agent = await startAgent();
  try {
    const { page, context } = await openViewer(agent);
    await waitFor('playing', 15000, async () => (await decodedFrames(page)) >= 30);
    await agent.stop();
    await waitFor('the page notices', 10000, async () => (await page.getAttribute('#state', 'data-state')) !== 'live');
    const restartedAt = Date.now();
    await agent.start();
    // Presented frames count across sessions (a new connection may reset the element's counters).
    const presented = () => page.evaluate(() => window.peercam.presentedFrames);
    const before = await presented();
    await waitFor('playing again without reload', 15000, async () =>
      (await page.getAttribute('#state', 'data-state')) === 'live' && (await presented()) > before + 30);
    console.log(`figures: playing again ${Date.now() - restartedAt} ms after the agent restarted`);
    await context.close();
  } finally {
    await agent.stop();
  }
});
