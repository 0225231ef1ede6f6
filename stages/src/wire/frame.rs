//! Frames: the unit on every shoal socket.
//!
//! Layout (big-endian): `length: u32 | kind: u16 | request_id: u64 | body`, where `length` counts
//! every byte after itself (so it is at least [`FRAME_OVERHEAD_BYTES`]). `kind` names the
//! message type and `request_id` pairs a reply with its request; both sit outside the
//! MessagePack body so that a node can answer a frame whose body it cannot decode with an error
//! that names the request.
//!
//! Check, then parse: [`FrameDecoder`] validates the declared length against the maximum as soon
//! as the four length bytes have arrived, before it buffers or allocates for the frame, so a
//! header claiming 4 GiB costs nothing. A partial frame is the normal `Ok(None)`, not an error.

use std::fmt;

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;
/// Bytes after the length prefix that every frame has: kind (2) and request id (8).
pub const FRAME_OVERHEAD_BYTES: usize = 2 + 8;
/// A decoder keeps a buffer up to this size between frames; a larger one (left by a large
/// frame) is released once drained.
const KEEP_BUFFER_BYTES: usize = 256 * 1024;

/// One frame, header decoded, body still MessagePack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Message type (see `message::kind`).
    pub kind: u16,
    /// Chosen by the sender of a request, echoed in its reply.
    pub request_id: u64,
    /// The MessagePack-encoded message.
    pub body: Vec<u8>,
}

/// Why a byte stream cannot be split into frames. Both are fatal for the connection: once a
/// length is wrong, nothing after it can be trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header declares more bytes than the configured maximum.
    #[error("frame of {declared} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Length the header declared.
        declared: u64,
        /// Configured maximum.
        max: u64,
    },
    /// The header declares fewer bytes than the fixed kind and request id need.
    #[error("frame of {declared} bytes is shorter than the {min}-byte header")]
    TooShort {
        /// Length the header declared.
        declared: u64,
        /// Minimum length of any frame.
        min: u64,
    },
}

/// Appends a frame's header to `out` with its length left blank, so that its body can be
/// serialized straight behind it and [`finish_frame`] fill the length in; where it starts.
pub fn start_frame(kind: u16, request_id: u64, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&request_id.to_be_bytes());
    start
}

/// Fills in the length of the frame [`start_frame`] began at `start`: everything appended
/// since is its body. `Err` with the body's size if the length field cannot count it (the
/// length is left blank).
pub fn finish_frame(out: &mut [u8], start: usize) -> Result<(), usize> {
    let length = out.len() - start - LENGTH_BYTES;
    let Ok(field) = u32::try_from(length) else {
        return Err(length - FRAME_OVERHEAD_BYTES);
    };
    out[start..start + LENGTH_BYTES].copy_from_slice(&field.to_be_bytes());
    Ok(())
}

/// Encodes a frame into a fresh buffer.
pub fn encode_frame(kind: u16, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LENGTH_BYTES + FRAME_OVERHEAD_BYTES + body.len());
    let start = start_frame(kind, request_id, &mut out);
    out.extend_from_slice(body);
    let fits = finish_frame(&mut out, start);
    debug_assert!(fits.is_ok());
    out
}

/// The kind and request id in the header of an encoded frame (`None` when it is too short to
/// have them): for a caller that holds a frame on its way out and needs only those.
pub fn encoded_header(frame: &[u8]) -> Option<(u16, u64)> {
    let header = frame.get(LENGTH_BYTES..LENGTH_BYTES + FRAME_OVERHEAD_BYTES)?;
    let (kind, id) = header.split_at(2);
    Some((
        u16::from_be_bytes(kind.try_into().ok()?),
        u64::from_be_bytes(id.try_into().ok()?),
    ))
}

/// Incremental splitter of a byte stream into frames. Bytes are appended as they arrive; the
/// buffer never holds more than one maximal frame plus one read's worth of bytes, because the
/// length is checked the moment it is readable and the caller drains frames after every read.
pub struct FrameDecoder {
    /// Bytes received and not yet returned as frames; `start` marks the first unconsumed one.
    buffer: Vec<u8>,
    start: usize,
    /// Largest `length` field accepted.
    max_frame_bytes: usize,
}

impl FrameDecoder {
    /// A decoder that rejects frames longer than `max_frame_bytes` (counted after the prefix).
    pub fn new(max_frame_bytes: usize) -> FrameDecoder {
        FrameDecoder {
            buffer: Vec::new(),
            start: 0,
            max_frame_bytes,
        }
    }

    /// Accepts frames up to `max_frame_bytes` from now on (a connection proven to be a peer's,
    /// whose answers may carry a key's versions past a client's frame limit).
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.compact();
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet consumed.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// Moves unconsumed bytes to the front once the consumed prefix is large, so the buffer
    /// does not grow with the stream.
    fn compact(&mut self) {
        if self.start > 0 && (self.start >= self.buffer.len() / 2 || self.start > 64 * 1024) {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the error that makes
    /// the rest of the stream unreadable.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let available = &self.buffer[self.start..];
        let Some(prefix) = available.first_chunk::<LENGTH_BYTES>() else {
            return Ok(None);
        };
        let declared = u32::from_be_bytes(*prefix) as usize;
        if declared > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                declared: declared as u64,
                max: self.max_frame_bytes as u64,
            });
        }
        if declared < FRAME_OVERHEAD_BYTES {
            return Err(FrameError::TooShort {
                declared: declared as u64,
                min: FRAME_OVERHEAD_BYTES as u64,
            });
        }
        if available.len() < LENGTH_BYTES + declared {
            return Ok(None);
        }
        let frame_bytes = &available[LENGTH_BYTES..LENGTH_BYTES + declared];
        let kind = u16::from_be_bytes([frame_bytes[0], frame_bytes[1]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&frame_bytes[2..FRAME_OVERHEAD_BYTES]);
        let frame = Frame {
            kind,
            request_id: u64::from_be_bytes(id),
            body: frame_bytes[FRAME_OVERHEAD_BYTES..].to_vec(),
        };
        self.start += LENGTH_BYTES + declared;
        if self.start == self.buffer.len() {
            // Release a buffer that a large frame grew, so idle connections stay small.
            if self.buffer.capacity() > KEEP_BUFFER_BYTES {
                self.buffer = Vec::new();
            } else {
                self.buffer.clear();
            }
            self.start = 0;
        }
        Ok(Some(frame))
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frame kind {} id {} ({} B)",
            self.kind,
            self.request_id,
            self.body.len()
        )
    }
}
