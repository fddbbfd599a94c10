// Small helpers shared by the page's modules: stream ids, JSON, backoff,
// elements and how names are shown. User-supplied text is only ever written
// with textContent: messages and names may contain markup, and it must show
// as typed.

/** Parse a Redis stream id "ms-seq" into numbers; null if malformed. */
export function parseId(id) {
  const m = typeof id === 'string' ? /^(\d+)-(\d+)$/.exec(id) : null;
  return m ? [Number(m[1]), Number(m[2])] : null;
}

/** Compare stream ids as (ms, seq) pairs: as strings "9-0" > "10-0". */
export function compareIds(a, b) {
  const [am, as] = parseId(a);
  const [bm, bs] = parseId(b);
  return am - bm || as - bs;
}

export function isMessage(m) {
  return m !== null && typeof m === 'object' && parseId(m.id) !== null && typeof m.text === 'string';
}

export function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** Capped exponential backoff (1 s, 2 s, 4 s ... 10 s) with jitter, so a
 * restarted server is not hit by every client in the same instant. */
export function backoff(attempt) {
  const base = Math.min(10000, 1000 * 2 ** attempt);
  return base * (0.5 + Math.random() * 0.5);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

export const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
export const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

/** A time of day, or of another day, for a Unix time in seconds; '' if not one. */
export function formatTime(seconds) {
  const date = new Date(Number(seconds) * 1000);
  if (typeof seconds !== 'number' || Number.isNaN(date.getTime())) return '';
  return (date.toDateString() === new Date().toDateString() ? timeFormat : dateTimeFormat).format(date);
}

/** A stable colour per user, so names are easy to tell apart at a glance
 * (360 hues collide soon: the tag is what tells users apart). */
export function hue(userId) {
  let h = 0;
  for (const ch of String(userId)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

const TAG_LENGTH = 6;

/** A user's tag: the first hex digits of the random part of the user id
 * (`u-` + hex, made by the server). Six digits are 16.7 million tags, so a
 * namesake with the same tag takes millions of new sessions to find. Any
 * other id, which this server does not make, gets a hash of it instead. */
export function userTag(userId) {
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

/** A name, isolated from the text around it (a bidi control in a name, which
 * the server refuses now and older names may still hold, cannot reorder what
 * follows it). */
export function nameElement(name) {
  const bdi = element('bdi', 'name', name);
  bdi.dir = 'auto';
  return bdi;
}

/** A name followed by its user's tag: two users with the same name never look the same. */
export function authorElement(userId, name) {
  const author = element('span', 'author');
  author.append(nameElement(name), ' ', tagElement(userId));
  return author;
}
