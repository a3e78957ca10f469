//! The NBD protocol's fixed newstyle handshake and transmission phase, as
//! pure values: what the server sends and how a client's bytes read. The
//! numbers are the protocol's (`doc/proto.md` of the NBD project).

/// `NBDMAGIC`: the first eight bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: after it, and before each client option.
pub const OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Before each option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Before each transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Before each simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags: fixed newstyle, and the 124 zero bytes after
/// `NBD_OPT_EXPORT_NAME`'s answer may be left out.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Transmission flags: the export is read-only and may be read over
/// several connections at once.
pub const TX_HAS_FLAGS: u16 = 1 << 0;
pub const TX_READ_ONLY: u16 = 1 << 1;
pub const TX_SEND_FLUSH: u16 = 1 << 2;
pub const TX_CAN_MULTI_CONN: u16 = 1 << 8;
/// What every export is.
pub const EXPORT_FLAGS: u16 = TX_HAS_FLAGS | TX_READ_ONLY | TX_SEND_FLUSH | TX_CAN_MULTI_CONN;

/// Options a client may send.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

/// `NBD_REP_INFO` payloads.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Request types.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;

/// Errors in replies (errno values, as the protocol fixes them).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const EOVERFLOW: u32 = 75;

/// The largest read served at once (what the block-size info announces).
pub const MAX_READ: u32 = 32 << 20;
/// The preferred block size announced (a page; dm-verity reads 4 KiB).
pub const PREFERRED_BLOCK: u32 = 4096;

/// The server's first 18 bytes.
pub fn greeting() -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&OPTS_MAGIC.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// An option reply.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend(REPLY_MAGIC.to_be_bytes());
    out.extend(option.to_be_bytes());
    out.extend(kind.to_be_bytes());
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(data);
    out
}

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub fn info_export(size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend(INFO_EXPORT.to_be_bytes());
    out.extend(size.to_be_bytes());
    out.extend(EXPORT_FLAGS.to_be_bytes());
    out
}

/// `NBD_INFO_BLOCK_SIZE`: any byte is readable, a page preferred.
pub fn info_block_size() -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend(INFO_BLOCK_SIZE.to_be_bytes());
    out.extend(1u32.to_be_bytes());
    out.extend(PREFERRED_BLOCK.to_be_bytes());
    out.extend(MAX_READ.to_be_bytes());
    out
}

/// The export name in an `NBD_OPT_INFO`/`NBD_OPT_GO` payload (a length,
/// the name, then the requested infos, which this server answers all of
/// anyway). `None`: a malformed payload.
pub fn go_name(data: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(len)?)?;
    let rest = &data[4 + len..];
    let n = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    (rest.len() == 2 + 2 * n).then_some(name)
}

/// A transmission request (its 28-byte header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// `None`: not a request (wrong magic).
    pub fn parse(b: &[u8; 28]) -> Option<Self> {
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        (u32_at(0) == REQUEST_MAGIC).then(|| Request {
            flags: u16_at(4),
            kind: u16_at(6),
            handle: u64_at(8),
            offset: u64_at(16),
            length: u32_at(24),
        })
    }

    /// What is wrong with a read of an export of `size` bytes, as an errno.
    pub fn read_error(&self, size: u64) -> Option<u32> {
        if self.length > MAX_READ {
            return Some(EOVERFLOW);
        }
        match self.offset.checked_add(u64::from(self.length)) {
            Some(end) if end <= size => None,
            _ => Some(EINVAL),
        }
    }
}

/// A simple reply's header (the data of a read follows it).
pub fn simple_reply(error: u32, handle: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&handle.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_and_replies_have_the_protocols_bytes() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
        let r = option_reply(OPT_GO, REP_ACK, &[]);
        assert_eq!(r.len(), 20);
        assert_eq!(&r[8..12], &7u32.to_be_bytes());
        assert_eq!(info_export(1 << 30).len(), 12);
        assert_eq!(info_block_size().len(), 14);
    }

    #[test]
    fn go_payloads_and_requests_are_read_strictly() {
        let mut go = 3u32.to_be_bytes().to_vec();
        go.extend(b"abc");
        go.extend(1u16.to_be_bytes());
        go.extend(INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(go_name(&go), Some(&b"abc"[..]));
        assert_eq!(go_name(&go[..go.len() - 1]), None, "truncated info list");
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend(b"abc");
        assert_eq!(go_name(&huge), None, "a name longer than the payload");

        let mut req = [0u8; 28];
        req[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req[6..8].copy_from_slice(&CMD_READ.to_be_bytes());
        req[8..16].copy_from_slice(&9u64.to_be_bytes());
        req[16..24].copy_from_slice(&4096u64.to_be_bytes());
        req[24..28].copy_from_slice(&4096u32.to_be_bytes());
        let r = Request::parse(&req).unwrap();
        assert_eq!(
            (r.kind, r.handle, r.offset, r.length),
            (CMD_READ, 9, 4096, 4096)
        );
        assert_eq!(r.read_error(8192), None);
        assert_eq!(r.read_error(8191), Some(EINVAL), "past the end");
        let over = Request {
            offset: u64::MAX,
            ..r
        };
        assert_eq!(
            over.read_error(u64::MAX),
            Some(EINVAL),
            "offset + length overflows"
        );
        let big = Request {
            length: MAX_READ + 1,
            offset: 0,
            ..r
        };
        assert_eq!(big.read_error(u64::MAX), Some(EOVERFLOW));
        req[0] = 0;
        assert_eq!(Request::parse(&req), None);
    }
}
