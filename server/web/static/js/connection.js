// The connection of the current room: its visible state, reconnects with
// capped backoff that resume by id, and the ends the server means for good
// (signed out, sign-in expired, removed), after which it is not reopened:
// the page says why and stops; it starts again when it is loaded again.

import { api } from './api.js';
import { showAuth } from './identity.js';
import { setConnState, showStatus, state, ui } from './page.js';
import { onPresence } from './presence.js';
import { signInEnding, sseTransport, wsTransport } from './transports.js';
import { backoff } from './util.js';

const STABLE_MS = 5000; // a connection that lived this long resets the backoff

let attempt = 0;
let openedAt = 0;
let retryTimer = 0;
let started = false; // the stream was opened once
let running = false; // and it has not been stopped since
let ended = false; // the server ended it for good: never reopened

/** The stream is over (signed out, sign-in expired, removed): say why,
 * and stop everything that would act as this user. */
function end(connState, text) {
  ended = true;
  running = false;
  clearTimeout(retryTimer);
  retryTimer = 0;
  transport.close();
  setConnState(connState);
  showStatus(text, { sticky: true });
  for (const control of [ui.input, ui.send, ui.nameInput, ui.nameSave]) control.disabled = true;
  if (connState === 'signed-out') showAuth('signed-out', 'signed out');
  if (connState === 'expired') showAuth('signed-out', 'sign-in expired');
  // Who is online is no longer known (a snapshot comes only with a stream).
  onPresence({});
}

const events = {
  onOpen() {
    openedAt = Date.now();
    setConnState('live');
  },
  onDrop() {
    // A try that never opened may have been refused for the sign-in
    // (which a browser does not tell a page): ask before the next one.
    const refused = openedAt === 0;
    // Reset the backoff only after a connection that lasted: one that is
    // accepted and dropped at once (e.g. too many streams) keeps backing off.
    if (openedAt && Date.now() - openedAt > STABLE_MS) attempt = 0;
    openedAt = 0;
    setConnState('reconnecting');
    clearTimeout(retryTimer);
    retryTimer = setTimeout(refused ? checkThenOpen : open, backoff(attempt++));
  },
  onEnd: end,
};

const transport = (state.transport === 'ws' ? wsTransport : sseTransport)(events);

function open() {
  clearTimeout(retryTimer);
  retryTimer = 0;
  transport.open();
}

async function checkThenOpen() {
  try {
    await api('GET', '/api/session');
  } catch (err) {
    if (err.status === 401) {
      if (running) end(...signInEnding(err));
      return;
    }
  }
  if (running && retryTimer) open(); // (unless stopped, or reopened, meanwhile)
}

export const connection = {
  transport,
  end,
  get ended() {
    return ended;
  },
  start() {
    if (ended) return;
    started = running = true;
    openedAt = 0;
    open();
  },
  /** Skip the wait when the network comes back. */
  retryNow() {
    if (running && retryTimer) {
      attempt = 0;
      open();
    }
  },
  stop() {
    running = false;
    clearTimeout(retryTimer);
    retryTimer = 0;
    transport.close();
  },
  resume() {
    if (running || !started || ended) return;
    setConnState('reconnecting');
    this.start();
  },
};
