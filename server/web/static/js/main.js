// Chat page client: history over HTTP, live messages over Server-Sent Events
// (or a WebSocket with ?transport=ws), the user's rooms with unread counts,
// who is online and who is typing. Every reconnect resumes after the last id
// received, so nothing is missed or shown twice; when the server no longer
// has all of it, the page says so where the gap is.
//
// Rooms switch without a page load: the address becomes /rooms/{room}
// (back and forward work), the old stream closes and the new room's history
// and stream open.

import { connection } from './connection.js';
import { loadRole, loadSession, rename } from './identity.js';
import { clearMessages, keepBottomOnResize, loadHistory, loadOlder, newestShownId, onNewMessage } from './messages.js';
import { ROOM_NAME, roomOf, showStatus, state, ui } from './page.js';
import { onPresence, showMoreOnline } from './presence.js';
import { flushRead, markRead, readOwn, renderRooms, startRooms } from './rooms.js';
import { setSessionReady, submit } from './sending.js';
import { signInEnding } from './transports.js';
import { clearTyping, noteTyping, setupTyping, stopped } from './typing.js';
import { backoff, sleep } from './util.js';

/** Keep trying a startup step, saying what is wrong meanwhile; not when the
 * server wants a sign-in (401): trying again would not change that. `live()`
 * false stops it (another room was chosen). */
async function retrying(what, step, live = () => true) {
  for (let attempt = 0; live(); attempt++) {
    try {
      return await step();
    } catch (err) {
      if (err.status === 401) throw err;
      if (!live()) return undefined;
      showStatus(`${what}: ${err.message}; retrying…`, { sticky: true });
      await sleep(backoff(attempt));
    }
  }
  return undefined;
}

function showRoomName() {
  ui.room.textContent = state.room;
  document.title = `#${state.room} · chat`;
  ui.input.placeholder = `Message #${state.room}`;
}

/** Show the current room: the user's role there (what its messages offer),
 * its history, then its stream, opened from the history's last id (the
 * server replays anything posted in between). */
async function openRoom() {
  const room = state.room;
  const current = () => room === state.room;
  if (state.role?.room !== room) { // (known already only at the page's start)
    await retrying('could not load your role in the room', () => loadRole(room), current);
    if (!current()) return;
  }
  await retrying('could not load the history', () => loadHistory(room), current);
  if (!current()) return;
  showStatus('');
  connection.start();
  markRead();
}

/** Show `room` instead of the current one, without loading the page. */
function switchRoom(room, { push }) {
  if (room === state.room) return;
  if (connection.ended) {
    location.assign(`/rooms/${encodeURIComponent(room)}`); // a new start (after a sign-in)
    return;
  }
  flushRead(); // (of the room being left)
  if (push) history.pushState({ room }, '', `/rooms/${encodeURIComponent(room)}`);
  connection.stop();
  state.room = room;
  state.role = null; // (the role was the room left's: asked anew for this one)
  state.cursor = null;
  clearMessages();
  clearTyping();
  onPresence({});
  showRoomName();
  renderRooms();
  openRoom().catch(failed);
}

/** The "other room" form: go to the room it names. */
function goToRoom(event) {
  event.preventDefault();
  const room = ui.roomInput.value.trim().toLowerCase();
  if (!ROOM_NAME.test(room)) {
    showStatus('A room name is 1 to 32 of a-z, 0-9, _ and -, starting with a letter or digit.');
    return;
  }
  ui.roomInput.value = '';
  switchRoom(room, { push: true });
}

function failed(err) {
  if (err.status === 401) connection.end(...signInEnding(err));
  else showStatus(`the page failed to start: ${err.message}`, { sticky: true });
}

async function main() {
  showRoomName();
  ui.composer.addEventListener('submit', submit);
  ui.input.addEventListener('input', noteTyping);
  ui.roomForm.addEventListener('submit', goToRoom);
  ui.nameForm.addEventListener('submit', (e) => rename(e, () => connection.ended));
  ui.older.addEventListener('click', loadOlder);
  ui.onlineMore.addEventListener('click', showMoreOnline);
  keepBottomOnResize();
  setupTyping(() => connection.transport.typing());
  onNewMessage((msg) => {
    stopped(msg.user_id);
    // Posting moves the poster's read position itself: only others' messages need a mark.
    if (msg.user_id !== state.me?.user_id) markRead();
    else readOwn(msg.room, msg.id);
  });
  window.addEventListener('online', () => connection.retryNow());
  window.addEventListener('popstate', () => switchRoom(roomOf(location.pathname), { push: false }));
  // Open streams keep a page out of the back/forward cache; close them on
  // leave and resume by id if the page is shown again.
  window.addEventListener('pagehide', () => connection.stop());
  window.addEventListener('pageshow', (e) => e.persisted && connection.resume());

  // The session comes first: parallel first requests would each create one.
  const sessionReady = retrying('could not start a session', loadSession);
  setSessionReady(sessionReady);
  await sessionReady;
  startRooms((room) => switchRoom(room, { push: true }), newestShownId, () => connection.ended);
  await openRoom();
  ui.input.focus();
}

window.chat = Object.freeze({
  get room() {
    return state.room;
  },
  transport: state.transport,
  get lastId() {
    return state.cursor;
  },
});

main().catch(failed);
