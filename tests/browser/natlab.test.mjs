// One case of the NAT lab matrix (docs/nat.md), run by tests/natlab/run inside tests/natlab/lab:
// the real agent in the camera's namespace behind its router, coturn on the wan, and the
// viewer page in headless Chromium in the viewer's namespace behind its own router. Asserts
// frames decoded and the selected candidate pair from getStats(); case (e) asserts the
// camera's hangup, the freed slot and the page's sentence. NATLAB_CASE picks the case.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { writeFileSync, chmodSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repo, artifacts, waitFor, sleep, Agent, launchChromium, openPage, requireLoopbackOnly, decodedFrames } from './harness.mjs';

import { CASES, WAN, TURN_SECRET } from './natlab-cases.mjs';

const which = process.env.NATLAB_CASE;
const spec = CASES[which];
const children = [];
after(() => { for (const child of children) child.kill('SIGKILL'); });

/** coturn on the wan: STUN for everyone, TURN (UDP and TCP on 3478) for credentials minted
 *  from TURN_SECRET (the TURN REST scheme, `use-auth-secret`). */
async function startCoturn() {
  const dir = mkdtempSync(join(tmpdir(), 'peercam-lab-coturn-'));
  const child = spawn('lab-exec', ['wan', 'turnserver', '-n', `--pidfile=${join(dir, 'pid')}`, `--userdb=${join(dir, 'turndb')}`, `--listening-ip=${WAN}`, `--relay-ip=${WAN}`,
    '--listening-port=3478', '--use-auth-secret', `--static-auth-secret=${TURN_SECRET}`, '--realm=peercam-lab',
    '--no-tls', '--no-dtls', '--no-cli', '--fingerprint', '--log-file=stdout', '--simple-log'], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  await waitFor('coturn listening', 10000, () => /listener opened on|Total General servers/i.test(log) || child.exitCode !== null);
  assert.equal(child.exitCode, null, `coturn exited:\n${log}`);
  return { log: () => log };
}

/** Chromium inside the viewer's namespace (playwright talks to it over a pipe, which crosses). */
function chromiumInViewerNamespace() {
  const dir = mkdtempSync(join(tmpdir(), 'peercam-lab-chromium-'));
  const wrapper = join(dir, 'chromium');
  writeFileSync(wrapper, `#!/bin/sh\nexec lab-exec view ${process.env.CHROMIUM || '/usr/bin/chromium'} "$@"\n`);
  chmodSync(wrapper, 0o755);
  return launchChromium({ executablePath: wrapper });
}

/** A TURN allocation from the viewer's namespace (over `transport`) with a credential minted
 *  for `expiry`, by coturn's own test client; returns whether coturn granted it. */
function allocates(expiry, transport) {
  const username = `${expiry}:cam1`;
  const password = createHmac('sha1', TURN_SECRET).update(username).digest('base64');
  const run = spawnSync('lab-exec', ['view', 'turnutils_uclient', ...(transport === 'tcp' ? ['-t'] : []), '-u', username, '-w', password, '-n', '1', '-m', '1',
    '-e', WAN, '-r', '3480', WAN], { encoding: 'utf8', timeout: 6000 });
  const out = `${run.stdout}${run.stderr}`;
  return !/Cannot complete Allocation/.test(out) && /Total connect time/.test(out);
}

const median = (values) => { const v = [...values].sort((x, y) => x - y); return v[Math.floor(v.length / 2)]; };

test(spec ? spec.title : 'NATLAB_CASE names a case', { skip: !process.env.PEERCAM_LAB && 'run through tests/natlab/run' }, async () => {
  assert.ok(spec, `NATLAB_CASE must be one of ${Object.keys(CASES)}`);
  requireLoopbackOnly(); // the lab's own namespace: its other namespaces are reached only through lab-exec
  const turn = await startCoturn();
  const secretFile = join(mkdtempSync(join(tmpdir(), 'peercam-lab-turn-')), 'secret');
  writeFileSync(secretFile, `${TURN_SECRET}\n`, { mode: 0o600 });
  const iceServers = spec.iceServers.map(({ urls, secret }) => (secret ? { urls, secretFile } : { urls }));
  const agent = await Agent.create({
    prefix: 'peercam-lab-', webSocket: true, webRoot: join(repo, 'web', 'dist'), auth: 'keys',
    exec: ['lab-exec', 'cam'], host: '10.1.0.2', publicHost: spec.view === 'lan' ? '10.1.0.2' : '198.51.100.10',
    ports: { mqtt: 1883, ws: 8083, http: 8080 }, udpAddrs: ['0.0.0.0:0'], iceServers,
    // The lab's "internet" reaches the camera's broker; who may watch is the access keys' job.
    brokerExtra: 'allow_anonymous = true', webrtcExtra: spec.webrtc ?? '',
  });
  const browser = await chromiumInViewerNamespace();
  try {
    const { page } = await openPage(browser, agent.access('lab').url);
    const shot = join(artifacts, `natlab-${which}.png`);
    if (spec.noPath) {
      // The session ends by connect_timeout_s (15 s) and the slot is freed; the page says what
      // would help instead of spinning.
      // Waiting for the offer first keeps a slow page load (a loaded CI machine) out of the
      // camera's budget, which the log's own timestamps measure.
      const started = await waitFor('the page\'s offer', 30000, () => agent.log.match(/(\S+)Z +INFO new viewer session/));
      // Chromium declares its ICE failed at about 15 s too, so either side may give up first:
      // the camera's connect-timeout, or the page's hangup (`viewer-hangup`) a few ms ahead of
      // it. Both end the session within the budget, and the page says no-path either way.
      // On failure, the agent's own account of the session says which side gave up and why.
      const ended = await waitFor('the session to end', 25000, () => agent.log.match(/(\S+)Z +INFO session ended sid=\S+ reason="(connect-timeout|ice-failed|viewer-hangup)"/))
        .catch((err) => { throw new Error(`${err.message}; the agent's log ends:\n${agent.log.split('\n').slice(-40).join('\n')}`); });
      const hungUpAfter = Date.parse(`${ended[1]}Z`) - Date.parse(`${started[1]}Z`);
      assert.ok(hungUpAfter <= 16500, `the session ended ${hungUpAfter} ms after the offer, within connect_timeout_s = 15`);
      await waitFor('the page to say a TURN server is needed', 10000, async () => (await page.evaluate(() => document.getElementById('state').dataset.state)) === 'no-path');
      assert.match(await page.textContent('#state'), /TURN server is needed.*docs\/nat\.md/);
      await waitFor('the status to count 0 viewers', 5000, async () => (await page.textContent('#viewers')).startsWith('0 of'));
      await page.screenshot({ path: shot });
      console.log(`figures: case ${which}: session ended (${ended[2]}) ${hungUpAfter} ms after the offer, page says no-path, viewers 0, screenshot ${shot}`);
      return;
    }
    await waitFor('60 decoded frames', 20000, async () => (await decodedFrames(page)) >= 60);
    await waitFor('the selected pair', 5000, async () => page.evaluate(() => window.peercam.pair?.local));
    const latencies = [];
    for (let i = 0; i < 10; i += 1) {
      const latency = await page.evaluate(() => window.peercam.latencyMs);
      if (latency != null) latencies.push(latency);
      await sleep(200);
    }
    const stats = await page.evaluate(() => ({ pair: window.peercam.pair, firstFrame: window.peercam.offerToFirstFrameMs }));
    await page.screenshot({ path: shot });
    console.log(`figures: case ${which}: pair ${stats.pair.local}/${stats.pair.remote} (camera at ${stats.pair.remoteAddress}, ${stats.pair.protocol}${stats.pair.relayProtocol ? `, relay over ${stats.pair.relayProtocol}` : ''}), offer → first frame ${stats.firstFrame} ms, stamp latency p50 ${median(latencies)} ms`);
    if (spec.pair) assert.deepEqual([stats.pair.local, stats.pair.remote], spec.pair);
    if (spec.remote) assert.equal(stats.pair.remote, spec.remote);
    if (spec.remoteAddress) assert.equal(stats.pair.remoteAddress, spec.remoteAddress);
    if (spec.blipMs) {
      // Everything between the viewer and the rest of the world is dropped, then let through.
      const frames = () => decodedFrames(page);
      const block = (op) => spawnSync('lab-exec', ['rview', 'iptables', op, 'FORWARD', ...(op === '-I' ? ['1'] : []), '-j', 'DROP']);
      assert.equal(block('-I').status, 0);
      await sleep(spec.blipMs);
      const frozen = await frames();
      assert.equal(block('-D').status, 0);
      const restoredAt = Date.now();
      await waitFor('30 new frames after the blip', 30000, async () => (await frames()) >= frozen + 30);
      const playingAgainMs = Date.now() - restoredAt;
      const again = await page.evaluate(() => ({ state: document.getElementById('state').dataset.state, sessions: window.peercam.sessions,
        recoveries: window.peercam.recoveries, restarts: window.peercam.iceRestarts, restartAnswers: window.peercam.restartAnswers }));
      // How the page got it back: ICE on its own (the old pair answers again), or the page's
      // ICE restart on the same session (after DISCONNECTED_BEFORE_RESTART_MS disconnected).
      const recovery = again.recoveries.at(-1);
      const restarted = /answered an ICE restart/.test(agent.log);
      console.log(`figures: case ${which}: after a ${spec.blipMs} ms blip, 30 new frames ${playingAgainMs} ms after the restore, recovered by ${recovery?.by} ${recovery?.ms} ms after the page saw it go down `
        + `(page: ${again.restarts} ICE restart(s) sent, ${again.restartAnswers} answered; camera ${restarted ? 'answered an ICE restart' : 'saw no ICE restart'}; page state ${again.state}, ${again.sessions} session(s))`);
      assert.equal(again.state, 'live');
      assert.ok(recovery, 'the page recorded how it recovered');
      assert.equal(again.sessions, 1, 'no new session');
      assert.doesNotMatch(agent.log, /session ended/, 'the same session carried on');
      // A viewer that never comes back: the camera frees its slot by itself.
      assert.equal(block('-I').status, 0);
      const goneAt = Date.now();
      await waitFor('the camera to free the vanished viewer', 30000, () => /session ended.*reason="ice-failed".*viewers=0/.test(agent.log));
      console.log(`figures: case ${which}: a viewer that vanished was freed ${Date.now() - goneAt} ms later (ice-failed, viewers=0)`);
    }
    if (spec.relay) {
      assert.ok(stats.pair.local === 'relay' || stats.pair.remote === 'relay', `a relay pair: ${JSON.stringify(stats.pair)}`);
      if (stats.pair.local === 'relay') assert.equal(stats.pair.relayProtocol, spec.relay, turn.log());
      const now = Math.floor(Date.now() / 1000);
      assert.equal(allocates(now + 600, spec.relay), true, 'coturn grants a credential minted from the secret');
      assert.equal(allocates(now - 60, spec.relay), false, 'coturn refuses one past its expiry');
    }
  } finally {
    await browser.close();
    await agent.stop();
    // The agent's log, for reading a failure after the lab is gone.
    writeFileSync(join(artifacts, `natlab-${which}-agent.log`), agent.log);
  }
});
