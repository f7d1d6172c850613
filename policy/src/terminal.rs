//! The terminal protocol (docs/terminal-protocol.md) and the per-session output ring.
//!
//! Every WebSocket message is one binary frame: an opcode byte, then its payload. Integers
//! are big-endian. Opcodes below 0x80 go from the client to the daemon, 0x80 and up from
//! the daemon to the client. The codec is pure: the daemon, `orchestratorctl shell`, the
//! benchmarks and the tests all use it, and it is tested here over in-memory bytes.
//!
//! Output is numbered by its byte offset in the session's output stream (0 = the first
//! byte the shell ever wrote). The daemon keeps the last bytes in a bounded [`Ring`]; a
//! client that resumes from offset N gets the output from N on, or a `gap` frame saying
//! which range is gone followed by everything still held. Flow control is by offset: the
//! client acknowledges the offset it has consumed, and the daemon never sends (nor reads
//! from the PTY) more than `window` bytes beyond the highest acknowledged offset.

use std::collections::VecDeque;

/// Protocol version stated in `hello`.
pub const VERSION: u8 = 1;
/// Largest `input` payload (a paste is split by the client).
pub const MAX_INPUT: usize = 64 * 1024;
/// Largest client frame: opcode + the largest payload.
pub const MAX_CLIENT_FRAME: usize = 1 + MAX_INPUT;
/// Largest `output` payload the daemon sends (output is coalesced up to this).
pub const MAX_OUTPUT: usize = 64 * 1024;
/// Largest ping payload (echoed in the pong).
pub const MAX_PING: usize = 64;
/// Terminal size bounds accepted by `resize`.
pub const MAX_COLS: u16 = 1000;
pub const MAX_ROWS: u16 = 1000;

pub mod op {
    // client -> daemon
    pub const INPUT: u8 = 0x00;
    pub const RESIZE: u8 = 0x01;
    pub const ACK: u8 = 0x02;
    pub const PING: u8 = 0x03;
    pub const RESUME: u8 = 0x04;
    pub const CLOSE: u8 = 0x05;
    // daemon -> client
    pub const HELLO: u8 = 0x80;
    pub const OUTPUT: u8 = 0x81;
    pub const PONG: u8 = 0x82;
    pub const EXIT: u8 = 0x83;
    pub const GAP: u8 = 0x84;
    pub const ERROR: u8 = 0x85;
}

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Bytes for the terminal's input (keystrokes, pastes).
    Input(Vec<u8>),
    Resize {
        cols: u16,
        rows: u16,
    },
    /// The client has consumed output up to this offset (exclusive).
    Ack(u64),
    Ping(Vec<u8>),
    /// Send output from this offset on (the first byte the client has not seen).
    Resume(u64),
    /// End the session (the shell is hung up and killed).
    Close,
}

/// The session's parameters, sent first on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub session: String,
    pub read_only: bool,
    /// Bytes the daemon sends beyond the highest acknowledged offset.
    pub window: u32,
    /// Capacity of the session's output ring.
    pub buffer: u32,
    /// Largest frame the client may send.
    pub max_frame: u32,
    /// The client should send something (a ping) at least this often.
    pub heartbeat_ms: u32,
    /// Oldest offset still held.
    pub start: u64,
    /// Offset of the next byte the shell writes.
    pub end: u64,
}

/// A frame from the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    Hello(Hello),
    Output {
        offset: u64,
        data: Vec<u8>,
    },
    Pong(Vec<u8>),
    /// The shell ended: its exit code, or 128+N when killed by signal N.
    Exit(i32),
    /// Output in `from..to` is no longer held; output continues at `to`.
    Gap {
        from: u64,
        to: u64,
    },
    Error {
        kind: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty frame")]
    Empty,
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    #[error("frame of {len} bytes exceeds {max}")]
    TooLarge { len: usize, max: usize },
    #[error("opcode 0x{op:02x} needs {want} payload bytes, got {got}")]
    Length { op: u8, want: usize, got: usize },
    #[error("terminal size {cols}x{rows} is outside 1x1..{MAX_COLS}x{MAX_ROWS}")]
    Size { cols: u16, rows: u16 },
    #[error("malformed hello")]
    Hello,
    #[error("malformed error frame")]
    ErrorFrame,
}

