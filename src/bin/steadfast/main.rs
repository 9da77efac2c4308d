//! The `steadfast` command: run the embedded server, manage topics, produce and consume.

mod client;
mod server;

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
    /// Consume a topic and print its messages.
    Consume(client::ConsumeArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
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
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
