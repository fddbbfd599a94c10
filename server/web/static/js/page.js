// What every part of the page shares: its elements, the room shown, who the
// user is, where the stream resumes, the status line and the connection state.

export const ROOM_NAME = /^[a-z0-9][a-z0-9_-]{0,31}$/;
export const ROOM_PATH = /^\/rooms\/([a-z0-9][a-z0-9_-]{0,31})\/?$/;

/** The room a path shows ('general' for any other path). */
export const roomOf = (path) => ROOM_PATH.exec(path)?.[1] ?? 'general';

const $ = (id) => document.getElementById(id);
export const ui = {
  room: $('room'),
  me: $('me'),
  myTag: $('my-tag'),
  nameForm: $('name-form'),
  nameInput: $('name-input'),
  nameSave: $('name-save'),
  authState: $('auth-state'),
  conn: $('conn-state'),
  rooms: $('rooms'),
  roomForm: $('room-form'),
  roomInput: $('room-input'),
  log: $('log'),
  older: $('older'),
  messages: $('messages'),
  typing: $('typing'),
  status: $('status'),
  composer: $('composer'),
  input: $('input'),
  send: $('send'),
  people: $('people'),
  online: $('online'),
  onlineCount: $('online-count'),
  onlineNote: $('online-note'),
  onlineNoteText: $('online-note-text'),
  onlineMore: $('online-more'),
};

export const state = {
  room: roomOf(location.pathname),
  transport: new URLSearchParams(location.search).get('transport') === 'ws' ? 'ws' : 'sse',
  me: null, // {user_id, name, signed_in, expires_at, can_rename} from the session
  // The user's role in a room, as the session said when the room was shown:
  // {room, name} (name 'reader', 'member', 'moderator', or null: none known).
  role: null,
  // Highest id received from history or the live stream (messages, edits and
  // deletions each have one): where a reconnect resumes.
  cursor: null,
};

/** The API path of a room (the current one by default). */
export const roomApi = (room = state.room) => `/api/rooms/${encodeURIComponent(room)}`;

const STATUS_CLEAR_MS = 8000;
let statusTimer = 0;

/** Show an error under the messages; transient ones clear themselves. */
export function showStatus(text, { sticky = false } = {}) {
  clearTimeout(statusTimer);
  ui.status.textContent = text;
  if (text && !sticky) statusTimer = setTimeout(() => showStatus(''), STATUS_CLEAR_MS);
}

const CONN_LABELS = {
  connecting: 'connecting…',
  live: 'live',
  reconnecting: 'reconnecting…',
  // Ends: the page does not reconnect by itself after these.
  'signed-out': 'signed out',
  expired: 'sign-in expired',
  ended: 'disconnected',
};

export function setConnState(connState) {
  ui.conn.dataset.state = connState;
  ui.conn.textContent = CONN_LABELS[connState];
}
