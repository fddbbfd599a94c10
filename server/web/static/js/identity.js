// Who the user is: the name (editable unless the sign-in token gives it),
// the tag, whether the application signed them in or they are anonymous,
// and their role in the room shown (asked again for each room shown, so a
// role granted meanwhile applies from the next room switch or page load).

import { ApiError, api } from './api.js';
import { showStatus, state, ui } from './page.js';
import { renderPresence } from './presence.js';
import { formatTime, userTag } from './util.js';

export function showAuth(authState, text, title = '') {
  ui.authState.dataset.state = authState;
  ui.authState.textContent = text;
  ui.authState.title = title;
}

function showMe() {
  const { me } = state;
  ui.me.textContent = me.name;
  ui.myTag.textContent = userTag(me.user_id);
  ui.nameInput.value = me.name;
  if (me.signed_in) {
    const until = formatTime(me.expires_at);
    showAuth('signed-in', 'signed in', `Signed in by the application as ${me.user_id}${until ? ` until ${until}` : ''}`);
  } else {
    showAuth('anonymous', 'anonymous', 'Not signed in: a visitor with a random id');
  }
  // The server refuses a rename of a name that comes from the sign-in
  // token, or of a visitor who may only read: no control for it then.
  ui.nameInput.hidden = ui.nameSave.hidden = !me.can_rename;
}

const ROLES = new Set(['reader', 'member', 'moderator']);

/** The session, with the user's role in `room`. */
async function sessionWithRole(room) {
  const data = await api('GET', `/api/session?room=${encodeURIComponent(room)}`);
  if (typeof data.user_id !== 'string') throw new ApiError('unexpected answer from the server', 200);
  // (A server from before it said gives none: then the page offers only what
  // any member may do.)
  if (room === state.room) state.role = { room, name: ROLES.has(data.role) ? data.role : null };
  return data;
}

/** Ask for the user's role in `room` (about to be shown). */
export async function loadRole(room) {
  await sessionWithRole(room);
}

export async function loadSession() {
  const data = await sessionWithRole(state.room);
  state.me = {
    user_id: data.user_id,
    name: String(data.name ?? ''),
    signed_in: data.signed_in === true,
    expires_at: typeof data.expires_at === 'number' ? data.expires_at : null,
    can_rename: data.can_rename !== false, // (a server from before it said)
  };
  showMe();
}

/** The name form's submit; `ended()` says whether the server ended the page's stream for good. */
export async function rename(event, ended) {
  event.preventDefault();
  const { me } = state;
  if (!me || !me.can_rename || ended()) return;
  ui.nameSave.disabled = true;
  try {
    const data = await api('PUT', '/api/session', { name: ui.nameInput.value });
    state.me = { ...me, name: typeof data.name === 'string' ? data.name : ui.nameInput.value.trim() };
    showMe();
    renderPresence();
    showStatus('');
  } catch (err) {
    showStatus(err.message);
  } finally {
    ui.nameSave.disabled = ended();
  }
}
