//! TFTP packets as values: decode from bytes, encode to bytes (RFC 1350 with
//! the RFC 2347 option extension: RRQ/WRQ options and OACK).
//!
//! Invariant: pure. No sockets, clocks or files; every input, however short
//! or hostile, gives `Ok` or a [`DecodeError`], never a panic. Option names
//! are lower-cased on decode (RFC 2347 makes them case-insensitive); values
//! are kept as sent and interpreted by `options`.

use std::fmt;

/// The largest DATA payload any negotiation may produce (RFC 2348).
pub const MAX_BLKSIZE: usize = 65464;
/// Payload size without a blksize option (RFC 1350).
pub const DEFAULT_BLKSIZE: usize = 512;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// Transfer mode named in a request. `mail` is obsolete but still decodes so
/// the server can refuse it by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
    Mail,
}

impl Mode {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "octet" => Some(Mode::Octet),
            "netascii" => Some(Mode::Netascii),
            "mail" => Some(Mode::Mail),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
            Mode::Mail => "mail",
        }
    }
}

/// RFC 1350 / 2347 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined,
    FileNotFound,
    AccessViolation,
    DiskFull,
    IllegalOperation,
    UnknownTid,
    FileExists,
    NoSuchUser,
    OptionRefused,
    Other(u16),
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> Self {
        match code {
            0 => Self::NotDefined,
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTid,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionRefused,
            other => Self::Other(other),
        }
    }

    pub fn to_u16(self) -> u16 {
        match self {
            Self::NotDefined => 0,
            Self::FileNotFound => 1,
            Self::AccessViolation => 2,
            Self::DiskFull => 3,
            Self::IllegalOperation => 4,
            Self::UnknownTid => 5,
            Self::FileExists => 6,
            Self::NoSuchUser => 7,
            Self::OptionRefused => 8,
            Self::Other(code) => code,
        }
    }
}

/// A read or write request: file name, mode and options in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    pub mode: Mode,
    /// `(name, value)` pairs; names lower-cased, first occurrence wins.
    pub options: Vec<(String, String)>,
}

/// One TFTP datagram. `Data` borrows its payload from the decoded buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, payload: &'a [u8] },
    Ack(u16),
    Error { code: ErrorCode, message: String },
    Oack(Vec<(String, String)>),
}

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram of {0} bytes is too short for a TFTP packet")]
    TooShort(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("{0} is not terminated by a NUL byte")]
    Unterminated(Field),
    #[error("{0} is not valid UTF-8")]
    NotUtf8(Field),
    #[error("empty file name")]
    EmptyFilename,
    #[error("unknown transfer mode {0:?}")]
    UnknownMode(String),
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
    #[error("DATA payload of {0} bytes exceeds the largest block size")]
    OversizedData(usize),
}

/// The part of a packet a [`DecodeError`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Filename,
    Mode,
    OptionName,
    OptionValue,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Filename => "file name",
            Field::Mode => "mode",
            Field::OptionName => "option name",
            Field::OptionValue => "option value",
        })
    }
}

impl<'a> Packet<'a> {
    /// Decodes one datagram.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        if buf.len() < 2 {
            return Err(DecodeError::TooShort(buf.len()));
        }
        let opcode = u16::from_be_bytes([buf[0], buf[1]]);
        let body = &buf[2..];
        match opcode {
            OP_RRQ => decode_request(body).map(Packet::Rrq),
            OP_WRQ => decode_request(body).map(Packet::Wrq),
            OP_DATA => {
                let block = read_u16(body, buf.len())?;
                let payload = &body[2..];
                if payload.len() > MAX_BLKSIZE {
                    return Err(DecodeError::OversizedData(payload.len()));
                }
                Ok(Packet::Data { block, payload })
            }
            // Trailing bytes after an ACK are tolerated: some ROMs pad.
            OP_ACK => read_u16(body, buf.len()).map(Packet::Ack),
            OP_ERROR => {
                let code = ErrorCode::from_u16(read_u16(body, buf.len())?);
                // A missing terminator is tolerated: the message is only logged.
                let text = &body[2..];
                let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
                let message = String::from_utf8_lossy(&text[..end]).into_owned();
                Ok(Packet::Error { code, message })
            }
            OP_OACK => decode_options(body).map(Packet::Oack),
            other => Err(DecodeError::UnknownOpcode(other)),
        }
    }

    /// Appends the wire form of this packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Packet::Rrq(req) => encode_request(OP_RRQ, req, out),
            Packet::Wrq(req) => encode_request(OP_WRQ, req, out),
            Packet::Data { block, payload } => {
                encode_data_header(*block, out);
                out.extend_from_slice(payload);
            }
            Packet::Ack(block) => {
                out.extend_from_slice(&OP_ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&OP_ERROR.to_be_bytes());
                out.extend_from_slice(&code.to_u16().to_be_bytes());
                put_cstr(out, message);
            }
            Packet::Oack(options) => {
                out.extend_from_slice(&OP_OACK.to_be_bytes());
                put_options(out, options);
            }
        }
    }

    /// The wire form as a fresh vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Appends the 4-byte DATA header, so a sender can copy the payload straight
