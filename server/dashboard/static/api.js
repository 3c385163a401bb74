// Small fetch helpers for the server's JSON API: one error type that carries the parsed body, so
// callers can show ComfyUI-shaped validation errors beside the nodes they concern.

export class ApiError extends Error {
  constructor(status, body, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.body = body;
  }
}

/** The human message of an error body: ours ({error, message}) or ComfyUI's ({error: {message}}). */
export function errorMessage(body, fallback = 'request failed') {
  if (!body) return fallback;
  if (typeof body === 'string') return body.slice(0, 300) || fallback;
  if (typeof body.message === 'string' && body.message) return body.message;
  if (body.error && typeof body.error === 'object') {
    const { message, details } = body.error;
    return [message, details].filter(Boolean).join(': ') || fallback;
  }
  if (typeof body.error === 'string') return body.error;
  return fallback;
}

async function parseBody(response) {
  const type = response.headers.get('Content-Type') || '';
  if (response.status === 204) return null;
  if (type.includes('json')) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }
  return await response.text();
}

/** `api('POST', '/prompt', {...})`: the parsed body, or throws ApiError (status 0: network). */
export async function api(method, path, body, { signal, form } = {}) {
  const init = { method, signal, headers: {} };
  if (form) {
    init.body = form;
  } else if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, null, `cannot reach the server (${err.message})`);
  }
  const parsed = await parseBody(response);
  if (!response.ok) {
    throw new ApiError(response.status, parsed, errorMessage(parsed, `${response.status} ${response.statusText}`));
  }
  return parsed;
}

export const getJSON = (path, opts) => api('GET', path, undefined, opts);
export const postJSON = (path, body, opts) => api('POST', path, body, opts);
