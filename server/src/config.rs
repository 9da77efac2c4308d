//! Configuration of the embedded server: where it listens, where it keeps data, and how
//! its logs are segmented, retained and synced to disk, and how consumer groups are timed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// When appended data is forced to stable storage with `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every produce request, whatever its `acks`, is answered only after its data is fsynced
    /// (group commit: one fsync covers every request waiting at that moment).
    Always,
    /// The default. A produce with `acks=-1` is answered only after its data is fsynced
    /// (group commit); `acks=0/1` are answered after the write to the OS, and dirty partitions
    /// are fsynced on the interval. A machine crash (not a process crash) can lose up to one
    /// interval of `acks=0/1` data.
    Interval(Duration),
    /// Never fsync explicitly except when a segment is rolled and at shutdown; the OS decides.
    /// A machine crash can lose any data not yet written back, including `acks=-1` data.
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_millis(1000))
    }
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "interval" => Ok(FsyncPolicy::default()),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!(
                "unknown fsync policy `{other}`: expected always, interval or never"
            )),
        }
    }
}

/// Settings of the log storage, server-wide defaults that a topic may override.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A segment is rolled once it would grow past this many bytes.
    pub segment_bytes: u64,
    /// Segments whose newest record is older than this are deleted (never the active one).
    pub retention: Option<Duration>,
    /// Oldest segments are deleted while the partition exceeds this size (never the active one).
    pub retention_bytes: Option<u64>,
    /// The largest record batch accepted, in bytes.
    pub max_message_bytes: usize,
    /// One offset-index entry is written per this many bytes of log.
    pub index_interval_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 256 * 1024 * 1024,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            max_message_bytes: 8 * 1024 * 1024,
            index_interval_bytes: 4096,
        }
    }
}

/// Settings of the consumer-group coordinator.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Smallest session timeout a member may ask for.
    pub min_session_timeout: Duration,
    /// Largest session timeout a member may ask for.
    pub max_session_timeout: Duration,
    /// Offsets of a group that has had no members for this long are deleted.
    pub offsets_retention: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(30 * 60),
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Limits on client connections: how many, how long they may stay silent, and what a client
/// may send before it has authenticated. They bound what an unauthenticated or idle client
/// can make the server hold.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Largest request frame accepted while a SASL listener's connection has not yet
    /// authenticated (Kafka's 512 KiB); a larger length prefix closes the connection before
    /// any of the frame is read. Connections that need no SASL are under
    /// [`ServerConfig::max_request_bytes`] from the start.
    pub max_pre_auth_request_bytes: usize,
    /// Time a connection on a SASL listener has to authenticate, counted from its accept;
    /// past it the connection is closed.
    pub authentication_timeout: Duration,
    /// A connection that has sent no request and awaits no response for this long is closed
    /// (Kafka's `connections.max.idle.ms`).
    pub max_idle: Duration,
    /// Open connections, all listeners together; a connection accepted beyond this is
    /// closed at once.
    pub max_connections: usize,
    /// Open connections from one client IP address, all listeners together; one beyond
    /// this is closed at once.
    pub max_connections_per_ip: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_pre_auth_request_bytes: 512 * 1024,
            authentication_timeout: Duration::from_secs(10),
            max_idle: Duration::from_secs(10 * 60),
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
        }
    }
}

/// How a listener authenticates clients and protects the connection, by Kafka's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    /// No TLS, no authentication. With a users file, clients act as `ANONYMOUS`.
    #[default]
    Plaintext,
    /// SASL authentication (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) without TLS.
    SaslPlaintext,
    /// TLS; with a client CA, a client certificate is required and names the user.
    Ssl,
    /// TLS, then SASL authentication.
    SaslSsl,
}

impl SecurityProtocol {
    /// Whether clients authenticate with SASL.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    /// Whether the connection is TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl std::fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        })
    }
}

impl FromStr for SecurityProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(SecurityProtocol::Plaintext),
            "SASL_PLAINTEXT" => Ok(SecurityProtocol::SaslPlaintext),
            "SSL" => Ok(SecurityProtocol::Ssl),
            "SASL_SSL" => Ok(SecurityProtocol::SaslSsl),
            other => Err(format!(
                "unknown security protocol `{other}`: expected PLAINTEXT, SASL_PLAINTEXT, SSL or SASL_SSL"
            )),
        }
    }
}

