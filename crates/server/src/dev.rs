//! `ballot dev`: a local cluster of child processes for trying Ballot out.

use clap::Args;

/// Flags of `ballot dev`.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Number of members to start.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
}