impl ProtocolError {
    /// Stable kind for `error` frames.
    pub fn kind(&self) -> &'static str {
        match self {
            ProtocolError::Empty | ProtocolError::Length { .. } => "malformed_frame",
            ProtocolError::UnknownOpcode(_) => "unknown_opcode",
            ProtocolError::TooLarge { .. } => "frame_too_large",
            ProtocolError::Size { .. } => "invalid_size",
            ProtocolError::Hello | ProtocolError::ErrorFrame => "malformed_frame",
        }
    }
}

fn exact<const N: usize>(op: u8, p: &[u8]) -> Result<[u8; N], ProtocolError> {
    p.try_into().map_err(|_| ProtocolError::Length {
        op,
        want: N,
        got: p.len(),
    })
}

impl ClientFrame {
    pub fn decode(frame: &[u8]) -> Result<ClientFrame, ProtocolError> {
        if frame.len() > MAX_CLIENT_FRAME {
            return Err(ProtocolError::TooLarge {
                len: frame.len(),
                max: MAX_CLIENT_FRAME,
            });
        }
        let (&op, p) = frame.split_first().ok_or(ProtocolError::Empty)?;
        match op {
            op::INPUT => Ok(ClientFrame::Input(p.to_vec())),
            op::RESIZE => {
                let b: [u8; 4] = exact(op, p)?;
                let cols = u16::from_be_bytes([b[0], b[1]]);
                let rows = u16::from_be_bytes([b[2], b[3]]);
                if cols == 0 || rows == 0 || cols > MAX_COLS || rows > MAX_ROWS {
                    return Err(ProtocolError::Size { cols, rows });
                }
                Ok(ClientFrame::Resize { cols, rows })
            }
            op::ACK => Ok(ClientFrame::Ack(u64::from_be_bytes(exact(op, p)?))),
            op::PING => {
                if p.len() > MAX_PING {
                    return Err(ProtocolError::TooLarge {
                        len: frame.len(),
                        max: 1 + MAX_PING,
                    });
                }
                Ok(ClientFrame::Ping(p.to_vec()))
            }
            op::RESUME => Ok(ClientFrame::Resume(u64::from_be_bytes(exact(op, p)?))),
            op::CLOSE => {
                exact::<0>(op, p)?;
                Ok(ClientFrame::Close)
            }
            other => Err(ProtocolError::UnknownOpcode(other)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            ClientFrame::Input(d) => [&[op::INPUT][..], d].concat(),
            ClientFrame::Resize { cols, rows } => {
                let mut v = vec![op::RESIZE];
                v.extend_from_slice(&cols.to_be_bytes());
                v.extend_from_slice(&rows.to_be_bytes());
                v
            }
            ClientFrame::Ack(o) => [&[op::ACK][..], &o.to_be_bytes()].concat(),
            ClientFrame::Ping(d) => [&[op::PING][..], d].concat(),
            ClientFrame::Resume(o) => [&[op::RESUME][..], &o.to_be_bytes()].concat(),
            ClientFrame::Close => vec![op::CLOSE],
        }
    }
}

/// Hello's fixed part: version, flags, window, buffer, max_frame, heartbeat, start, end.
const HELLO_FIXED: usize = 1 + 1 + 4 + 4 + 4 + 4 + 8 + 8;

impl ServerFrame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ServerFrame::Hello(h) => {
                let mut v = Vec::with_capacity(1 + HELLO_FIXED + h.session.len());
                v.push(op::HELLO);
                v.push(VERSION);
                v.push(u8::from(h.read_only));
                v.extend_from_slice(&h.window.to_be_bytes());
                v.extend_from_slice(&h.buffer.to_be_bytes());
                v.extend_from_slice(&h.max_frame.to_be_bytes());
                v.extend_from_slice(&h.heartbeat_ms.to_be_bytes());
                v.extend_from_slice(&h.start.to_be_bytes());
                v.extend_from_slice(&h.end.to_be_bytes());
                v.extend_from_slice(h.session.as_bytes());
                v
            }
            ServerFrame::Output { offset, data } => Self::output(*offset, data),
            ServerFrame::Pong(d) => [&[op::PONG][..], d].concat(),
            ServerFrame::Exit(code) => [&[op::EXIT][..], &code.to_be_bytes()].concat(),
            ServerFrame::Gap { from, to } => {
                [&[op::GAP][..], &from.to_be_bytes(), &to.to_be_bytes()].concat()
            }
            ServerFrame::Error { kind, message } => {
                [&[op::ERROR][..], kind.as_bytes(), &[0], message.as_bytes()].concat()
            }
        }
    }

    /// An output frame without building a [`ServerFrame`] first.
    pub fn output(offset: u64, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(9 + data.len());
        v.push(op::OUTPUT);
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    pub fn decode(frame: &[u8]) -> Result<ServerFrame, ProtocolError> {
        let (&op, p) = frame.split_first().ok_or(ProtocolError::Empty)?;
        let u64_at = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().expect("4 bytes"));
        match op {
            op::HELLO => {
                if p.len() < HELLO_FIXED || p[0] != VERSION {
                    return Err(ProtocolError::Hello);
                }
                let session = std::str::from_utf8(&p[HELLO_FIXED..])
                    .map_err(|_| ProtocolError::Hello)?
                    .to_string();
                Ok(ServerFrame::Hello(Hello {
                    session,
                    read_only: p[1] & 1 == 1,
                    window: u32_at(2),
                    buffer: u32_at(6),
                    max_frame: u32_at(10),
                    heartbeat_ms: u32_at(14),
                    start: u64_at(18),
                    end: u64_at(26),
                }))
            }
            op::OUTPUT => {
                if p.len() < 8 {
                    return Err(ProtocolError::Length {
                        op,
                        want: 8,
                        got: p.len(),
                    });
                }
                Ok(ServerFrame::Output {
                    offset: u64_at(0),
                    data: p[8..].to_vec(),
                })
            }
            op::PONG => Ok(ServerFrame::Pong(p.to_vec())),
            op::EXIT => Ok(ServerFrame::Exit(i32::from_be_bytes(exact(op, p)?))),
            op::GAP => {
                let b: [u8; 16] = exact(op, p)?;
                Ok(ServerFrame::Gap {
                    from: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                    to: u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
                })
            }
            op::ERROR => {
                let nul = p
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or(ProtocolError::ErrorFrame)?;
                let kind = std::str::from_utf8(&p[..nul]).map_err(|_| ProtocolError::ErrorFrame)?;
                Ok(ServerFrame::Error {
                    kind: kind.to_string(),
                    message: String::from_utf8_lossy(&p[nul + 1..]).into_owned(),
                })
            }
            other => Err(ProtocolError::UnknownOpcode(other)),
        }
    }
}

