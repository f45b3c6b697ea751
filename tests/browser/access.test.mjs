// Access keys in the browser: the real agent with auth.mode = "keys" and the built viewer page
// in headless Chromium. An access link plays (and leaves the address bar); without one the page
// asks for it; expired and revoked links each say so; an attacker on the broker who forges
// answers, refusals and hangups changes nothing. Runs in scripts/in-loopback-netns.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { repo, artifacts, waitFor, sleep, Agent, useChromium, openPage, decodedFrames } from './harness.mjs';

const startAgent = () => Agent.create({
  prefix: 'peercam-access-', webSocket: true, webRoot: join(repo, 'web', 'dist'), auth: 'keys', revoked: ['mallory'],
});

const browser = useChromium();

const viewerState = (page) => page.evaluate(() => document.getElementById('state').dataset.state);
const promptState = (page) => page.evaluate(() => document.body.dataset.accessPrompt || '');

test('an access link plays, and its key leaves the address bar for this tab\'s sessionStorage', async () => {
  const agent = await startAgent();
  try {
    const grant = agent.access('alice');
    const { page, context, violations } = await openPage(browser(), grant.url);
    await waitFor('60 decoded frames', 15000, async () => (await decodedFrames(page)) >= 60);
    assert.equal(await viewerState(page), 'live');
    const kept = await page.evaluate(() => ({ hash: location.hash, href: location.href, stored: sessionStorage.getItem('peercam.access.cam1') }));
    assert.equal(kept.hash, '', 'the fragment is taken out of the address bar');
    assert.equal(kept.href, agent.url);
    assert.deepEqual(JSON.parse(kept.stored), { device: 'cam1', viewer: 'alice', exp: grant.exp, key: grant.key });
    assert.deepEqual(await violations(), []);
    // A reload in the same tab still plays (the key is kept for the tab).
    await page.reload();
    await waitFor('60 decoded frames after a reload', 15000, async () => (await decodedFrames(page)) >= 60);
    console.log(`figures: ${await decodedFrames(page)} frames decoded after a reload with the kept key`);
    await context.close();
  } finally {
    await agent.stop();
  }
});

test('without a link the page asks for one, sends no offer, and a pasted link plays', async () => {
  const agent = await startAgent();
  const spy = await offerSpy(agent);
  const { offers } = spy;
  try {
    const { page, context } = await openPage(browser(), agent.url);
    await waitFor('the access prompt', 10000, async () => (await promptState(page)) === 'needs-key');
    assert.equal(await viewerState(page), 'needs-key');
    assert.match(await page.textContent('#access-reason'), /admits only invited viewers.*access link/);
    assert.equal(await page.isVisible('#access-link'), true);
    await page.screenshot({ path: join(artifacts, 'access-prompt.png') });
    await sleep(1000);
    assert.deepEqual(offers, [], 'no offer without a key');
    await page.fill('#access-link', agent.access('bob').url);
    await page.click('#access-form button');
    await waitFor('60 decoded frames from the pasted link', 15000, async () => (await decodedFrames(page)) >= 60);
    assert.equal(await promptState(page), '', 'the prompt is gone');
    assert.equal(offers.length, 1, 'one signed offer');
    await context.close();
  } finally {
    await spy.endAsync();
    await agent.stop();
  }
});

/** Counts the offers anyone sends to the agent's camera. */
async function offerSpy(agent) {
  const spy = await mqtt.connectAsync(`mqtt://127.0.0.1:${agent.ports.mqtt}`, { protocolVersion: 4 });
  spy.offers = [];
  await spy.subscribeAsync('peercam/cam1/session/+/to-camera');
  spy.on('message', (topic, payload) => { if (JSON.parse(payload).type === 'offer') spy.offers.push(topic); });
  return spy;
}

