//! `parley-load`: drives Parley through its public protocols exactly as the widget and the console
//! do (HTTP to set up, one WebSocket per visitor and per agent), and the bare relay it is measured
//! against. See docs/BENCHMARKS.md.
//!
//!   parley-load relay --listen 127.0.0.1:9100
//!   parley-load sweep --rates 100,300,1000 --pairs 20 --step-secs 5          (spawns a Parley)
//!   parley-load sweep --relay ws://127.0.0.1:9100/ws --rates 1000,3000       (against the relay)
//!   parley-load saturation | fanout | idle | storm | crash                   (see --help of each)

mod idle;
mod relay;
mod resume;
mod stats;
mod sweep;
mod target;
mod xmpp;

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
    /// latency, achieved rate, server CPU and bytes written per message, and the knee.
    Sweep(sweep::SweepArgs),
    /// Closed loop, one message in flight per visitor: the highest sustained durable rate.
    Saturation(sweep::SaturationArgs),
    /// Agents serving 5-20 visitors each, answering and fetching transcripts under load.
    Fanout(sweep::FanoutArgs),
    /// N visitor connections held open: server memory per connection, idle CPU, sessions
    /// established per second and CPU per session.
    Idle(idle::IdleArgs),
    /// N connected visitors drop at once and reconnect: time until all have resumed, and a
    /// check that no message was lost or duplicated.
    Storm(resume::StormArgs),
    /// kill -9 the server during a conversation load, restart it: every acknowledged message is
    /// present once, and the clients resume.
    Crash(resume::CrashArgs),
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
            Command::Saturation(args) => sweep::saturation(args).await,
            Command::Fanout(args) => sweep::fanout(args).await,
            Command::Idle(args) => idle::run(args).await,
            Command::Storm(args) => resume::storm(args).await,
            Command::Crash(args) => resume::crash(args).await,
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
