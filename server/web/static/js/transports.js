// The live stream of the current room: Server-Sent Events, or a WebSocket
// with ?transport=ws. Each open resumes after the cursor, so nothing is
// missed or shown twice. A stream the server ends for good (signed out,
// sign-in expired, removed) calls `events.onEnd`; any other loss `onDrop`.

import { ApiError, api } from './api.js';
import { onGap, onLiveMessage, onMessageDeleted, onMessageUpdated } from './messages.js';
import { roomApi, showStatus, state } from './page.js';
import { onPresence, onPresenceDiff } from './presence.js';
import { onTyping } from './typing.js';
import { formatTime, isMessage, parseJson } from './util.js';

const ACK_TIMEOUT_MS = 15000;

export async function postMessage(room, text, key) {
  const data = await api('POST', `${roomApi(room)}/messages`, { text }, { 'Idempotency-Key': key });
  if (!isMessage(data.message)) throw new ApiError('unexpected answer from the server', 201);
  return data.message;
}

function postTyping(room) {
  return api('POST', `${roomApi(room)}/typing`);
}

// How a stream the server ended for good is shown: [connection state, status].
export const ENDINGS = {
  signed_out: ['signed-out', 'Signed out.'],
  auth_expired: ['expired', 'Your sign-in expired. Sign in again to go on chatting.'],
};

/** How a request refused for want of a sign-in (401) is shown. */
export function signInEnding(err) {
  if (err.code === 'token_expired') return ENDINGS.auth_expired;
  return ['signed-out', `Not signed in: ${err.message}`];
}

/** Why the server disconnected us, for the status line ('' when it gave no reason). */
function reasonText(reason) {
  return typeof reason === 'string' && reason ? ` (${reason.slice(0, 100)})` : '';
}

/** The server ended the stream of a user it disconnected (a ban, a removal,
 * or a disconnect the user may come back from). */
function onDisconnected(events, reason, reconnect) {
  if (reconnect) {
    showStatus(`Disconnected by the server${reasonText(reason)}; reconnecting…`);
  } else {
    events.onEnd('ended', `Disconnected by the server${reasonText(reason)}: you may not reconnect.`);
  }
}

/** `auth_expiring`: the sign-in ends soon (the application may refresh it). */
function onAuthExpiring(data) {
  const at = formatTime(data?.expires_at);
  showStatus(`Your sign-in expires${at ? ` at ${at}` : ' soon'}.`);
}

/** SSE: one EventSource at a time. The browser's own reconnect is cut short
 * on the first error: it would resend only the Last-Event-ID header it last
 * saw, while ours carries our cursor in ?last_event_id= and our backoff. */
export function sseTransport(events) {
  let source = null;
  return {
    open() {
      this.close();
      const since = state.cursor;
      const query = since === null ? '' : `?last_event_id=${encodeURIComponent(since)}`;
      const es = new EventSource(`${roomApi()}/events${query}`);
      source = es;
      es.addEventListener('open', events.onOpen);
      es.addEventListener('message', (e) => onLiveMessage(parseJson(e.data)));
      es.addEventListener('message_updated', (e) => onMessageUpdated(parseJson(e.data), e.lastEventId));
      es.addEventListener('message_deleted', (e) => onMessageDeleted(parseJson(e.data), e.lastEventId));
      es.addEventListener('presence', (e) => onPresence(parseJson(e.data)));
      es.addEventListener('presence_diff', (e) => onPresenceDiff(parseJson(e.data)));
      es.addEventListener('typing', (e) => onTyping(parseJson(e.data)));
      es.addEventListener('gap', (e) => onGap(parseJson(e.data), since));
      es.addEventListener('auth_expiring', (e) => onAuthExpiring(parseJson(e.data)));
      // The stream ends after these: the end is handled here, before the
      // 'error' the closed stream fires, so that it is not reopened.
      for (const [name, [connState, text]] of Object.entries(ENDINGS)) {
        es.addEventListener(name, () => source === es && events.onEnd(connState, text));
      }
      es.addEventListener('disconnected', (e) => {
        const data = parseJson(e.data);
        if (source === es) onDisconnected(events, data?.reason, data?.reconnect === true);
      });
      es.addEventListener('error', () => {
        es.close();
        if (source !== es) return;
        source = null;
        events.onDrop();
      });
    },
    close() {
      source?.close();
      source = null;
    },
    send: (text, key) => postMessage(state.room, text, key),
    typing: () => postTyping(state.room),
  };
}

