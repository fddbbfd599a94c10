// Chat page client. History comes over HTTP, live messages over Server-Sent
// Events (or a WebSocket with ?transport=ws). Every reconnect resumes after
// the last message id received, so nothing is missed or shown twice; when the
// server no longer has all of it, the page says so where the gap is.
//
// Presence: a snapshot when a stream opens (or whenever the server sends a new
// one), then only the changes. Rooms too big to list carry just a count.
//
// User-supplied text is only ever written with textContent: messages and
// names may contain markup, and it must show as typed.
//
// Every name is shown with its user's tag (from the user id), so two users
// with the same name never look the same, and in a <bdi>, so a bidi control in
// a name (the server refuses them now, older names may still hold one) cannot
// reorder the tag or anything else after it.
//
// Edits and deletions come in the same streams, in order with the messages
// (each with an id of its own, where a reconnect resumes): the message
// changes in place (its new text, an "edited" mark) or goes.
//
// Each typed message is sent with an idempotency key, the same for every try
// until the server confirms it: a message whose answer was lost (the
// connection dropped, no ack came) may be sent again without showing twice.
//
// The page says who you are: signed in by the application (its page posted a
// token to /api/auth) or anonymous. A stream the server ends for good (signed
// out, sign-in expired, removed) is not reopened: the page says why and stops;
// it starts again when it is loaded again (after the application signed in).

const ROOM_PATH = /^\/rooms\/([a-z0-9][a-z0-9_-]{0,31})\/?$/;
const room = ROOM_PATH.exec(location.pathname)?.[1] ?? 'general';
const apiRoom = `/api/rooms/${encodeURIComponent(room)}`;
const transportName = new URLSearchParams(location.search).get('transport') === 'ws' ? 'ws' : 'sse';

const HISTORY_LIMIT = 50;
const MAX_RENDERED = 1000; // keeps a tab that stays open for days from growing without bound
const ACK_TIMEOUT_MS = 15000;
const STABLE_MS = 5000; // a connection that lived this long resets the backoff
const STATUS_CLEAR_MS = 8000;
const ONLINE_PAGE = 100; // users per "show who is online" page in rooms too big to list

