// Requests to our own server, and its JSON errors.

export class ApiError extends Error {
  constructor(message, status, code = '') {
    super(message);
    this.status = status;
    this.code = code; // the server's error code, e.g. token_expired
  }
}

/** JSON request to our own server; throws ApiError carrying the server's message. */
export async function api(method, path, body, headers = {}) {
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
