// A minimal WHEP player (draft-ietf-wish-whep) for the browser tests: plain
// RTCPeerConnection + fetch, no project code, no library, no bundler.
//
// whep-player.html?url=<WHEP endpoint>[&autostart=0][&telemetry=0]
//
// Flow (non-trickle on both sides, so no PATCH is needed):
//   1. a recvonly video transceiver (and, unless telemetry=0, a "telemetry" data channel);
//   2. createOffer / setLocalDescription, then wait until ICE gathering is complete
//      (at most 3 s), so the offer carries all of this browser's candidates;
//   3. POST the offer (Content-Type: application/sdp); expect 201 Created with the SDP
//      answer (which carries all the camera's candidates), Location, ETag and one
//      Link: <url>; rel="ice-server" header per ICE server of the camera;
//   4. setRemoteDescription(answer); the track plays in the muted autoplay <video>;
//   5. stop(): DELETE the session URL (Location, resolved against the endpoint).
// The page is served from another origin than the endpoint, so every request is a CORS
// request: the endpoint must answer the preflights and expose Location, ETag and Link
// (Access-Control-Expose-Headers), or this page cannot read them.
//
// Everything the test reads is on window.whep; times are performance.now() milliseconds.
'use strict';

(() => {
  const params = new URLSearchParams(location.search);
  const video = document.getElementById('video');
  const stateElement = document.getElementById('state');
  const logElement = document.getElementById('log');
  const REQUEST_TIMEOUT_MS = 10000;
  const GATHERING_TIMEOUT_MS = 3000;

  const whep = {
    endpoint: params.get('url'),
    state: 'idle',
    error: null,
    attempts: 0,
    status: null,
    body: null,
    location: null,
    resource: null,
    etag: null,
    iceServers: [],
    offerSdp: null,
    answerSdp: null,
    deleteStatus: null,
    connectionStates: [],
    telemetry: 0,
    framesDecoded: 0,
    timings: {},
    pc: null,
    start,
    stop,
    frames,
  };
  window.whep = whep;

  function log(line) {
    logElement.textContent += `${line}\n`;
    console.log(`whep: ${line}`);
  }

  function setState(state, error) {
    whep.state = state;
    if (error) {
      whep.error = error;
      log(`error: ${error}`);
    }
    stateElement.dataset.state = state;
    stateElement.textContent = error ? `${state}: ${error}` : state;
  }

  function waitForGathering(pc) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), GATHERING_TIMEOUT_MS);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') {
          clearTimeout(timer);
          resolve(true);
        }
      });
    });
  }

  /** Link: <url>; rel="ice-server"; username="u"; credential="p" → RTCIceServer objects. */
  function parseIceServerLinks(header) {
    if (!header) return [];
    const servers = [];
    for (const link of header.split(/,\s*(?=<)/)) {
      const match = /^\s*<([^>]*)>(.*)$/.exec(link);
      if (!match) continue;
      const attributes = {};
      for (const part of match[2].split(';')) {
        const eq = part.indexOf('=');
        if (eq < 0) continue;
        attributes[part.slice(0, eq).trim().toLowerCase()] = part.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1');
      }
      if (attributes.rel !== 'ice-server') continue;
      const server = { urls: match[1] };
      if (attributes.username !== undefined) server.username = attributes.username;
      if (attributes.credential !== undefined) server.credential = attributes.credential;
      servers.push(server);
    }
    return servers;
  }

  /** Frames decoded so far on the video receiver (getStats, inbound-rtp). */
  async function frames() {
    const pc = whep.pc;
    if (!pc || pc.signalingState === 'closed') return whep.framesDecoded;
    const stats = await pc.getStats();
    let decoded = 0;
    stats.forEach((report) => {
      if (report.type === 'inbound-rtp' && report.kind === 'video') decoded += report.framesDecoded ?? 0;
    });
    whep.framesDecoded = decoded;
    if (decoded > 0 && whep.timings.firstDecodedAt === undefined) {
      whep.timings.firstDecodedAt = performance.now();
      log(`first decoded frame ${Math.round(whep.timings.firstDecodedAt - whep.timings.postedAt)} ms after POST`);
      setState('live');
    }
    return decoded;
  }

  let poller = null;

  function closePeer() {
    clearInterval(poller);
    poller = null;
    if (whep.pc) whep.pc.close();
  }

  /** One WHEP session; resolves to true once the answer is applied. */
  async function start() {
    closePeer();
    whep.attempts += 1;
    Object.assign(whep, {
      error: null, status: null, body: null, location: null, resource: null, etag: null,
      iceServers: [], offerSdp: null, answerSdp: null, deleteStatus: null,
      connectionStates: [], telemetry: 0, framesDecoded: 0, timings: {},
    });
    if (!whep.endpoint) {
      setState('error', 'no WHEP endpoint: load this page with ?url=<endpoint>');
      return false;
    }
    const pc = new RTCPeerConnection({ iceServers: [] });
    whep.pc = pc;
    pc.addTransceiver('video', { direction: 'recvonly' });
    if (params.get('telemetry') !== '0') {
      pc.createDataChannel('telemetry').onmessage = () => { whep.telemetry += 1; };
    }
    pc.ontrack = (event) => {
      video.srcObject = event.streams[0] ?? new MediaStream([event.track]);
    };
    pc.onconnectionstatechange = () => {
      whep.connectionStates.push(pc.connectionState);
      if (pc.connectionState === 'connected' && whep.timings.connectedAt === undefined) {
        whep.timings.connectedAt = performance.now();
      }
      log(`connection ${pc.connectionState}`);
    };

    setState('gathering');
    await pc.setLocalDescription(await pc.createOffer());
    const complete = await waitForGathering(pc);
    if (!complete) log(`ICE gathering not complete after ${GATHERING_TIMEOUT_MS} ms; posting what there is`);
    whep.offerSdp = pc.localDescription.sdp;

    setState('posting');
    whep.timings.postedAt = performance.now();
    let response;
    try {
      response = await fetch(whep.endpoint, {
        method: 'POST',
        headers: { 'Content-Type': 'application/sdp' },
        body: whep.offerSdp,
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (error) {
      closePeer();
      setState('error', `POST ${whep.endpoint} failed: ${error.name}: ${error.message} ` +
        '(nothing listening, or the reply or its CORS preflight lacks Access-Control-Allow-Origin)');
      return false;
    }
    whep.timings.answeredAt = performance.now();
    whep.status = response.status;
    const body = await response.text();
    if (response.status !== 201) {
      whep.body = body;
      closePeer();
      setState(response.status === 503 ? 'busy' : 'error', `POST answered ${response.status}: ${body.slice(0, 200)}`);
      return false;
    }
    whep.answerSdp = body;
    whep.location = response.headers.get('Location');
    whep.etag = response.headers.get('ETag');
    whep.iceServers = parseIceServerLinks(response.headers.get('Link'));
    if (whep.location) {
      whep.resource = new URL(whep.location, whep.endpoint).href;
    } else {
      whep.error = '201 without a readable Location header (is it listed in Access-Control-Expose-Headers?)';
      log(whep.error);
    }
    try {
      await pc.setRemoteDescription({ type: 'answer', sdp: body });
    } catch (error) {
      closePeer();
      setState('error', `the answer was not accepted: ${error.message}`);
      return false;
    }
    setState('connecting');
    poller = setInterval(() => { frames().catch(() => {}); }, 50);
    return true;
  }

  /**
   * Ends the session with DELETE on its URL. With { close: false } the peer connection is
   * left open, so only the server can end the media (the test's proof that DELETE did).
   */
  async function stop({ close = true } = {}) {
    if (close) closePeer();
    if (!whep.resource) return null;
    try {
      const response = await fetch(whep.resource, { method: 'DELETE', signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
      whep.deleteStatus = response.status;
    } catch (error) {
      whep.deleteStatus = `${error.name}: ${error.message}`;
    }
    log(`DELETE ${whep.resource}: ${whep.deleteStatus}`);
    setState('ended');
    return whep.deleteStatus;
  }

  if (params.get('autostart') !== '0') {
    start().catch((error) => setState('error', `${error.name}: ${error.message}`));
  }
})();
