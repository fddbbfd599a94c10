// Edit and delete on the user's own messages, and delete on everyone's for a
// moderator of the room (the role the session gave for the room shown):
// buttons on each message (plain buttons, so the keyboard reaches them), an
// inline editor (Enter saves, Escape cancels), an "edited" mark. The server
// says no past the edit window (403 edit_window) or for want of a role (a
// role taken away since the room was shown): the page shows its message.

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

/** Whether the user moderates the room shown. */
function moderating() {
  return state.role?.room === state.room && state.role.name === 'moderator';
}

/** Edit and Delete buttons for one of the user's own messages, Delete alone
 * for another's when the user moderates the room; null when neither. */
export function messageActions(msg) {
  const mine = state.me !== null && msg.user_id === state.me.user_id;
  if (!mine && !moderating()) return null;
  const actions = element('span', 'actions');
  if (mine) {
    const edit = element('button', 'edit', 'Edit');
    edit.type = 'button';
    edit.setAttribute('aria-label', 'Edit message');
    edit.addEventListener('click', () => openEditor(edit.closest('.message')));
    actions.append(edit);
  }
  const del = element('button', 'delete', 'Delete');
  del.type = 'button';
  del.setAttribute('aria-label', mine ? 'Delete message' : `Delete message by ${String(msg.name ?? '')}`);
  del.addEventListener('click', () => remove(del.closest('.message'), del));
  actions.append(del);
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
