//! `steadfast console`: a web console served by the binary. Server-rendered pages (no
//! JavaScript; charts are inline SVG; pages that follow a change reload themselves) over any
//! Kafka-protocol server: topics, consumer groups with lag and its last hour, dead-letter
//! topics with a browser and replay (the library code `steadfast dlq replay` runs), a search
//! for messages (`steadfast find`'s), and the workers' probes.
//!
//! Safe by default: it binds 127.0.0.1 and answers only requests addressed to a loopback
//! name; beyond loopback it refuses to start without a token, and then every request needs
//! it (a login page sets a cookie, scripts send `Authorization: Bearer`). State-changing
//! requests are POSTs carrying a per-process form token, refused from other origins.
//! Every value is escaped when rendered: record bytes are text (or hex), never HTML.

mod access;
mod auth;
mod cluster;
mod dlq_pages;
mod error;
mod find_page;
mod group_page;
mod history;
mod layout;
mod overview;
mod pods;
mod replays;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use steadfast::dlq::Dlq;

use crate::client::Connection;

use self::state::{Console, Shared};

/// Options of `steadfast console`.
#[derive(Debug, Args)]
pub(crate) struct ConsoleArgs {
    #[command(flatten)]
    connection: Connection,
    /// Address to serve on. Beyond loopback (127.0.0.1, ::1) a --token is required.
    #[arg(long, default_value = "127.0.0.1:9800")]
    listen: SocketAddr,
    /// A token every request must carry: a browser gives it once on the login page (a
    /// cookie keeps the session), scripts send `Authorization: Bearer <token>`.
    #[arg(long, env = "STEADFAST_CONSOLE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The URL browsers use when a proxy in front of the console rewrites the Host header
    /// (such as https://console.example.com): requests from that origin may change things,
    /// and with https the session cookie is `Secure`.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// A worker's probe endpoint (where it serves /metrics and /readyz), such as
    /// http://10.0.0.7:9100 (repeatable): shown on the pods page.
    #[arg(long = "worker", value_name = "URL")]
    workers: Vec<String>,
    /// How often lag and log ends are sampled for the charts and rates, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    sample_interval_ms: u64,
}

/// Runs `steadfast console` until interrupted.
pub(crate) async fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    let auth = access::Auth::new(args.listen, args.token, args.public_url.as_deref())?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr().context("reading the bound address")?;
    let dlq = args.connection.properties().into_iter().fold(
        Dlq::new(args.connection.bootstrap()),
        |dlq, (key, value)| dlq.with_property(key, value),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .context("creating the HTTP client for the workers' probes")?;
    let console = Arc::new(Console {
        connection: args.connection,
        dlq,
        workers: args.workers,
        history: history::History::default(),
        replays: replays::Replays::default(),
        auth,
        http,
    });
    let interval = Duration::from_millis(args.sample_interval_ms.max(100));
    tokio::spawn(sample_every(console.clone(), interval));
    eprintln!("console on http://{address}/");
    axum::serve(listener, router(console))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving the console")
}

/// Samples the cluster every `interval` for as long as the console runs.
async fn sample_every(console: Shared, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let c = console.clone();
        match tokio::task::spawn_blocking(move || history::take(&c.connection)).await {
            Ok(Ok(sample)) => console.history.push(sample),
            Ok(Err(e)) => tracing::warn!("sampling the cluster: {e:#}"),
            Err(e) => tracing::warn!("sampling the cluster did not finish: {e}"),
        }
    }
}

/// The console's routes, behind the access check and the security headers.
fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route("/groups/{group}", get(group_page::page))
        .route("/dlq", get(dlq_pages::list))
        .route(
            "/dlq/record/{topic}/{partition}/{offset}",
            get(dlq_pages::record),
        )
        .route("/dlq/replay/preview", post(dlq_pages::preview))
        .route("/dlq/replay", post(dlq_pages::start))
        .route("/replays/{job}", get(dlq_pages::progress))
        .route("/find", get(find_page::page))
        .route("/pods", get(pods::page))
        .route_layer(axum::middleware::from_fn_with_state(
            console.clone(),
            auth::require_session,
        ))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/style.css", get(layout::style))
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            auth::guard_request,
        ))
        .with_state(console)
}