/// One more listener beside the main one.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// How it authenticates and protects connections.
    pub protocol: SecurityProtocol,
    /// Address to bind; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Host and port given to clients that connect through it; defaults to the bound address.
    pub advertised: Option<(String, u16)>,
}

impl FromStr for ListenerConfig {
    type Err = String;

    /// Parses `PROTOCOL://HOST:PORT`, as Kafka's `listeners` setting spells one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (protocol, addr) = s
            .split_once("://")
            .ok_or_else(|| format!("listener `{s}`: expected PROTOCOL://HOST:PORT"))?;
        Ok(ListenerConfig {
            protocol: protocol.parse()?,
            addr: addr
                .parse()
                .map_err(|e| format!("listener `{s}`: address `{addr}`: {e}"))?,
            advertised: None,
        })
    }
}

/// TLS settings of `SSL` and `SASL_SSL` listeners.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM file with the server's certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file of CA certificates: when set, clients must present a certificate signed by
    /// one of them, and on an `SSL` listener its common name is the user.
    pub client_ca: Option<PathBuf>,
}

/// Everything the embedded server is configured with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address given to clients in Metadata; defaults to the bound address.
    pub advertised: Option<(String, u16)>,
    /// Security protocol of the `listen` listener.
    pub protocol: SecurityProtocol,
    /// More listeners, each with its own protocol and advertised address.
    pub extra_listeners: Vec<ListenerConfig>,
    /// TLS settings, required by `SSL` and `SASL_SSL` listeners.
    pub tls: Option<TlsConfig>,
    /// The users file (salted credentials and rights). Without one, every client may do
    /// everything; with one, every request is checked against the user's rights.
    pub users_file: Option<PathBuf>,
    /// Directory holding topics, segments and server metadata.
    pub data_dir: PathBuf,
    /// Whether Metadata requests for unknown topics create them.
    pub auto_create_topics: bool,
    /// Partition count of auto-created topics and of CreateTopics with `num_partitions = -1`.
    pub default_partitions: i32,
    /// Largest request frame accepted; larger ones close the connection.
    pub max_request_bytes: usize,
    /// Largest request of an API that carries no record data or group assignments (all but
    /// Produce, Fetch, JoinGroup, SyncGroup and OffsetCommit: Metadata, ListOffsets,
    /// OffsetFetch, DescribeGroups, …); larger ones close the connection before they are
    /// read. It bounds the topics, partitions or groups one such request can name, and so
    /// what decoding and answering it allocates.
    pub max_control_request_bytes: usize,
    /// Limits on connections: counts, idle time, and what is accepted before authentication.
    pub connections: ConnectionLimits,
    /// When data is fsynced.
    pub fsync: FsyncPolicy,
    /// Most segment files kept open at a time; the least recently used one is closed when
    /// another must be opened. `None` (the default) takes half of the process's open-file
    /// limit (`RLIMIT_NOFILE`, after the server raised its soft limit to the hard one), and
    /// leaves the other half to connections and everything else.
    pub max_open_files: Option<usize>,
    /// How often retention runs.
    pub retention_check_interval: Duration,
    /// Log defaults.
    pub log: LogConfig,
    /// Consumer-group coordinator settings.
    pub groups: GroupConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised: None,
            protocol: SecurityProtocol::Plaintext,
            extra_listeners: Vec::new(),
            tls: None,
            users_file: None,
            data_dir: PathBuf::from("./steadfast-data"),
            auto_create_topics: true,
            default_partitions: 1,
            max_request_bytes: 100 * 1024 * 1024,
            max_control_request_bytes: 1024 * 1024,
            connections: ConnectionLimits::default(),
            fsync: FsyncPolicy::default(),
            max_open_files: None,
            retention_check_interval: Duration::from_secs(60),
            log: LogConfig::default(),
            groups: Default::default(),
        }
    }
}
