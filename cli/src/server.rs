//! `steadfast server`: runs the embedded server until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use steadfast::server::{FsyncPolicy, ListenerConfig, SecurityProtocol, Server, TlsConfig};

/// Options of `steadfast server`.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9092", env = "STEADFAST_LISTEN")]
    listen: String,
    /// Directory for topics and server metadata.
    #[arg(long, default_value = "./steadfast-data", env = "STEADFAST_DATA_DIR")]
    data_dir: PathBuf,
    /// Host:port advertised to clients (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Security protocol of the --listen listener: PLAINTEXT, SASL_PLAINTEXT, SSL or SASL_SSL.
    #[arg(long, default_value = "PLAINTEXT", env = "STEADFAST_SECURITY_PROTOCOL")]
    security_protocol: SecurityProtocol,
    /// Another listener, as PROTOCOL://HOST:PORT (repeatable), e.g. SASL_SSL://0.0.0.0:9093.
    #[arg(long = "listener", value_name = "PROTOCOL://HOST:PORT")]
    listeners: Vec<ListenerConfig>,
    /// Users file (see `steadfast users`): turns on SASL authentication and per-user rights.
    /// Without it every client may read, write and delete everything.
    #[arg(long, env = "STEADFAST_USERS_FILE")]
    users_file: Option<PathBuf>,
    /// PEM certificate chain of SSL and SASL_SSL listeners.
    #[arg(long, requires = "tls_key", env = "STEADFAST_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of SSL and SASL_SSL listeners.
    #[arg(long, requires = "tls_cert", env = "STEADFAST_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates: clients of TLS listeners must present a certificate they signed
    /// (on SSL listeners its common name is the user).
    #[arg(long, requires = "tls_cert", env = "STEADFAST_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// When to fsync: `always` (every produce), `interval` (acks=-1 before answering, the
    /// rest every --fsync-interval-ms), `never` (leave it to the OS).
    #[arg(long, default_value = "interval")]
    fsync: String,
    /// Interval of background fsyncs with `--fsync interval`.
    #[arg(long, default_value_t = 1000)]
    fsync_interval_ms: u64,
    /// Create unknown topics when a client asks for their metadata.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    auto_create_topics: bool,
    /// Partitions of auto-created topics.
    #[arg(long, default_value_t = 1)]
    default_partitions: i32,
    /// Most segment files kept open at a time; the least recently used is closed when
    /// another is needed (default: half of the open-file limit, which the server first
    /// raises to the hard limit).
    #[arg(long, env = "STEADFAST_MAX_OPEN_FILES")]
    max_open_files: Option<usize>,
    /// Roll a new segment when the active one reaches this size.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    segment_bytes: u64,
    /// Delete segments whose newest record is older than this (hours; negative keeps forever).
    #[arg(long, default_value_t = 168, allow_negative_numbers = true)]
    retention_hours: i64,
    /// Delete the oldest segments while a partition is larger than this (bytes).
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// Largest request accepted (bytes); larger requests close the connection.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    max_request_bytes: usize,
    /// Largest request of an API without record data or group assignments (Metadata,
    /// ListOffsets, OffsetFetch, DescribeGroups, ...); larger ones close the connection.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_control_request_bytes: usize,
    /// Largest request accepted from a client of a SASL listener before it has authenticated
    /// (bytes); a larger one closes the connection before any of it is read.
    #[arg(long, default_value_t = 512 * 1024)]
    max_pre_auth_request_bytes: usize,
    /// Time a client of a SASL listener has to authenticate before its connection is closed.
    #[arg(long, default_value_t = 10_000)]
    authentication_timeout_ms: u64,
    /// Close a connection that has sent no request and awaits no response for this long.
    #[arg(long, default_value_t = 600_000)]
    connections_max_idle_ms: u64,
    /// Open connections allowed, all listeners together; more are closed at once.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Open connections allowed from one client IP address; more are closed at once.
    #[arg(long, default_value_t = 1_000)]
    max_connections_per_ip: usize,
    /// Committed offsets of a consumer group that has had no members this long are deleted.
    #[arg(long, default_value_t = 7 * 24 * 60)]
    offsets_retention_minutes: u64,
    /// Smallest session timeout a consumer-group member may ask for.
    #[arg(long, default_value_t = 6000)]
    group_min_session_timeout_ms: u64,
}

/// Starts the server and waits for a shutdown signal.
pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let fsync = match args
        .fsync
        .parse::<FsyncPolicy>()
        .map_err(anyhow::Error::msg)?
    {
        FsyncPolicy::Interval(_) => {
            FsyncPolicy::Interval(Duration::from_millis(args.fsync_interval_ms.max(1)))
        }
        other => other,
    };
    let mut builder = Server::builder()
        .listen(args.listen.clone())
        .data_dir(&args.data_dir)
        .fsync(fsync)
        .auto_create_topics(args.auto_create_topics)
        .default_partitions(args.default_partitions)
        .segment_bytes(args.segment_bytes)
        .retention(
            (args.retention_hours >= 0)
                .then(|| Duration::from_secs(args.retention_hours as u64 * 3600)),
        )
        .retention_bytes(args.retention_bytes)
        .max_request_bytes(args.max_request_bytes)
        .max_control_request_bytes(args.max_control_request_bytes)
        .max_pre_auth_request_bytes(args.max_pre_auth_request_bytes)
        .authentication_timeout(Duration::from_millis(args.authentication_timeout_ms))
        .connections_max_idle(Duration::from_millis(args.connections_max_idle_ms))
        .max_connections(args.max_connections)
        .max_connections_per_ip(args.max_connections_per_ip)
        .offsets_retention(Duration::from_secs(args.offsets_retention_minutes * 60))
        .group_min_session_timeout(Duration::from_millis(args.group_min_session_timeout_ms))
        .security_protocol(args.security_protocol);
    if let Some(files) = args.max_open_files {
        builder = builder.max_open_files(files);
    }
    for listener in args.listeners {
        builder = builder.listener(listener);
    }
    if let Some(path) = &args.users_file {
        builder = builder.users_file(path);
    }
    if let (Some(certificate), Some(key)) = (args.tls_cert, args.tls_key) {
        builder = builder.tls(TlsConfig {
            certificate,
            key,
            client_ca: args.tls_client_ca,
        });
    }
    if let Some(advertise) = &args.advertise {
        let (host, port) = advertise
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .with_context(|| format!("--advertise `{advertise}`: expected HOST:PORT"))?;
        builder = builder.advertised(host, port);
    }
    let server = builder.start().await?;
    // One line on stdout that scripts (and tests) can wait for.
    println!("steadfast server listening on {}", server.local_addr());
    for (protocol, addr) in server.listeners().iter().skip(1) {
        println!("steadfast server listening on {protocol}://{addr}");
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
