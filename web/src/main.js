// peercam viewer page: lists cameras from their retained MQTT status, negotiates WebRTC
// with the chosen one over MQTT (protocol v1, docs/signaling.md), plays the video and shows
// live telemetry. Media goes camera → browser directly; MQTT carries only signaling.
import mqtt from 'mqtt';
import { Chart } from './chart.js';
import { readStamp } from './stamp.js';
import { AccessKey, parseAccessFragment, refusalState, storeAccess, storedAccess } from './access.js';

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const SENTENCES = {
  idle: 'Pick a camera to watch.',
  connecting: 'Connecting to the camera…',
  reconnecting: 'Connection lost; reconnecting…',
  live: 'Live',
  offline: 'The camera is offline. The video resumes by itself when it comes back.',
  unavailable: 'The camera device is unavailable right now (unplugged or failing). Waiting for it…',
  busy: 'The camera already has its maximum number of viewers. Try again later.',
  crowded: 'Too many viewers are joining the camera at once. Trying again in a few seconds…',
  unreachable: 'The broker cannot be reached. Retrying…',
  failed: 'No network path to the camera (ICE failed). Retrying…',
  'no-path': 'The camera could not be reached directly from this network: a TURN server is needed (see docs/nat.md in peercam). Trying again every 30 s.',
  error: 'The camera refused the connection.',
  'needs-key': 'This camera admits only invited viewers. Open the access link its admin sent you, or paste it below.',
  expired: 'Your access link has expired. Ask the camera’s admin for a new one.',
  revoked: 'Your access to this camera has been revoked.',
  'invalid-key': 'This access link is not valid for this camera. Ask its admin for a new one.',
  'bad-link': 'That access link is incomplete or damaged. Copy the whole link and try again.',
};

/** States in which trying again cannot help until the viewer brings another access link. */
const NEEDS_NEW_LINK = new Set(['needs-key', 'expired', 'revoked', 'invalid-key', 'bad-link']);

/** How long an unsigned refusal waits for a signed answer before it is believed: anyone on
 *  the broker can publish `error` on a viewer's topic, but only the camera can sign. */
const UNSIGNED_REFUSAL_GRACE_MS = 1500;

const BROKER_KEY = 'peercam.broker';

/** How long a session that has played may stay `disconnected` before the page restarts ICE
 *  (ICE often comes back on its own after a short blip; a restart costs a round trip). */
const DISCONNECTED_BEFORE_RESTART_MS = 3000;
/** How long an ICE restart (offer sent → connected again) may take before the page gives the
 *  session up and starts a new one, as it did before restarts existed. */
const RESTART_TIMEOUT_MS = 10000;

/** Takes a link's secrets out of the address bar (a fragment never reaches a server, but it
 *  does reach history and screenshots) into this tab's sessionStorage: the access fields,
 *  and `broker`, a broker URL that may carry a login (`wss://user:password@host/mqtt`). */
