// Edit and delete on the user's own messages: buttons on each of them (plain
// buttons, so the keyboard reaches them), an inline editor (Enter saves,
// Escape cancels), an "edited" mark. The server says no past the edit window
// (403 edit_window) or for want of a role: the page shows its message.
//
// The page does not know the user's role in a room (the session does not
// say), so it offers delete only on the user's own messages; a moderator's
// delete of others' messages goes through the server API.

import { api } from './api.js';
import { roomApi, showStatus, state, ui } from './page.js';
import { dateTimeFormat, element } from './util.js';

let removeShown = () => {};

/** `remove(id)` takes a deleted message off the list. */
export function setupEdits(remove) {
  removeShown = remove;
}

/** The "edited" mark of a message's entry, with when in its tooltip. */
export function markEdited(li, edited) {
  const meta = li.querySelector('.meta');
  let mark = meta.querySelector('.edited');
  if (!mark) {
    mark = element('span', 'edited', 'edited');
    const actions = meta.querySelector('.actions');
    if (actions) actions.before(mark);
    else meta.append(mark);
  }
  const date = new Date(Number(edited) * 1000);
  mark.title = Number.isNaN(date.getTime()) ? '' : `edited ${dateTimeFormat.format(date)}`;
}

/** A message's new text, in place, marked edited (an open editor stays open). */
export function applyEdit(li, msg) {
  li.querySelector('.text').textContent = msg.text;
  markEdited(li, msg.edited);
}

/** Edit and Delete buttons for one of the user's own messages; null for others'. */
export function messageActions(msg) {
  if (!state.me || msg.user_id !== state.me.user_id) return null;
  const actions = element('span', 'actions');
  const edit = element('button', 'edit', 'Edit');
  edit.type = 'button';
  edit.setAttribute('aria-label', 'Edit message');
  const del = element('button', 'delete', 'Delete');
  del.type = 'button';
  del.setAttribute('aria-label', 'Delete message');
  edit.addEventListener('click', () => openEditor(edit.closest('.message')));
  del.addEventListener('click', () => remove(del.closest('.message'), del));
  actions.append(edit, del);
  return actions;
}

function openEditor(li) {
  if (!li || li.querySelector('.editor')) return;
  const text = li.querySelector('.text');
  const editor = element('input', 'editor');
  editor.type = 'text';
  editor.value = text.textContent;
  editor.setAttribute('aria-label', 'Edit message: Enter saves, Escape cancels');
  text.hidden = true;
  text.after(editor);
  const close = () => {
    editor.remove();
    text.hidden = false;
    li.querySelector('.actions .edit')?.focus();
  };
  editor.addEventListener('keydown', async (e) => {
    if (e.key === 'Escape') {
      e.preventDefault();
      close();
    } else if (e.key === 'Enter' && !e.isComposing) {
      e.preventDefault();
      if (editor.value === text.textContent) return close();
      editor.disabled = true;
      try {
        const data = await api('PATCH', `${roomApi()}/messages/${encodeURIComponent(li.dataset.id)}`, { text: editor.value });
        if (data.message?.id === li.dataset.id) applyEdit(li, data.message);
        showStatus('');
        close();
      } catch (err) {
        showStatus(`Not edited: ${err.message}`);
        editor.disabled = false;
        editor.focus();
      }
    }
  });
  editor.focus();
}

async function remove(li, button) {
  if (!li) return;
  button.disabled = true;
  try {
    await api('DELETE', `${roomApi()}/messages/${encodeURIComponent(li.dataset.id)}`);
    showStatus('');
    removeShown(li.dataset.id);
    ui.input.focus();
  } catch (err) {
    showStatus(`Not deleted: ${err.message}`);
    button.disabled = false;
  }
}
