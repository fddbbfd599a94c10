// The composer: a message is sent on Enter, one at a time so they are
// stored in the order typed.
//
// Each typed message is sent with an idempotency key, the same for every try
// until the server confirms it: a message whose answer was lost (the
// connection dropped, no ack came) may be sent again without showing twice.

import { connection } from './connection.js';
import { followingBottom, render } from './messages.js';
import { showStatus, state, ui } from './page.js';
import { postMessage } from './transports.js';
import { sentMessage } from './typing.js';

let sendQueue = Promise.resolve();
let ready = Promise.resolve();
// Texts sent but not yet confirmed -> their idempotency keys. Sending the same
// text again before the server confirmed it (Enter pressed again, or after an
// error, the input keeping the text) is a retry of the same message: the
// server stores it once, however many tries reached it.
const unconfirmed = new Map();
const UNCONFIRMED_MAX = 20;

/** Sends wait for `sessionReady` (the session is made by the first request). */
export function setSessionReady(sessionReady) {
  ready = sessionReady;
}

/** A fresh idempotency key: 128 random bits (crypto.randomUUID needs a secure context). */
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function keyFor(text) {
  let key = unconfirmed.get(text);
  if (key === undefined) {
    key = newKey();
    unconfirmed.set(text, key);
    // The server remembers a key for ten minutes: old ones are of no use.
    if (unconfirmed.size > UNCONFIRMED_MAX) unconfirmed.delete(unconfirmed.keys().next().value);
  }
  return key;
}

/** The input is cleared only on success, and only if it still holds what
 * was sent. A message goes to the room it was typed in, even if another
 * room is shown by the time its turn comes. */
export function submit(event) {
  event.preventDefault();
  const text = ui.input.value;
  if (!text.trim() || connection.ended) return;
  const key = keyFor(text);
  const room = state.room;
  sentMessage();
  sendQueue = sendQueue.then(async () => {
    try {
      await ready;
      const msg = room === state.room ? await connection.transport.send(text, key) : await postMessage(room, text, key);
      if (unconfirmed.get(text) === key) unconfirmed.delete(text);
      if (ui.input.value === text) ui.input.value = '';
      showStatus('');
      if (room === state.room) followingBottom(() => render(msg), true);
    } catch (err) {
      showStatus(err.message);
      if (!ui.input.value) ui.input.value = text; // never lose what was typed
    }
  });
}
