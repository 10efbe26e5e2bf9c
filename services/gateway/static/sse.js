// Server-sent events over fetch(): EventSource cannot send an Authorization header, and the token
// must not go into the URL. The parser follows the WHATWG event-stream rules (data, event, id,
// retry; comments ignored); the reader resumes after the last id when the connection drops.

import { ApiError, apiFetch } from "./api.js";

export class EventStreamParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.data = [];
    this.type = "";
    this.lastId = null;
    this.retry = null;
  }

  /** Feed decoded text (any chunking); complete events go to onEvent({type, data, id}). */
  feed(text) {
    this.buffer += text;
    const held = this.buffer.endsWith("\r") ? 1 : 0; // perhaps the first half of a "\r\n" split by the chunking
    const lines = this.buffer.slice(0, this.buffer.length - held).split(/\r\n|\r|\n/);
    this.buffer = lines.pop() + (held ? "\r" : ""); // an unfinished line waits for the next chunk
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.onEvent({ type: this.type || "message", data: this.data.join("\n"), id: this.lastId });
      this.data = [];
      this.type = "";
      return;
    }
    if (line.startsWith(":")) return; // a comment or heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.lastId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

/**
 * Follow an event stream until an "end" event or until signal aborts. onEvent gets (type, parsed
 * JSON); onState gets "live", "reconnecting" or "ended". 4xx answers are not retried.
 */
export async function followEvents(path, { signal, onEvent, onState = () => {} }) {
  let lastId = null;
  let delay = 2000;
  let ended = false;
  while (!signal.aborted && !ended) {
    const parser = new EventStreamParser((event) => {
      if (event.type === "end") ended = true;
      let data = null;
      try {
        data = JSON.parse(event.data);
      } catch {
        return; // not one of ours
      }
      onEvent(event.type, data);
    });
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await apiFetch(path, { headers, signal });
      onState("live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.feed(value);
        lastId = parser.lastId;
        if (parser.retry !== null) delay = parser.retry;
      }
      parser.feed("\n"); // flush a last line without its newline
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status < 500) throw error;
    }
    if (!ended && !signal.aborted) {
      onState("reconnecting");
      await sleep(delay, signal);
    }
  }
  if (ended) onState("ended");
}
