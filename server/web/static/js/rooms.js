// The user's rooms (those posted in or read), newest activity first, each
// with its unread count; the current room highlighted. Only the current
// room has a stream, so the list is asked for again every REFRESH_MS, when
// the window gets the focus, and after a room is read.
//
// Reading: while the page is visible, the newest message shown in the
// current room is marked read (again as new ones arrive).

import { api } from './api.js';
import { roomApi, state, ui } from './page.js';
import { compareIds, element, parseId } from './util.js';

const REFRESH_MS = 20000;
const READ_DELAY_MS = 300; // marks in a burst of messages go as one

let rooms = []; // [{room, unread}] as the server last said
let choose = () => {};
let refreshing = null;
let refreshAgain = false;
let missing = false; // the server has no room list: stop asking
const readUpTo = new Map(); // room -> the id last marked read (or being marked)
let readTimer = 0;
let newestShown = () => null;
let stopped = () => false; // the page's stream ended for good: nothing more is asked

function unreadLabel(unread) {
  if (unread === '100+') return '100+';
  return Number.isSafeInteger(unread) && unread > 0 ? String(unread) : '';
}

function roomLink(room, unread) {
  const li = element('li');
  const link = element('a', 'room-link');
  link.href = `/rooms/${encodeURIComponent(room)}`;
  link.dataset.room = room;
  link.append(element('span', 'room-name', `#${room}`));
  const label = room === state.room ? '' : unreadLabel(unread);
  if (label) {
    const badge = element('span', 'badge', label);
    badge.setAttribute('aria-label', `${label} unread`);
    link.append(' ', badge);
  }
  if (room === state.room) link.setAttribute('aria-current', 'page');
  link.addEventListener('click', (e) => {
    // A new tab or window (modifier keys, middle button) is the browser's.
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    choose(room);
  });
  li.append(link);
  return li;
}

export function renderRooms() {
  const list = rooms.some((r) => r.room === state.room) ? rooms : [{ room: state.room, unread: 0 }, ...rooms];
  const focused = document.activeElement?.closest?.('#rooms') ? document.activeElement.dataset.room : null;
  ui.rooms.replaceChildren(...list.map(({ room, unread }) => roomLink(room, unread)));
  // A refresh must not take the keyboard's place away.
  if (focused) ui.rooms.querySelector(`a[data-room="${CSS.escape(focused)}"]`)?.focus();
}

/** Ask the server for the list again (one request at a time). */
export function refreshRooms() {
  if (missing || stopped()) return Promise.resolve();
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    try {
      const data = await api('GET', '/api/rooms');
      if (Array.isArray(data.rooms)) {
        rooms = data.rooms
          .filter((r) => r !== null && typeof r === 'object' && typeof r.room === 'string')
          .map((r) => ({ room: r.room, unread: r.unread }));
        renderRooms();
      }
    } catch (err) {
      if (err.status === 404 || err.status === 405) missing = true;
      // Otherwise the next refresh tries again; the list is not worth an error line.
    } finally {
      refreshing = null;
      if (refreshAgain) {
        refreshAgain = false;
        refreshRooms();
      }
    }
  })();
  return refreshing;
}

/** Mark the current room read up to its newest message shown, soon, if
 * the page is visible and that is further than already marked. */
export function markRead() {
  if (readTimer || stopped() || document.visibilityState !== 'visible') return;
  readTimer = setTimeout(sendRead, READ_DELAY_MS);
}

/** The user's own message `id` in `room`: the server read the room up to it
 * when it stored it, so a mark waiting to go has nothing more to say. */
export function readOwn(room, id) {
  const marked = readUpTo.get(room);
  if (parseId(id) !== null && (!marked || compareIds(id, marked) > 0)) readUpTo.set(room, id);
}

/** A mark that waits is sent now (another room is about to be shown). */
export function flushRead() {
  if (!readTimer) return;
  clearTimeout(readTimer);
  sendRead();
}

async function sendRead() {
  readTimer = 0;
  if (stopped()) return;
  const room = state.room;
  const id = newestShown();
  if (parseId(id) === null || id === '0-0') return;
  const marked = readUpTo.get(room);
  if (marked && compareIds(id, marked) <= 0) return;
  readUpTo.set(room, id);
  try {
    await api('PUT', `${roomApi(room)}/read`, { id });
    const entry = rooms.find((r) => r.room === room);
    if (entry) entry.unread = 0;
    refreshRooms();
  } catch {
    if (readUpTo.get(room) === id) readUpTo.delete(room); // tried again with the next message
  }
}

/** `onChoose(room)` shows another room; `newest()` is the newest message id
 * shown; `ended()` whether the server ended the page's stream for good. */
export function startRooms(onChoose, newest, ended) {
  choose = onChoose;
  newestShown = newest;
  stopped = ended;
  renderRooms();
  refreshRooms();
  setInterval(refreshRooms, REFRESH_MS);
  window.addEventListener('focus', () => {
    refreshRooms();
    markRead();
  });
  document.addEventListener('visibilitychange', markRead);
}