function takeLinkFromAddress() {
  const { access, error } = parseAccessFragment(location.hash);
  const broker = new URLSearchParams(location.hash.replace(/^#/, '')).get('broker');
  if (access || error || broker) history.replaceState(null, '', location.pathname + location.search);
  if (access) storeAccess(access);
  if (broker) sessionStorage.setItem(BROKER_KEY, broker);
  return { access, error, broker: broker || sessionStorage.getItem(BROKER_KEY) };
}

/** Where the broker and cameras are: query parameters, else what the agent serving us says. */
async function discover() {
  let served = {};
  try {
    const response = await fetch('peercam.json', { cache: 'no-store' });
    if (response.ok) served = await response.json();
  } catch { /* hosted elsewhere: query parameters only */ }
  const host = location.hostname.includes(':') ? `[${location.hostname}]` : location.hostname;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  // The agent's own origin first (one port, one certificate), then its WebSocket listener.
  const sameOrigin = served.mqtt_path ? `${scheme}://${location.host}${served.mqtt_path}` : null;
  const listener = served.ws_port ? `${scheme}://${host || '127.0.0.1'}:${served.ws_port}` : null;
  const link = takeLinkFromAddress();
  const { access, error: linkError } = link;
  const broker = link.broker || params.get('broker') || sameOrigin || listener;
  const device = params.get('device') || access?.device || null;
  return { broker, prefix: params.get('prefix') || served.topic_prefix || 'peercam', device, linkError };
}

/** Options of every MQTT connection. The embedded broker's WebSocket listener speaks MQTT
 *  3.1.1 only. Native timers: mqtt.js's default keepalive timer runs in a worker made from
 *  a blob: URL, which the agent's Content-Security-Policy (script-src 'self') forbids. */
const MQTT_OPTIONS = { protocolVersion: 4, timerVariant: 'native' };

/** The camera states the page knows; any other value from the broker shows as `unknown`
 *  (it becomes a CSS class, so it must never be taken as it comes). */
const CAMERA_STATES = new Set(['online', 'unavailable', 'offline']);
const cameraState = (status) => {
  const state = status.state || 'offline';
  return CAMERA_STATES.has(state) ? state : 'unknown';
};

/** The device level of a `{prefix}/{device}/status` topic, or null for any other topic. */
function statusTopicDevice(prefix, topic) {
  const head = `${prefix}/`;
  const tail = '/status';
  if (!topic.startsWith(head) || !topic.endsWith(tail)) return null;
  const device = topic.slice(head.length, topic.length - tail.length);
  return device && !device.includes('/') ? device : null;
}

/** An element with a class and, optionally, its text (never markup). */
function element(tag, className, text) {
  const el = document.createElement(tag);
  el.className = className;
  if (text != null) el.textContent = text;
  return el;
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return 'web' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** How long the page waits after "too many sessions are connecting" or "too many offers":
 *  those limits free up within seconds (docs/signaling.md, error `busy`). */
const CROWDED_RETRY_MS = 3000;

/** The page state for a `busy` error, from the limit its message starts with: the camera's
 *  viewers are all there (`busy`), or too many are joining at once (`crowded`). */
function busyState(message) {
  return typeof message === 'string' && message.startsWith('too many') ? 'crowded' : 'busy';
}

function setState(state, detail) {
  const el = $('state');
  el.dataset.state = state;
  const sentence = SENTENCES[state] || state;
  // The camera's own wording only adds to the generic refusal; the named states say it all.
  el.textContent = detail && state === 'error' ? `${sentence} (${detail})` : sentence;
  el.title = detail || '';
  document.body.dataset.viewerState = state;
}

function setBrokerState(state, text) {
  const el = $('broker-state');
  el.dataset.state = state;
  el.textContent = text;
}

/** One watch attempt: its own MQTT connection (so its last will hangs up exactly this
 *  session), one RTCPeerConnection, one session id. Ends on hangup, error or failure. */
class Session {
  constructor({ broker, prefix, device, status, key, onEnd, ui }) {
    this.sid = randomId();
    this.device = device;
    this.toCamera = `${prefix}/${device}/session/${this.sid}/to-camera`;
    this.toViewer = `${prefix}/${device}/session/${this.sid}/to-viewer`;
    this.broker = broker;
    this.status = status;
    this.onEnd = onEnd;
    this.ui = ui;
    this.key = key; // AccessKey, or null when the camera is open
    this.answered = false;
    this.ended = false;
    this.remoteSet = false;
    this.pendingCandidates = [];
    this.appliedAnswers = new Set(); // SDPs applied: a late QoS 1 copy must not be applied again
    this.restart = null; // { startedAt, answered, timer } while an ICE restart is under way
    this.disconnectedAt = null;
  }

  start() {
    // The key and sid are known before connecting, so even the last will is signed.
    const hangup = JSON.stringify(this.hangupMessage());
    this.client = mqtt.connect(this.broker, {
      ...MQTT_OPTIONS,
      clientId: this.sid, // brokers with per-session ACLs match it (%c in mosquitto)
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: 8000,
      will: { topic: this.toCamera, payload: hangup, qos: 1, retain: false },
    });
    this.client.on('error', () => this.end('unreachable'));
    this.client.on('close', () => { if (!this.ended) this.end('unreachable'); });
    this.client.on('message', (_topic, payload) => this.onSignal(payload));
    this.client.on('connect', () => {
      this.client.subscribe(this.toViewer, { qos: 1 }, (err) => {
        if (err) this.end('unreachable');
        else this.offer().catch((e) => { console.error(e); this.end('error'); });
      });
    });
  }

  /** Telemetry, or a snapshot: its JSON header, then `chunks` binary messages. */
  onChannelMessage(data) {
    if (typeof data !== 'string') {
      const snapshot = this.snapshot;
      if (!snapshot) return;
      snapshot.parts.push(data);
      if (snapshot.parts.length === snapshot.header.chunks) {
        this.snapshot = null;
        const blob = new Blob(snapshot.parts, { type: 'image/jpeg' });
        if (blob.size === snapshot.header.bytes) this.ui.snapshotTaken(blob, snapshot.header);
        else this.ui.snapshotFailed('the snapshot arrived incomplete');
      }
      return;
    }
    let message;
    try { message = JSON.parse(data); } catch { return; }
    if (message?.type === 'snapshot' && Number.isInteger(message.chunks) && message.chunks > 0) {
      this.snapshot = { header: message, parts: [] };
    } else if (message?.type === 'snapshot_error') {
      this.ui.snapshotFailed(String(message.message ?? 'no snapshot'));
    } else {
      this.ui.telemetry(message);
    }
  }

  /** Asks the camera for a JPEG of its next frame over the data channel. */
  requestSnapshot() {
    if (this.channel?.readyState !== 'open') return false;
    this.channel.send(JSON.stringify({ type: 'snapshot' }));
    return true;
  }

  hangupMessage() {
    return this.key ? { type: 'hangup', mac: this.key.hangupMac(this.sid) } : { type: 'hangup' };
  }

  send(message) {
    if (this.client?.connected) this.client.publish(this.toCamera, JSON.stringify(message), { qos: 1 });
  }

  async offer() {
    const pc = new RTCPeerConnection({ iceServers: this.status.ice_servers || [] });
    this.pc = pc;
    const transceiver = pc.addTransceiver('video', { direction: 'recvonly' });
    const caps = window.RTCRtpReceiver?.getCapabilities?.('video');
    if (caps && transceiver.setCodecPreferences) {
      const h264 = caps.codecs.filter((c) => c.mimeType.toLowerCase() === 'video/h264');
      if (h264.length) transceiver.setCodecPreferences(h264);
    }
    const channel = pc.createDataChannel('telemetry');
    channel.binaryType = 'arraybuffer';
    this.channel = channel;
    channel.onmessage = (event) => this.onChannelMessage(event.data);
    pc.ontrack = (event) => this.ui.attach(event.streams[0] || new MediaStream([event.track]));
    pc.onicecandidate = (event) => {
      const c = event.candidate;
      this.send({ type: 'candidate', candidate: c ? { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex } : null });
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'connected') this.onConnected();
      else if (pc.connectionState === 'disconnected') this.onDisconnected();
      else if (pc.connectionState === 'failed') this.onFailed();
    };
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    this.sendOffer(pc.localDescription.sdp);
    this.ui.stats.offerSentAt = performance.now();
    this.ui.stats.offerToFirstFrameMs = null;
    // The camera drops sessions that do not connect; do the same here.
    this.connectTimer = setTimeout(() => { if (pc.connectionState !== 'connected') this.end(this.noPathOr('failed')); }, 20000);
  }

  /** An offer (the first, or an ICE restart) on this session's sid, signed as offers are. */
  sendOffer(sdp) {
    this.send(this.key ? { type: 'offer', sdp, auth: this.key.offerAuth(this.sid, sdp) } : { type: 'offer', sdp });
  }

  onConnected() {
    clearTimeout(this.connectTimer);
    clearTimeout(this.disconnectTimer);
    if (this.everConnected && (this.disconnectedAt != null || this.restart)) {
      // Which recovery brought it back: the restart's answer, or ICE on its own before it.
      const by = this.restart?.answered ? 'ice-restart' : 'ice-reconnect';
      const since = this.restart?.answered ? this.restart.startedAt : this.disconnectedAt ?? this.restart.startedAt;
      this.ui.stats.recoveries.push({ by, ms: Math.round(performance.now() - since) });
    }
    if (this.restart?.answered) {
      clearTimeout(this.restart.timer);
      this.restart = null;
    }
    this.disconnectedAt = null;
    this.everConnected = true;
    setState('live');
  }

  /** A session that had played lost its path: ICE may come back by itself; if it has not
   *  after a few seconds, restart it. */
  onDisconnected() {
    if (!this.everConnected || this.ended) return;
    this.disconnectedAt ??= performance.now();
    clearTimeout(this.disconnectTimer);
    this.disconnectTimer = setTimeout(() => {
      if (this.pc?.connectionState === 'disconnected') this.restartIce('disconnected');
    }, DISCONNECTED_BEFORE_RESTART_MS);
  }

  onFailed() {
    if (this.everConnected && !this.restart) return this.restartIce('failed');
    // A restart whose answer is in and still fails, or a session that never connected.
    if (!this.restart || this.restart.answered) this.end(this.noPathOr('failed'));
    // Otherwise the restart's answer is still on its way; its timer decides.
  }

  /** ICE restart on the same session (docs/signaling.md, "ICE restart"): an offer with new
   *  ICE credentials on this sid. If the session does not play again within
   *  RESTART_TIMEOUT_MS, it ends and a new session starts, as before restarts existed. */
  async restartIce(why) {
    if (this.ended || this.restart || !this.pc) return;
    const pc = this.pc;
    clearTimeout(this.disconnectTimer);
    this.disconnectedAt ??= performance.now();
    this.restart = { startedAt: performance.now(), answered: false };
    this.restart.timer = setTimeout(() => this.giveUpRestart('timeout'), RESTART_TIMEOUT_MS);
    this.ui.stats.iceRestarts += 1;
    setState('reconnecting');
    console.info(`ICE restart (${why})`);
    try {
      await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
      if (!this.ended) this.sendOffer(pc.localDescription.sdp);
    } catch (e) {
      console.warn('ICE restart:', e);
      this.giveUpRestart('offer failed');
    }
  }

  giveUpRestart(why) {
    if (!this.restart || this.ended) return;
    if (this.pc?.connectionState === 'connected') {
      // ICE came back by itself meanwhile: nothing to give up.
      clearTimeout(this.restart.timer);
      this.restart = null;
      return;
    }
    this.ui.stats.restartFallbacks += 1;
    console.warn(`ICE restart did not bring the session back (${why}); starting a new one`);
    this.end('reconnecting', `(ICE restart: ${why})`);
  }

  /** A session that never connected found no network path: say what would help, rather
   *  than spin. One that did connect and then failed is a blip: reconnect. */
  noPathOr(state) {
    return this.everConnected ? state : 'no-path';
  }

  async onSignal(payload) {
    let message;
    try { message = JSON.parse(new TextDecoder().decode(payload)); } catch { return; }
    const pc = this.pc;
    if (!pc || this.ended) return;
    try {
      if (message.type === 'answer') {
        if (this.key && !this.key.answerIsSigned(this.sid, message.sdp, message.mac)) {
          // Not the camera: wait for the real answer.
          this.ui.stats.rejectedAnswers += 1;
          if (!this.answered) this.ui.stats.rejectedBeforeAnswer += 1;
          console.warn('signaling: dropped an answer that is not signed with this access key');
          return;
        }
        if (this.appliedAnswers.has(message.sdp)) return; // a QoS 1 copy
        const restarting = this.restart && !this.restart.answered && pc.signalingState === 'have-local-offer';
        if (this.answered && !restarting) return;
        this.appliedAnswers.add(message.sdp);
        if (restarting) {
          this.restart.answered = true;
          this.ui.stats.restartAnswers += 1;
        } else {
          this.answered = true;
          clearTimeout(this.refusalTimer);
          if (this.refusal) setState('connecting');
        }
        await pc.setRemoteDescription({ type: 'answer', sdp: message.sdp });
        if (restarting && pc.connectionState === 'connected') {
          // Already back on its own before the answer: the restart is over.
          clearTimeout(this.restart.timer);
          this.restart = null;
        }
        this.remoteSet = true;
        for (const c of this.pendingCandidates.splice(0)) await pc.addIceCandidate(c);
      } else if (message.type === 'candidate') {
        const candidate = message.candidate ?? null;
        if (!this.remoteSet) this.pendingCandidates.push(candidate);
        else await pc.addIceCandidate(candidate);
      } else if (message.type === 'error') {
        this.onRefusal(message);
      } else if (message.type === 'hangup') {
        if (this.key && !this.key.hangupIsSigned(this.sid, message.mac)) {
          this.ui.stats.ignoredHangups += 1;
          console.warn('signaling: ignored a hangup that is not signed with this access key');
          return;
        }
        if (message.reason === 'revoked') this.end('revoked', '', { sendHangup: false });
        else if (['connect-timeout', 'ice-failed'].includes(message.reason)) this.end(this.noPathOr('reconnecting'), `(${message.reason})`, { sendHangup: false });
        else if (message.reason === 'restart-failed') this.end('reconnecting', `(${message.reason})`, { sendHangup: false });
        // Connected after the last viewer slot went to another (docs/signaling.md, hangup).
        else if (message.reason === 'busy') this.end('busy', '', { sendHangup: false });
        else this.end('reconnecting', `(${message.reason || 'hangup'})`);
      }
    } catch (e) {
      console.warn('signaling:', e);
    }
  }

  /** An `error` from the camera, or from anyone who can publish on our topic. Errors are not
   *  signed: with a key, one is shown at once but believed only if no signed answer follows
   *  soon; after a signed answer, none can end the session (only a signed hangup can). */
  onRefusal(message) {
    // A refused ICE restart (rate limit, bad offer) ends the restart at once in an open
    // camera; with a key, an unsigned error changes nothing and the restart's timer decides.
    if (this.restart && !this.restart.answered && !this.key) return this.giveUpRestart(`refused: ${message.message}`);
    if (this.answered) return;
    const state = message.code === 'unauthorized'
      ? refusalState(message.message)
      : message.code === 'busy' ? busyState(message.message)
        : { unavailable: 'unavailable' }[message.code] || 'error';
    if (!this.key) return this.end(state, message.message);
    // The latest refusal is the one shown; a forger can change the words, not the outcome.
    this.refusal = state;
    setState(state, message.message);
    clearTimeout(this.refusalTimer);
    this.refusalTimer = setTimeout(() => this.end(state, message.message), UNSIGNED_REFUSAL_GRACE_MS);
  }

  /** Ends this session; `reason` is the state to show. Idempotent. */
  end(reason, detail, { sendHangup = true } = {}) {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.connectTimer);
    clearTimeout(this.refusalTimer);
    clearTimeout(this.disconnectTimer);
    clearTimeout(this.restart?.timer);
    if (sendHangup) this.send(this.hangupMessage());
    try { this.pc?.close(); } catch { /* already closed */ }
    const client = this.client;
    if (client) setTimeout(() => client.end(true), 200); // let the hangup leave first
    this.onEnd(reason, detail);
  }
}

/** The page: camera list, the current watch and its reconnect policy, the panels. */
class App {
  constructor(config) {
    this.config = config;
    this.cameras = new Map();
    this.session = null;
    this.watching = null;
    this.backoff = 1000;
    this.retryTimer = null;
    this.charts = {
      latency: new Chart($('chart-latency'), '#5aa9ff'),
      fps: new Chart($('chart-fps'), '#3ecf8e'),
      bitrate: new Chart($('chart-bitrate'), '#c792ea'),
      cpu: new Chart($('chart-cpu'), '#f5b942', 100),
      temperature: new Chart($('chart-temperature'), '#ff6b6b'),
    };
    this.stats = { telemetry: 0, latencyMs: null, framesDecoded: 0, presentedFrames: 0, rejectedAnswers: 0, rejectedBeforeAnswer: 0, ignoredHangups: 0,
      // ICE restarts started, answered by the camera, given up for a new session; and each
      // recovery of a session that had played: { by: 'ice-restart' | 'ice-reconnect', ms }.
      iceRestarts: 0, restartAnswers: 0, restartFallbacks: 0, recoveries: [], sessions: 0,
      snapshots: 0, snapshotErrors: [], lastSnapshot: null };
    this.needsNewLink = false; // set by a refusal no retry can cure
    window.peercam = this.stats; // read by the browser test and handy in the console
  }

  start() {
    const { broker, prefix } = this.config;
    $('access-form').onsubmit = (event) => { event.preventDefault(); this.useAccessLink($('access-link').value); };
    if (this.config.linkError) this.showAccessPrompt('bad-link');
    if (!broker) {
      setBrokerState('unreachable', 'no broker: open this page with ?broker=ws://host:port');
      return;
    }
    const client = mqtt.connect(broker, { ...MQTT_OPTIONS, clientId: `list-${randomId()}`, reconnectPeriod: 2000, connectTimeout: 8000 });
    client.on('connect', () => {
      setBrokerState('connected', `broker ${new URL(broker).host}`);
      client.subscribe(`${prefix}/+/status`, { qos: 1 });
    });
    client.on('reconnect', () => setBrokerState('connecting', 'reconnecting to broker…'));
    client.on('offline', () => {
      setBrokerState('unreachable', 'broker unreachable');
      if (this.watching && !this.session) setState('unreachable');
    });
    client.on('error', () => setBrokerState('unreachable', 'broker unreachable'));
    client.on('message', (topic, payload) => this.onStatus(topic, payload));
    $('stop').onclick = () => this.stop();
    $('snapshot').onclick = () => {
      if (!this.session?.requestSnapshot()) return;
      // Until it arrives or fails; a session that ends meanwhile must not leave it off.
      $('snapshot').disabled = true;
      setTimeout(() => { $('snapshot').disabled = false; }, 5000);
    };
    $('fullscreen').onclick = () => {
      const video = $('video');
      const stage = $('stage');
      if (stage.requestFullscreen) stage.requestFullscreen();
      else if (video.webkitEnterFullscreen) video.webkitEnterFullscreen(); // iOS Safari
    };
    addEventListener('pagehide', () => this.session?.end('idle'));
    setInterval(() => this.pollStats(), 1000);
    this.watchFrames();
  }

  onStatus(topic, payload) {
    let status;
    try { status = JSON.parse(new TextDecoder().decode(payload)); } catch { return; }
    if (status?.type !== 'status' || typeof status.device !== 'string') return;
    // Anyone who can publish may forge a status: it speaks only for the topic it came on.
    if (status.device !== statusTopicDevice(this.config.prefix, topic)) return;
    const previous = this.cameras.get(status.device);
    this.cameras.set(status.device, status);
    this.renderList();
    if (!this.watching && (this.config.device ? status.device === this.config.device : status.state === 'online')) {
      if (status.state === 'online' || this.config.device) this.watch(status.device);
    }
    if (this.watching === status.device) {
      $('viewers').textContent = `${status.viewers ?? '–'} of ${status.max_viewers ?? '–'}`;
      if (status.state !== 'online') {
        this.session?.end(status.state === 'offline' ? 'offline' : 'unavailable', '', { sendHangup: false });
      } else if (previous?.state !== 'online' || (!this.session && this.lastEnd === 'busy' && status.viewers < status.max_viewers)) {
        // Back online, or a busy camera freed a slot: try now. Other ends keep their backoff.
        this.scheduleRetry(0);
      }
    }
  }

  /** Shows the access prompt with the sentence for `state`; `null` hides it. */
  showAccessPrompt(state) {
    $('access').hidden = !state;
    $('access-reason').textContent = state ? SENTENCES[state] : '';
    document.body.dataset.accessPrompt = state || '';
  }

  /** A link pasted into the prompt: kept like one opened from the address bar, then watched. */
  useAccessLink(text) {
    const trimmed = String(text).trim();
    const { access } = parseAccessFragment(trimmed.includes('#') ? trimmed.slice(trimmed.indexOf('#')) : trimmed);
    if (!access) return this.showAccessPrompt('bad-link');
    storeAccess(access);
    $('access-link').value = '';
    this.showAccessPrompt(null);
    this.stop();
    this.watch(access.device);
  }

  renderList() {
    const list = $('camera-list');
    list.replaceChildren();
    if (!this.cameras.size) {
      list.append(element('li', 'empty', 'No camera has announced itself yet.'));
      return;
    }
    for (const [id, status] of [...this.cameras].sort()) {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.device = id;
      button.setAttribute('aria-current', String(this.watching === id));
      // Broker data only ever becomes text; the state's class comes from the allow-list.
      const state = cameraState(status);
      const meta = state === 'online' ? `${status.video?.width}×${status.video?.height} @ ${status.video?.fps} fps · ${status.viewers}/${status.max_viewers} viewers` : state;
      const name = element('span', 'cam-name');
      name.append(element('span', `dot ${state}`), String(status.name || id));
      button.append(name, element('span', 'cam-meta', `${id} · ${meta}`));
      button.onclick = () => this.watch(id);
      li.append(button);
      list.append(li);
    }
  }

  watch(device) {
    if (this.watching === device && this.session) return;
    this.stop();
    this.watching = device;
    this.backoff = 1000;
    this.needsNewLink = false;
    this.showAccessPrompt(null);
    $('viewer').hidden = false;
    $('camera-title').textContent = this.cameras.get(device)?.name || device;
    this.renderList();
    this.connect();
  }

  stop() {
    clearTimeout(this.retryTimer);
    this.session?.end('idle');
    this.session = null;
    this.watching = null;
    $('viewer').hidden = true;
    this.renderList();
  }

  connect() {
    const device = this.watching;
    const status = this.cameras.get(device);
    if (!device) return;
    if (!status || status.state === 'offline') return setState('offline');
    if (status.state === 'unavailable') return setState('unavailable');
    // A held key is always used, and then only signed answers count, whatever the status
    // says: a forged status claiming "open" must not switch the checks off.
    const access = storedAccess(device);
    if (status.auth === 'keys' && !access) return this.refused(this.config.linkError ? 'bad-link' : 'needs-key');
    // While retrying after "no path", keep saying what would help.
    if ($('state').dataset.state !== 'no-path') setState('connecting');
    const session = new Session({
      ...this.config,
      device,
      status,
      key: access ? new AccessKey(access) : null,
      ui: this,
      onEnd: (reason, detail) => {
        if (this.session !== session) return;
        this.session = null;
        this.lastEnd = reason;
        if (reason === 'idle') return;
        if (NEEDS_NEW_LINK.has(reason)) return this.refused(reason, detail);
        setState(reason, detail);
        // Busy sessions retry slowly, ones that found no path slower; the rest with backoff.
        this.scheduleRetry({ busy: 10000, crowded: CROWDED_RETRY_MS, 'no-path': 30000 }[reason] ?? this.backoff);
        this.backoff = Math.min(this.backoff * 2, 5000);
      },
    });
    this.session = session;
    this.stats.sessions += 1;
    session.start();
  }

  /** The camera will not admit this viewer as it is: say why, ask for a link, stop retrying. */
  refused(state, detail) {
    this.needsNewLink = true;
    setState(state, detail);
    this.showAccessPrompt(state);
  }

  scheduleRetry(delay) {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      if (this.watching && !this.session && !this.needsNewLink && this.cameras.get(this.watching)?.state === 'online') this.connect();
    }, delay);
  }

  attach(stream) {
    const video = $('video');
    if (video.srcObject !== stream) video.srcObject = stream;
    video.play().catch(() => { /* autoplay of muted video is allowed; retry on next frame */ });
    this.backoff = 1000;
  }

  /** Saves the snapshot as NAME-TIME.jpg and keeps it for the console and the tests. */
  snapshotTaken(blob, header) {
    $('snapshot').disabled = false;
    this.stats.snapshots += 1;
    this.stats.lastSnapshot = { blob, width: header.width, height: header.height, captureUs: header.capture_us, receivedAt: Date.now() };
    const taken = new Date(Math.floor(header.capture_us / 1000)).toISOString().replace(/[:.]/g, '-');
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = `${this.watching ?? 'camera'}-${taken}.jpg`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  snapshotFailed(reason) {
    $('snapshot').disabled = false;
    this.stats.snapshotErrors.push(reason);
  }

  telemetry(message) {
    if (message.type !== 'telemetry') return;
    this.stats.telemetry += 1;
    const { system = {}, video = {} } = message;
    // A figure the camera cannot read is null (e.g. /proc/stat hidden): unknown, not 0.
    $('cpu').textContent = typeof system.cpu_percent === 'number' ? `${system.cpu_percent.toFixed(0)} %` : '–';
    $('temperature').textContent = system.temperature_c == null ? 'n/a' : `${system.temperature_c.toFixed(1)} °C`;
    $('fps').textContent = `${video.fps?.toFixed(1) ?? '–'}`;
    $('bitrate').textContent = `${video.bitrate_kbps != null ? (video.bitrate_kbps / 1000).toFixed(2) : '–'} Mbit/s`;
    this.charts.cpu.push(system.cpu_percent);
    if (system.temperature_c != null) this.charts.temperature.push(system.temperature_c);
    this.charts.fps.push(video.fps);
    this.charts.bitrate.push(video.bitrate_kbps);
    $('viewers').textContent = `${message.viewers}`;
    // Where the stamp latency goes inside the camera; the rest is network and browser.
    const stages = message.latency_ms ?? {};
    const ms = (value) => (typeof value === 'number' ? `${value.toFixed(1)} ms` : '–');
    $('latency-stages').textContent = `camera: capture→encoded ${ms(stages.capture_to_encoded)}, encoded→sent ${ms(stages.encoded_to_sent)}`;
  }

  /** Reads the latency stamp from each presented frame (requestVideoFrameCallback where
   *  the browser has it, else once per animation frame). */
  watchFrames() {
    const video = $('video');
    const canvas = $('stamp');
    const context = canvas.getContext('2d', { willReadFrequently: true });
    let lastSample = 0;
    const onFrame = () => {
      const now = Date.now();
      if (video.videoWidth && !video.paused) {
        this.stats.presentedFrames += 1;
        if (this.stats.offerToFirstFrameMs == null && this.stats.offerSentAt != null) {
          this.stats.offerToFirstFrameMs = Math.round(performance.now() - this.stats.offerSentAt);
        }
      }
      if (video.videoWidth && now - lastSample >= 100) {
        lastSample = now;
        const stamp = readStamp(video, canvas, context);
        if (stamp != null) {
          const latency = now - stamp;
          if (latency > -1000 && latency < 60000) {
            this.stats.latencyMs = latency;
            $('latency').textContent = `${latency} ms`;
            this.charts.latency.push(latency);
          } else {
            $('latency').textContent = 'clock offset?';
          }
        }
      }
      schedule();
    };
    const schedule = () => {
      if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
      else requestAnimationFrame(onFrame);
    };
    schedule();
  }

  async pollStats() {
    const pc = this.session?.pc;
    const video = $('video');
    if (video.videoWidth) $('resolution').textContent = `${video.videoWidth}×${video.videoHeight}`;
    if (!pc) return;
    const report = await pc.getStats();
    let pair; const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
    });
    if (!pair) report.forEach((s) => { if (s.type === 'candidate-pair' && (s.selected || s.nominated) && s.state === 'succeeded') pair = s; });
    if (pair) {
      const local = byId.get(pair.localCandidateId);
      const remote = byId.get(pair.remoteCandidateId);
      $('path').textContent = `${local?.candidateType ?? '?'} ↔ ${remote?.candidateType ?? '?'} (${local?.protocol ?? 'udp'})`;
      this.stats.pair = { local: local?.candidateType, remote: remote?.candidateType, remoteAddress: remote && `${remote.address}:${remote.port}`, protocol: local?.protocol, relayProtocol: local?.relayProtocol };
      if (pair.currentRoundTripTime != null) $('rtt').textContent = `${(pair.currentRoundTripTime * 1000).toFixed(0)} ms`;
    }
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        this.stats.framesDecoded = s.framesDecoded ?? 0;
        $('lost').textContent = `${s.packetsLost ?? 0}`;
        $('frames').textContent = `${s.framesDecoded ?? 0} / ${s.framesDropped ?? 0}`;
        const codec = byId.get(s.codecId);
        if (codec) $('codec').textContent = `${codec.mimeType.replace('video/', '')} ${codec.sdpFmtpLine?.match(/profile-level-id=(\w+)/)?.[1] ?? ''}`.trim();
      }
    });
  }
}

discover().then((config) => new App(config).start());