/// after it without building a [`Packet`].
pub fn encode_data_header(block: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
}

fn read_u16(body: &[u8], total: usize) -> Result<u16, DecodeError> {
    match body {
        [hi, lo, ..] => Ok(u16::from_be_bytes([*hi, *lo])),
        _ => Err(DecodeError::TooShort(total)),
    }
}

/// Splits off one NUL-terminated UTF-8 string.
fn take_cstr(buf: &[u8], field: Field) -> Result<(&str, &[u8]), DecodeError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(DecodeError::Unterminated(field))?;
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| DecodeError::NotUtf8(field))?;
    Ok((text, &buf[end + 1..]))
}

fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    let (filename, rest) = take_cstr(body, Field::Filename)?;
    if filename.is_empty() {
        return Err(DecodeError::EmptyFilename);
    }
    let (mode, rest) = take_cstr(rest, Field::Mode)?;
    let mode = Mode::parse(mode).ok_or_else(|| DecodeError::UnknownMode(mode.to_string()))?;
    let options = decode_options(rest)?;
    Ok(Request {
        filename: filename.to_string(),
        mode,
        options,
    })
}

fn decode_options(mut rest: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
    let mut options: Vec<(String, String)> = Vec::new();
    // Some clients pad requests with NULs: stop at an all-zero tail.
    while !rest.is_empty() && rest.iter().any(|&b| b != 0) {
        let (name, after_name) = take_cstr(rest, Field::OptionName)?;
        if after_name.is_empty() {
            return Err(DecodeError::OptionWithoutValue(name.to_string()));
        }
        let (value, after_value) = take_cstr(after_name, Field::OptionValue)?;
        let name = name.to_ascii_lowercase();
        if !options.iter().any(|(n, _)| *n == name) {
            options.push((name, value.to_string()));
        }
        rest = after_value;
    }
    Ok(options)
}

fn encode_request(opcode: u16, req: &Request, out: &mut Vec<u8>) {
    out.extend_from_slice(&opcode.to_be_bytes());
    put_cstr(out, &req.filename);
    put_cstr(out, req.mode.as_str());
    put_options(out, &req.options);
}

fn put_options(out: &mut Vec<u8>, options: &[(String, String)]) {
    for (name, value) in options {
        put_cstr(out, name);
        put_cstr(out, value);
    }
}