/** WebSocket: sends go over the socket and resolve on the server's ack; while
 * the socket is down they fall back to HTTP POST so typing is never blocked. */
export function wsTransport(events) {
  let socket = null;
  let nextRef = 0;
  const pending = new Map(); // ref -> {resolve, reject, timer}

  function settle(ref, error, message) {
    const p = pending.get(ref);
    if (!p) return;
    pending.delete(ref);
    clearTimeout(p.timer);
    if (error) p.reject(error);
    else p.resolve(message);
  }

  function failAll(reason) {
    for (const ref of [...pending.keys()]) settle(ref, new ApiError(reason, 0));
  }

  function onFrame(raw, since) {
    const frame = typeof raw === 'string' ? parseJson(raw) : null;
    switch (frame?.type) {
      case 'message':
        onLiveMessage(frame.message);
        break;
      case 'message_updated':
        onMessageUpdated(frame.message, frame.event_id);
        break;
      case 'message_deleted':
        onMessageDeleted({ id: frame.id }, frame.event_id);
        break;
      case 'presence':
        onPresence(frame);
        break;
      case 'presence_diff':
        onPresenceDiff(frame);
        break;
      case 'typing':
        onTyping(frame);
        break;
      case 'gap':
        onGap(frame, since);
        break;
      case 'auth_expiring':
        onAuthExpiring(frame);
        break;
      case 'ack':
        if (isMessage(frame.message)) settle(frame.ref, null, frame.message);
        else settle(frame.ref, new ApiError('unexpected answer from the server', 0));
        break;
      case 'error': {
        const message = String(frame.error?.message ?? 'the server refused the message');
        if (pending.has(frame.ref)) settle(frame.ref, new ApiError(message, 0));
        else showStatus(message);
        break;
      }
    }
  }

  return {
    open() {
      this.close();
      const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
      const since = state.cursor;
      const query = since === null ? '' : `?since=${encodeURIComponent(since)}`;
      const ws = new WebSocket(`${scheme}://${location.host}${roomApi()}/ws${query}`);
      socket = ws;
      // (A socket the page has let go of says nothing more: see close().)
      ws.addEventListener('open', (e) => socket === ws && events.onOpen(e));
      ws.addEventListener('message', (e) => socket === ws && onFrame(e.data, since));
      // 'error' is always followed by 'close', so all recovery happens here.
      // A close reconnects (1001/1012 are a server restart, 1006 a lost
      // network; the backoff keeps any other cause from looping hot), except
      // the ends the server means for good: signed out (4001), sign-in
      // expired (4401), banned or removed (4403).
      ws.addEventListener('close', (e) => {
        if (socket !== ws) return;
        socket = null;
        failAll(e.code === 1009 ? 'message too long' : 'connection lost before the server confirmed the message');
        if (e.code === 4001) events.onEnd(...ENDINGS.signed_out);
        else if (e.code === 4401) events.onEnd(...ENDINGS.auth_expired);
        else if (e.code === 4403) onDisconnected(events, e.reason, false);
        else {
          if (e.code === 4000) onDisconnected(events, e.reason, true);
          events.onDrop();
        }
      });
    },
    close() {
      const ws = socket;
      socket = null;
      // One still connecting is closed once open: closing it before then
      // makes the browser log a warning for a connection the page chose to end.
      if (ws?.readyState === WebSocket.CONNECTING) ws.addEventListener('open', () => ws.close(1000));
      else ws?.close(1000);
      failAll('connection closed before the server confirmed the message');
    },
    send(text, key) {
      if (socket?.readyState !== WebSocket.OPEN) return postMessage(state.room, text, key);
      const ref = `${Date.now().toString(36)}-${++nextRef}`;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => settle(ref, new ApiError('no answer from the server', 0)), ACK_TIMEOUT_MS);
        pending.set(ref, { resolve, reject, timer });
        socket.send(JSON.stringify({ type: 'message', text, ref, key }));
      });
    },
    typing() {
      if (socket?.readyState !== WebSocket.OPEN) return postTyping(state.room);
      socket.send(JSON.stringify({ type: 'typing' }));
      return Promise.resolve();
    },
  };
}
