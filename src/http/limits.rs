//! What any client can hold of the HTTP server (`[http]`): a settings type
//! of its own, so configuration can name it without depending on the
//! server.

/// What any client can hold of the HTTP server (`[http]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request's headers must arrive within this (slow or half-sent
    /// requests are closed); bodies and responses are not timed, so a long
    /// download at rack speed is never cut.
    pub header_read_timeout: std::time::Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: std::time::Duration::from_secs(10),
            max_connections: 8192,
            max_connections_per_address: 256,
        }
    }
}