/// Writes `s` and a NUL; an embedded NUL would corrupt the packet, so the
/// string is cut there.
fn put_cstr(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    out.extend_from_slice(&bytes[..end]);
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn decodes_plain_rrq() {
        let bytes = b"\x00\x01undionly.kpxe\x00octet\x00";
        let expected = Request {
            filename: "undionly.kpxe".into(),
            mode: Mode::Octet,
            options: vec![],
        };
        assert_eq!(Packet::decode(bytes), Ok(Packet::Rrq(expected)));
    }

    #[test]
    fn decodes_rrq_with_options_case_insensitively() {
        // As sent by iPXE / EDK2: mixed case mode and option names.
        let bytes =
            b"\x00\x01ipxe.efi\x00OCTET\x00BLKSIZE\x001468\x00tsize\x000\x00windowsize\x004\x00";
        let Ok(Packet::Rrq(req)) = Packet::decode(bytes) else {
            panic!("not an RRQ")
        };
        assert_eq!(req.mode, Mode::Octet);
        assert_eq!(
            req.options,
            opts(&[("blksize", "1468"), ("tsize", "0"), ("windowsize", "4")])
        );
    }

    #[test]
    fn rrq_tolerates_nul_padding_and_keeps_first_duplicate() {
        let bytes = b"\x00\x01f\x00octet\x00blksize\x00512\x00BlkSize\x001024\x00\x00\x00\x00";
        let Ok(Packet::Rrq(req)) = Packet::decode(bytes) else {
            panic!("not an RRQ")
        };
        assert_eq!(req.options, opts(&[("blksize", "512")]));
    }

    #[test]
    fn decodes_wrq_and_netascii() {
        let bytes = b"\x00\x02up.bin\x00netascii\x00";
        let Ok(Packet::Wrq(req)) = Packet::decode(bytes) else {
            panic!("not a WRQ")
        };
        assert_eq!(req.mode, Mode::Netascii);
    }

    #[test]
    fn decodes_data_ack_error_oack() {
        assert_eq!(
            Packet::decode(b"\x00\x03\x12\x34abc"),
            Ok(Packet::Data {
                block: 0x1234,
                payload: b"abc"
            })
        );
        assert_eq!(
            Packet::decode(b"\x00\x03\xff\xff"),
            Ok(Packet::Data {
                block: 0xffff,
                payload: b""
            })
        );
        assert_eq!(Packet::decode(b"\x00\x04\x00\x07"), Ok(Packet::Ack(7)));
        assert_eq!(Packet::decode(b"\x00\x04\x00\x07\x00"), Ok(Packet::Ack(7)));
        assert_eq!(
            Packet::decode(b"\x00\x05\x00\x08tsize probe\x00"),
            Ok(Packet::Error {
                code: ErrorCode::OptionRefused,
                message: "tsize probe".into()
            })
        );
        assert_eq!(
            Packet::decode(b"\x00\x05\x00\x01gone"),
            Ok(Packet::Error {
                code: ErrorCode::FileNotFound,
                message: "gone".into()
            })
        );
        assert_eq!(
            Packet::decode(b"\x00\x06blksize\x001468\x00tsize\x0042\x00"),
            Ok(Packet::Oack(opts(&[("blksize", "1468"), ("tsize", "42")])))
        );
    }

    #[test]
    fn encodes_to_exact_bytes() {
        let table: Vec<(Packet, &[u8])> = vec![
            (Packet::Ack(0x0102), b"\x00\x04\x01\x02"),
            (
                Packet::Data {
                    block: 1,
                    payload: b"hi",
                },
                b"\x00\x03\x00\x01hi",
            ),
            (
                Packet::Error {
                    code: ErrorCode::FileNotFound,
                    message: "file not found".into(),
                },
                b"\x00\x05\x00\x01file not found\x00",
            ),
            (
                Packet::Oack(opts(&[("blksize", "1468"), ("tsize", "1234")])),
                b"\x00\x06blksize\x001468\x00tsize\x001234\x00",
            ),
            (
                Packet::Rrq(Request {
                    filename: "a/b".into(),
                    mode: Mode::Octet,
                    options: opts(&[("windowsize", "8")]),
                }),
                b"\x00\x01a/b\x00octet\x00windowsize\x008\x00",
            ),
        ];
        for (packet, bytes) in table {
            assert_eq!(packet.to_bytes(), bytes, "{packet:?}");
            assert_eq!(Packet::decode(bytes).as_ref(), Ok(&packet));
        }
    }

    #[test]
    fn encode_cuts_embedded_nul() {
        let packet = Packet::Error {
            code: ErrorCode::NotDefined,
            message: "a\0b".into(),
        };
        assert_eq!(packet.to_bytes(), b"\x00\x05\x00\x00a\x00");
    }

    #[test]
    fn rejects_truncated_and_garbage() {
        use DecodeError::*;
        let table: &[(&[u8], DecodeError)] = &[
            (b"", TooShort(0)),
            (b"\x00", TooShort(1)),
            (b"\x00\x04\x00", TooShort(3)),
            (b"\x00\x03\x01", TooShort(3)),
            (b"\x00\x05", TooShort(2)),
            (b"\x00\x07abc", UnknownOpcode(7)),
            (b"\xff\xff", UnknownOpcode(0xffff)),
            (b"\x00\x00", UnknownOpcode(0)),
            (b"\x00\x01", Unterminated(Field::Filename)),
            (b"\x00\x01file", Unterminated(Field::Filename)),
            (b"\x00\x01file\x00", Unterminated(Field::Mode)),
            (b"\x00\x01file\x00octet", Unterminated(Field::Mode)),
            (b"\x00\x01\x00octet\x00", EmptyFilename),
            (b"\x00\x01f\xff\x00octet\x00", NotUtf8(Field::Filename)),
            (b"\x00\x01f\x00bin\x00", UnknownMode("bin".into())),
            (
                b"\x00\x01f\x00octet\x00blksize",
                Unterminated(Field::OptionName),
            ),
            (
                b"\x00\x01f\x00octet\x00blksize\x00",
                OptionWithoutValue("blksize".into()),
            ),
            (
                b"\x00\x01f\x00octet\x00blksize\x00512",
                Unterminated(Field::OptionValue),
            ),
            (b"\x00\x06tsize\x00", OptionWithoutValue("tsize".into())),
        ];
        for (bytes, err) in table {
            assert_eq!(Packet::decode(bytes).as_ref(), Err(err), "{bytes:?}");
        }
        let huge = [&[0u8, 3, 0, 1][..], &vec![0u8; MAX_BLKSIZE + 1]].concat();
        assert_eq!(Packet::decode(&huge), Err(OversizedData(MAX_BLKSIZE + 1)));
    }

    #[test]
    fn never_panics_on_pseudo_random_input() {
        // Deterministic xorshift so failures reproduce; biased towards small
        // opcodes and NULs so the request paths get exercised too.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    0 => 0,
                    1 => b'o',
                    _ => next() as u8,
                })
                .collect();
            if len >= 2 {
                bytes[0] = 0;
                bytes[1] = (next() % 8) as u8;
            }
            let _ = Packet::decode(&bytes);
        }
    }
}