test('expired, revoked and damaged links each get their own sentence, and the page stops trying', async () => {
  const agent = await startAgent();
  const spy = await offerSpy(agent);
  try {
    const cases = [
      { url: agent.expiredLink('carol'), state: 'expired', sentence: /access link has expired/ },
      { url: agent.access('mallory').url, state: 'revoked', sentence: /access to this camera has been revoked/ },
      { url: `${agent.url}#device=cam1&viewer=dave&exp=99999999999&key=${'A'.repeat(43)}`, state: 'invalid-key', sentence: /not valid for this camera/ },
      { url: `${agent.url}#device=cam1&viewer=erin&exp=soon&key=abc`, state: 'bad-link', sentence: /incomplete or damaged/ },
    ];
    for (const { url, state, sentence } of cases) {
      const { page, context } = await openPage(browser(), url);
      await waitFor(`the ${state} prompt`, 10000, async () => (await promptState(page)) === state);
      await sleep(2500); // longer than the page's retry backoff: a retry would show here
      assert.match(await page.textContent('#access-reason'), sentence, state);
      assert.equal(await page.evaluate(() => location.hash), '', `${state}: the fragment is gone`);
      assert.equal(await promptState(page), state, `${state}: still says so`);
      assert.equal(await decodedFrames(page), 0, `${state}: nothing plays`);
      await context.close();
    }
    // The three well-formed links were each offered once; the damaged one never.
    assert.equal(spy.offers.length, 3, `offers: ${spy.offers.join(', ')}`);
  } finally {
    await spy.endAsync();
    await agent.stop();
  }
});

test('forged answers, refusals and hangups from the broker change nothing for a key holder', async () => {
  const agent = await startAgent();
  const attacker = await mqtt.connectAsync(`mqtt://127.0.0.1:${agent.ports.mqtt}`, { protocolVersion: 4 });
  let forgedHangups = 0;
  let liveSid = null;
  try {
    await attacker.subscribeAsync('peercam/+/session/+/to-camera');
    attacker.on('message', (topic, payload) => {
      const message = JSON.parse(payload);
      if (message.type !== 'offer') return;
      liveSid = topic.split('/')[3];
      const toViewer = topic.replace(/to-camera$/, 'to-viewer');
      // Before the camera can: a forged answer (the viewer's own offer, unsigned) and a refusal.
      attacker.publish(toViewer, JSON.stringify({ type: 'answer', sdp: message.sdp.replace('a=setup:actpass', 'a=setup:active'), mac: 'Zm9yZ2Vk' }));
      attacker.publish(toViewer, JSON.stringify({ type: 'error', code: 'busy', message: 'forged' }));
    });
    const { page, context } = await openPage(browser(), agent.access('alice').url);
    await waitFor('60 decoded frames despite the forgeries', 15000, async () => (await decodedFrames(page)) >= 60);
    const stats = await page.evaluate(() => ({ ...window.peercam }));
    assert.ok(stats.rejectedAnswers >= 1, `the forged answer was dropped (${JSON.stringify(stats)})`);
    // A live session: unsigned hangups and refusals on its topic are ignored.
    const toViewer = `peercam/cam1/session/${liveSid}/to-viewer`;
    for (const forged of [{ type: 'hangup', reason: 'forged' }, { type: 'hangup', mac: 'Zm9yZ2Vk' }, { type: 'error', code: 'unauthorized', message: 'revoked: forged' }]) {
      await attacker.publishAsync(toViewer, JSON.stringify(forged));
      forgedHangups += forged.type === 'hangup' ? 1 : 0;
    }
    await waitFor('the forged hangups counted as ignored', 5000, async () => (await page.evaluate(() => window.peercam.ignoredHangups)) >= forgedHangups);
    const before = await decodedFrames(page);
    await sleep(1500);
    assert.ok(await decodedFrames(page) > before + 20, 'still decoding after the forged hangups');
    assert.equal(await viewerState(page), 'live');
    console.log(`figures: forged answer ${stats.rejectedBeforeAnswer >= 1 ? 'arrived before' : 'arrived after'} the camera's and was dropped; ${forgedHangups} forged hangups ignored; ${await decodedFrames(page)} frames decoded`);
    await context.close();
  } finally {
    await attacker.endAsync();
    await agent.stop();
  }
});
