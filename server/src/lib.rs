//! The embedded Kafka-protocol log server: a single node that serves topics, produce, fetch
//! and offsets to unmodified Kafka clients, with durable segmented storage.
//!
//! ```no_run
//! # async fn demo() -> Result<(), steadfast_server::ServerError> {
//! let dir = std::env::temp_dir().join("steadfast-demo");
//! let server = steadfast_server::Server::builder()
//!     .listen("127.0.0.1:0")
//!     .data_dir(&dir)
//!     .start()
//!     .await?;
//! println!("bootstrap.servers={}", server.bootstrap_servers());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod api;
mod auth;
mod broker;
pub mod client;
mod config;
mod connection;
mod connection_slots;
mod durable;
mod error;
/// Entry points for the fuzz targets: not an API, no stability promise.
#[doc(hidden)]
pub mod fuzzing;
mod group;
mod listener;
mod protocol;
mod storage;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::auth::tls::TlsError;
pub use self::config::{
    ConnectionLimits, FsyncPolicy, GroupConfig, ListenerConfig, LogConfig, SecurityProtocol,
    ServerConfig, TlsConfig,
};

/// The users file: salted SCRAM credentials and per-user rights, as `steadfast users`
/// manages it and the server reads it.
pub mod users {
    pub use crate::auth::crypto::Hash;
    pub use crate::auth::rights::Rights;
    pub use crate::auth::users::{
        check_name, ScramCredential, User, UsersError, UsersFile, ANONYMOUS, DEFAULT_ITERATIONS,
    };
}
pub use self::error::ServerError;

use self::auth::UserDirectory;
use self::broker::{load_cluster_id, Broker, ProducerIdAllocator};
use self::durable::now_ms;
use self::group::membership::MembershipStore;
use self::group::offsets::OffsetStore;
use self::group::GroupCoordinator;
use self::storage::sync::{sync_targets, SyncTarget, Syncer};
use self::storage::{DataDirLock, LogStore};

/// Largest segment size: index entries hold 32-bit file positions.
const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;

/// Smallest pre-authentication request limit: room for a SASL exchange's messages.
const MIN_PRE_AUTH_REQUEST_BYTES: usize = 4096;

/// Entry point: `Server::builder()`.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A builder with the defaults of [`ServerConfig`].
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            config: ServerConfig::default(),
            listen: None,
        }
    }
}

/// Configures and starts a server.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    config: ServerConfig,
    listen: Option<String>,
}

