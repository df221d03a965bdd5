//! The `parley` binary's library half: configuration, the HTTP server (API, web pages, health),
//! and start-up wiring. `build` takes everything it needs as arguments, so tests run whole nodes
//! on port 0 in one process.

pub mod config;
pub mod http;
pub mod startup;
pub mod telemetry;

pub use config::Config;
