//! `ballot bench`: a load generator for any etcd v3 endpoint.

use clap::Args;

/// Flags of `ballot bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Comma-separated client endpoints.
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
}
