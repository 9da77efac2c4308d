//! The `steadfast` command: run the embedded server, manage topics, produce and consume,
//! inspect consumer groups and reset their offsets, list, show and replay dead-letter records,
//! find records by key, header, JSON field and time, serve the web console.

mod client;
mod console;
mod delays;
mod dlq;
mod find;
mod groups;
mod server;
mod text;
mod time;
mod users;

use clap::{Parser, Subcommand};

/// steadfast — consumer-side reliability for Kafka, with an embedded Kafka-protocol server.
#[derive(Debug, Parser)]
#[command(name = "steadfast", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedded Kafka-protocol log server.
    Server(server::ServerArgs),
    /// Create, list or delete topics on any Kafka-protocol server.
    Topics(client::TopicsArgs),
    /// Produce lines from standard input (or generated messages) to a topic.
    Produce(client::ProduceArgs),
    /// Consume a topic and print its messages (alone, or as a consumer-group member).
    Consume(client::ConsumeArgs),
    /// List and describe consumer groups: state, members, assignments, offsets and lag.
    Groups(groups::GroupsArgs),
    /// Manage consumer-group offsets (reset to earliest, latest, an offset or a time).
    Offsets(groups::OffsetsArgs),
    /// Dead-letter topics: list and show records, replay a selection to the original topics.
    Dlq(dlq::DlqArgs),
    /// Find records of a topic by key, header, JSON field and time (the time index bounds
    /// the scan); prints them as a table or JSON lines.
    Find(find::FindArgs),
    /// Delayed messages: run the relay that delivers a topic's delayed records when due.
    Delays(delays::DelaysArgs),
    /// Manage the embedded server's users file: salted credentials and topic/group rights.
    Users(users::UsersArgs),
    /// Serve the web console: topics, groups with lag, dead letters with replay, workers.
    Console(console::ConsoleArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log redirected to a file holds plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Topics(args) => client::topics(args).await,
            Command::Produce(args) => client::produce(args).await,
            Command::Consume(args) => client::consume(args).await,
            Command::Groups(args) => groups::groups(args).await,
            Command::Offsets(args) => groups::offsets(args).await,
            Command::Dlq(args) => dlq::dlq(args).await,
            Command::Find(args) => find::find(args).await,
            Command::Delays(args) => delays::delays(args).await,
            Command::Users(args) => users::users(args),
            Command::Console(args) => console::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Output piped into a reader that went away (`| head`): stop quietly.
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `error` comes from writing to a closed pipe.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