/// The last `capacity` bytes of a session's output, numbered by stream offset.
#[derive(Debug, Clone)]
pub struct Ring {
    buf: VecDeque<u8>,
    capacity: usize,
    /// Offset of `buf[0]`.
    start: u64,
}

/// What a reader at some offset gets from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice<'a> {
    /// Set when the reader's offset is older than the ring: `from..to` is lost.
    pub gap: Option<(u64, u64)>,
    /// Offset of `data[0]`.
    pub offset: u64,
    pub data: (&'a [u8], &'a [u8]),
}

impl Slice<'_> {
    pub fn len(&self) -> usize {
        self.data.0.len() + self.data.1.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn to_vec(&self) -> Vec<u8> {
        [self.data.0, self.data.1].concat()
    }
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        Ring {
            buf: VecDeque::with_capacity(capacity.min(64 * 1024)),
            capacity: capacity.max(1),
            start: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Oldest offset held.
    pub fn start(&self) -> u64 {
        self.start
    }
    /// Offset of the next byte pushed.
    pub fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends output, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.capacity {
            let skip = data.len() - self.capacity;
            self.start += (self.buf.len() + skip) as u64;
            self.buf.clear();
            &data[skip..]
        } else {
            data
        };
        let over = (self.buf.len() + data.len()).saturating_sub(self.capacity);
        if over > 0 {
            self.buf.drain(..over);
            self.start += over as u64;
        }
        self.buf.extend(data);
    }

    /// Up to `max` bytes from offset `from` (clamped into the ring; an offset before the
    /// ring reports the gap, one beyond its end reads nothing from the end).
    pub fn read(&self, from: u64, max: usize) -> Slice<'_> {
        let end = self.end();
        let (gap, at) = if from < self.start {
            (Some((from, self.start)), self.start)
        } else {
            (None, from.min(end))
        };
        let skip = (at - self.start) as usize;
        let n = ((end - at) as usize).min(max);
        let (a, b) = self.buf.as_slices();
        let data = if skip >= a.len() {
            let s = skip - a.len();
            (&b[s..s + n], &b[..0])
        } else {
            let first = (a.len() - skip).min(n);
            (&a[skip..skip + first], &b[..n - first])
        };
        Slice {
            gap,
            offset: at,
            data,
        }
    }
}

#[cfg(test)]
mod tests;
