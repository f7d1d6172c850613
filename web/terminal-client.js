// Reference client of the orchestratord terminal protocol (docs/terminal-protocol.md).
// Framework-free ES module: binary frames, resume by offset across reconnects, flow
// control acknowledgements, heartbeats. The page (app.js) wires it to xterm.js.

export const OP = {
  INPUT: 0x00, RESIZE: 0x01, ACK: 0x02, PING: 0x03, RESUME: 0x04, CLOSE: 0x05,
  HELLO: 0x80, OUTPUT: 0x81, PONG: 0x82, EXIT: 0x83, GAP: 0x84, ERROR: 0x85,
};

const enc = new TextEncoder();

function u64(view, at) {
  return Number(view.getBigUint64(at));
}

/** Decodes one daemon frame (ArrayBuffer) into a plain object. */
export function decode(buf) {
  const v = new DataView(buf);
  const op = v.getUint8(0);
  switch (op) {
    case OP.HELLO:
      return {
        op, version: v.getUint8(1), readOnly: (v.getUint8(2) & 1) === 1,
        window: v.getUint32(3), buffer: v.getUint32(7), maxFrame: v.getUint32(11),
        heartbeatMs: v.getUint32(15), start: u64(v, 19), end: u64(v, 27),
        session: new TextDecoder().decode(new Uint8Array(buf, 35)),
      };
    case OP.OUTPUT:
      return { op, offset: u64(v, 1), data: new Uint8Array(buf, 9) };
    case OP.PONG:
      return { op };
    case OP.EXIT:
      return { op, status: v.getInt32(1) };
    case OP.GAP:
      return { op, from: u64(v, 1), to: u64(v, 9) };
    case OP.ERROR: {
      const bytes = new Uint8Array(buf, 1);
      const nul = bytes.indexOf(0);
      const td = new TextDecoder();
      return { op, kind: td.decode(bytes.subarray(0, nul)), message: td.decode(bytes.subarray(nul + 1)) };
    }
    default:
      throw new Error(`unknown opcode ${op}`);
  }
}

function frame(op, payloadLen, fill) {
  const buf = new ArrayBuffer(1 + payloadLen);
  const v = new DataView(buf);
  v.setUint8(0, op);
  if (fill) fill(v, new Uint8Array(buf));
  return buf;
}

export const encode = {
  input: (bytes) => frame(OP.INPUT, bytes.length, (_, a) => a.set(bytes, 1)),
  resize: (cols, rows) => frame(OP.RESIZE, 4, (v) => { v.setUint16(1, cols); v.setUint16(3, rows); }),
  ack: (offset) => frame(OP.ACK, 8, (v) => v.setBigUint64(1, BigInt(offset))),
  ping: () => frame(OP.PING, 0),
  resume: (offset) => frame(OP.RESUME, 8, (v) => v.setBigUint64(1, BigInt(offset))),
  close: () => frame(OP.CLOSE, 0),
};

/**
 * A terminal session that survives reconnects.
 *
 * opts.url(ticket, session) -> WebSocket URL; opts.getTicket() -> Promise<ticket>;
 * opts.onOutput(bytes, done) (call done() once the bytes are consumed: that is the ack);
 * opts.onHello(hello), opts.onGap(from, to), opts.onExit(status), opts.onError(kind, msg),
 * opts.onState(text). opts.session: attach to this session; opts.offset: resume here.
 */
export class TerminalClient {
  constructor(opts) {
    this.opts = opts;
    this.session = opts.session || null;
    this.offset = opts.offset ?? null;
    this.exited = false;
    this.ws = null;
    this.timer = null;
    this.retry = 0;
  }

  async connect() {
    const ticket = await this.opts.getTicket(this.session);
    const ws = new WebSocket(this.opts.url(ticket, this.session));
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onmessage = (ev) => this.onFrame(decode(ev.data));
    ws.onclose = () => {
      clearInterval(this.timer);
      if (this.exited) return;
      this.state('disconnected; reconnecting');
      // Back off 0.2 s, 0.4 s, ... up to 5 s, then resume where we were.
      const wait = Math.min(5000, 200 * 2 ** this.retry++);
      setTimeout(() => this.connect().catch((e) => this.state(`reconnect failed: ${e}`)), wait);
    };
  }

  state(text) {
    if (this.opts.onState) this.opts.onState(text);
  }

  send(buf) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(buf);
  }

  onFrame(f) {
    switch (f.op) {
      case OP.HELLO: {
        this.retry = 0;
        this.session = f.session;
        this.hello = f;
        // A new session from 0; a known one from where we were, or from what is held
        // (after a reload the screen is empty: replay the ring).
        const from = this.offset ?? f.start;
        this.offset = from;
        this.send(encode.resume(from));
        this.timer = setInterval(() => this.send(encode.ping()), Math.max(1000, f.heartbeatMs / 2));
        this.state(`session ${f.session}`);
        if (this.opts.onHello) this.opts.onHello(f);
        break;
      }
      case OP.OUTPUT: {
        const end = f.offset + f.data.length;
        this.offset = end;
        this.opts.onOutput(f.data, () => this.send(encode.ack(end)));
        break;
      }
      case OP.GAP:
        this.offset = f.to;
        if (this.opts.onGap) this.opts.onGap(f.from, f.to);
        break;
      case OP.EXIT:
        this.exited = true;
        if (this.opts.onExit) this.opts.onExit(f.status);
        break;
      case OP.ERROR:
        if (this.opts.onError) this.opts.onError(f.kind, f.message);
        break;
      default:
        break;
    }
  }

  input(text) {
    const bytes = typeof text === 'string' ? enc.encode(text) : text;
    for (let i = 0; i < bytes.length; i += 65536) this.send(encode.input(bytes.subarray(i, i + 65536)));
  }

  resize(cols, rows) {
    this.send(encode.resize(cols, rows));
  }

  close() {
    this.send(encode.close());
  }
}
