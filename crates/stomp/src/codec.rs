//! The STOMP wire format: [`Frame`]s, a streaming decoder and an encoder. Pure: no I/O, no
//! session state.
//!
//! [`Decoder::decode`] looks at the read buffer and either finds one whole frame (splitting it
//! off), says more bytes are needed (`Ok(None)`), or names what is wrong. End-of-line bytes
//! between frames are heart-beats and are skipped. A body ends at `content-length` bytes when
//! the header is present (so it may contain NUL bytes), otherwise at the first NUL. Header
//! values are unescaped as the negotiated version says (1.1: `\n`, `\c`, `\\`; 1.2 adds `\r`;
//! 1.0 and CONNECT frames: none). Limits on the header block and the body are checked before
//! the bytes are buffered whole, so an oversized frame is refused early.

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A STOMP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// STOMP 1.0.
    V1_0,
    /// STOMP 1.1.
    V1_1,
    /// STOMP 1.2.
    V1_2,
}

impl Version {
    /// The version's name in `accept-version` and `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// The highest version both sides support, from a client's `accept-version` header
    /// (absent: 1.0).
    pub fn negotiate(accept_version: Option<&str>) -> Option<Version> {
        let Some(accepted) = accept_version else {
            return Some(Version::V1_0);
        };
        accepted
            .split(',')
            .filter_map(|v| match v.trim() {
                "1.0" => Some(Version::V1_0),
                "1.1" => Some(Version::V1_1),
                "1.2" => Some(Version::V1_2),
                _ => None,
            })
            .max()
    }
}

/// One STOMP frame: command, headers in order, body. The command and header names the broker
/// writes are `&'static str`s, borrowed: a MESSAGE allocates only its header values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// The command (`SEND`, `MESSAGE`, ...).
    pub command: Cow<'static, str>,
    /// Headers in the order they came; a repeated header's first value is the one that counts.
    pub headers: Vec<(Cow<'static, str>, String)>,
    /// The body.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: impl Into<Cow<'static, str>>) -> Self {
        Self {
            command: command.into(),
            ..Default::default()
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The boolean header `name`: `true` or `false` in any case (stomp.py writes Python's
    /// `True` and `False`, which RabbitMQ reads too); None when absent or anything else.
    pub fn flag(&self, name: &str) -> Option<bool> {
        match self.get(name)? {
            value if value.eq_ignore_ascii_case("true") => Some(true),
            value if value.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }
    }
}

/// Why a frame could not be decoded. The connection answers with an ERROR frame and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header block or the body is larger than allowed.
    #[error("frame too large: {0}")]
    TooLarge(&'static str),
    /// A header line has no colon, the command line is empty, or similar.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// An escape sequence the version does not define.
    #[error("invalid header escape sequence")]
    BadEscape,
    /// Header text that is not UTF-8.
    #[error("header is not valid UTF-8")]
    BadUtf8,
    /// `content-length` is not a number.
    #[error("invalid content-length")]
    BadContentLength,
    /// The body announced by `content-length` is not followed by a NUL.
    #[error("frame body not terminated by NUL")]
    MissingNul,
}

/// The most a frame's header block may take before the client has logged in.
pub const PRE_LOGIN_HEADER_BYTES: usize = 60 * 1024;
/// The most a frame's body may take before the client has logged in (CONNECT has no body).
pub const PRE_LOGIN_BODY_BYTES: usize = 4 * 1024;

/// Decoding limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest header block (command line and headers), in bytes.
    pub max_header_bytes: usize,
    /// The most headers in one frame.
    pub max_headers: usize,
    /// The largest body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 1000,
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// The limits before login: a stranger's frame (header block and body together) takes
    /// at most 64 KiB, whatever the limits after login are.
    pub fn pre_login(self) -> Self {
        Self {
            max_header_bytes: self.max_header_bytes.min(PRE_LOGIN_HEADER_BYTES),
            max_headers: self.max_headers,
            max_body_bytes: self.max_body_bytes.min(PRE_LOGIN_BODY_BYTES),
        }
    }

    /// The most bytes one frame can take on the wire: header block, blank line, body, NUL.
    pub fn max_frame_bytes(self) -> usize {
        self.max_header_bytes
            .saturating_add(self.max_body_bytes)
            .saturating_add(4)
    }
}

/// Splits frames off a read buffer.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// The limits it enforces.
    pub limits: Limits,
    /// How header values are unescaped (None before CONNECT: no unescaping).
    pub version: Option<Version>,
}

