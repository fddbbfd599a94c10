// "X is typing…": the page tells the server while the user types (at most
// once per SEND_EVERY_MS, the rate the server passes on), and shows the
// others who are typing for SHOW_MS after each notice, or until their
// message arrives.

import { state, ui } from './page.js';
import { element, nameElement } from './util.js';

const SEND_EVERY_MS = 2000;
const SHOW_MS = 3000;
const NAMED_MAX = 3; // more than this many are "several people"

const typists = new Map(); // user_id -> {name, timer}
let lastSent = 0;
let refused = false; // the server said no (a reader, or no such route): not asked again in this room
let send = () => Promise.resolve();

/** `sender()` tells the server (over the stream's WebSocket, or a POST). */
export function setupTyping(sender) {
  send = sender;
}

/** The user typed in the input: tell the server, unless it was told lately. */
export function noteTyping() {
  const now = Date.now();
  if (refused || !ui.input.value.trim() || now - lastSent < SEND_EVERY_MS) return;
  lastSent = now;
  // A notice that does not arrive is of no consequence: never an error shown.
  send().catch((err) => {
    if (err.status === 403 || err.status === 404) refused = true;
  });
}

/** The user sent what they typed: the next keystroke is news again. */
export function sentMessage() {
  lastSent = 0;
}

/** `typing` from the stream: {user_id, name} of someone typing in the room. */
export function onTyping(data) {
  if (data === null || typeof data !== 'object' || typeof data.user_id !== 'string') return;
  if (state.me && data.user_id === state.me.user_id) return; // (our other tabs)
  const known = typists.get(data.user_id);
  if (known) clearTimeout(known.timer);
  const timer = setTimeout(() => stopped(data.user_id), SHOW_MS);
  typists.set(data.user_id, { name: String(data.name ?? ''), timer });
  renderTyping();
}

/** Someone's message arrived: they are done typing it. */
export function stopped(userId) {
  const known = typists.get(userId);
  if (!known) return;
  clearTimeout(known.timer);
  typists.delete(userId);
  renderTyping();
}

/** Another room is shown: nobody there is known to be typing. */
export function clearTyping() {
  for (const { timer } of typists.values()) clearTimeout(timer);
  typists.clear();
  lastSent = 0;
  refused = false;
  renderTyping();
}

function renderTyping() {
  const names = [...typists.values()].map(({ name }) => name);
  if (names.length === 0) {
    ui.typing.replaceChildren();
    return;
  }
  if (names.length > NAMED_MAX) {
    ui.typing.replaceChildren('Several people are typing…');
    return;
  }
  const parts = [];
  names.forEach((name, i) => {
    if (i > 0) parts.push(i === names.length - 1 ? ' and ' : ', ');
    parts.push(nameElement(name));
  });
  parts.push(names.length === 1 ? ' is typing…' : ' are typing…');
  const line = element('span');
  line.append(...parts);
  ui.typing.replaceChildren(line);
}
