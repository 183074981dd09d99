//! The command line: `serve`, `simulate`, `check-config`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Environment variable naming the config file when `--config` is not given.
/// Deliberately outside the `VOG_` prefix, which sets individual settings.
pub const CONFIG_ENV: &str = "VIPPS_GATEWAY_CONFIG";

#[derive(Debug, Parser)]
#[command(
    name = "vipps-order-gateway",
    version,
    about = "A gateway in front of the Vipps MobilePay Order Management API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// The TOML config file.
        #[arg(long, env = CONFIG_ENV)]
        config: Option<PathBuf>,
        /// Run against the built-in simulator with a demo merchant
        /// (upstream and merchants of the config are replaced).
        #[arg(long)]
        simulator: bool,
        /// Address to listen on (overrides the config's `listen`).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run the Vipps simulator alone.
    Simulate {
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: String,
        /// HTTP worker threads (all share one state).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Orders held at most; past it, the order changed longest ago is
        /// forgotten.
        #[arg(long, default_value_t = crate::simulator::DEFAULT_MAX_ORDERS as u64,
              value_parser = clap::value_parser!(u64).range(1..))]
        max_orders: u64,
    },
    /// Validate a config file and read every secret it names.
    CheckConfig {
        #[arg(long, env = CONFIG_ENV)]
        config: PathBuf,
        /// Also fetch one access token per merchant.
        #[arg(long)]
        connect: bool,
    },
}