impl ServerBuilder {
    /// Address to listen on, such as `127.0.0.1:9092` (port 0 picks a free port).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }
    /// Directory for topics and server metadata (created if missing).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.data_dir = dir.into();
        self
    }
    /// Host and port given to clients in Metadata responses.
    pub fn advertised(mut self, host: impl Into<String>, port: u16) -> Self {
        self.config.advertised = Some((host.into(), port));
        self
    }
    /// Security protocol of the main listener (default: `PLAINTEXT`).
    pub fn security_protocol(mut self, protocol: SecurityProtocol) -> Self {
        self.config.protocol = protocol;
        self
    }
    /// Adds a listener beside the main one, such as `SASL_SSL://0.0.0.0:9093`.
    pub fn listener(mut self, listener: ListenerConfig) -> Self {
        self.config.extra_listeners.push(listener);
        self
    }
    /// TLS certificate and key of `SSL` and `SASL_SSL` listeners.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.tls = Some(tls);
        self
    }
    /// The users file: turns on authentication on SASL listeners and rights everywhere.
    pub fn users_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.users_file = Some(path.into());
        self
    }
    /// Whether Metadata requests create unknown topics (default: true).
    pub fn auto_create_topics(mut self, on: bool) -> Self {
        self.config.auto_create_topics = on;
        self
    }
    /// Partitions of auto-created topics (default: 1).
    pub fn default_partitions(mut self, partitions: i32) -> Self {
        self.config.default_partitions = partitions;
        self
    }
    /// When data is fsynced (default: [`FsyncPolicy::Interval`] of one second).
    pub fn fsync(mut self, policy: FsyncPolicy) -> Self {
        self.config.fsync = policy;
        self
    }
    /// Largest request accepted (default: 100 MiB).
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.config.max_request_bytes = bytes;
        self
    }
    /// Largest request of an API without record data or group assignments (Metadata,
    /// ListOffsets, OffsetFetch, DescribeGroups, …; default: 1 MiB).
    pub fn max_control_request_bytes(mut self, bytes: usize) -> Self {
        self.config.max_control_request_bytes = bytes;
        self
    }
    /// Largest request accepted from a SASL listener's connection before it has
    /// authenticated (default: 512 KiB, as Kafka).
    pub fn max_pre_auth_request_bytes(mut self, bytes: usize) -> Self {
        self.config.connections.max_pre_auth_request_bytes = bytes;
        self
    }
    /// Time a SASL listener's connection has to authenticate before it is closed
    /// (default: 10 s).
    pub fn authentication_timeout(mut self, timeout: Duration) -> Self {
        self.config.connections.authentication_timeout = timeout;
        self
    }
    /// A connection with no request and no pending response for this long is closed
    /// (default: 10 minutes, as Kafka's `connections.max.idle.ms`).
    pub fn connections_max_idle(mut self, idle: Duration) -> Self {
        self.config.connections.max_idle = idle;
        self
    }
    /// Open connections allowed, all listeners together (default: 10,000).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.connections.max_connections = connections;
        self
    }
    /// Open connections allowed from one client IP address (default: 1,000).
    pub fn max_connections_per_ip(mut self, connections: usize) -> Self {
        self.config.connections.max_connections_per_ip = connections;
        self
    }
    /// Most segment files kept open at a time (default: half of the open-file limit; see
    /// [`ServerConfig::max_open_files`]). At least 16.
    pub fn max_open_files(mut self, files: usize) -> Self {
        self.config.max_open_files = Some(files);
        self
    }
    /// Segment size at which a new segment is started (default: 256 MiB).
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.config.log.segment_bytes = bytes;
        self
    }
    /// Time retention (default: 7 days; `None` keeps data forever).
    pub fn retention(mut self, retention: Option<Duration>) -> Self {
        self.config.log.retention = retention;
        self
    }
    /// Size retention per partition (default: none).
    pub fn retention_bytes(mut self, bytes: Option<u64>) -> Self {
        self.config.log.retention_bytes = bytes;
        self
    }
    /// How often retention runs (default: one minute).
    pub fn retention_check_interval(mut self, every: Duration) -> Self {
        self.config.retention_check_interval = every;
        self
    }
    /// Smallest session timeout a group member may ask for (default: 6 s, as Kafka).
    pub fn group_min_session_timeout(mut self, timeout: Duration) -> Self {
        self.config.groups.min_session_timeout = timeout;
        self
    }
    /// Committed offsets of a group that has been empty this long are deleted (default: 7 days).
    pub fn offsets_retention(mut self, retention: Duration) -> Self {
        self.config.groups.offsets_retention = retention;
        self
    }
    /// Replaces the whole configuration (the listen address set by [`Self::listen`] wins).
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Recovers storage, binds the listener and starts serving.
    pub async fn start(self) -> Result<ServerHandle, ServerError> {
        let mut config = self.config;
        if let Some(listen) = &self.listen {
            config.listen = listen
                .parse()
                .map_err(|e| ServerError::Config(format!("listen address `{listen}`: {e}")))?;
        }
        if !(1..=storage::MAX_PARTITIONS).contains(&config.default_partitions) {
            return Err(ServerError::Config(format!(
                "default partitions must be between 1 and {}",
                storage::MAX_PARTITIONS
            )));
        }
        if !(1024..=MAX_SEGMENT_BYTES).contains(&config.log.segment_bytes) {
            return Err(ServerError::Config(format!(
                "segment bytes must be between 1024 and {MAX_SEGMENT_BYTES}"
            )));
        }
        check_connection_limits(&config)?;
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|e| ServerError::storage(&data_dir, e))?;
        let lock = DataDirLock::acquire(&data_dir)?;
        let nofile = raise_open_file_limit();
        let max_open_files = config.max_open_files.unwrap_or(nofile / 2);
        tracing::debug!(
            nofile,
            max_open_files,
            "open file limit; segment files kept open"
        );
        let store = {
            let (dir, log) = (data_dir.clone(), config.log.clone());
            tokio::task::spawn_blocking(move || LogStore::open(&dir, log, max_open_files))
                .await
                .map_err(|e| ServerError::Config(format!("recovery task failed: {e}")))??
        };
        tracing::info!(
            partitions = store.all_partitions().len(),
            open_files = store.open_files().open_now(),
            max_open_files = store.open_files().capacity(),
            "storage recovered"
        );
        let cluster_id = load_cluster_id(&data_dir)?;
        let producer_ids = ProducerIdAllocator::load(&data_dir)?;
        let offsets = OffsetStore::open(&data_dir)
            .map_err(|e| ServerError::storage(data_dir.join("groups"), e))?;
        let (membership, restored) = {
            let dir = data_dir.clone();
            tokio::task::spawn_blocking(move || MembershipStore::open(&dir))
                .await
                .map_err(|e| ServerError::Config(format!("group membership task failed: {e}")))?
                .map_err(|e| ServerError::storage(data_dir.join("groups").join("members"), e))?
        };
        let groups = GroupCoordinator::new(config.groups.clone(), offsets, membership, restored);
        let users = match &config.users_file {
            Some(path) => {
                let (path, dir) = (path.clone(), data_dir.clone());
                let open = move || -> Result<UserDirectory, ServerError> {
                    let decoy = auth::decoy::DecoySecret::load_or_create(&dir)?;
                    Ok(UserDirectory::open(&path, decoy)?)
                };
                let directory = tokio::task::spawn_blocking(open)
                    .await
                    .map_err(|e| ServerError::Config(format!("users file task failed: {e}")))??;
                Some(Arc::new(directory))
            }
            None => None,
        };
        let main = ListenerConfig {
            protocol: config.protocol,
            addr: config.listen,
            advertised: config.advertised.clone(),
        };
        let mut listeners = Vec::new();
        for listener in std::iter::once(&main).chain(&config.extra_listeners) {
            if listener.protocol.sasl() && users.is_none() {
                return Err(ServerError::Config(format!(
                    "listener {}://{} authenticates with SASL: give a users file",
                    listener.protocol, listener.addr
                )));
            }
            listeners.push(listener::bind(listener, config.tls.as_ref()).await?);
        }
        let local_addr = listeners[0].local_addr;
        let listener_addrs = listeners
            .iter()
            .map(|l| (l.info.protocol, l.local_addr))
            .collect();
        let broker = Arc::new(Broker {
            advertised: listeners[0].info.advertised.clone(),
            users,
            config,
            store,
            syncer: Syncer::start(),
            cluster_id,
            producer_ids,
            groups,
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let slots = connection_slots::ConnectionSlots::new(
            broker.config.connections.max_connections,
            broker.config.connections.max_connections_per_ip,
        );
        for listener in listeners {
            let (protocol, addr) = (listener.info.protocol, listener.local_addr);
            if broker.users.is_none() && !addr.ip().is_loopback() {
                tracing::warn!(%addr, %protocol, "no users file: anyone who reaches this listener may read, write and delete every topic and group");
            }
            tracing::info!(%addr, %protocol, "listening");
            tasks.spawn(listener::accept_loop(
                listener,
                broker.clone(),
                slots.clone(),
                shutdown.clone(),
                tasks.clone(),
            ));
        }
        tasks.spawn(retention_loop(broker.clone(), shutdown.clone()));
        tasks.spawn(group_timer_loop(broker.clone(), shutdown.clone()));
        if let FsyncPolicy::Interval(every) = broker.config.fsync {
            tasks.spawn(flush_loop(broker.clone(), every, shutdown.clone()));
        }
        tracing::info!(addr = %local_addr, data_dir = %data_dir.display(), "steadfast server listening");
        Ok(ServerHandle {
            addr: local_addr,
            listener_addrs,
            broker,
            shutdown,
            tasks,
            lock,
        })
    }
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    listener_addrs: Vec<(SecurityProtocol, SocketAddr)>,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    lock: DataDirLock,
}