impl Decoder {
    /// A decoder for a connection that has not negotiated a version yet.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            version: None,
        }
    }

    /// Finds one whole frame at the start of `buffer` (after any heart-beat EOLs, and stray
    /// NULs, which RabbitMQ skips too), splits it off and decodes it. `Ok(None)`: more bytes
    /// are needed.
    pub fn decode(&self, buffer: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let leading = buffer.iter().take_while(|b| is_between_frames(**b)).count();
        buffer.advance(leading);
        if buffer.is_empty() {
            return Ok(None);
        }
        let Some(header_end) = find_blank_line(buffer) else {
            // A header block of the largest size may be followed by the first bytes of its
            // blank line (`\n`, `\n\r`) while the rest is still on its way.
            if buffer.len() > self.limits.max_header_bytes.saturating_add(2) {
                return Err(DecodeError::TooLarge("header block"));
            }
            return Ok(None);
        };
        if header_end.start > self.limits.max_header_bytes {
            return Err(DecodeError::TooLarge("header block"));
        }
        let head =
            std::str::from_utf8(&buffer[..header_end.start]).map_err(|_| DecodeError::BadUtf8)?;
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let command = lines.next().unwrap_or_default().to_owned();
        if command.is_empty() {
            return Err(DecodeError::Malformed("empty command line"));
        }
        let escaping = match command.as_str() {
            "CONNECT" | "STOMP" | "CONNECTED" => None,
            _ => self.version.filter(|v| *v != Version::V1_0),
        };
        let mut headers = Vec::new();
        for line in lines {
            if headers.len() == self.limits.max_headers {
                return Err(DecodeError::TooLarge("too many headers"));
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(DecodeError::Malformed("header line without ':'"));
            };
            let (name, value) = match escaping {
                Some(version) => (unescape(name, version)?, unescape(value, version)?),
                None => (name.to_owned(), value.to_owned()),
            };
            headers.push((Cow::Owned(name), value));
        }
        let body_start = header_end.end;
        let content_length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.trim().parse::<usize>())
            .transpose()
            .map_err(|_| DecodeError::BadContentLength)?;
        let body_end = match content_length {
            Some(length) => {
                if length > self.limits.max_body_bytes {
                    return Err(DecodeError::TooLarge("body"));
                }
                let end = body_start + length;
                match buffer.get(end) {
                    None => return Ok(None),
                    Some(0) => end,
                    Some(_) => return Err(DecodeError::MissingNul),
                }
            }
            None => match memchr::memchr(0, &buffer[body_start..]) {
                Some(offset) if offset > self.limits.max_body_bytes => {
                    return Err(DecodeError::TooLarge("body"));
                }
                Some(offset) => body_start + offset,
                None => {
                    if buffer.len() - body_start > self.limits.max_body_bytes {
                        return Err(DecodeError::TooLarge("body"));
                    }
                    return Ok(None);
                }
            },
        };
        let mut frame_bytes = buffer.split_to(body_end + 1);
        frame_bytes.advance(body_start);
        frame_bytes.truncate(body_end - body_start);
        Ok(Some(Frame {
            command: command.into(),
            headers,
            body: frame_bytes.freeze(),
        }))
    }
}

/// Where the header block ends: the blank line's start and the first body byte.
struct HeaderEnd {
    start: usize,
    end: usize,
}

fn find_blank_line(buffer: &[u8]) -> Option<HeaderEnd> {
    let mut from = 0;
    while let Some(offset) = memchr::memchr(b'\n', &buffer[from..]) {
        let newline = from + offset;
        match buffer.get(newline + 1) {
            Some(b'\n') => {
                return Some(HeaderEnd {
                    start: newline,
                    end: newline + 2,
                });
            }
            Some(b'\r') if buffer.get(newline + 2) == Some(&b'\n') => {
                return Some(HeaderEnd {
                    start: newline,
                    end: newline + 3,
                });
            }
            Some(b'\r') if newline + 2 >= buffer.len() => return None,
            None => return None,
            _ => from = newline + 1,
        }
    }
    None
}

fn unescape(text: &str, version: Version) -> Result<String, DecodeError> {
    if !text.contains('\\') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            Some('r') if version == Version::V1_2 => out.push('\r'),
            _ => return Err(DecodeError::BadEscape),
        }
    }
    Ok(out)
}

fn escape_into(out: &mut BytesMut, text: &str, version: Option<Version>) {
    // Most values need no escaping: copy them whole.
    if !text
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b'\n' | b'\r' | b':' | b'\\'))
    {
        out.put_slice(text.as_bytes());
        return;
    }
    match version {
        Some(Version::V1_1) | Some(Version::V1_2) => {
            for c in text.chars() {
                match c {
                    '\n' => out.put_slice(b"\\n"),
                    ':' => out.put_slice(b"\\c"),
                    '\\' => out.put_slice(b"\\\\"),
                    '\r' if version == Some(Version::V1_2) => out.put_slice(b"\\r"),
                    other => {
                        let mut utf8 = [0u8; 4];
                        out.put_slice(other.encode_utf8(&mut utf8).as_bytes());
                    }
                }
            }
        }
        // STOMP 1.0 has no escaping: a newline would end the header, so it is dropped.
        _ => {
            for piece in text.split(['\n', '\r']) {
                out.put_slice(piece.as_bytes());
            }
        }
    }
}

/// Appends `frame`'s encoding to `out`, escaping headers for `version` (None: no escaping,
/// as for CONNECTED). A `content-length` header is added when the frame has a body and none.
pub fn encode(frame: &Frame, version: Option<Version>, out: &mut BytesMut) {
    out.reserve(frame.command.len() + frame.body.len() + 64);
    out.put_slice(frame.command.as_bytes());
    out.put_u8(b'\n');
    let escaping = match frame.command.as_ref() {
        "CONNECTED" | "CONNECT" | "STOMP" => None,
        _ => version,
    };
    for (name, value) in &frame.headers {
        escape_into(out, name, escaping);
        out.put_u8(b':');
        escape_into(out, value, escaping);
        out.put_u8(b'\n');
    }
    if !frame.body.is_empty() && frame.get("content-length").is_none() {
        out.put_slice(b"content-length:");
        out.put_slice(frame.body.len().to_string().as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.put_slice(&frame.body);
    out.put_u8(0);
}

/// Whether `byte` may come between frames: a heart-beat's EOL, or a stray NUL.
pub(crate) fn is_between_frames(byte: u8) -> bool {
    matches!(byte, b'\n' | b'\r' | b'\0')
}

#[cfg(test)]
mod tests;
