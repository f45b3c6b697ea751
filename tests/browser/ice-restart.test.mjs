// ICE restart from the page: the real agent with access keys and the viewer page in headless
// Chromium, inside the loopback-only namespace (scripts/in-loopback-netns). Media (UDP) is
// dropped by an iptables rule in that namespace while signaling (MQTT over WebSocket, TCP)
// goes on, so the page's restart offer reaches the camera and its answer comes back; once
// UDP is let through again the same session plays on over the restarted ICE.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { repo, artifacts, waitFor, Agent, useChromium, openPage, decodedFrames } from './harness.mjs';

const browser = useChromium();

/** Inserts (-I) or deletes (-D) the rule that drops every UDP packet in this namespace. */
function dropUdp(op) {
  const run = spawnSync('iptables', [op, 'INPUT', '-p', 'udp', '-j', 'DROP'], { encoding: 'utf8' });
  assert.equal(run.status, 0, `iptables ${op}: ${run.stderr || run.error}`);
}

test('a page whose media path is lost restarts ICE on the same session and plays on', async () => {
  const agent = await Agent.create({ webSocket: true, webRoot: join(repo, 'web', 'dist'), auth: 'keys' });
  try {
    const { page, context } = await openPage(browser(), agent.access('alice').url);
    await waitFor('playing', 15000, async () => (await decodedFrames(page)) >= 30);
    const stat = (name) => page.evaluate((n) => window.peercam[n], name);
    const state = () => page.getAttribute('#state', 'data-state');

    dropUdp('-I');
    const lostAt = Date.now();
    let restartAnsweredMs;
    try {
      await waitFor('the page to restart ICE and the camera to answer it', 20000, async () => (await stat('restartAnswers')) >= 1);
      restartAnsweredMs = Date.now() - lostAt;
      assert.equal(await state(), 'reconnecting', 'the page says it is reconnecting meanwhile');
    } finally {
      dropUdp('-D');
    }
    const restoredAt = Date.now();
    const presented = await stat('presentedFrames');
    await waitFor('30 new frames after the restore', 15000, async () => (await stat('presentedFrames')) >= presented + 30);
    const playingMs = Date.now() - restoredAt;
    const recoveries = await stat('recoveries');
    assert.equal(recoveries.at(-1)?.by, 'ice-restart', JSON.stringify(recoveries));
    assert.equal(await state(), 'live');
    assert.equal(await stat('sessions'), 1, 'no new session');
    assert.equal(await stat('restartFallbacks'), 0);
    assert.match(agent.log, /answered an ICE restart/);
    assert.doesNotMatch(agent.log, /session ended/, 'the same session carried on');
    await waitFor('the status to count one viewer', 5000, async () => (await page.textContent('#viewers')).startsWith('1'));
    await page.screenshot({ path: join(artifacts, 'ice-restart.png') });
    console.log(`figures: UDP dropped; the page restarted ICE and had the camera's answer ${restartAnsweredMs} ms later; 30 new frames ${playingMs} ms after UDP was let through (recoveries ${JSON.stringify(recoveries)})`);
    await context.close();
  } finally {
    await agent.stop();
  }
});
