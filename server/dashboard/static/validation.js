// Validation errors from either shape the server answers with: ours
// ({error, message, validation_errors: [{node_id, node_type, error_type, message, input_name, ...}]})
// and ComfyUI's POST /prompt ({error: {type, message, details}, node_errors: {id: {errors, class_type}}}).

/** -> {summary, general: [message], byNode: {nodeId: {nodeType, items: [{input_name, message, ...}]}}, promptIndex} */
export function groupValidationErrors(body) {
  const out = { summary: '', general: [], byNode: {}, promptIndex: null };
  if (!body || typeof body !== 'object') {
    out.summary = typeof body === 'string' && body ? body : 'The request was rejected';
    return out;
  }
  const add = (nodeId, nodeType, item) => {
    const key = String(nodeId);
    const slot = (out.byNode[key] ||= { nodeType: nodeType || null, items: [] });
    slot.nodeType ||= nodeType || null;
    const duplicate = slot.items.some((i) => i.message === item.message && i.input_name === item.input_name);
    if (!duplicate) slot.items.push(item);
  };
  if (typeof body.message === 'string') out.summary = body.message;
  else if (body.error && typeof body.error === 'object') out.summary = body.error.message || '';
  else if (typeof body.error === 'string') out.summary = body.error;
  const match = /\(prompt (\d+) of (\d+)\)/.exec(out.summary);
  if (match) out.promptIndex = Number(match[1]) - 1;

  for (const item of body.validation_errors || []) {
    if (item.node_id != null) add(item.node_id, item.node_type, item);
    else if (item.message && item.message !== out.summary) out.general.push(item.message);
  }
  for (const [nodeId, entry] of Object.entries(body.node_errors || {})) {
    for (const err of entry?.errors || []) {
      const message = [err.message, err.details].filter(Boolean).join(': ');
      add(nodeId, entry.class_type, {
        error_type: err.type,
        message,
        input_name: err.extra_info?.input_name ?? null,
        received_value: err.extra_info?.received_value,
      });
    }
  }
  const comfy = body.comfy_error || (body.error && typeof body.error === 'object' ? body.error : null);
  if (comfy?.details && !Object.keys(out.byNode).length) out.general.push(comfy.details);
  return out;
}

export const hasNodeErrors = (grouped) => Object.keys(grouped.byNode).length > 0;
