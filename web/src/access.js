// Access keys on the page (docs/signaling.md, "Access keys"): reads the access link's
// fragment, keeps the key in sessionStorage for this tab, signs offers and hangups and checks
// the camera's answers and hangups. It never sends the key anywhere and never builds HTML.
// HMAC comes from @noble/hashes: WebCrypto's `subtle` is missing on plain-http LAN origins.
import { hmac } from '@noble/hashes/hmac.js';
import { sha256 } from '@noble/hashes/sha2.js';

const DEVICE_ID = /^[A-Za-z0-9_-]{1,64}$/;
const VIEWER_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const EXPIRY = /^[0-9]{1,15}$/;
const KEY_BYTES = 32;
const STORAGE_PREFIX = 'peercam.access.';

const utf8 = (text) => new TextEncoder().encode(text);

/** base64url without padding, as every key and mac in the protocol is written. */
export function toBase64Url(bytes) {
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** The bytes of base64url text (padding optional), or null if it is not base64url. */
export function fromBase64Url(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*={0,2}$/.test(text)) return null;
  try {
    const binary = atob(text.replace(/-/g, '+').replace(/_/g, '/').replace(/=+$/, ''));
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

/**
 * The access fields of a link's fragment (`#device=…&viewer=…&exp=…&key=…`):
 * `{ access }` when they are all there and well formed, `{ error }` when the fragment tries to
 * be an access link but is damaged, `{}` when it is no access link at all.
 */
export function parseAccessFragment(hash) {
  const fields = new URLSearchParams(String(hash || '').replace(/^#/, ''));
  if (!['device', 'viewer', 'exp', 'key'].some((name) => fields.has(name))) return {};
  const device = fields.get('device') ?? '';
  const viewer = fields.get('viewer') ?? '';
  const exp = fields.get('exp') ?? '';
  const key = fields.get('key') ?? '';
  if (!DEVICE_ID.test(device)) return { error: 'device' };
  if (!VIEWER_NAME.test(viewer)) return { error: 'viewer' };
  if (!EXPIRY.test(exp)) return { error: 'exp' };
  if (fromBase64Url(key)?.length !== KEY_BYTES) return { error: 'key' };
  return { access: { device, viewer, exp: Number(exp), key } };
}

/** Keeps `access` for this tab only (sessionStorage), under its device. */
export function storeAccess(access, storage = globalThis.sessionStorage) {
  storage?.setItem(STORAGE_PREFIX + access.device, JSON.stringify(access));
}

/** The access kept for `device` in this tab, or null. */
export function storedAccess(device, storage = globalThis.sessionStorage) {
  try {
    const kept = JSON.parse(storage?.getItem(STORAGE_PREFIX + device) ?? 'null');
    const { access } = parseAccessFragment(new URLSearchParams(kept ?? {}).toString());
    return access?.device === device ? access : null;
  } catch {
    return null;
  }
}

/** A viewer's key for one camera: signs what the viewer sends, checks what the camera sends. */
export class AccessKey {
  constructor({ viewer, exp, key }) {
    this.viewer = viewer;
    this.exp = exp;
    this.key = fromBase64Url(key);
  }

  mac(...lines) {
    return toBase64Url(hmac(sha256, this.key, utf8(lines.join('\n'))));
  }

  /** The offer's `auth` object. */
  offerAuth(sid, sdp) {
    return { viewer: this.viewer, exp: this.exp, mac: this.mac('offer', sid, sdp) };
  }

  /** The `mac` of a hangup on session `sid`, in either direction. */
  hangupMac(sid) {
    return this.mac('hangup', sid);
  }

  /** True if the camera signed this answer; anyone on the broker can publish one. */
  answerIsSigned(sid, sdp, mac) {
    return typeof sdp === 'string' && typeof mac === 'string' && mac === this.mac('answer', sid, sdp);
  }

  /** True if the camera signed this hangup. */
  hangupIsSigned(sid, mac) {
    return typeof mac === 'string' && mac === this.hangupMac(sid);
  }
}

/**
 * The page state for an `unauthorized` error, from the cause its message starts with
 * (missing auth, unknown viewer, expired, bad mac, revoked).
 */
export function refusalState(message) {
  const cause = String(message || '').toLowerCase();
  if (cause.startsWith('expired')) return 'expired';
  if (cause.startsWith('revoked')) return 'revoked';
  if (cause.startsWith('missing auth')) return 'needs-key';
  return 'invalid-key';
}
