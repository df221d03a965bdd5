//! `parley-load`: drives Parley through its public protocols exactly as the widget and the console
//! do (HTTP to set up, one WebSocket per visitor and per agent), and the bare relay it is measured
//! against. See docs/BENCHMARKS.md.
//!
//!   parley-load relay --listen 127.0.0.1:9100
//!   parley-load sweep --rates 100,300,1000 --pairs 20 --step-secs 5          (spawns a Parley)
//!   parley-load sweep --relay ws://127.0.0.1:9100/ws --rates 1000,3000       (against the relay)

mod relay;
mod stats;
mod sweep;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "parley-load",
    about = "Load generator and benchmark driver for Parley"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A minimal WebSocket relay speaking Parley's frames with no storage, auth or encryption:
    /// the machine's limit for the same traffic.
    Relay {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: String,
    },
    /// Visitor/agent pairs in conversation at fixed offered rates (open loop): ack and delivery
    /// latency, achieved rate, and the knee.
    Sweep(sweep::SweepArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Relay { listen } => relay::serve(&listen).await,
            Command::Sweep(args) => sweep::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
