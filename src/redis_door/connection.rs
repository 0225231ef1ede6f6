//! One Redis connection's socket: reading whole commands (RESP, or inline lines), writing
//! the replies in order, the bounds on what a client may hold (a command's size, the time to
//! complete it), and closing with a lingering close so an error reaches the client.

use super::*;

/// Largest command the door buffers at least (a SET of a 1 MiB value fits, with its key); a
/// node with larger `max_value_bytes` buffers that and its key more (`command_limit`).
const MIN_COMMAND_BYTES: usize = 2 << 20;

/// The largest command the door buffers for a node of these limits: a SET of the largest
/// value and key, with room for the framing.
pub(super) fn command_limit(max_key_bytes: usize, max_value_bytes: usize) -> usize {
    (max_key_bytes + max_value_bytes + (64 << 10)).max(MIN_COMMAND_BYTES)
}

/// The longest inline command (a line of words, as `nc` or `telnet` send; Redis's own bound).
const MAX_INLINE_BYTES: usize = 64 * 1024;

/// Refused connections whose close lingers at once (each on a short thread of its own, for
/// `LINGER_TIMEOUT` at most); past this a refusal closes at once.
const MAX_LINGERING_REFUSALS: usize = 16;

/// Refuses a connection past `max_connections` as Redis does ("max number of clients
/// reached"), and closes it lingering (on a short thread, `MAX_LINGERING_REFUSALS` at once), so
/// a command the client sent meanwhile does not reset the stream before it reads why.
pub(super) fn refuse(mut stream: TcpStream, max_connections: usize, lingering: &Arc<AtomicUsize>) {
    let refusal = OwnedFrame::Error(format!(
        "ERR max number of clients reached ({max_connections}: [redis] max_connections)"
    ));
    if stream.write_all(&encoded(&refusal)).is_err() {
        return;
    }
    if lingering.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING_REFUSALS {
        lingering.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let count = Arc::clone(lingering);
    let spawned = std::thread::Builder::new()
        .name("redis-refused".into())
        .spawn(move || {
            linger(&mut stream);
            count.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        lingering.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The intake's lingering close (`stages/src/intake/linger.rs`) on the door's blocking
/// socket, after a protocol error was answered: shut for writing, then read and throw away
/// what the client still sends (a command over the limit, say) until it closes, for at most
/// `LINGER_TIMEOUT` or `LINGER_MAX_BYTES`. Dropping the socket with that input unread would
/// reset the stream, and the reset fails the client's send before it reads the error.
pub(super) fn linger(stream: &mut TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let until = Instant::now() + LINGER_TIMEOUT;
    let mut chunk = vec![0u8; 16 * 1024];
    let mut discarded = 0;
    while discarded <= LINGER_MAX_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectionEnd {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the client quit")]
    Quit,
}

/// One Redis connection: commands in, replies out, in order. A command begun and not
/// completed within `frame_timeout` is refused and the connection closed (a client that sent
/// half a command, or a bulk length it never fills, held a thread and a slot for ever).
pub(super) fn serve(
    stream: &mut TcpStream,
    mut door: Door,
    limits: ConnectionLimits,
) -> Result<(), ConnectionEnd> {
    stream.set_nodelay(true)?;
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut begun: Option<Instant> = None;
    let mut timeout_set = false;
    loop {
        // Every whole command buffered is answered before reading more (pipelining).
        let mut out = Vec::new();
        loop {
            match next_command(&buffer) {
                Ok(Some((frame, used))) => {
                    buffer.drain(..used);
                    // Completed: what is left is another command, timed from now on.
                    begun = None;
                    if matches!(&frame, OwnedFrame::Array(words) if words.is_empty()) {
                        continue; // an empty line: Redis answers nothing
                    }
                    let (reply, quit) = door.command(frame);
                    out.extend_from_slice(&encoded(&reply));
                    if quit {
                        stream.write_all(&out)?;
                        return Err(ConnectionEnd::Quit);
                    }
                }
                Ok(None) => break,
                Err(e) => return end_with_protocol_error(stream, out, e),
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
        }
        if buffer.len() > limits.command_bytes {
            let error = format!("a command over {} bytes", limits.command_bytes);
            return end_with_protocol_error(stream, Vec::new(), error);
        }
        // Timed from when the replies before it were written (a slow node's answers are not
        // the client's delay), or from when the part of it that is here arrived.
        let wait = if buffer.is_empty() {
            begun = None;
            None
        } else {
            let since = *begun.get_or_insert_with(Instant::now);
            Some(limits.frame_timeout.saturating_sub(since.elapsed()))
        };
        // `None`: the wait for the rest of a command ran out.
        let read = match wait {
            Some(left) if left.is_zero() => None,
            _ => {
                // Set only when it changes: a request-reply client waits with none, and a
                // system call per read would cost the hot path.
                if wait.is_some() || timeout_set {
                    stream.set_read_timeout(wait)?;
                    timeout_set = wait.is_some();
                }
                match stream.read(&mut chunk) {
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        None
                    }
                    other => Some(other?),
                }
            }
        };
        let Some(read) = read else {
            if begun.is_some_and(|since| since.elapsed() >= limits.frame_timeout) {
                let error = format!(
                    "a command begun and not completed within {} ms ([limits] frame_timeout_ms)",
                    limits.frame_timeout.as_millis()
                );
                return end_with_protocol_error(stream, Vec::new(), error);
            }
            continue;
        };
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Writes `out` (the replies owed before it) and then the protocol error `error`, and ends
/// the connection (the caller closes it lingering).
fn end_with_protocol_error(
    stream: &mut TcpStream,
    mut out: Vec<u8>,
    error: String,
) -> Result<(), ConnectionEnd> {
    let reply = OwnedFrame::Error(format!("ERR Protocol error: {error}"));
    out.extend_from_slice(&encoded(&reply));
    stream.write_all(&out)?;
    Err(ConnectionEnd::Protocol(error))
}

/// What one connection may hold.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConnectionLimits {
    /// A command begun and not completed in this time is refused (`[limits] frame_timeout_ms`).
    pub frame_timeout: Duration,
    /// The largest command buffered ([`command_limit`]).
    pub command_bytes: usize,
}

/// The next whole command in `buffer` and the bytes it takes: RESP (an array of bulk
/// strings, what clients send), or an inline command (a line of words, what `nc` or
/// `telnet` send, which Redis accepts too); `None` until one is whole.
fn next_command(buffer: &[u8]) -> Result<Option<(OwnedFrame, usize)>, String> {
    match buffer.first() {
        None => Ok(None),
        Some(b'*' | b'$' | b'+' | b'-' | b':') => decode(buffer).map_err(|e| e.to_string()),
        Some(_) => {
            let Some(end) = buffer.iter().position(|&b| b == b'\n') else {
                if buffer.len() > MAX_INLINE_BYTES {
                    return Err(format!("an inline command over {MAX_INLINE_BYTES} bytes"));
                }
                return Ok(None);
            };
            let words = buffer[..end]
                .split(|b| b.is_ascii_whitespace())
                .filter(|word| !word.is_empty())
                .map(|word| OwnedFrame::BulkString(word.to_vec()))
                .collect();
            Ok(Some((OwnedFrame::Array(words), end + 1)))
        }
    }
}

fn encoded(frame: &OwnedFrame) -> Vec<u8> {
    let mut bytes = vec![0; frame.encode_len(false)];
    match encode(&mut bytes, frame, false) {
        Ok(written) => {
            bytes.truncate(written);
            bytes
        }
        Err(_) => b"-ERR encoding the reply failed\r\n".to_vec(),
    }
}