const $ = (id) => document.getElementById(id);
const ui = {
  room: $('room'),
  me: $('me'),
  myTag: $('my-tag'),
  nameForm: $('name-form'),
  nameInput: $('name-input'),
  nameSave: $('name-save'),
  authState: $('auth-state'),
  conn: $('conn-state'),
  log: $('log'),
  older: $('older'),
  messages: $('messages'),
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

let me = null; // {user_id, name, signed_in, expires_at, can_rename} from the session
let cursor = null; // highest id received from history or the live stream: where a reconnect resumes
const rendered = new Set(); // ids currently in #messages

// ---------------------------------------------------------------- helpers

/** Parse a Redis stream id "ms-seq" into numbers; null if malformed. */
function parseId(id) {
  const m = typeof id === 'string' ? /^(\d+)-(\d+)$/.exec(id) : null;
  return m ? [Number(m[1]), Number(m[2])] : null;
}

/** Compare stream ids as (ms, seq) pairs: as strings "9-0" > "10-0". */
function compareIds(a, b) {
  const [am, as] = parseId(a);
  const [bm, bs] = parseId(b);
  return am - bm || as - bs;
}

function isMessage(m) {
  return m !== null && typeof m === 'object' && parseId(m.id) !== null && typeof m.text === 'string';
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** Capped exponential backoff (1 s, 2 s, 4 s ... 10 s) with jitter, so a
 * restarted server is not hit by every client in the same instant. */
function backoff(attempt) {
  const base = Math.min(10000, 1000 * 2 ** attempt);
  return base * (0.5 + Math.random() * 0.5);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A stable colour per user, so names are easy to tell apart at a glance
 * (360 hues collide soon: the tag is what tells users apart). */
function hue(userId) {
  let h = 0;
  for (const ch of String(userId)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

const TAG_LENGTH = 6;

/** A user's tag: the first hex digits of the random part of the user id
 * (`u-` + hex, made by the server). Six digits are 16.7 million tags, so a
 * namesake with the same tag takes millions of new sessions to find. Any
 * other id, which this server does not make, gets a hash of it instead. */
function userTag(userId) {
  const id = String(userId ?? '');
  const hex = /^u-([0-9a-f]+)$/.exec(id)?.[1];
  if (hex) return hex.slice(0, TAG_LENGTH);
  let h = 0x811c9dc5; // FNV-1a
  for (const ch of id) h = Math.imul(h ^ ch.codePointAt(0), 0x01000193);
  return (h >>> 0).toString(16).padStart(8, '0').slice(0, TAG_LENGTH);
}

function tagElement(userId) {
  const tag = element('span', 'tag', userTag(userId));
  tag.title = 'Tag of this user: people with the same name have different tags';
  return tag;
}

/** A name, isolated from the text around it. */
function nameElement(name) {
  const bdi = element('bdi', 'name', name);
  bdi.dir = 'auto';
  return bdi;
}

/** A name followed by its user's tag. */
function authorElement(userId, name) {
  const author = element('span', 'author');
  author.append(nameElement(name), ' ', tagElement(userId));
  return author;
}

class ApiError extends Error {
  constructor(message, status, code = '') {
    super(message);
    this.status = status;
    this.code = code; // the server's error code, e.g. token_expired
  }
}

/** JSON request to our own server; throws ApiError carrying the server's message. */
async function api(method, path, body, headers = {}) {
  const init = { method, credentials: 'same-origin', headers: { ...headers, Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError('cannot reach the server', 0);
  }
  const data = await res.json().catch(() => null); // a proxy may answer with HTML
  if (!res.ok) {
    const message = data?.error?.message;
    const code = typeof data?.error?.code === 'string' ? data.error.code : '';
    throw new ApiError(typeof message === 'string' && message ? message : `request failed (HTTP ${res.status})`, res.status, code);
  }
  // Callers check the fields they need; an empty success (204) is just {}.
  return data !== null && typeof data === 'object' ? data : {};
}

// ---------------------------------------------------------------- status and state

let statusTimer = 0;

/** Show an error under the messages; transient ones clear themselves. */
function showStatus(text, { sticky = false } = {}) {
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

function setConnState(state) {
  ui.conn.dataset.state = state;
  ui.conn.textContent = CONN_LABELS[state];
}

// ---------------------------------------------------------------- messages

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

function messageElement(msg) {
  const li = element('li', 'message');
  li.dataset.id = msg.id;
  li.dataset.userId = String(msg.user_id ?? '');
  if (me && msg.user_id === me.user_id) li.classList.add('mine');

  const meta = element('div', 'meta');
  const author = authorElement(msg.user_id, String(msg.name ?? ''));
  author.style.setProperty('--hue', hue(msg.user_id));
  meta.append(author);

  const date = new Date(Number(msg.ts) * 1000);
  if (!Number.isNaN(date.getTime())) {
    const isToday = date.toDateString() === new Date().toDateString();
    const time = element('time', 'time', (isToday ? timeFormat : dateTimeFormat).format(date));
    time.dateTime = date.toISOString();
    time.title = dateTimeFormat.format(date);
    meta.append(time);
  }

  li.append(meta, element('div', 'text', msg.text));
  if (msg.edited !== undefined && msg.edited !== null) markEdited(li, msg.edited);
  return li;
}

/** The "edited" mark of a message's entry, with when in its tooltip. */
function markEdited(li, edited) {
  const meta = li.querySelector('.meta');
  let mark = meta.querySelector('.edited');
  if (!mark) {
    mark = element('span', 'edited', 'edited');
    meta.append(mark);
  }
  const date = new Date(Number(edited) * 1000);
  mark.title = Number.isNaN(date.getTime()) ? '' : `edited ${dateTimeFormat.format(date)}`;
}

/** The entry of #messages showing the message with this id, if it is shown. */
function shownMessage(id) {
  for (const el of ui.messages.children) if (el.dataset.id === id) return el;
  return null;
}

/** Whether an entry of #messages belongs after the message with this id.
 * A gap notice stands right after the id its stream resumed from. */
function comesAfter(el, id) {
  if (el.dataset.id) return compareIds(el.dataset.id, id) > 0;
  return parseId(el.dataset.after) !== null && compareIds(el.dataset.after, id) >= 0;
}

/** Put a message into #messages in id order, once. */
function render(msg) {
  if (rendered.has(msg.id)) return;
  // Almost always the newest, so scan from the end; our own POST reply can
  // arrive ahead of the stream and older pages arrive behind, hence the scan.
  let before = ui.messages.lastElementChild;
  while (before && comesAfter(before, msg.id)) before = before.previousElementSibling;
  ui.messages.insertBefore(messageElement(msg), before ? before.nextSibling : ui.messages.firstChild);
  rendered.add(msg.id);
}

/** The server no longer holds every message after `since`, where this stream
 * resumed: say so at that point of the list, once, rather than let the
 * reader believe nothing was missed. */
function onGap(data, since) {
  if (parseId(since) === null) return;
  if ([...ui.messages.children].some((el) => el.dataset.after === since)) return;
  const li = element('li', 'notice', 'Some earlier messages are no longer available.');
  li.dataset.after = since;
  const firstId = typeof data?.first_id === 'string' ? data.first_id : '';
  if (parseId(firstId)) li.title = `missed the messages after ${since}, up to ${firstId}`;
  let before = ui.messages.lastElementChild;
  while (before?.dataset.id && compareIds(before.dataset.id, since) > 0) before = before.previousElementSibling;
  followingBottom(() => ui.messages.insertBefore(li, before ? before.nextSibling : ui.messages.firstChild));
}

function atBottom() {
  const { scrollHeight, scrollTop, clientHeight } = ui.log;
  return scrollHeight - scrollTop - clientHeight < 40;
}

function scrollToBottom() {
  ui.log.scrollTop = ui.log.scrollHeight;
}

/** Stay at the bottom when the log shrinks (window resized, on-screen keyboard). */
function keepBottomOnResize() {
  let stuck = true;
  ui.log.addEventListener('scroll', () => (stuck = atBottom()), { passive: true });
  new ResizeObserver(() => stuck && scrollToBottom()).observe(ui.log);
}

/** Run a DOM change, then follow the newest message only if the reader was
 * already there: someone scrolled up to read must not be yanked down. */
function followingBottom(change, force = false) {
  const stick = force || atBottom();
  change();
  if (stick) {
    scrollToBottom();
    prune();
  }
}

/** Drop the oldest messages (and notices among them) past MAX_RENDERED;
 * "Load older" brings the messages back. */
function prune() {
  while (rendered.size > MAX_RENDERED && ui.messages.firstElementChild) {
    const first = ui.messages.firstElementChild;
    if (first.dataset.id) rendered.delete(first.dataset.id);
    first.remove();
    ui.older.hidden = false;
  }
}

/** A message from the live stream (SSE or WebSocket). The stream is in id
 * order, so anything at or below the cursor was already received: that is
 * the replay overlap after a reconnect, and it is dropped. */
function onLiveMessage(msg) {
  if (!isMessage(msg)) return;
  if (cursor !== null && compareIds(msg.id, cursor) <= 0) return;
  cursor = msg.id;
  followingBottom(() => render(msg));
}

/** An edit or a deletion moves the cursor as a message does: it has its own
 * id in the room's stream. False when it was received already (the replay
 * overlap after a reconnect). */
function advanceTo(eventId) {
  if (parseId(eventId) === null) return false;
  if (cursor !== null && compareIds(eventId, cursor) <= 0) return false;
  cursor = eventId;
  return true;
}

/** `message_updated`: the message's new text, in place, marked edited. */
function onMessageUpdated(msg, eventId) {
  if (!isMessage(msg) || !advanceTo(eventId)) return;
  const li = shownMessage(msg.id);
  if (!li) return; // not shown (older than what is loaded): history has the new text
  li.querySelector('.text').textContent = msg.text;
  markEdited(li, msg.edited);
}

/** `message_deleted`: the message goes from the list. */
function onMessageDeleted(data, eventId) {
  if (parseId(data?.id) === null || !advanceTo(eventId)) return;
  const li = shownMessage(data.id);
  if (li) li.remove();
  rendered.delete(data.id);
}

async function loadHistory() {
  const data = await api('GET', `${apiRoom}/messages?limit=${HISTORY_LIMIT}`);
  const messages = Array.isArray(data.messages) ? data.messages.filter(isMessage) : [];
  for (const msg of messages) {
    render(msg);
    if (cursor === null || compareIds(msg.id, cursor) > 0) cursor = msg.id;
  }
  // An empty room still gets a resume point: "everything after 0-0" also
  // covers a message posted between this fetch and the stream opening.
  if (cursor === null) cursor = '0-0';
  ui.older.hidden = messages.length < HISTORY_LIMIT;
  scrollToBottom();
}

async function loadOlder() {
  const first = ui.messages.querySelector('.message');
  if (!first) return;
  ui.older.disabled = true;
  try {
    const before = encodeURIComponent(first.dataset.id);
    const data = await api('GET', `${apiRoom}/messages?limit=${HISTORY_LIMIT}&before=${before}`);
    const messages = Array.isArray(data.messages) ? data.messages.filter(isMessage) : [];
    // Keep the message the reader is looking at in place while the list grows above it.
    const fromBottom = ui.log.scrollHeight - ui.log.scrollTop;
    messages.forEach(render);
    ui.log.scrollTop = ui.log.scrollHeight - fromBottom;
    ui.older.hidden = messages.length < HISTORY_LIMIT;
  } catch (err) {
    showStatus(err.message);
  } finally {
    ui.older.disabled = false;
  }
}

// ---------------------------------------------------------------- presence and identity

/** Who is online, as the server last said. `users` maps user_id -> name (one
 * entry per user, however many tabs they have open), or is null in a room too
 * big to list, where only `count` is known. `count` is always the server's. */
const presence = {
  users: null,
  count: null,
  // Rooms too big to list: the pages of GET .../online the reader asked for.
  sample: null, // Map user_id -> name, or null when none was asked for
  sampleAfter: null, // user_id to ask the next page after; null when there is none
  sampleLoading: false,
  generation: 0, // bumped by each snapshot, so a page that arrives after one is dropped
};

const nameOrder = new Intl.Collator(undefined, { sensitivity: 'accent' }); // case-insensitive
const countFormat = new Intl.NumberFormat();

/** [user_id, name] of each well-formed {user_id, name} in `list`. */
function userEntries(list) {
  if (!Array.isArray(list)) return [];
  return list
    .filter((u) => u !== null && typeof u === 'object' && typeof u.user_id === 'string')
    .map((u) => [u.user_id, String(u.name ?? '')]);
}

function serverCount(data) {
  return Number.isSafeInteger(data.count) && data.count >= 0 ? data.count : null;
}

/** `presence`: a snapshot, which replaces everything known. */
function onPresence(data) {
  if (data === null || typeof data !== 'object') return;
  presence.users = Array.isArray(data.online) ? new Map(userEntries(data.online)) : null;
  presence.count = serverCount(data) ?? presence.users?.size ?? null;
  presence.sample = null;
  presence.sampleAfter = null;
  presence.generation++;
  renderPresence();
}

/** `presence_diff`: who came and went since the last snapshot or diff. A user
 * in `joined` who is already listed changed (e.g. was renamed). In rooms too
 * big to list the lists are empty and only the count changes. */
function onPresenceDiff(data) {
  if (data === null || typeof data !== 'object') return;
  if (presence.users) {
    for (const [userId] of userEntries(data.left)) presence.users.delete(userId);
    for (const [userId, name] of userEntries(data.joined)) presence.users.set(userId, name);
  }
  presence.count = serverCount(data) ?? presence.users?.size ?? presence.count;
  renderPresence();
}

/** An online user. Our own marker comes after the tag, where no name can
 * reach: a name ending in "(you)" still shows its tag before that text. */
function personElement(userId, name) {
  const li = element('li');
  li.dataset.userId = userId;
  li.append(authorElement(userId, name));
  if (me && userId === me.user_id) {
    li.classList.add('self');
    li.append(' ', element('span', 'you', '(you)'));
  }
  return li;
}

/** By name, ignoring case, then by id (which keeps namesakes apart and in a stable order). */
function peopleElements(users) {
  const entries = [...users].map(([userId, name]) => [userId, me && userId === me.user_id ? me.name : name]);
  entries.sort(([aId, aName], [bId, bName]) => nameOrder.compare(aName, bName) || (aId < bId ? -1 : aId > bId ? 1 : 0));
  return entries.map(([userId, name]) => personElement(userId, name));
}

function renderPresence() {
  const { users, count, sample } = presence;
  ui.onlineCount.textContent = count === null ? '' : countFormat.format(count);
  ui.people.dataset.mode = users ? 'list' : count === null ? 'unknown' : 'count';
  if (users) {
    // A rename of our own shows at once, before the server's next presence.
    ui.online.replaceChildren(...peopleElements(users));
    ui.online.hidden = false;
    ui.onlineNote.hidden = true;
    return;
  }
  ui.online.replaceChildren(...(sample ? peopleElements(sample) : []));
  ui.online.hidden = !sample;
  ui.onlineNote.hidden = count === null;
  if (count === null) return;
  const total = `${countFormat.format(count)} online`;
  ui.onlineNoteText.textContent = sample
    ? `Showing ${countFormat.format(sample.size)} of ${total}, as they were when asked.`
    : `${total}: too many to keep a list.`;
  ui.onlineMore.textContent = sample ? 'Show more' : 'Show who is online';
  ui.onlineMore.hidden = sample !== null && presence.sampleAfter === null;
  ui.onlineMore.disabled = presence.sampleLoading;
}

/** Rooms too big to list: fetch the next page of who is online, on request.
 * It is a look at one moment, kept until the next snapshot. */
async function showMoreOnline() {
  if (presence.users || presence.sampleLoading) return;
  const generation = presence.generation;
  const after = presence.sample ? presence.sampleAfter : null;
  if (presence.sample && after === null) return;
  presence.sampleLoading = true;
  renderPresence();
  try {
    const query = `limit=${ONLINE_PAGE}${after === null ? '' : `&after=${encodeURIComponent(after)}`}`;
    const data = await api('GET', `${apiRoom}/online?${query}`);
    if (generation !== presence.generation || presence.users) return; // a snapshot came meanwhile
    const page = userEntries(data.online);
    presence.sample = new Map([...(presence.sample ?? []), ...page]);
    presence.sampleAfter = page.length < ONLINE_PAGE ? null : page[page.length - 1][0];
  } catch (err) {
    showStatus(err.message);
  } finally {
    presence.sampleLoading = false;
    renderPresence();
  }
}

/** A time of day, or of another day, for a Unix time in seconds; '' if not one. */
function formatTime(seconds) {
  const date = new Date(Number(seconds) * 1000);
  if (typeof seconds !== 'number' || Number.isNaN(date.getTime())) return '';
  return (date.toDateString() === new Date().toDateString() ? timeFormat : dateTimeFormat).format(date);
}

function showAuth(state, text, title = '') {
  ui.authState.dataset.state = state;
  ui.authState.textContent = text;
  ui.authState.title = title;
}

function showMe() {
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

async function loadSession() {
  const data = await api('GET', '/api/session');
  if (typeof data.user_id !== 'string') throw new ApiError('unexpected answer from the server', 200);
  me = {
    user_id: data.user_id,
    name: String(data.name ?? ''),
    signed_in: data.signed_in === true,
    expires_at: typeof data.expires_at === 'number' ? data.expires_at : null,
    can_rename: data.can_rename !== false, // (a server from before it said)
  };
  showMe();
}

async function rename(event) {
  event.preventDefault();
  if (!me || !me.can_rename || connection.ended) return;
  ui.nameSave.disabled = true;
  try {
    const data = await api('PUT', '/api/session', { name: ui.nameInput.value });
    me = { ...me, name: typeof data.name === 'string' ? data.name : ui.nameInput.value.trim() };
    showMe();
    renderPresence();
    showStatus('');
  } catch (err) {
    showStatus(err.message);
  } finally {
    ui.nameSave.disabled = connection.ended;
  }
}

// ---------------------------------------------------------------- transports

async function postMessage(text, key) {
  const data = await api('POST', `${apiRoom}/messages`, { text }, { 'Idempotency-Key': key });
  if (!isMessage(data.message)) throw new ApiError('unexpected answer from the server', 201);
  return data.message;
}

// How a stream the server ended for good is shown: [connection state, status].
const ENDINGS = {
  signed_out: ['signed-out', 'Signed out.'],
  auth_expired: ['expired', 'Your sign-in expired. Sign in again to go on chatting.'],
};

/** How a request refused for want of a sign-in (401) is shown. */
function signInEnding(err) {
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
function sseTransport(events) {
  let source = null;
  return {
    open() {
      this.close();
      const since = cursor;
      const query = since === null ? '' : `?last_event_id=${encodeURIComponent(since)}`;
      const es = new EventSource(`${apiRoom}/events${query}`);
      source = es;
      es.addEventListener('open', events.onOpen);
      es.addEventListener('message', (e) => onLiveMessage(parseJson(e.data)));
      es.addEventListener('message_updated', (e) => onMessageUpdated(parseJson(e.data), e.lastEventId));
      es.addEventListener('message_deleted', (e) => onMessageDeleted(parseJson(e.data), e.lastEventId));
      es.addEventListener('presence', (e) => onPresence(parseJson(e.data)));
      es.addEventListener('presence_diff', (e) => onPresenceDiff(parseJson(e.data)));
      es.addEventListener('gap', (e) => onGap(parseJson(e.data), since));
      es.addEventListener('auth_expiring', (e) => onAuthExpiring(parseJson(e.data)));
      // The stream ends after these: the end is handled here, before the
      // 'error' the closed stream fires, so that it is not reopened.
      for (const [name, [state, text]] of Object.entries(ENDINGS)) {
        es.addEventListener(name, () => source === es && events.onEnd(state, text));
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
    send: postMessage,
  };
}

/** WebSocket: sends go over the socket and resolve on the server's ack; while
 * the socket is down they fall back to HTTP POST so typing is never blocked. */
function wsTransport(events) {
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
      const since = cursor;
      const query = since === null ? '' : `?since=${encodeURIComponent(since)}`;
      const ws = new WebSocket(`${scheme}://${location.host}${apiRoom}/ws${query}`);
      socket = ws;
      ws.addEventListener('open', events.onOpen);
      ws.addEventListener('message', (e) => onFrame(e.data, since));
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
      ws?.close(1000);
      failAll('connection closed before the server confirmed the message');
    },
    send(text, key) {
      if (socket?.readyState !== WebSocket.OPEN) return postMessage(text, key);
      const ref = `${Date.now().toString(36)}-${++nextRef}`;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => settle(ref, new ApiError('no answer from the server', 0)), ACK_TIMEOUT_MS);
        pending.set(ref, { resolve, reject, timer });
        socket.send(JSON.stringify({ type: 'message', text, ref, key }));
      });
    },
  };
}

// ---------------------------------------------------------------- connection

const connection = (() => {
  let attempt = 0;
  let openedAt = 0;
  let retryTimer = 0;
  let started = false; // main() has opened the stream once
  let running = false; // and it has not been stopped since
  let ended = false; // the server ended it for good: never reopened

  /** The stream is over (signed out, sign-in expired, removed): say why,
   * and stop everything that would act as this user. */
  function end(state, text) {
    ended = true;
    running = false;
    clearTimeout(retryTimer);
    retryTimer = 0;
    transport.close();
    setConnState(state);
    showStatus(text, { sticky: true });
    for (const control of [ui.input, ui.send, ui.nameInput, ui.nameSave]) control.disabled = true;
    if (state === 'signed-out') showAuth('signed-out', 'signed out');
    if (state === 'expired') showAuth('signed-out', 'sign-in expired');
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
  const transport = (transportName === 'ws' ? wsTransport : sseTransport)(events);

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

  return {
    transport,
    end,
    get ended() {
      return ended;
    },
    start() {
      started = running = true;
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
})();

// ---------------------------------------------------------------- sending

let sessionReady = null;
let sendQueue = Promise.resolve();
// Texts sent but not yet confirmed -> their idempotency keys. Sending the same
// text again before the server confirmed it (Enter pressed again, or after an
// error, the input keeping the text) is a retry of the same message: the
// server stores it once, however many tries reached it.
const unconfirmed = new Map();
const UNCONFIRMED_MAX = 20;

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

/** Sends run one at a time so they are stored in the order typed. The input
 * is cleared only on success, and only if it still holds what was sent. */
function submit(event) {
  event.preventDefault();
  const text = ui.input.value;
  if (!text.trim() || connection.ended) return;
  const key = keyFor(text);
  sendQueue = sendQueue.then(async () => {
    try {
      await sessionReady;
      const msg = await connection.transport.send(text, key);
      if (unconfirmed.get(text) === key) unconfirmed.delete(text);
      if (ui.input.value === text) ui.input.value = '';
      showStatus('');
      followingBottom(() => render(msg), true);
    } catch (err) {
      showStatus(err.message);
      if (!ui.input.value) ui.input.value = text; // never lose what was typed
    }
  });
}

// ---------------------------------------------------------------- start

/** Keep trying a startup step, saying what is wrong meanwhile; not when the
 * server wants a sign-in (401): trying again would not change that. */
async function retrying(what, step) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await step();
    } catch (err) {
      if (err.status === 401) throw err;
      showStatus(`${what}: ${err.message}; retrying…`, { sticky: true });
      await sleep(backoff(attempt));
    }
  }
}

async function main() {
  ui.room.textContent = room;
  document.title = `#${room} · chat`;
  ui.input.placeholder = `Message #${room}`;
  ui.composer.addEventListener('submit', submit);
  ui.nameForm.addEventListener('submit', rename);
  ui.older.addEventListener('click', loadOlder);
  ui.onlineMore.addEventListener('click', showMoreOnline);
  keepBottomOnResize();
  window.addEventListener('online', () => connection.retryNow());
  // Open streams keep a page out of the back/forward cache; close them on
  // leave and resume by id if the page is shown again.
  window.addEventListener('pagehide', () => connection.stop());
  window.addEventListener('pageshow', (e) => e.persisted && connection.resume());

  // The session comes first: parallel first requests would each create one.
  sessionReady = retrying('could not start a session', loadSession);
  await sessionReady;
  await retrying('could not load the history', loadHistory);
  showStatus('');
  // Opened after the history, from its last id: the server replays anything
  // posted in between, so there is no gap.
  connection.start();
  ui.input.focus();
}

window.chat = Object.freeze({
  room,
  transport: transportName,
  get lastId() {
    return cursor;
  },
});

main().catch((err) => {
  if (err.status === 401) connection.end(...signInEnding(err));
  else showStatus(`the page failed to start: ${err.message}`, { sticky: true });
});
