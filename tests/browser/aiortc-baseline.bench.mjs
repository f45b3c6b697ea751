// A benchmark, not a test: scripts/bench-browser runs it, the suite does not. Chromium's
// offer → first presented frame at 1280x720@30 for peercam and for a plain aiortc camera
// (bench/aiortc_camera.py), through the same broker, page and browser, loads alternating
// between the two so both see the same machine. Prints figures; asserts only that both play.
// Must run in a loopback-only network namespace.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { repo, waitFor, Agent, useChromium, openPage } from './harness.mjs';

const python = process.env.PEERCAM_AIORTC_PYTHON || 'python3';
const loads = Number(process.env.PEERCAM_BENCH_LOADS || 10);
const browser = useChromium();

const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
};

test('Chromium first frame: peercam against a plain aiortc camera', async () => {
  const agent = await Agent.create({ webSocket: true, webRoot: join(repo, 'web', 'dist'), width: 1280, height: 720 });
  const camera = spawn(python, [join(repo, 'bench', 'aiortc_camera.py'), '127.0.0.1', String(agent.ports.mqtt), 'aio'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let cameraLog = '';
  camera.stdout.on('data', (d) => { cameraLog += d; });
  camera.stderr.on('data', (d) => { cameraLog += d; });
  try {
    await waitFor('the aiortc camera', 30000, () => cameraLog.includes('ready'))
      .catch((err) => { throw new Error(`${err.message}; it said:\n${cameraLog}`); });
    const firstFrames = { peercam: [], aiortc: [] };
    for (let load = 0; load < loads; load += 1) {
      for (const [name, device] of [['peercam', 'cam1'], ['aiortc', 'aio']]) {
        const { page, context } = await openPage(browser(), `${agent.url}?device=${device}`);
        await waitFor(`${name}: 10 presented frames`, 20000, async () => (await page.evaluate(() => window.peercam?.presentedFrames ?? 0)) >= 10)
          .catch((err) => { throw new Error(`${err.message}; the aiortc camera said:\n${cameraLog}`); });
        assert.equal(await page.evaluate(() => document.getElementById('video').videoWidth), 1280, name);
        firstFrames[name].push(await page.evaluate(() => window.peercam.offerToFirstFrameMs));
        await context.close();
      }
    }
    for (const [name, values] of Object.entries(firstFrames)) {
      console.log(`figures: ${name}: Chromium offer → first frame over ${values.length} loads: p50 ${percentile(values, 0.5)} ms, `
        + `p95 ${percentile(values, 0.95)} ms, min ${Math.min(...values)}, max ${Math.max(...values)} (${values.join(', ')})`);
    }
  } finally {
    camera.kill('SIGINT');
    await agent.stop();
  }
});
