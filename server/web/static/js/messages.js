// The message list: history on load, live messages in id order and once,
// edits and deletions in place, gap notices, older pages on request, and
// following the newest message only when the reader is already there.
//
// Edits and deletions come in the same streams, in order with the messages
// (each with an id of its own, where a reconnect resumes): the message
// changes in place (its new text, an "edited" mark) or goes.

import { api } from './api.js';
import { applyEdit, markEdited, messageActions, setupEdits } from './edits.js';
import { roomApi, showStatus, state, ui } from './page.js';
import { authorElement, compareIds, dateTimeFormat, element, hue, isMessage, parseId, timeFormat } from './util.js';

const HISTORY_LIMIT = 50;
const MAX_RENDERED = 1000; // keeps a tab that stays open for days from growing without bound

const rendered = new Set(); // ids currently in #messages
const listeners = []; // called with each new live message

/** `listener(msg)` is called for each new message from the live stream. */
export function onNewMessage(listener) {
  listeners.push(listener);
}

function messageElement(msg) {
  const li = element('li', 'message');
  li.dataset.id = msg.id;
  li.dataset.userId = String(msg.user_id ?? '');
  if (state.me && msg.user_id === state.me.user_id) li.classList.add('mine');

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
  const actions = messageActions(msg);
  if (actions) meta.append(actions);

  li.append(meta, element('div', 'text', msg.text));
  if (msg.edited !== undefined && msg.edited !== null) markEdited(li, msg.edited);
  return li;
}

/** The entry of #messages showing the message with this id, if it is shown. */
function shownMessage(id) {
  for (const el of ui.messages.children) if (el.dataset.id === id) return el;
  return null;
}

/** The id of the newest message shown, or null. */
export function newestShownId() {
  for (let el = ui.messages.lastElementChild; el; el = el.previousElementSibling) {
    if (el.dataset.id) return el.dataset.id;
  }
  return null;
}

/** Whether an entry of #messages belongs after the message with this id.
 * A gap notice stands right after the id its stream resumed from. */
function comesAfter(el, id) {
  if (el.dataset.id) return compareIds(el.dataset.id, id) > 0;
  return parseId(el.dataset.after) !== null && compareIds(el.dataset.after, id) >= 0;
}

/** Put a message into #messages in id order, once. */
export function render(msg) {
  if (rendered.has(msg.id)) return;
  // Almost always the newest, so scan from the end; our own POST reply can
  // arrive ahead of the stream and older pages arrive behind, hence the scan.
  let before = ui.messages.lastElementChild;
  while (before && comesAfter(before, msg.id)) before = before.previousElementSibling;
  ui.messages.insertBefore(messageElement(msg), before ? before.nextSibling : ui.messages.firstChild);
  rendered.add(msg.id);
}

function removeShown(id) {
  shownMessage(id)?.remove();
  rendered.delete(id);
}
setupEdits(removeShown);

/** Empty the list (another room is shown next). */
export function clearMessages() {
  ui.messages.replaceChildren();
  rendered.clear();
  ui.older.hidden = true;
}

/** The server no longer holds every message after `since`, where this stream
 * resumed: say so at that point of the list, once, rather than let the
 * reader believe nothing was missed. */
export function onGap(data, since) {
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
export function keepBottomOnResize() {
  let stuck = true;
  ui.log.addEventListener('scroll', () => (stuck = atBottom()), { passive: true });
  new ResizeObserver(() => stuck && scrollToBottom()).observe(ui.log);
}

/** Run a DOM change, then follow the newest message only if the reader was
 * already there: someone scrolled up to read must not be yanked down. */
export function followingBottom(change, force = false) {
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
export function onLiveMessage(msg) {
  if (!isMessage(msg)) return;
  if (state.cursor !== null && compareIds(msg.id, state.cursor) <= 0) return;
  state.cursor = msg.id;
  followingBottom(() => render(msg));
  for (const listener of listeners) listener(msg);
}

/** An edit or a deletion moves the cursor as a message does: it has its own
 * id in the room's stream. False when it was received already (the replay
 * overlap after a reconnect). */
function advanceTo(eventId) {
  if (parseId(eventId) === null) return false;
  if (state.cursor !== null && compareIds(eventId, state.cursor) <= 0) return false;
  state.cursor = eventId;
  return true;
}

/** `message_updated`: the message's new text, in place, marked edited. */
export function onMessageUpdated(msg, eventId) {
  if (!isMessage(msg) || !advanceTo(eventId)) return;
  const li = shownMessage(msg.id);
  if (li) applyEdit(li, msg); // (not shown, older than what is loaded: history has the new text)
}

/** `message_deleted`: the message goes from the list. */
export function onMessageDeleted(data, eventId) {
  if (parseId(data?.id) === null || !advanceTo(eventId)) return;
  removeShown(data.id);
}

/** The newest page of the room's history; the stream resumes after it. */
export async function loadHistory(room) {
  const data = await api('GET', `${roomApi(room)}/messages?limit=${HISTORY_LIMIT}`);
  if (room !== state.room) return; // another room was chosen meanwhile
  const messages = Array.isArray(data.messages) ? data.messages.filter(isMessage) : [];
  for (const msg of messages) {
    render(msg);
    if (state.cursor === null || compareIds(msg.id, state.cursor) > 0) state.cursor = msg.id;
  }
  // An empty room still gets a resume point: "everything after 0-0" also
  // covers a message posted between this fetch and the stream opening.
  if (state.cursor === null) state.cursor = '0-0';
  ui.older.hidden = messages.length < HISTORY_LIMIT;
  scrollToBottom();
}

export async function loadOlder() {
  const first = ui.messages.querySelector('.message');
  if (!first) return;
  const room = state.room;
  ui.older.disabled = true;
  try {
    const before = encodeURIComponent(first.dataset.id);
    const data = await api('GET', `${roomApi(room)}/messages?limit=${HISTORY_LIMIT}&before=${before}`);
    if (room !== state.room) return;
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