impl ServerHandle {
    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every listener's security protocol and bound address, the main one first.
    pub fn listeners(&self) -> &[(SecurityProtocol, SocketAddr)] {
        &self.listener_addrs
    }

    /// The `bootstrap.servers` value for clients of the main listener.
    pub fn bootstrap_servers(&self) -> String {
        let (host, port) = &self.broker.advertised;
        format!("{host}:{port}")
    }

    /// Base offsets of a partition's segments, oldest first; `None` if there is no such
    /// partition. Meant for tooling and tests.
    pub fn segment_base_offsets(&self, topic: &str, partition: i32) -> Option<Vec<i64>> {
        let topic = self.broker.store.topic(topic)?;
        Some(topic.partition(partition)?.segment_bases())
    }

    /// The current generation of a consumer group, `None` if the group is unknown.
    pub fn group_generation(&self, group: &str) -> Option<i32> {
        self.broker.groups.generation(group)
    }

    /// Runs retention on every partition now; returns how many segments were deleted.
    pub fn enforce_retention_now(&self) -> Result<usize, ServerError> {
        enforce_retention(&self.broker)
    }

    /// Stops accepting connections, closes the open ones, fsyncs every partition and waits
    /// for the server's tasks to end.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        for partition in self.broker.store.all_partitions() {
            if let Err(e) = partition.flush() {
                tracing::error!(error = %e, "flush at shutdown failed");
            }
        }
        let broker = self.broker.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || broker.groups.flush_membership()).await
        {
            tracing::error!(error = %e, "writing group membership at shutdown failed");
        }
        drop(self.lock);
        tracing::info!("steadfast server stopped");
    }
}

