// Who is online in the room: a snapshot when a stream opens (or whenever the
// server sends a new one), then only the changes. Rooms too big to list carry
// just a count, and pages of who is online on request.

import { api } from './api.js';
import { roomApi, showStatus, state, ui } from './page.js';
import { authorElement, element } from './util.js';

const ONLINE_PAGE = 100; // users per "show who is online" page in rooms too big to list

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

/** `presence`: a snapshot, which replaces everything known ({}: nothing is known). */
export function onPresence(data) {
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
export function onPresenceDiff(data) {
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
  if (state.me && userId === state.me.user_id) {
    li.classList.add('self');
    li.append(' ', element('span', 'you', '(you)'));
  }
  return li;
}

/** By name, ignoring case, then by id (which keeps namesakes apart and in a stable order). */
function peopleElements(users) {
  const { me } = state;
  const entries = [...users].map(([userId, name]) => [userId, me && userId === me.user_id ? me.name : name]);
  entries.sort(([aId, aName], [bId, bName]) => nameOrder.compare(aName, bName) || (aId < bId ? -1 : aId > bId ? 1 : 0));
  return entries.map(([userId, name]) => personElement(userId, name));
}

export function renderPresence() {
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
export async function showMoreOnline() {
  if (presence.users || presence.sampleLoading) return;
  const generation = presence.generation;
  const after = presence.sample ? presence.sampleAfter : null;
  if (presence.sample && after === null) return;
  presence.sampleLoading = true;
  renderPresence();
  try {
    const query = `limit=${ONLINE_PAGE}${after === null ? '' : `&after=${encodeURIComponent(after)}`}`;
    const data = await api('GET', `${roomApi()}/online?${query}`);
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
