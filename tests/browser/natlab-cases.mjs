// The NAT lab's matrix (docs/nat.md): for each case, the NAT of the camera's and the viewer's
// routers (tests/natlab/lab --cam/--view), the ICE servers, and the pair the viewer must select.
// Read by tests/natlab/run (to build each case's lab), by natlab.test.mjs (to run it with the
// page in Chromium) and by tests/natlab_viewer.rs (to run it with the Rust test viewer).
export const WAN = '198.51.100.1';
/** coturn's `static-auth-secret`: the camera mints short-lived credentials from it. */
export const TURN_SECRET = 'lab-only-shared-secret';
const stun = { urls: `stun:${WAN}:3478` };
const turnUdp = { urls: `turn:${WAN}:3478`, secret: true };
const turnTcp = { urls: `turn:${WAN}:3478?transport=tcp`, secret: true };
/** webrtc-rs (rtc-ice 0.21) files a pair under the first local candidate bound to the socket a
 *  check used: the host candidate, which is the base of the srflx one (RFC 8445 §6.1.2.4 also
 *  pairs a server-reflexive candidate by its base). So its stats say host where Chromium's say srflx.
 *  The camera's side may show as prflx: see `why`. */
const rustSrflxBase = {
  pair: null, pairs: [['host', 'srflx'], ['host', 'prflx']],
  why: "webrtc-rs names its srflx candidate by its host base; and the camera's first check (from its router's mapped address) can reach the viewer before the camera's trickled srflx candidate has crossed the broker, so webrtc-rs may file that same address as peer-reflexive",
};

/** Each case: the lab it needs (tests/natlab/run passes --cam/--view), the ICE servers (an
 *  entry with `secret` gets the TURN secret's file), and what the selected pair must be.
 *  `rustViewer` overrides the expectation for the Rust test viewer (webrtc-rs), with why;
 *  `pairs` there lists the pairs any of which may be selected. */
export const CASES = {
  a: { title: '(a) same LAN, no NAT', cam: 'cone', view: 'lan', iceServers: [], pair: ['host', 'host'],
    rustViewer: { pair: null, pairs: [['host', 'host'], ['host', 'prflx']],
      why: "the camera checks at once, and its first check can reach the viewer before the answer (with the camera's host candidate) has crossed the broker on the wan; webrtc-rs then files the camera's host address as peer-reflexive" } },
  b: { title: '(b) cone NAT both sides, STUN', cam: 'cone', view: 'cone', iceServers: [stun], pair: ['srflx', 'srflx'], rustViewer: rustSrflxBase },
  c: { title: '(c) symmetric NAT both sides, TURN over UDP', cam: 'symmetric', view: 'symmetric', iceServers: [turnUdp], relay: 'udp' },
  d: { title: '(d) viewer\'s router lets only TCP out, TURN over TCP', cam: 'symmetric', view: 'tcp-only', iceServers: [turnUdp, turnTcp], relay: 'tcp',
    rustViewer: { noPath: true, why: 'webrtc-rs 0.21 allocates TURN over UDP only (turn:?transport=tcp and turns: are skipped), and UDP cannot leave' } },
  e: { title: '(e) symmetric NAT both sides, no TURN', cam: 'symmetric', view: 'symmetric', iceServers: [stun], noPath: true },
  f: { title: '(f) cone NAT both sides, an 8 s network blip mid-stream', cam: 'cone', view: 'cone', iceServers: [stun], pair: ['srflx', 'srflx'], blipMs: 8000, rustViewer: rustSrflxBase },
  // The camera's router forwards one UDP port to it: webrtc.udp_port shares that port between
  // sessions and webrtc.public_ips announces the router's address, so no STUN or TURN is needed.
  g: {
    title: '(g) one forwarded UDP port and an announced public address, symmetric NAT at the viewer, no STUN or TURN', cam: 'cone', view: 'symmetric', forwardUdp: 8189, iceServers: [],
    webrtc: 'udp_port = 8189\npublic_ips = ["198.51.100.10"]', remote: 'srflx', remoteAddress: '198.51.100.10:8189',
    rustViewer: { remote: null, pairs: [['host', 'srflx'], ['host', 'prflx']],
      why: "the camera's first check from 198.51.100.10:8189 can reach the viewer before the announced candidate has crossed the broker; webrtc-rs then files that address as peer-reflexive, and its stats give no address for it (Chromium's run checks the address)" },
  },
};