/// Raises the soft open-file limit to the hard one (connections and segment files need
/// descriptors) and returns the limit in force. Half of it is the default bound on open
/// segment files, so a server with 10,000 partitions runs within a limit of 1,024.
fn raise_open_file_limit() -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// Refuses connection limits that cannot work: a zero count or timeout, or a
/// pre-authentication frame limit too small for a SASL exchange.
fn check_connection_limits(config: &ServerConfig) -> Result<(), ServerError> {
    let limits = &config.connections;
    let bad = |what: String| Err(ServerError::Config(what));
    if limits.max_connections == 0 || limits.max_connections_per_ip == 0 {
        return bad("connection limits must be at least 1".to_owned());
    }
    if limits.authentication_timeout.is_zero() || limits.max_idle.is_zero() {
        return bad("the authentication timeout and the idle timeout must be positive".to_owned());
    }
    if limits.max_pre_auth_request_bytes < MIN_PRE_AUTH_REQUEST_BYTES {
        return bad(format!(
            "the pre-authentication request limit must be at least {MIN_PRE_AUTH_REQUEST_BYTES} bytes"
        ));
    }
    Ok(())
}

fn enforce_retention(broker: &Broker) -> Result<usize, ServerError> {
    let now = now_ms();
    let mut deleted = 0;
    for partition in broker.store.all_partitions() {
        deleted += partition
            .enforce_retention(now)
            .map_err(|e| ServerError::storage(&broker.config.data_dir, e))?;
    }
    Ok(deleted)
}

async fn retention_loop(broker: Arc<Broker>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(broker.config.retention_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let b = broker.clone();
        match tokio::task::spawn_blocking(move || enforce_retention(&b)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "retention failed"),
            Err(e) => tracing::error!(error = %e, "retention task failed"),
        }
    }
}

/// Enforces group session, rebalance and sync timeouts (every 100 ms) and offset
/// retention (every second).
async fn group_timer_loop(broker: Arc<Broker>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        broker.groups.tick();
        if ticks.is_multiple_of(10) {
            broker.groups.expire_offsets();
        }
        ticks += 1;
    }
}

async fn flush_loop(broker: Arc<Broker>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let partitions = broker.store.all_partitions();
        // A failed fsync drops the partition's unsynced tail (logged where it happens).
        // Many dirty partitions are synced with one syncfs (see storage::sync).
        let result = tokio::task::spawn_blocking(move || {
            let dirty: HashMap<usize, Arc<dyn SyncTarget>> = partitions
                .into_iter()
                .filter(|p| p.take_dirty())
                .enumerate()
                .map(|(i, p)| (i, p as Arc<dyn SyncTarget>))
                .collect();
            sync_targets(dirty).values().filter(|r| r.is_err()).count()
        })
        .await;
        match result {
            Ok(0) => {}
            Ok(failed) => tracing::error!(failed, "interval fsync failed for some partitions"),
            Err(e) => tracing::error!(error = %e, "interval fsync task failed"),
        }
    }
}
